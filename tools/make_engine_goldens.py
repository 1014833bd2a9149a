"""Outputs of calibrated compressions on the shipped models, kept to check that engine changes
(the forward engine that calibration runs on) leave every method's result as it was.

Writes data/fixtures/engine_goldens.npz: for each case, the compressed model's float32 outputs on the
first 64 test digits. Run with the engine whose results are the reference:
``python tools/make_engine_goldens.py``.
"""
import sys
from pathlib import Path

import numpy as np

import nncomp as nc

ROOT = Path(__file__).resolve().parent.parent
N_CALIB, N_TEST = 256, 64


def cases():
    """(name, model file stem, method) for every method that refits on calibration data (pruning per
    layer: the goldens were written when that was prune's default scope)."""
    return [
        ("prune_lenet300", "lenet300", lambda m, c: nc.prune(m, sparsity=0.9, scope="layer", calibration=c)),
        ("prune_lenet5", "lenet5", lambda m, c: nc.prune(m, sparsity=0.8, scope="layer", calibration=c)),
        ("quantize_lenet5", "lenet5", lambda m, c: nc.quantize(m, calibration=c)),
        ("quantize_resnet", "resnet_small", lambda m, c: nc.quantize(m, calibration=c)),
        ("share_lenet300", "lenet300", lambda m, c: nc.share(m, bits=5, calibration=c)),
        ("factorize_vgg", "vgg_small", lambda m, c: nc.factorize(m, speedup=2.0, calibration=c)),
        ("factorize_resnet", "resnet_small", lambda m, c: nc.factorize(m, speedup=2.0, calibration=c)),
        ("dc_lenet5", "lenet5", lambda m, c: nc.deep_compression(m, calibration=c)),
    ]


def compute(model_path):
    out = {}
    for name, stem, fn in cases():
        model = nc.load(model_path(stem))
        calib = nc.data.mnist("train", layout=model.input_layout)[0][:N_CALIB]
        x = nc.data.mnist("test", layout=model.input_layout)[0][:N_TEST]
        out[name] = fn(model, calib)(x)
    return out


if __name__ == "__main__":
    found = compute(lambda stem: nc.data.DATA_DIR / f"{stem}.h5")
    path = ROOT / "data" / "fixtures" / "engine_goldens.npz"
    np.savez_compressed(path, **found)
    print(f"wrote {path}: {sorted(found)}", file=sys.stderr)
