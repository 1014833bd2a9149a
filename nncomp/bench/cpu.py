"""The CPU a benchmark ran on: model, family/model, the ISA flags that choose kernels, clock, caches.

Every result records :func:`cpu_record` (through ``timing.machine_info``), and committed results keep
one folder per CPU, ``bench/results/<cpu>/``, named by :func:`results_folder` (``--out
bench/results/{cpu}`` expands to it): e.g. ``amd-epyc-zen4`` (family 25 model 17) or
``intel-xeon-sapphire-rapids`` (family 6 model 143). A CPU this module does not know gets its vendor,
its model name's words and ``f<family>m<model>``.
"""
import os
import platform
import re

from ..kernels.isa import CACHE_DIR, caches  # noqa: F401 - one reader of the cache sizes, the kernels' own
from ..tuning import cpuinfo  # noqa: F401 - the one reader of /proc/cpuinfo (bench.timing imports it from here)

# The flags that pick a kernel or explain a result (Linux /proc/cpuinfo spelling).
FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
         "amx_tile", "amx_int8", "amx_bf16")

# AMD: (family, first model, last model) -> core; Intel family 6: model -> codename.
_AMD = ((23, 0x00, 0x2F, "zen"), (23, 0x30, 0xFF, "zen2"), (25, 0x00, 0x0F, "zen3"), (25, 0x10, 0x1F, "zen4"),
        (25, 0x20, 0x5F, "zen3"), (25, 0x60, 0x7F, "zen4"), (25, 0xA0, 0xAF, "zen4"), (26, 0x00, 0xFF, "zen5"))
_INTEL = {0x3F: "haswell", 0x4F: "broadwell", 0x56: "broadwell", 0x55: "skylake", 0x6A: "ice-lake",
          0x6C: "ice-lake", 0x8F: "sapphire-rapids", 0xCF: "emerald-rapids", 0xAD: "granite-rapids",
          0xAE: "granite-rapids", 0xAF: "sierra-forest", 0x8C: "tiger-lake", 0x8D: "tiger-lake",
          0x7D: "ice-lake", 0x7E: "ice-lake", 0x97: "alder-lake", 0x9A: "alder-lake", 0xB7: "raptor-lake",
          0xBA: "raptor-lake", 0xBF: "raptor-lake", 0x9E: "coffee-lake", 0x8E: "kaby-lake", 0xAA: "meteor-lake"}


def _int(text, default=None):
    try:
        return int(str(text), 0)
    except (TypeError, ValueError):
        return default


def clock_mhz(info=None):
    """``{"current": MHz, "max": MHz, "nominal": MHz}``: /proc/cpuinfo's ``cpu MHz``, cpufreq's maximum,
    and the ``@ 2.00GHz`` of the model name; each only where the system says it."""
    info = cpuinfo() if info is None else info
    out = {}
    try:
        out["current"] = round(float(info["cpu MHz"]), 1)
    except (KeyError, ValueError):
        pass
    try:
        out["max"] = int(open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read()) / 1000
    except (OSError, ValueError):
        pass
    m = re.search(r"@\s*([\d.]+)\s*GHz", info.get("model name", ""))
    if m:
        out["nominal"] = float(m.group(1)) * 1000
    return out


def core_name(vendor, family, model):
    """The core's codename (``"zen4"``, ``"sapphire-rapids"``) where this module knows it, else None."""
    if family is None or model is None:
        return None
    if vendor == "AuthenticAMD":
        return next((c for f, lo, hi, c in _AMD if f == family and lo <= model <= hi), None)
    if vendor == "GenuineIntel" and family == 6:
        return _INTEL.get(model)
    return None


def cpu_record(info=None):
    """The CPU as recorded with every result (``info``: /proc/cpuinfo fields, for tests)."""
    info = cpuinfo() if info is None else info
    flags = set(info.get("flags", info.get("Features", "")).split())
    vendor = info.get("vendor_id") or info.get("CPU implementer") or platform.machine()
    family, model = _int(info.get("cpu family")), _int(info.get("model"))
    rec = {"model_name": info.get("model name") or platform.processor() or platform.machine() or "unknown",
           "vendor": vendor, "family": family, "model": model, "stepping": _int(info.get("stepping")),
           "core": core_name(vendor, family, model), "flags": {f: f in flags for f in FLAGS},
           "hypervisor": "hypervisor" in flags, "clock_mhz": clock_mhz(info), "caches": caches()}
    if "CPU part" in info:          # ARM: implementer and part instead of family and model
        rec["arm_part"] = [info.get("CPU implementer"), info.get("CPU part")]
    rec["results_folder"] = results_folder(rec)
    return rec


def _slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def results_folder(rec):
    """The folder of ``bench/results/`` for this CPU: ``<vendor>-<line>-<core>`` where the core is known."""
    name = rec["model_name"]
    if rec.get("core"):
        vendor = {"AuthenticAMD": "amd", "GenuineIntel": "intel"}.get(rec["vendor"], _slug(rec["vendor"]))
        line = next((w for w in ("epyc", "ryzen", "threadripper", "xeon", "core") if w in name.lower()), "")
        return "-".join(p for p in (vendor, line, rec["core"]) if p)
    words = re.sub(r"\((R|TM|tm)\)|\bCPU\b|\bProcessor\b|@.*$|\b\d+-Core\b", " ", name)
    tail = (f"f{rec['family']}m{rec['model']}" if rec.get("family") is not None
            else "-".join(str(p) for p in rec.get("arm_part") or [] if p))
    return "-".join(p for p in (_slug(words) or _slug(str(rec["vendor"])), _slug(tail)) if p) or "unknown-cpu"


def describe(rec):
    """One line for a report: ``AMD EPYC (family 25 model 17, zen4; AVX-512 VNNI, BF16; 2596 MHz; L1d 32 KiB,
    L2 1 MiB, L3 32 MiB)``."""
    f = rec.get("flags", {})
    isa = ("AVX-512" + "".join(f" {n}" for n, k in (("VNNI", "avx512_vnni"), ("BF16", "avx512_bf16")) if f.get(k))
           if f.get("avx512f") else ("AVX2" if f.get("avx2") else "no AVX2"))
    if f.get("amx_tile"):
        isa += ", AMX" + "".join(f" {n}" for n, k in (("INT8", "amx_int8"), ("BF16", "amx_bf16")) if f.get(k))
    ident = (f"family {rec.get('family')} model {rec.get('model')}" if rec.get("family") is not None
             else "implementer {} part {}".format(*rec.get("arm_part", ["?", "?"])))
    ident += f", {rec['core']}" if rec.get("core") else ""
    clock = rec.get("clock_mhz", {})
    mhz = clock.get("nominal") or clock.get("max") or clock.get("current")
    c = rec.get("caches", {})
    sizes = ", ".join(f"{k} {_human(c[k])}" for k in ("L1d", "L2", "L3") if c.get(k))
    return "; ".join(p for p in (f"{rec['model_name']} ({ident}", isa, f"{mhz:.0f} MHz" if mhz else "",
                                 sizes) if p) + ")"


def _human(n):
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n >> 10} KiB"
