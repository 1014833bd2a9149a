"""nc.optimize on models trained elsewhere (variants from tools/train_torch.py), as the optimize suite
plans the shipped ones: budget 0.5 on the first 2,000 training digits, batch 1 and 64, the chosen model
timed alternating with ONNX Runtime float32 on the same graph (nncomp.bench.timing.in_loop, as the
optimize suite); test accuracy on the 1,000 test digits.

    for s in 1 2; do python tools/train_torch.py resnet_small vgg_small --seed $s --epochs 6 --out /tmp/variants; done
    python tools/plan_variants.py /tmp/variants resnet_small_s1_e6 vgg_small_s1_e6
"""
import sys
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import nncomp as nc  # noqa: E402
from nncomp.bench import peers  # noqa: E402
from nncomp.planner import Planner  # noqa: E402
from nncomp.bench.timing import in_loop  # noqa: E402


def main(folder, names):
    for name in names:
        m = nc.load(f"{folder}/{name}.h5")
        (x, y), (xt, yt) = nc.data.for_model(m, "train"), nc.data.for_model(m, "test")
        x, y = x[:2000], y[:2000]
        dense_acc = float(np.mean(m(xt).argmax(1) == yt))
        planner, ort = Planner(cache=False), peers.ort_model(m, threads=numba.get_num_threads())
        for b in (1, 64):
            t = time.time()
            r = planner.run(m, x, labels=y, budget=0.5, batch=b)
            xb = np.ascontiguousarray(x[np.arange(b) % len(x)])
            ms = in_loop({"chosen": lambda: r(xb), "ort": lambda: ort(xb)}, b, 96 if b <= 8 else 32)
            acc = float(np.mean(r(xt).argmax(1) == yt))
            chosen = {c.layer: c.candidate for c in r.plan.layers if c.candidate != "dense"}
            print(f"{name} b{b}: {r.plan.speedup:.2f}x dense, {ms['ort'] / ms['chosen']:.2f}x ORT f32, pred err "
                  f"{100 * r.plan.prediction_error:+.1f}%, test {dense_acc:.3f}->{acc:.3f} "
                  f"({100 * (dense_acc - acc):+.1f} pt), {time.time() - t:.0f} s; {chosen}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
