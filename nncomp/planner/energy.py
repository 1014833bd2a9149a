"""An *estimate* of the energy of one inference, from a documented model (this machine exposes no
energy counters, so nothing here is measured).

The model is the one Han et al. (Deep Compression, EIE) use, with Horowitz's 45 nm figures (ISSCC
2014, "Computing's energy problem"), in picojoules:

- a 32-bit word read from DRAM 640, from on-chip SRAM (a cache) 5;
- a float32 multiply 3.7 and add 0.9; an 8-bit integer multiply 0.2 and a 32-bit integer add 0.1.

Per sample: every layer's multiply-adds (``layer.macs``, which counts a compressed format's own work:
the stored non-zeros of a CSR matrix, the two factors of a low-rank pair) at the float or the integer
price (integer when the layer multiplies int8 activations: ``weight.activations`` is ``"dynamic"`` or
``"static"``; weight-only int8 and codebooks decode to float arithmetic), plus the reading of every
weight byte once per batch call, shared by the batch's samples: from DRAM when the model's
parameters do not fit the last-level cache, else from SRAM. Activations are not counted (as in the
seed papers' weight-centred accounting).
"""
import glob

__all__ = ["PJ", "last_level_cache_bytes", "energy", "format_pj"]

PJ = {"dram_word": 640.0, "sram_word": 5.0, "float_mul": 3.7, "float_add": 0.9, "int8_mul": 0.2, "int32_add": 0.1}
DEFAULT_LLC = 32 << 20


def last_level_cache_bytes():
    """The largest CPU cache of cpu0 (Linux sysfs), else 32 MiB."""
    best = 0
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path) as fh:
                text = fh.read().strip().upper()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            best = max(best, int(digits) * scale)
    return best or DEFAULT_LLC


def energy(model, batch=1, llc_bytes=None):
    """The estimated energy per sample of ``model`` called on batches of ``batch``, in picojoules.

    Returns a dict: ``total_pj``, ``compute_pj``, ``memory_pj``, ``dram`` (whether the parameters
    come from DRAM) and ``llc_bytes``.
    """
    llc = last_level_cache_bytes() if llc_bytes is None else llc_bytes
    shapes = model.shapes
    compute = 0.0
    for n in model.nodes:
        macs = n.layer.macs(*(shapes[s] for s in n.inputs))
        weight = n.layer.weight
        integer = weight is not None and getattr(weight, "activations", "float") in ("dynamic", "static")
        compute += macs * (PJ["int8_mul"] + PJ["int32_add"] if integer else PJ["float_mul"] + PJ["float_add"])
    params = model.nbytes
    dram = params > llc
    memory = params / 4 * (PJ["dram_word"] if dram else PJ["sram_word"]) / max(1, int(batch))
    return {"total_pj": compute + memory, "compute_pj": compute, "memory_pj": memory, "dram": dram,
            "llc_bytes": int(llc)}


def format_pj(pj):
    """``pj`` picojoules as a short string (nJ or uJ)."""
    return f"{pj / 1e3:.1f} nJ" if pj < 1e6 else f"{pj / 1e6:.2f} uJ"

