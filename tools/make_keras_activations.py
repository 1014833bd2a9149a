"""A Keras CNN with the activations nncomp reads besides ReLU (swish / silu, GELU, hard SiLU, sigmoid,
tanh), trained on the shipped digits, and Keras's own logits.

    pip install keras torch==2.13.0
    KERAS_BACKEND=torch python tools/make_keras_activations.py

Writes, under data/keras/: ``activations.h5`` (legacy HDF5): Input (28, 28, 1), Conv2D(8, 3, swish),
Conv2D(16, 3, stride 2, gelu), Activation("hard_silu"), Flatten, Dense(32, tanh), Dense(16, sigmoid),
Dense(10); ``activations.npz``: ``x`` (64 test digits, / 255) and ``logits``, Keras's on them.
Trained two epochs (seeded) so its weights are a real training's.
"""
import numpy as np
from make_keras_sequences import OUT, ROOT, SEED, keras, layers      # the same backend, folders and seed


def build():
    return keras.Sequential([
        keras.Input(shape=(28, 28, 1), name="input"),
        layers.Conv2D(8, 3, activation="swish", name="conv1"),
        layers.Conv2D(16, 3, strides=2, activation="gelu", name="conv2"),
        layers.Activation("hard_silu", name="hswish"),
        layers.Flatten(name="flat"),
        layers.Dense(32, activation="tanh", name="fc1"),
        layers.Dense(16, activation="sigmoid", name="fc2"),
        layers.Dense(10, name="logits"),
    ], name="activations")


def main():
    d = np.load(ROOT / "nncomp" / "data" / "mnist.npz")
    x_train = d["x_train"].astype(np.float32)[..., None] / 255.0
    x = d["x_test"][:64].astype(np.float32)[..., None] / 255.0
    keras.utils.set_random_seed(SEED)
    model = build()
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x_train, d["y_train"].astype(np.int64), epochs=2, batch_size=64, verbose=0)
    path = OUT / "activations.h5"
    model.save(path, include_optimizer=False)
    logits = np.asarray(model.predict(x, verbose=0), np.float32)
    assert np.array_equal(logits, np.asarray(keras.models.load_model(path).predict(x, verbose=0), np.float32))
    np.savez_compressed(OUT / "activations.npz", x=x, logits=logits)
    acc = float((logits.argmax(1) == d["y_test"][:64]).mean())
    print(f"activations: {path.stat().st_size} bytes, accuracy on the 64 digits {acc:.3f}")


if __name__ == "__main__":
    main()
