"""Which convolution algorithm serves which layer shape (backs the rules in nncomp/layers/conv_algorithms.py).

Every applicable algorithm (register-blocked direct; im2col + BLAS, fused in one kernel for dense
weights; shifted GEMM; direct) runs the same Conv2D, as the step a model prepares for the batch size, on random
weights and inputs, alternating in one process (nncomp.bench.timing.alternate), for the
shapes that decide the rules: LeNet-5's two convs, a VGG first layer over 3 channels, small 3x3
layers of 16-64 channels, VGG-16's conv3_2 / conv4_2 / conv5_2, and the k x 1 / 1 x k pair of a
Jaderberg-factorized conv3_2; at batch 1 and 32, 2 threads. The table marks the algorithm
``conv_algorithms.choose`` picks and the fastest measured one.

    python -m nncomp.bench --suite conv_algos    # writes bench/out/conv_algos.{json,md}
"""
from ..timing import alternate

# (name, h, c, c_out, kernel, padding)
SHAPES = [("LeNet-5 conv1", 28, 1, 20, (5, 5), 0), ("LeNet-5 conv2", 12, 20, 50, (5, 5), 0),
          ("VGG first (c=3)", 32, 3, 64, (3, 3), 1), ("28x28 16->16", 28, 16, 16, (3, 3), 1),
          ("28x28 32->32", 28, 32, 32, (3, 3), 1), ("14x14 64->64", 14, 64, 64, (3, 3), 1),
          ("7x7 64->64", 7, 64, 64, (3, 3), 1), ("conv3_2 56x56 256->256", 56, 256, 256, (3, 3), 1),
          ("conv4_2 28x28 512->512", 28, 512, 512, (3, 3), 1), ("conv5_2 14x14 512->512", 14, 512, 512, (3, 3), 1),
          ("conv3_2 3x1 256->152", 56, 256, 152, (3, 1), (1, 1, 0, 0)),
          ("conv3_2 1x3 152->256", 56, 152, 256, (1, 3), (0, 0, 1, 1))]



QUICK_SHAPES = [SHAPES[0], SHAPES[3]]
THREADS = 2
PARTS = ("speed",)
QUICK_PARTS = PARTS
RULES = ("SHIFTED_MIN_CHANNELS", "SHIFTED_MAX_WASTE", "SHIFTED_MIN_MACS", "SHIFTED_MAX_MACS", "DIRECT_MAX_PATCH",
         "DIRECT_MAX_OUT", "DIRECT_MIN_MACS")


def run(res, opts):
    import numpy as np

    from ...layers import conv_algorithms as convolution
    from ...layers import Conv2D

    rng = np.random.default_rng(0)
    rows = []
    for batch in (1,) if opts.quick else (1, 32):
        for name, h, c, co, k, pad in QUICK_SHAPES if opts.quick else SHAPES:
            layer = Conv2D(rng.standard_normal((co, k[0] * k[1] * c), dtype=np.float32) * 0.05,
                           rng.standard_normal(co, dtype=np.float32), in_channels=c, kernel_size=k, padding=pad)
            x = rng.standard_normal((batch, h, h, c), dtype=np.float32)
            # each algorithm's prepared step, as a model runs it (decisions made once per batch size)
            steps = {algo: convolution.prepare(layer, (h, h, c), batch, algo) for algo in layer.algorithms}
            calls = {algo: (lambda step=step: step(x)) for algo, step in steps.items()}
            ref = calls["im2col"]()
            for algo, fn in calls.items():
                assert np.allclose(fn(), ref, rtol=1e-4, atol=1e-3), (name, algo)
            oh, ow, _ = layer.shape_of((h, h, c))
            macs = batch * oh * ow * co * layer.weight.n_in
            repeat = 3 if opts.quick else opts.repeat or int(min(200, max(6, 3e9 / max(macs, 1))))
            # nncomp's kernels only: no spinning BLAS threads between the blocks, no pause needed
            t = alternate(calls, repeat=repeat, block=8, warmup=2, spinners=(), max_seconds=30)
            ms = {algo: t[algo]["median_ms"] for algo in calls}
            rows.append({"shape": name, "batch": batch, "macs": macs, "median_ms": ms,
                         "chosen": convolution.choose(layer, (h, h, c), batch), "fastest": min(ms, key=ms.get)})
            opts.say(str(rows[-1]))
    from ...layers import conv_blocked
    res.update(rows=rows, rules={**{k: getattr(convolution, k) for k in RULES},
                                 "BLOCKED_MAX_WEIGHT_BYTES": conv_blocked.BLOCKED_MAX_WEIGHT_BYTES,
                                 "WINOGRAD_MIN_CHANNELS": conv_blocked.WINOGRAD_MIN_CHANNELS})


def markdown(res):
    m = res["machine"]
    lines = ["# Convolution algorithms by layer shape (python -m nncomp.bench --suite conv_algos)", "",
             f"{m.get('date', '')} · {m.get('cpu', '')} · {res['threads']} threads · load average before/after "
             f"{res['loadavg_before'][0]:.2f}/{res['loadavg_after'][0]:.2f}", "",
             f"Versions: {', '.join(f'{k} {v}' for k, v in m.get('versions', {}).items())}", "",
             "Median ms per call, algorithms alternating in blocks of 8 calls in one process (random weights "
             "and inputs). **bold**: the algorithm `nncomp.layers.conv_algorithms.choose` picks; chosen/fastest is its "
             f"time over the fastest one's. Rules: {res['rules']}.", "",
             "| shape | batch | MACs | winograd4 | winograd | blocked | im2col | shifted | direct | chosen / fastest |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        ms = r["median_ms"]
        cells = []
        for algo in ("winograd4", "winograd", "blocked", "im2col", "shifted", "direct"):
            v = ms.get(algo)
            cell = "" if v is None else f"{v:.3g}"
            cells.append(f"**{cell}**" if algo == r["chosen"] and cell else cell)
        ratio = ms[r["chosen"]] / ms[r["fastest"]]
        lines.append(f"| {r['shape']} | {r['batch']} | {r['macs']:,} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    worst = max(res["rows"], key=lambda r: r["median_ms"][r["chosen"]] / r["median_ms"][r["fastest"]])
    lines += ["", f"Worst choice: {worst['shape']} at batch {worst['batch']}, "
              f"{worst['median_ms'][worst['chosen']] / worst['median_ms'][worst['fastest']]:.2f}x the fastest."]
    return "\n".join(lines) + "\n"
