"""A Keras CNN whose strided convolution and pool pad "same", and Keras's own logits at input sizes
other than the 28x28 it was saved for: there TensorFlow's "same" padding differs (it depends on the
size modulo the stride), and nncomp must recompute it per size to give Keras's numbers.

    pip install keras torch==2.13.0
    KERAS_BACKEND=torch python tools/make_keras_any_size.py

Writes data/keras/strided_same.h5 (legacy HDF5, Input 28x28x1, trained one epoch on the shipped
training digits, seeded), data/keras/strided_same_free.h5 (the same weights, Input (None, None, 1)) and data/keras/strided_same.any_size.npz: ``x_<h>x<w>`` (16 real test digits
on a zero canvas, NHWC) and ``logits_<h>x<w>`` from a twin model with a free-size Input holding the
same weights, for 28x28, 29x29, 31x30 and 36x33.
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402

import keras  # noqa: E402
from keras import layers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "keras"
SIZES = [(28, 28), (29, 29), (31, 30), (36, 33)]


def build(size):
    keras.utils.set_random_seed(20261203)
    return keras.Sequential([
        keras.Input(shape=(*size, 1), name="input"),
        layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv1"),
        layers.Conv2D(16, 3, strides=1, padding="same", activation="relu", name="conv2"),
        layers.MaxPooling2D(3, strides=2, padding="same", name="pool"),
        layers.Conv2D(16, 5, strides=3, padding="same", name="conv3"),
        layers.AveragePooling2D(2, strides=2, padding="same", name="avg"),
        layers.GlobalAveragePooling2D(name="gap"),
        layers.Dense(10, name="logits"),
    ], name="strided_same")


def main():
    sys.path.insert(0, str(ROOT))
    import nncomp as nc
    x_train, y_train = nc.data.mnist("train", layout="NHWC")
    x_test, _ = nc.data.mnist("test", layout="NHWC")
    model = build((28, 28))
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    free = build((None, None))
    free.set_weights(model.get_weights())
    out = {}
    for h, w in SIZES:
        x = np.zeros((16, h, w, 1), np.float32)
        x[:, :28, :28] = x_test[:16, :h, :w]
        out[f"x_{h}x{w}"] = x
        out[f"logits_{h}x{w}"] = np.asarray(free.predict(x, verbose=0), np.float32)
    assert np.allclose(out["logits_28x28"], model.predict(out["x_28x28"], verbose=0), atol=1e-5)
    OUT.mkdir(exist_ok=True)
    model.save(OUT / "strided_same.h5")
    free.save(OUT / "strided_same_free.h5")        # Input(shape=(None, None, 1))
    np.savez_compressed(OUT / "strided_same.any_size.npz", **out)
    print(f"keras {keras.__version__}: wrote {OUT / 'strided_same.h5'} and the logits at {SIZES}")


if __name__ == "__main__":
    main()
