"""Keras models whose Dense layers read more than flat features, and Keras's own logits.

    pip install keras torch==2.13.0
    KERAS_BACKEND=torch python tools/make_keras_sequences.py

Keras applies Dense to the last axis of any tensor. Writes, under data/keras/:

- ``rows_dense.h5`` (legacy HDF5): a digit read as a sequence of its 28 rows, Input (28, 28);
  Dense(32, relu) and Dense(16, relu) on every row, Flatten, Dense(10);
- ``pixel_dense.h5``: Input (28, 28, 1), Conv2D(8, 3, relu), Dense(12, relu) on every pixel's
  channels (a 1x1 convolution), MaxPooling2D(2), Flatten, Dense(10);
- ``dense_ranks.npz``: ``x`` (64 test digits, / 255) and ``rows_dense``, ``pixel_dense``: Keras's
  logits on them (the rows model reads ``x[..., 0]``).

Both are trained two epochs on the shipped training digits (seeded) so their weights are a real
training's, not random.
"""
import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402

import keras  # noqa: E402
from keras import layers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "keras"
SEED = 20261207


def build_rows():
    return keras.Sequential([
        keras.Input(shape=(28, 28), name="input"),
        layers.Dense(32, activation="relu", name="row_fc1"),
        layers.Dense(16, activation="relu", name="row_fc2"),
        layers.Flatten(name="flat"),
        layers.Dense(10, name="logits"),
    ], name="rows_dense")


def build_pixels():
    return keras.Sequential([
        keras.Input(shape=(28, 28, 1), name="input"),
        layers.Conv2D(8, 3, activation="relu", name="conv"),
        layers.Dense(12, activation="relu", name="pixel_fc"),
        layers.MaxPooling2D(2, name="pool"),
        layers.Flatten(name="flat"),
        layers.Dense(10, name="logits"),
    ], name="pixel_dense")


def main():
    d = np.load(ROOT / "nncomp" / "data" / "mnist.npz")
    x_train = d["x_train"].astype(np.float32)[..., None] / 255.0
    y_train = d["y_train"].astype(np.int64)
    x = d["x_test"][:64].astype(np.float32)[..., None] / 255.0
    found = {"x": x}
    for name, build, take in (("rows_dense", build_rows, lambda a: a[..., 0]), ("pixel_dense", build_pixels, lambda a: a)):
        keras.utils.set_random_seed(SEED)
        model = build()
        model.compile(optimizer=keras.optimizers.Adam(2e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        model.fit(take(x_train), y_train, epochs=2, batch_size=64, verbose=0)
        path = OUT / f"{name}.h5"
        model.save(path)
        logits = np.asarray(model.predict(take(x), verbose=0), np.float32)
        again = np.asarray(keras.models.load_model(path).predict(take(x), verbose=0), np.float32)
        assert np.array_equal(logits, again), name
        found[name] = logits
        acc = float((logits.argmax(1) == d["y_test"][:64]).mean())
        print(f"{name}: {path.stat().st_size} bytes, accuracy on the 64 digits {acc:.3f}")
    np.savez_compressed(OUT / "dense_ranks.npz", **found)


if __name__ == "__main__":
    main()
