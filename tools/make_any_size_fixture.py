"""PyTorch's logits for the shipped ResNet-small at input sizes other than the 28x28 it was trained
on (its global average pool accepts any image large enough), for tests/test_engine.py.

    pip install torch==2.13.0
    python tools/make_any_size_fixture.py

Writes data/fixtures/resnet_small.any_size.npz: ``x_<h>x<w>`` float32 (16, 1, h, w) real test digits
placed on a zero canvas (36x36: centred; 20x28: rows 4..24 of each digit) and ``logits_<h>x<w>``,
PyTorch 2.13's model.eval() outputs with one thread.
"""
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from train_torch import ResNetSmall  # noqa: E402

import nncomp as nc  # noqa: E402

N = 16


def inputs():
    x = nc.data.mnist("test")[0][:N]
    big = np.zeros((N, 1, 36, 36), np.float32)
    big[:, :, 4:32, 4:32] = x
    return {"36x36": big, "20x28": np.ascontiguousarray(x[:, :, 4:24, :])}


def main():
    torch.set_num_threads(1)
    model = ResNetSmall()
    with h5py.File(nc.data.DATA_DIR / "resnet_small.h5", "r") as f:
        state = {k: torch.from_numpy(np.asarray(f[k])) for k in model.state_dict()}
    model.load_state_dict(state)
    model.eval()
    out = {}
    for size, x in inputs().items():
        with torch.no_grad():
            out[f"logits_{size}"] = model(torch.from_numpy(x)).numpy()
        out[f"x_{size}"] = x
    path = ROOT / "data" / "fixtures" / "resnet_small.any_size.npz"
    np.savez_compressed(path, **out)
    print(f"wrote {path}: {sorted(out)}")


if __name__ == "__main__":
    main()
