"""Issue 2's dense speed table: nncomp's dense float32 engine against PyTorch 2.13 CPU and ONNX Runtime.

Cases: LeNet-5 end to end (data/lenet5.h5 on test digits), VGG-16 conv3_2 (1x256x56x56 input, 256 3x3
filters, pad 1) and fc6 (4096x25088), random weights, at batch 1, 4 and 32. All contenders get the same
threads (Numba, BLAS via threadpoolctl, torch.set_num_threads, ORT intra_op_num_threads) and run in
this process, alternating in blocks of BLOCK calls with a SETTLE_S (nncomp.bench.timing) untimed pause before
each block, after a warm-up: after the NumPy contender's calls OpenBLAS's worker threads spin for ~0.1 s, and nncomp, whose
products run in Numba's threads with OpenBLAS at one thread (nncomp/kernels/blas.py), measured 2.2x
slower during that time (a 64x4096x4096 product: 14.4 ms for the first 0.12 s, then 6.5 ms);
medians and p90s. Each runs in its native layout
(nncomp NHWC, the peers NCHW); layout conversions are not timed. NumPy (BLAS, and im2col for the conv)
is shown for reference. Target: nncomp within 1.25x of the faster peer.

Also the first-call time: a fresh process loads LeNet-5 and runs one digit, once with an empty Numba
cache (NUMBA_CACHE_DIR pointing at a new folder: every kernel compiles) and then warm (same folder);
the warm process must reach its first inference in under 2 s (interpreter start included).

    python -m nncomp.bench --suite dense      # writes bench/out/dense.json, dense.md (--parts speed,first_call)
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ...data import DATA_DIR
from ..timing import SETTLE_S, alternate, machine_text

THREADS = os.cpu_count() or 1
PARTS = ("speed", "first_call")
QUICK_PARTS = ("speed",)
# Calls per block: the first call after the pause runs with cold caches (LeNet-5 at batch 1: 0.56 ms,
# then 0.15, then 0.12); blocks of 8 put the median on the steady state a serving loop sees.
BLOCK = 8
# Batch 4: a few samples, where the register tiles of a matrix product waste their vectors (fc6 ran
# 28 ms against ONNX Runtime's 16 before nncomp/kernels/dense_few.py)
BATCHES = (1, 4, 32)

FIRST_CALL = r"""
import json, sys, time
t0 = time.time()
import nncomp as nc
t1 = time.time()
model = nc.load(sys.argv[1])
x = nc.data.mnist("test")[0][:1]
t2 = time.time()
model(x)
t3 = time.time()
model(x)
t4 = time.time()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_call_s": t3 - t2,
                  "second_call_ms": (t4 - t3) * 1e3, "first_inference_at": t3}))
"""


def first_call(cache_dir, threads):
    """Spawn a fresh interpreter; seconds from spawn to its first LeNet-5 inference, and its parts."""
    root = str(Path(__file__).resolve().parents[3])   # the folder that holds this nncomp package
    path = [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), NUMBA_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(path))
    spawn = time.time()
    out = subprocess.run([sys.executable, "-c", FIRST_CALL, str(DATA_DIR / "lenet5.h5")], env=env,
                         capture_output=True, text=True, timeout=600, check=True)
    done = time.time()
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["to_first_inference_s"] = r.pop("first_inference_at") - spawn
    r["process_s"] = done - spawn
    return r


def cases(quick):
    import numpy as np

    import nncomp as nc
    from .. import layers

    lenet5 = nc.load(DATA_DIR / "lenet5.h5")
    digits = nc.data.mnist("test")[0]
    yield ("LeNet-5 (end to end)", lenet5, lenet5, None,
           lambda b: (digits[:b], digits[:b], np.ascontiguousarray(digits[:b].transpose(0, 2, 3, 1))))
    shapes = layers.QUICK_SHAPES if quick else layers.SHAPES
    conv = "conv_small" if quick else "conv3_2"
    fc = "fc_small" if quick else "fc6"
    m = layers.layer_model(conv, shapes=shapes)
    m_nchw = layers.layer_model(conv, layout="NCHW", shapes=shapes)
    w, b = m.nodes[0].layer.weight.w, m.nodes[0].layer.bias
    k, pad = shapes[conv][4], shapes[conv][5]

    def conv_inputs(bs):
        x = layers.layer_input(m, bs)
        return x, np.ascontiguousarray(x.transpose(0, 3, 1, 2)), x
    yield f"{conv} ({layers.describe_shape(conv, shapes)})", m, m_nchw, layers.numpy_conv(w, b, k, pad), conv_inputs
    m = layers.layer_model(fc, shapes=shapes)
    w, b = m.nodes[0].layer.weight.w, m.nodes[0].layer.bias

    def fc_inputs(bs):
        x = layers.layer_input(m, bs)
        return x, x, None
    yield f"{fc} ({layers.describe_shape(fc, shapes)})", m, m, layers.numpy_dense(w, b), fc_inputs


def run(res, opts):
    """Every case at each of BATCHES (``speed``), then the first call of fresh processes (``first_call``)."""
    import numpy as np

    from .. import peers

    threads = res["threads"]
    repeat = opts.repeats(30)
    rows = []
    for name, model, peer_model, numpy_fn, inputs in (cases(opts.quick) if "speed" in opts.parts else ()):
        contenders = {"nncomp": model}
        for peer, build in (("torch", lambda: peers.torch_model(peer_model)),
                            ("onnxruntime", lambda: peers.ort_model(peer_model, threads=threads)),
                            ("torch_cl", lambda: peers.torch_model(peer_model, channels_last=True))):
            try:
                contenders[peer] = build()
            except peers.PeerUnavailable as e:
                contenders[peer] = str(e)
        if numpy_fn is not None:
            contenders["numpy"] = numpy_fn
        for bs in BATCHES:
            x, x_peer, x_cl = inputs(bs)
            calls = {}
            for k, fn in contenders.items():
                if isinstance(fn, str) or (k == "torch_cl" and x_cl is None):
                    continue
                arg = {"torch": x_peer, "onnxruntime": x_peer, "torch_cl": x_cl}.get(k, x)
                calls[k] = (lambda fn=fn, arg=arg: fn(arg))
            ref = np.asarray(calls["nncomp"](), np.float64)
            errs = {}
            for k, c in calls.items():
                y = np.asarray(c(), np.float64)
                if y.ndim == 4 and k in ("torch", "onnxruntime", "torch_cl") and model.input_layout == "NHWC":
                    y = y.transpose(0, 2, 3, 1)
                errs[k] = float(np.abs(y - ref).max())
            t = alternate(calls, repeat=repeat, block=BLOCK, warmup=2, max_seconds=20 if opts.quick else 120)
            row = {"case": name, "batch": bs}
            for k, fn in contenders.items():
                row[k] = (fn if isinstance(fn, str) else "images only" if k not in t
                          else {**t[k], "max_abs_diff_vs_nncomp": errs[k]})
            peer_ms = [row[k]["median_ms"] for k in ("torch", "onnxruntime") if isinstance(row[k], dict)]
            if peer_ms:
                row["best_peer_ms"] = min(peer_ms)
                row["ratio_vs_best_peer"] = t["nncomp"]["median_ms"] / min(peer_ms)
                row["within_1.25x"] = row["ratio_vs_best_peer"] <= 1.25
            if isinstance(row["torch_cl"], dict):
                row["ratio_vs_torch_cl"] = t["nncomp"]["median_ms"] / row["torch_cl"]["median_ms"]
            rows.append(row)
            opts.say(_line(row))
    res.update(repeat=repeat, rows=rows, block=BLOCK, settle_s=SETTLE_S,
               seeds={"layer_weights": 0, "layer_inputs": 1})
    if "first_call" in opts.parts:
        with tempfile.TemporaryDirectory(prefix="nncomp-numba-cache-") as cache:
            cold = first_call(cache, threads)
            opts.say(f"first call, cold Numba cache: {cold['to_first_inference_s']:.2f} s to the first inference "
                     f"(import {cold['import_s']:.2f}, load {cold['load_s']:.2f}, call {cold['first_call_s']:.2f})")
            warm = [first_call(cache, threads) for _ in range(3)]
        warm.sort(key=lambda r: r["to_first_inference_s"])
        res["first_call"] = {"cold": cold, "warm": warm, "warm_median_s": warm[1]["to_first_inference_s"],
                             "warm_under_2s": all(r["to_first_inference_s"] < 2.0 for r in warm)}
        opts.say(f"first call, warm Numba cache: {warm[1]['to_first_inference_s']:.2f} s (median of 3; "
                 f"max {warm[-1]['to_first_inference_s']:.2f} s)")


def _ms(v):
    return v if isinstance(v, str) else f"{v['median_ms']:.3g} (p90 {v['p90_ms']:.3g})"


def _line(r):
    ratio = f"{r['ratio_vs_best_peer']:.2f}x the best peer" if "ratio_vs_best_peer" in r else "no peer"
    cl = r.get("torch_cl")
    return (f"{r['case']} batch {r['batch']}: nncomp {_ms(r['nncomp'])} ms, torch {_ms(r['torch'])}, "
            f"ORT {_ms(r['onnxruntime'])}" + (f", NumPy {_ms(r['numpy'])}" if "numpy" in r else "")
            + (f", torch channels-last {_ms(cl)}" if isinstance(cl, dict) else "") + f" -> {ratio}")


def markdown(res):
    m = res["machine"]
    lines = ["# Dense float32 engine against PyTorch and ONNX Runtime (issue 2)", "",
             f"{m['date']} · {machine_text(m)} · {m['cores']} cores · {res['threads']} threads for every contender · "
             f"load average before/after {res['loadavg_before'][0]:.2f}/{res['loadavg_after'][0]:.2f}", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), "",
             f"Median ms per call (p90 in brackets), contenders alternating in blocks of {res['block']} calls "
             f"({res['settle_s']} s untimed "
             "pause before each block: NumPy's OpenBLAS threads spin ~0.1 s after its calls) in one process "
             "after a warm-up; "
             "nncomp runs NHWC, the peers NCHW. Ratio = nncomp median / the faster peer's median "
             "(target <= 1.25). Also shown: torch with channels-last tensors and weights (`memory_format="
             "torch.channels_last`, NHWC in memory like nncomp; an opt-in torch configuration, not part of "
             "the target's peers) and nncomp's time over it.", "",
             "| case | batch | nncomp | torch 2.13 | ONNX Runtime | NumPy | nncomp / best peer | within 1.25x "
             "| torch channels-last | nncomp / it |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        cl = r.get("torch_cl", "")
        lines.append(f"| {r['case']} | {r['batch']} | {_ms(r['nncomp'])} | {_ms(r['torch'])} | "
                     f"{_ms(r['onnxruntime'])} | {_ms(r['numpy']) if 'numpy' in r else ''} | "
                     f"{r.get('ratio_vs_best_peer', float('nan')):.2f} | "
                     f"{'yes' if r.get('within_1.25x') else 'no'} | {_ms(cl) if isinstance(cl, dict) else ''} | "
                     + (f"{r['ratio_vs_torch_cl']:.2f} |" if "ratio_vs_torch_cl" in r else " |"))
    fc = res.get("first_call")
    if fc:
        c, w = fc["cold"], fc["warm"][1]
        lines += ["", "## First call (LeNet-5, one digit, a fresh process)", "",
                  "| Numba cache | to first inference (s) | import (s) | load (s) | first call (s) "
                  "| second call (ms) |",
                  "|---|---|---|---|---|---|",
                  f"| cold (empty NUMBA_CACHE_DIR) | {c['to_first_inference_s']:.2f} | {c['import_s']:.2f} | "
                  f"{c['load_s']:.2f} | {c['first_call_s']:.2f} | {c['second_call_ms']:.2f} |",
                  f"| warm (median of 3) | {w['to_first_inference_s']:.2f} | {w['import_s']:.2f} | "
                  f"{w['load_s']:.2f} | {w['first_call_s']:.2f} | {w['second_call_ms']:.2f} |", "",
                  f"Warm process under 2 s to its first inference: {'yes' if fc['warm_under_2s'] else 'no'} "
                  f"(all three runs; slowest {fc['warm'][-1]['to_first_inference_s']:.2f} s)."]
    return "\n".join(lines) + "\n"
