"""Whole shipped models: nncomp's dense engine against ONNX Runtime float32 (the runtime a user would
pick instead), in the three conditions a served model meets.

- **loop**: back-to-back calls, the two runtimes alternating in blocks of 8 calls (4 at batch
  64) after a SETTLE_S untimed pause (nncomp.bench.timing.in_loop), 96 calls each at batch 1 and 32 at batch
  64 (this VM's slow spells last seconds: 6 calls in one block, as before, let one spell decide a
  cell), after WARM_S of untimed calls of each; medians.
- **lone**: each call after an untimed 50 ms pause (every runtime's workers asleep, caches cooled by
  nothing else), batch 1, the two runtimes alternating call by call; medians of 31
  (nncomp.bench.serving.lone_calls).
- **contention**: batch 1 in a loop while a second process keeps one core busy, over the same model
  in a loop with one thread on the quiet machine (target: at most 1.2x; serving.contention), and beside
  it the same one-thread loop next to the busy core: the slowdown the hardware itself gives a pass
  that uses no second thread (on a KVM guest whose vCPUs share a core, over 1.2x by itself).

ORT runs the graph nncomp.bench.peers.onnx_model exports from the same weights (checked to agree),
with the same intra-op threads, sequential execution and spinning off (as in every peer table).
Also the cost of a new input size: the first call at a size the model has not seen (the plan is
built, kernels are already compiled), against a call at a known one. Target: nncomp's time at or
below ORT's in every cell.

    python -m nncomp.bench --suite vs_ort      # writes bench/out/vs_ort.json, vs_ort.md
"""
import os
import time

import numpy as np

from ..timing import header, in_loop

THREADS = os.cpu_count() or 1
PARTS = ("loop", "lone", "contention", "new_size")
QUICK_PARTS = ("loop",)
MODELS = ("lenet300", "lenet5", "vgg_small", "resnet_small")
BATCHES = (1, 64)
WARM_S = 0.5


def _setup(name, threads):
    import nncomp as nc
    from .. import peers
    model = nc.load(nc.data.model_path(name))
    ort = peers.ort_model(model, threads=threads)
    x = nc.data.for_model(model)[0]
    check = np.ascontiguousarray(x[:8])
    diff = float(np.abs(model(check) - ort(check)).max())
    return model, ort, x, diff


def run(result, opts):
    import numba

    from .. import peers, serving
    try:
        peers.require_ort()
    except Exception as e:  # noqa: BLE001 - ONNX Runtime is optional
        result["error"] = f"ONNX Runtime unavailable: {e}"
        return
    threads = numba.get_num_threads()
    names = MODELS[:2] if opts.quick else MODELS
    batches = (1, 8) if opts.quick else BATCHES
    rows = result.setdefault("rows", [])
    for name in names:
        model, ort, x, diff = _setup(name, threads)
        row = {"model": name, "max_abs_diff": diff}
        if "loop" in opts.parts:
            for b in batches:
                xb = np.ascontiguousarray(x[:b])
                row[f"loop_b{b}"] = in_loop({"nncomp": lambda: model(xb), "ort": lambda: ort(xb)}, b,
                                            opts.repeats(32 if b > 8 else 96), warm_s=WARM_S)
        x1 = np.ascontiguousarray(x[:1])
        if "lone" in opts.parts:
            lone = serving.lone_calls({"nncomp": lambda: model(x1), "ort": lambda: ort(x1)})
            row["lone_b1"] = {k: v["median_ms"] for k, v in lone.items()}
        if "contention" in opts.parts:
            row["contention_b1"] = serving.contention(lambda: model(x1), threads, numba.set_num_threads)
        if "new_size" in opts.parts and model.input_layout != "NC":
            row["new_size"] = _new_size(model, x1)
        rows.append(row)
        opts.say(_line(row))
    result["threads"] = threads


def _new_size(model, x1):
    """ms of the first call at an unseen input size (a plan is built) against the same call again."""
    c, h, w = x1.shape[1:] if model.input_layout == "NCHW" else (x1.shape[3], *x1.shape[1:3])
    for extra in range(2, 40, 2):       # a size every layer fits (a dense after a flatten may fix it)
        shape = (1, c, h + extra, w + extra) if model.input_layout == "NCHW" else (1, h + extra, w + extra, c)
        try:
            model.check_input(np.zeros(shape, np.float32))
            break
        except Exception:  # noqa: BLE001 - InputError: the size is fixed
            shape = None
    if shape is None:
        return {"note": "the model takes one input size"}
    xb = np.zeros(shape, np.float32)
    t0 = time.perf_counter()
    model(xb)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    model(xb)
    again = time.perf_counter() - t0
    return {"shape": list(shape), "first_ms": first * 1e3, "again_ms": again * 1e3}


def _ratio(cell):
    return cell["nncomp"] / cell["ort"]


def _line(row):
    parts = [row["model"]]
    for k, v in row.items():
        if k.startswith(("loop_", "lone_")):
            parts.append(f"{k} {v['nncomp']:.3f}/{v['ort']:.3f} ms ({_ratio(v):.2f}x)")
    if "contention_b1" in row:
        c = row["contention_b1"]
        parts.append(f"contention {c['ratio']:.2f}x (one thread {c.get('floor', float('nan')):.2f}x)")
    return "  ".join(parts)


def _cell(entry):
    """``ratio (nncomp / ORT ms)``, the ratio in bold where nncomp is at least as fast."""
    ratio = f"{_ratio(entry):.2f}x"
    return f"{f'**{ratio}**' if _ratio(entry) <= 1.0 else ratio} ({entry['nncomp']:.3f} / {entry['ort']:.3f})"


def markdown(result):
    lines = header(f"# Whole models: nncomp dense against ONNX Runtime float32 ({result['threads']} threads)",
                   result)
    if "error" in result:
        return "\n".join(lines + [result["error"], ""])
    rows = result.get("rows", [])
    cols = [k for k in (rows[0] if rows else {}) if k.startswith(("loop_", "lone_"))]
    lines += ["nncomp's time over ORT's (below 1: nncomp faster; bold: at most 1); times in ms (nncomp / ORT).", "",
              "| model | " + " | ".join(cols) + " | contention (b1, x single-thread) | new size: first / again ms |",
              "|---" * (len(cols) + 3) + "|"]
    for r in rows:
        cells = [_cell(r[c]) for c in cols]
        cont = r.get("contention_b1")
        cont = (f"{cont['ratio']:.2f}x ({cont['contended_ms']:.3f} / {cont['single_ms']:.3f})"
                + (f"; one thread next to it {cont['floor']:.2f}x" if "floor" in cont else "") if cont else "-")
        ns = r.get("new_size", {})
        ns = f"{ns['first_ms']:.1f} / {ns['again_ms']:.2f} at {ns['shape'][1:]}" if "first_ms" in ns else ns.get("note", "-")
        lines.append(f"| {r['model']} | " + " | ".join(cells) + f" | {cont} | {ns} |")
    lines += ["", "Max |nncomp - ORT| on 8 test digits: " +
              ", ".join(f"{r['model']} {r['max_abs_diff']:.1e}" for r in rows), ""]
    return "\n".join(lines)
