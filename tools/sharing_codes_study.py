"""Sharing with calibration, with and without the code assignment (nncomp/compress/codes.py), on
models trained elsewhere: PP-OCR's direction classifier (a real ONNX export), the Keras-trained MLP,
LeNet-5 and MobileNet-like CNN of data/keras (another framework, another training), and the shipped
PyTorch LeNet-300-100 and LeNet-5. Accuracy only (no timing): the results do not depend on the load.

    pip install -e ".[test]"        # onnxruntime is not needed; Pillow renders the PP-OCR lines
    python tools/sharing_codes_study.py [--out FILE.md]

Protocol: ``nc.share(model, bits, calibration=...)`` at 3 and 4 bits, once as it runs and once with
``codes.assigned`` switched off (the centroid and bias refit alone); calibration: the first 256
training digits (MNIST models) or 2 x 128 rendered lines (seed 0); scored on the 1,000 shipped test
digits or 2 x 256 other lines (seed 1): top-1 accuracy and agreement with the float model's top-1.
"""
import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np

import nncomp as nc
from nncomp.compress import codes

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def centroids_only():
    keep = codes.assigned
    codes.assigned = lambda *args: None
    try:
        yield
    finally:
        codes.assigned = keep


def cases():
    for name in ("lenet300", "lenet5"):
        m = nc.load(nc.data.model_path(name))
        cal, _ = nc.data.for_model(m, "train")
        x, y = nc.data.for_model(m, "test")
        yield f"{name} (PyTorch, shipped)", m, cal[:256], x, y
    for name in ("mlp", "lenet5", "mobilenet"):
        m = nc.load(str(ROOT / "data" / "keras" / f"{name}.h5"))
        cal, _ = nc.data.for_model(m, "train")
        x, y = nc.data.for_model(m, "test")
        yield f"keras {name} (data/keras)", m, cal[:256], x, y
    from nncomp.bench import real
    m = nc.load(str(real.model_path("ppocr_cls")), input_shape=real.INPUT_SHAPES["ppocr_cls"])
    cal, _ = real.classifier_inputs(128, seed=0)
    x, y = real.classifier_inputs(256, seed=1)
    yield "PP-OCR direction classifier (ONNX, rapidocr 1.4.4)", m, cal, x, y


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="also write the table as Markdown with the machine")
    args = ap.parse_args(argv)
    rows = ["| model | float accuracy | bits | centroid refit alone: accuracy / agreement | with the code assignment |",
            "|---|---|---|---|---|"]
    for label, m, cal, x, y in cases():
        ref = m(x).argmax(1)
        for bits in (3, 4):
            got = []
            for off in (True, False):
                with centroids_only() if off else contextlib.nullcontext():
                    pred = nc.share(m, bits, calibration=cal)(x).argmax(1)
                got.append(f"{np.mean(pred == y):.3f} / {np.mean(pred == ref):.3f}")
            rows.append(f"| {label} | {np.mean(ref == y):.3f} | {bits} | {got[0]} | {got[1]} |")
            print(rows[-1], flush=True)
    if args.out:
        from nncomp.bench.suites import write_tool_report
        write_tool_report(args.out, "# Sharing with calibration: the code assignment on models trained elsewhere",
                          __doc__, rows)


if __name__ == "__main__":
    sys.exit(main())
