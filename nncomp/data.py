"""The data sets shipped in ``data/``: 5,000 real MNIST digits (see data/README.md)."""
from pathlib import Path

import numpy as np

from .errors import NncompError

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
LAYOUTS = ("NCHW", "NHWC", "NC")


def mnist(split="test", *, layout="NCHW"):
    """Real MNIST digits: 4,000 training and 1,000 test images, scaled to [0, 1].

    Parameters
    ----------
    split : {"train", "test"}
    layout : {"NCHW", "NHWC", "NC"}
        ``(n, 1, 28, 28)`` for PyTorch CNNs, ``(n, 28, 28, 1)`` for Keras CNNs, ``(n, 784)`` for MLPs.

    Returns
    -------
    x : ndarray, float32
    y : ndarray, int64, shape (n,)
    """
    if split not in ("train", "test"):
        raise NncompError(f"mnist() got split={split!r}; choose 'train' or 'test'")
    if layout not in LAYOUTS:
        raise NncompError(f"mnist() got layout={layout!r}; choose one of {LAYOUTS}")
    path = DATA_DIR / "mnist.npz"
    if not path.is_file():
        raise NncompError(f"{path} is missing: nncomp.data needs the repository's data/ folder "
                          "(run from a source checkout, or regenerate it with tools/make_mnist.py)")
    with np.load(path) as d:
        x, y = d[f"x_{split}"], d[f"y_{split}"]
    x = x.astype(np.float32) / np.float32(255)
    shape = {"NCHW": (-1, 1, 28, 28), "NHWC": (-1, 28, 28, 1), "NC": (-1, 784)}[layout]
    return np.ascontiguousarray(x.reshape(shape)), y.astype(np.int64)


def for_model(model, split="test"):
    """The digits in the layout a loaded model expects."""
    return mnist(split, layout=model.input_layout)
