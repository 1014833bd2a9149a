"""Issue 5 (int8 half): linear int8 quantization against ONNX Runtime and PyTorch dynamic int8, and accuracy.

Speed: VGG-16 fc6 (4096x25088, He-normal random weights, seed 0, no bias) at batch 1 and 32, every
contender in this process, alternating (A B C ... A B C), after a warm-up; medians and p90s of whole
calls. The int8 weights (103 MB) are 3x the L3, so every call reads them from DRAM (no flush needed).
fc7 (4096x4096, 16.8 MB of int8: L3-resident, hot) is shown for information. Contenders:
- NumPy float32 ``x @ W.T`` (OpenBLAS);
- nncomp int8 weights + activations (dynamic uint8 activations per call, per-channel weights):
  ``Int8Matrix.apply``, including the activation range, quantization and dequantization; with the
  AVX-512 VNNI kernel (the AVX2 ``vpmaddwd`` block on a CPU without VNNI), and with the portable
  fallback (same integers) for comparison;
- nncomp int8 weight-only (activations float32);
- ONNX Runtime dynamic quantized MatMul (``onnxruntime.quantization.quantize_dynamic`` on a one-node
  MatMul model, QInt8 weights, via nncomp.bench.peers.ort_model, intra-op spinning off);
- torch 2.13 dynamic int8 Linear (``torch.ao.quantization.quantize_dynamic``, qint8, x86 engine).
Before each timed call the process sleeps SETTLE_S (nncomp.bench.timing; untimed): NumPy's OpenBLAS threads keep spinning
for up to ~2**28 cycles after a call and, measured here, made the next contender's 2-thread call ~2x
slower; the pause keeps every contender out of the previous one's spin.
Threads: 2 for every pool (Numba, BLAS, torch, ORT), the target protocol; the table is repeated with
1 thread, which a busy shared machine disturbs less (a 2-thread parallel region waits for both threads
to be scheduled).

Accuracy: every shipped model in data/ on the 1,000 test digits, float32 against int8 (static ranges
calibrated on the first 512 training digits: min-max, percentile 99.99, MSE; dynamic; weight-only),
with bias correction from the same 512 digits unless marked.

    python -m nncomp.bench --suite quant     # writes bench/out/quant.json and .md (--parts speed,accuracy)
"""
import time

from ...data import DATA_DIR
from ..roofline import cap, machine_limits, roof_text
from . import fc_layers
from ..timing import SETTLE_S, alternate, l3_bytes, machine_text, set_threads

MODELS = ("lenet300", "lenet5", "vgg_small", "resnet_small")
THREADS = 2
THREAD_COUNTS = (2, 1)
PARTS = ("speed", "accuracy")
QUICK_PARTS = PARTS
RECIPES = {
    "int8 static minmax": dict(activations="static", method="minmax"),
    "int8 static percentile": dict(activations="static", method="percentile"),
    "int8 static mse": dict(activations="static", method="mse"),
    "int8 static minmax, no bias corr.": dict(activations="static", bias_correction=False),
    "int8 dynamic": dict(activations="dynamic", bias_correction=False),
    "int8 dynamic + bias corr.": dict(activations="dynamic"),
    "int8 weight-only": dict(weights_only=True, bias_correction=False),
}


W8A8 = "nncomp int8 w8a8"     # the path this CPU takes (int8_path): AMX tiles, VNNI, AVX2 or portable loops
BLOCK = "nncomp int8 w8a8 (VNNI or AVX2)"   # the block kernels, AMX off


def int8_path():
    """The u8 x s8 product the default path runs here: 'AMX' (tiles where int8_amx.worth says they
    pay, VNNI elsewhere), 'VNNI', 'AVX2' (kernels/int8_avx2.py) or 'portable'."""
    from ...kernels import int8_amx as amx
    from ...kernels import int8_vnni as vnni
    return "AMX" if amx.HAVE_AMX else "VNNI" if vnni.HAVE_VNNI else "AVX2" if vnni.HAVE_BLOCK else "portable"


def forced(matrix, *, amx=True, block=True):
    """``matrix.apply`` with the AMX and/or the block (VNNI or AVX2) paths switched off for the call
    (same integers)."""
    from ...kernels import int8_amx
    from ...kernels import int8_vnni

    def call(x):
        had = int8_amx.HAVE_AMX, int8_vnni.HAVE_BLOCK
        int8_amx.HAVE_AMX, int8_vnni.HAVE_BLOCK = had[0] and amx, had[1] and block
        try:
            return matrix.apply(x)
        finally:
            int8_amx.HAVE_AMX, int8_vnni.HAVE_BLOCK = had
    return call


def speed(threads, repeat, batches, quick, say=print):
    """Alternating timings of every contender on fc6 and fc7 (a list of rows)."""
    import numpy as np

    from ...kernels import int8_amx as amx
    from ...kernels import int8_vnni as vnni
    from ...matrices.int8 import Int8Matrix
    from .. import peers

    rows = []
    for name, n_in, w, model in fc_layers(quick):
        w8a8 = Int8Matrix.from_float(w)
        wonly = Int8Matrix.from_float(w, activations="float")
        contenders = {"numpy float32": lambda x: x @ w.T, W8A8: w8a8.apply, BLOCK: None,
                      "nncomp int8 w8a8 (portable)": None, "nncomp int8 weight-only": wonly.apply}
        for peer, build in (("onnxruntime dynamic int8", lambda: peers.ort_model(model, threads=threads, int8=True)),
                            ("torch dynamic int8", lambda: peers.torch_model(model, int8=True))):
            try:
                contenders[peer] = build()
            except peers.PeerUnavailable as e:
                contenders[peer] = str(e)
        contenders[BLOCK] = (forced(w8a8, amx=False) if amx.HAVE_AMX
                             else "= nncomp int8 w8a8" if vnni.HAVE_BLOCK else "no avx512_vnni or avx2")
        contenders["nncomp int8 w8a8 (portable)"] = forced(w8a8, amx=False, block=False)
        for bs in batches:
            x = np.maximum(np.random.default_rng(1).standard_normal((bs, n_in), dtype=np.float32), 0)  # post-ReLU
            calls = {k: (lambda f=f: f(x)) for k, f in contenders.items() if not isinstance(f, str)}
            ref = x.astype(np.float64) @ w.T.astype(np.float64)
            err = {k: float(np.abs(np.asarray(c(), np.float64) - ref).max() / np.abs(ref).max()) for k, c in calls.items()}
            t = alternate(calls, repeat=repeat, max_seconds=30 if quick else 240)
            row = {"layer": name, "shape": list(w.shape), "batch": bs, "threads": threads,
                   "weight_bytes": {"float32": int(w.nbytes), "int8 w8a8": int(w8a8.nbytes)}}
            for k, f in contenders.items():
                row[k] = f if isinstance(f, str) else {**t[k], "max_rel_err_vs_float64": err[k]}
            peer_ms = [row[k]["median_ms"] for k in ("onnxruntime dynamic int8", "torch dynamic int8")
                       if isinstance(row[k], dict)]
            row["int8_path"] = int8_path()
            ours = row[W8A8]
            if peer_ms:
                row["w8a8_vs_best_peer"] = ours["median_ms"] / min(peer_ms)
            row["numpy_vs_weight_only"] = row["numpy float32"]["median_ms"] / row["nncomp int8 weight-only"]["median_ms"]
            row["numpy_vs_w8a8"] = row["numpy float32"]["median_ms"] / ours["median_ms"]
            rows.append(row)
            say(f"{name} batch {bs}, {threads} thread(s): " + ", ".join(f"{k} {_ms(v)}" for k, v in row.items() if k in contenders)
                + f"; w8a8/best peer {row.get('w8a8_vs_best_peer', float('nan')):.2f}, "
                f"numpy/weight-only {row['numpy_vs_weight_only']:.2f}")
    return rows


def accuracy(quick, say=print):
    import nncomp as nc

    rows = []
    for name in MODELS[:1] if quick else MODELS:
        model = nc.load(DATA_DIR / f"{name}.h5")
        x, y = nc.data.for_model(model, "test")
        calib = nc.data.for_model(model, "train")[0][:512]
        base = model(x)
        row = {"model": name, "float32": {"accuracy": float((base.argmax(1) == y).mean() * 100),
                                          "nbytes": int(model.nbytes)}}
        for label, kw in RECIPES.items():
            t0 = time.perf_counter()
            q = nc.quantize(model, calibration=calib, **kw)
            build = time.perf_counter() - t0
            out = q(x)
            acc = float((out.argmax(1) == y).mean() * 100)
            row[label] = {"accuracy": acc, "drop_points": row["float32"]["accuracy"] - acc,
                          "top1_agreement_with_float": float((out.argmax(1) == base.argmax(1)).mean() * 100),
                          "nbytes": int(q.nbytes), "quantize_s": build}
        rows.append(row)
        say(f"{name}: float {row['float32']['accuracy']:.1f}; " + ", ".join(
            f"{k} {v['accuracy']:.1f}" for k, v in row.items() if k in RECIPES))
    return rows


def run(res, opts):
    """fc6 and fc7 (``speed``) at each thread count, then every shipped model (``accuracy``)."""
    threads = res["threads"]
    limits = machine_limits(quick=opts.quick)
    opts.say(f"limits: {limits['bandwidth_GBps']:.1f} GB/s read, {limits['sgemm_GFLOPs']:.0f} GFLOP/s sgemm")
    rows = []
    if "speed" in opts.parts:
        for t in res["thread_counts"]:
            set_threads(t)
            rows += speed(t, opts.repeats(30), (1, 32), opts.quick, opts.say)
        set_threads(threads)
    observed = []
    for r in rows:
        for k in SPEED_COLS:
            nbytes = r["weight_bytes"]["float32" if "float32" in k else "int8 w8a8"]
            if isinstance(r[k], dict) and nbytes > 2 * l3_bytes():   # weights that cannot stay in the caches
                observed.append((f"{k} on {r['layer']} at batch {r['batch']}", nbytes, r[k]["median_ms"]))
    res["limits"] = cap(limits, observed)
    res.update(speed=rows, accuracy=accuracy(opts.quick, opts.say) if "accuracy" in opts.parts else [],
               settle_s=SETTLE_S, seeds={"weights": 0, "inputs": 1, "calibration": "first 512 training digits"})


def _ms(v):
    return v if isinstance(v, str) else f"{v['median_ms']:.3g} (p90 {v['p90_ms']:.3g})"


SPEED_COLS = ("numpy float32", W8A8, BLOCK, "nncomp int8 w8a8 (portable)", "nncomp int8 weight-only",
              "onnxruntime dynamic int8", "torch dynamic int8")


def targets(res):
    """Lines checking the int8 targets (issues 5 and 14) against this run (fc6 and fc7; accuracy)."""
    out = []
    rows = {(r["layer"], r["batch"], r["threads"]): r for r in res["speed"] if r["layer"] in ("fc6", "fc7")}
    for (layer, bs, th), r in sorted(rows.items(), key=lambda kv: (kv[0][0], -kv[0][2], kv[0][1])):
        if "w8a8_vs_best_peer" not in r:
            continue
        goal = 1.0 if bs == 1 else 1.1
        ok = r["w8a8_vs_best_peer"] < goal if bs == 1 else r["w8a8_vs_best_peer"] <= goal
        out.append(f"- {layer} batch {bs}, {th} thread(s): int8 w8a8 / faster peer = {r['w8a8_vs_best_peer']:.2f} "
                   f"(target {'< 1' if bs == 1 else '<= 1.1'}): {'met' if ok else 'missed'}")
        if bs == 1 and layer == "fc6":
            v = r["numpy_vs_weight_only"]
            out.append(f"- fc6 batch 1, {th} thread(s): NumPy float32 / int8 weight-only = {v:.2f} (target >= 3): "
                       f"{'met' if v >= 3 else 'missed'}")
    if res["accuracy"]:
        worst = max(r["int8 static minmax"]["drop_points"] for r in res["accuracy"])
        out.append(f"- accuracy, int8 static (min-max, bias correction) on every shipped model: worst drop "
                   f"{worst:.1f} points (target <= 0.3): {'met' if worst <= 0.3 else 'missed'}")
    return out


def markdown(res):
    m, lim = res["machine"], res["limits"]
    lines = ["# Linear int8 quantization (issue 5, int8 half)", "",
             f"{m['date']} · {machine_text(m)} · {m['cores']} cores · threads as in each row, the same for every contender · "
             f"load average before/after {res['loadavg_before'][0]:.2f}/{res['loadavg_after'][0]:.2f}", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), "",
             f"Measured limits ({res['threads']} threads): {roof_text(lim)}, sgemm "
             f"{lim['sgemm_GFLOPs']:.0f} GFLOP/s.", "",
             "A load average above 1 on this 2-core machine means other processes competed for the cores during "
             "the run (the machine is shared); 2-thread rows suffer most (a parallel region waits for both of "
             "its threads), so the 1-thread rows are the steadier comparison.", "",
             "## Targets", ""] + targets(res) + ["", "## Speed: median ms per call (p90)", "",
             f"Contenders alternate in one process after a warm-up, with a {res['settle_s']} s untimed pause before "
             "each call (the protocol in quant.json). "
             "w8a8 = int8 weights and dynamic uint8 activations, int32 accumulation, float32 output. "
             f"'{W8A8}' is the path this CPU takes ({res['speed'][0].get('int8_path', '?') if res['speed'] else '?'}"
             "; AMX runs products of 16 rows or more, 1024 inputs or more and 256 outputs or more on tiles, the others "
             "on the VNNI block, or the AVX2 block on a CPU without VNNI); the (VNNI or AVX2) and (portable) columns force "
             "those paths on the same matrix. "
             "Memory floor = int8 weight bytes / measured DRAM bandwidth (fc6; fc7 is L3-resident).", "",
             "| layer | batch | threads | " + " | ".join(SPEED_COLS) + " | w8a8 / best peer | NumPy / weight-only | "
             "int8 memory floor (ms) |", "|---|---|---|" + "---|" * (len(SPEED_COLS) + 3)]
    for r in res["speed"]:
        floor = r["weight_bytes"]["int8 w8a8"] / (lim["bandwidth_GBps"] * 1e9) * 1e3
        lines.append(f"| {r['layer']} {r['shape'][0]}x{r['shape'][1]} | {r['batch']} | {r['threads']} | "
                     + " | ".join(_ms(r[c]) for c in SPEED_COLS)
                     + f" | {r.get('w8a8_vs_best_peer', float('nan')):.2f} | {r['numpy_vs_weight_only']:.2f} | {floor:.2f} |")
    lines += ["", "Max relative error against float64 (max |y - y64| / max |y64|), post-ReLU random inputs:", "",
              "| layer | batch | threads | " + " | ".join(SPEED_COLS) + " |", "|---|---|---|" + "---|" * len(SPEED_COLS)]
    for r in res["speed"]:
        lines.append(f"| {r['layer']} | {r['batch']} | {r['threads']} | " + " | ".join(
            r[c] if isinstance(r[c], str) else f"{r[c]['max_rel_err_vs_float64']:.2e}" for c in SPEED_COLS) + " |")
    if res["accuracy"]:
        labels = list(RECIPES)
        lines += ["", "## Accuracy on the 1,000 test digits (%; drop in points below float32)", "",
                  "Calibration: the first 512 training digits (static ranges and bias correction).", "",
                  "| model | float32 | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
        for r in res["accuracy"]:
            lines.append(f"| {r['model']} | {r['float32']['accuracy']:.1f} | " + " | ".join(
                f"{r[k]['accuracy']:.1f} ({0.0 - r[k]['drop_points']:+.1f})".replace("-0.0", "+0.0")
                for k in labels) + " |")
        lines += ["", "Top-1 agreement with the float32 model (%) and bytes:", "",
                  "| model | float32 bytes | int8 bytes | " + " | ".join(labels) + " |",
                  "|---|---|---|" + "---|" * len(labels)]
        for r in res["accuracy"]:
            lines.append(f"| {r['model']} | {r['float32']['nbytes']:,} | {r[labels[0]]['nbytes']:,} | " + " | ".join(
                f"{r[k]['top1_agreement_with_float']:.1f}" for k in labels) + " |")
    return "\n".join(lines) + "\n"
