"""Which instruction-set paths the kernels take: the JIT target's features, probed once at import.

Four kernels are written with x86 intrinsics that compile only for a CPU that has them:
``int8_vnni`` (``vpdpbusd``: AVX-512F + AVX-512 VNNI, :data:`HAVE_VNNI`), ``int8_avx2`` (``vpmaddwd``,
the int8 block where VNNI is missing: :data:`HAVE_AVX2`), ``int8_amx`` (``tdpbusd`` on
tiles: AMX-TILE + AMX-INT8, :data:`HAVE_AMX_INT8`, and the OS's tile state, which int8_amx requests)
and ``codebook_vpermps`` (``vpermps`` / ``vpermi2ps``: AVX-512F, :data:`HAVE_AVX512`). Where a flag is
False the matrices run the portable kernels instead (kernels/int8.py, kernels/codebook.py;
bit-identical results). Every
other kernel (the CSR and CSR-int8 tiles, blas.py, plain loops) uses target-independent LLVM vectors
that lower to zmm, ymm or xmm on any x86-64 and needs no check. The blocked convolution
(kernels/conv_blocked.py) sizes its tiles by the number of vector registers (32 with AVX-512, else 16).

The switch is Numba's own ``NUMBA_CPU_FEATURES`` (with ``NUMBA_CPU_NAME``): Numba then compiles
every kernel for that CPU and feature list, and this probe answers for the same list, not for the host.
For example ``NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=+avx2,+fma`` runs the AVX2 paths on an AVX-512
machine (tests/test_isa.py does, in a child process, and checks that no zmm register is used and the
results are the AVX-512 build's bits). Numba compiles with the host's features whenever
``NUMBA_CPU_FEATURES`` is unset, even with ``NUMBA_CPU_NAME`` set, and so does this probe; with a list,
only the features it names with ``+`` count (a CPU name's own defaults are not known here: the portable
kernels then run, correct but slower). ``NUMBA_DISABLE_JIT=1`` turns every fast path off.
"""
import functools
import os

import llvmlite.binding as llvm
import numba


def target_features():
    """The feature names (LLVM spelling: ``avx512f``, ``avx512vnni``) of the CPU Numba compiles for."""
    cfg = numba.core.config
    if cfg.DISABLE_JIT:
        return frozenset()
    if cfg.CPU_FEATURES is not None:      # what Numba passes to LLVM (config.CPU_FEATURES or the host's)
        listed = [f.strip() for f in cfg.CPU_FEATURES.split(",")]
        return frozenset(f[1:] for f in listed if f.startswith("+")) - {f[1:] for f in listed if f.startswith("-")}
    try:
        return frozenset(k for k, v in llvm.get_host_cpu_features().items() if v)
    except Exception:  # noqa: BLE001 - unknown host: the portable kernels
        return frozenset()


FEATURES = target_features()
HAVE_AVX512 = "avx512f" in FEATURES
HAVE_VNNI = HAVE_AVX512 and "avx512vnni" in FEATURES
HAVE_AVX2 = "avx2" in FEATURES
HAVE_AMX_INT8 = {"amx-tile", "amx-int8"} <= FEATURES   # int8_amx also needs the OS's tile state
VECTOR_REGISTERS = 32 if HAVE_AVX512 else 16


CACHE_DIR = "/sys/devices/system/cpu/cpu0/cache"


def _size_bytes(text):
    """``"32K"`` / ``"2048K"`` / ``"32M"`` / ``"32 KiB"`` -> bytes (None if unreadable)."""
    t = str(text).strip().upper().removesuffix("B").removesuffix("I").strip()
    unit = t[-1:] if t[-1:] in ("K", "M", "G") else ""
    digits = t[:len(t) - len(unit)].strip()
    return int(digits) << {"": 0, "K": 10, "M": 20, "G": 30}[unit] if digits.isdigit() else None


def caches(root=CACHE_DIR):
    """``{"L1d": bytes, "L1i": ..., "L2": ..., "L3": ..., "<level>_shared_by": cpus}`` of one core (sysfs,
    else ``os.sysconf``); a level that neither says is missing. The benchmark records them
    (nncomp/bench/cpu.py); the CSR kernels size their column panels by the L2 (:func:`l2_bytes`)."""
    out = {}
    try:
        names = sorted(n for n in os.listdir(root) if n.startswith("index"))
    except OSError:
        names = []
    for name in names:
        d = os.path.join(root, name)
        try:
            with open(os.path.join(d, "level")) as f:
                level = f.read().strip()
            with open(os.path.join(d, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(d, "size")) as f:
                size = _size_bytes(f.read())
        except OSError:
            continue
        label = f"L{level}" + {"Data": "d", "Instruction": "i"}.get(kind, "")
        if size:
            out[label] = size
            try:
                with open(os.path.join(d, "shared_cpu_list")) as f:
                    shared = f.read().strip()
                out[f"{label}_shared_by"] = sum(
                    (int(b) - int(a) + 1) if "-" in p else 1
                    for p in shared.split(",") for a, _, b in [p.partition("-")] if p)
            except (OSError, ValueError):
                pass
    for label, key in (("L1d", "SC_LEVEL1_DCACHE_SIZE"), ("L2", "SC_LEVEL2_CACHE_SIZE"),
                       ("L3", "SC_LEVEL3_CACHE_SIZE")):
        if label not in out:
            try:
                n = os.sysconf(key)
                if n and n > 0:
                    out[label] = int(n)
            except (ValueError, OSError, AttributeError):
                pass
    return out


@functools.cache
def l2_bytes(default=1 << 20):
    """This core's L2 cache in bytes (:func:`caches`, read once), else ``default``."""
    return caches().get("L2", default)
