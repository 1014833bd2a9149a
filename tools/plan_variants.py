"""nc.optimize on models trained elsewhere (variants from tools/train_torch.py), as the optimize suite
plans the shipped ones: budget 0.5 on the first --calib training digits (default 2,000), batch 1
and 64, the chosen model timed alternating with ONNX Runtime float32 on the same graph
(nncomp.bench.timing.in_loop, as the optimize suite); test accuracy on the 1,000 test digits.
``--confidence 0.5 0.8`` plans each model at each held-out confidence level (0.5: the measured
loss alone); ``--objective size`` plans the smallest file instead (no ORT timing).

    for s in 1 2; do python tools/train_torch.py resnet_small vgg_small --seed $s --epochs 6 --out /tmp/variants; done
    python tools/plan_variants.py /tmp/variants resnet_small_s1_e6 vgg_small_s1_e6

Calibration digits the model was never trained on (the shipped models and the variants above were
trained on all 4,000 training digits, so their held-out check reads training digits):

    python tools/train_torch.py lenet5 lenet300 --seed 3 --epochs 12 --train-from 2000 --out /tmp/variants
    python tools/plan_variants.py /tmp/variants lenet5_s3_e12_from2000 --calib 2000 --batches 1 \\
        --confidence 0.5 0.8 [--objective size]
"""
import argparse
import sys
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import nncomp as nc  # noqa: E402
from nncomp.bench import peers  # noqa: E402
from nncomp.bench.timing import in_loop  # noqa: E402
from nncomp.planner import Planner  # noqa: E402


def main(folder, names, calib=2000, batches=(1, 64), confidences=(0.8,), objective="latency"):
    for name in names:
        m = nc.load(f"{folder}/{name}.h5")
        (x, y), (xt, yt) = nc.data.for_model(m, "train"), nc.data.for_model(m, "test")
        x, y = x[:calib], y[:calib]
        dense_acc = float(np.mean(m(xt).argmax(1) == yt))
        ort = peers.ort_model(m, threads=numba.get_num_threads()) if objective == "latency" else None
        for conf in confidences:
            planner = Planner(cache=False)
            for b in batches if objective == "latency" else (1,):
                t = time.time()
                r = planner.run(m, x, labels=y, budget=0.5, batch=b, objective=objective, confidence=conf)
                p = r.plan
                acc = float(np.mean(r(xt).argmax(1) == yt))
                chosen = {c.layer: c.candidate for c in p.layers if c.candidate != "dense"}
                if ort is not None:
                    xb = np.ascontiguousarray(x[np.arange(b) % len(x)])
                    ms = in_loop({"chosen": lambda: r(xb), "ort": lambda: ort(xb)}, b, 96 if b <= 8 else 32)
                    speed = (f"{p.speedup:.2f}x dense, {ms['ort'] / ms['chosen']:.2f}x ORT f32, pred err "
                             f"{100 * p.prediction_error:+.1f}%")
                else:
                    speed = f"{p.dense_bytes / p.bytes:.1f}x smaller file"
                print(f"{name} b{b} confidence {conf:g}: {speed}, held-out drop {p.heldout_drop:.2f} (bound "
                      f"{p.heldout_bound:.2f}), test {dense_acc:.3f}->{acc:.3f} ({100 * (dense_acc - acc):+.1f} pt), "
                      f"{time.time() - t:.0f} s; {p.search if objective == 'size' else chosen}", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder")
    ap.add_argument("names", nargs="+")
    ap.add_argument("--calib", type=int, default=2000, help="the first N training digits as calibration (2000)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--confidence", type=float, nargs="+", default=[0.8])
    ap.add_argument("--objective", choices=("latency", "size"), default="latency")
    a = ap.parse_args()
    main(a.folder, a.names, a.calib, tuple(a.batches), tuple(a.confidence), a.objective)
