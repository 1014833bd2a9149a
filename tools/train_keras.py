"""Train the Keras golden fixtures in data/keras/ with REAL Keras (torch backend).

    pip install keras torch==2.13.0        # torch==2.13.0 is a CPU build from local disk
    KERAS_BACKEND=torch python tools/train_keras.py

Four small seeded models are trained on the 4,000 training digits of nncomp/data/mnist.npz and
evaluated on its 1,000 test digits. Input = x.astype(float32) / 255, NHWC (N, 28, 28, 1) for the
CNNs and (N, 784) for the MLP. For each model <name> this writes, under data/keras/:

    <name>.h5           model.save(..) legacy HDF5: model_config + model_weights
                        (+ training_config and optimizer_weights for mobilenet and residual)
    <name>.weights.h5   model.save_weights(..) Keras 3 weights-only file: layers/<snake_case class>[_k]/vars/<i>,
                        the layer name in the vars group's @name (+ optimizer/ for mobilenet, residual)
    <name>.logits.npy   float32 (1000, 10) Keras logits on the test digits (models end in a linear Dense)
    <name>.config.json  model.to_json()

plus manifest.json (versions, input shape/layout, test accuracy, sha256 of every file).
Each saved file is reloaded with Keras and must reproduce the logits exactly before the script ends.
"""
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402

import keras  # noqa: E402
from keras import layers  # noqa: E402

SEED = 20261128
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "nncomp" / "data" / "mnist.npz"
OUT = ROOT / "data" / "keras"


def load_mnist():
    d = np.load(DATA)
    x_train = d["x_train"].astype(np.float32) / 255.0
    x_test = d["x_test"].astype(np.float32) / 255.0
    return (x_train[..., None], d["y_train"].astype(np.int64),
            x_test[..., None], d["y_test"].astype(np.int64))


def build_mlp():
    return keras.Sequential([
        keras.Input(shape=(784,), name="input"),
        layers.Dense(300, activation="relu", name="fc1"),
        layers.Dense(100, activation="relu", name="fc2"),
        layers.Dropout(0.2, name="drop"),
        layers.Dense(10, name="logits"),
    ], name="mlp")


def build_lenet5():
    # Caffe / Deep Compression LeNet-5: no ReLU after the two convolutions.
    return keras.Sequential([
        keras.Input(shape=(28, 28, 1), name="input"),
        layers.Conv2D(20, 5, name="conv1"),                 # 24x24x20
        layers.MaxPooling2D(2, name="pool1"),               # 12x12x20
        layers.Conv2D(50, 5, name="conv2"),                 # 8x8x50
        layers.MaxPooling2D(2, name="pool2"),               # 4x4x50
        layers.Flatten(name="flatten"),                     # 800, H-W-C order
        layers.Dense(500, activation="relu", name="fc1"),
        layers.Dense(10, name="logits"),
    ], name="lenet5")


def build_mobilenet():
    # Depthwise-separable net. Every strides=2 + padding="same" here runs on an even input
    # (28, then 16), so Keras pads asymmetrically (0 top/left, 1 bottom/right).
    return keras.Sequential([
        keras.Input(shape=(28, 28, 1), name="input"),
        layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="conv_stem"),  # 14x14x16
        layers.BatchNormalization(name="bn_stem"),
        layers.ReLU(max_value=6.0, name="relu6_stem"),
        # block 1
        layers.DepthwiseConv2D(3, padding="same", name="dw1"),                           # 14x14x16
        layers.BatchNormalization(name="bn_dw1"),
        layers.ReLU(6.0, name="relu6_dw1"),
        layers.Conv2D(32, 1, use_bias=False, name="pw1"),                                 # 14x14x32
        layers.BatchNormalization(epsilon=2e-3, name="bn_pw1"),  # non-default eps on purpose
        layers.Activation("relu6", name="act_pw1"),
        layers.ZeroPadding2D(1, name="pad2"),                                             # 16x16x32
        # block 2 (depth_multiplier=2: kernel (3, 3, 32, 2) -> 64 channels, channel c*2+m)
        layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, name="dw2"),  # 8x8x64
        layers.BatchNormalization(name="bn_dw2"),
        layers.ReLU(6.0, name="relu6_dw2"),
        layers.Conv2D(64, 1, use_bias=False, name="pw2"),                                 # 8x8x64
        layers.BatchNormalization(name="bn_pw2"),
        layers.Activation("relu6", name="act_pw2"),
        layers.AveragePooling2D(2, name="avgpool"),                                       # 4x4x64
        layers.Flatten(name="flatten"),                                                   # 1024, H-W-C
        layers.Dense(10, name="logits"),
    ], name="mobilenet")


def build_residual():
    inp = keras.Input(shape=(28, 28, 1), name="input")
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_in")(inp)
    y = layers.Conv2D(16, 3, padding="same", name="res_conv1")(x)
    y = layers.BatchNormalization(name="res_bn1")(y)
    y = layers.ReLU(name="res_relu1")(y)
    y = layers.Conv2D(16, 3, padding="same", name="res_conv2")(y)
    z = layers.Add(name="res_add")([x, y])
    z = layers.ReLU(name="res_relu_out")(z)
    z = layers.MaxPooling2D(2, name="pool")(z)                                            # 14x14x16
    z = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="conv_down")(z)  # 7x7x32
    z = layers.GlobalAveragePooling2D(name="gap")(z)
    out = layers.Dense(10, name="logits")(z)
    return keras.Model(inp, out, name="residual")


MODELS = [
    # name, builder, epochs, peak learning rate (cosine decay to 0), flatten input, keep optimizer state
    # The two large dense models are saved WITHOUT optimizer state (Adam's m and v would triple
    # their files); the two small BN models keep it, so real files with /optimizer_weights
    # (legacy .h5) and /optimizer (.weights.h5) groups are still covered.
    ("mlp", build_mlp, 20, 2e-3, True, False),
    ("lenet5", build_lenet5, 10, 1e-3, False, False),
    ("mobilenet", build_mobilenet, 30, 3e-3, False, True),
    ("residual", build_residual, 30, 3e-3, False, True),
]
BATCH = 64


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main():
    assert keras.backend.backend() == "torch", "run with KERAS_BACKEND=torch"
    OUT.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = load_mnist()
    manifest = {
        "generator": "tools/train_keras.py",
        "seed": SEED,
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "python": sys.version.split()[0],
        "numpy_version": np.__version__,
        "input": "x = mnist.npz x_test.astype(float32) / 255; NHWC (1000, 28, 28, 1) or NC (1000, 784)",
        "models": {},
    }
    try:
        import torch, h5py  # noqa: E401
        manifest["torch_version"] = torch.__version__
        manifest["h5py_version"] = h5py.__version__
        manifest["hdf5_version"] = h5py.version.hdf5_version
    except ImportError:
        pass

    for name, build, epochs, lr, flat, keep_opt in MODELS:
        t0 = time.time()
        keras.utils.set_random_seed(SEED)
        model = build()
        xtr = x_train.reshape(len(x_train), -1) if flat else x_train
        xte = x_test.reshape(len(x_test), -1) if flat else x_test
        steps = epochs * -(-len(x_train) // BATCH)
        schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps)
        model.compile(optimizer=keras.optimizers.Adam(schedule),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        model.fit(xtr, y_train, batch_size=BATCH, epochs=epochs, shuffle=True, verbose=0)
        logits = np.asarray(model.predict(xte, batch_size=250, verbose=0), dtype=np.float32)
        direct = keras.ops.convert_to_numpy(model(xte, training=False)).astype(np.float32)
        assert np.max(np.abs(logits - direct)) < 1e-4, "predict vs model(x, training=False)"
        acc = float(np.mean(logits.argmax(1) == y_test))

        files = {
            "h5": OUT / f"{name}.h5",
            "weights": OUT / f"{name}.weights.h5",
            "logits": OUT / f"{name}.logits.npy",
            "config": OUT / f"{name}.config.json",
        }
        # Legacy HDF5 (chosen by the .h5 suffix); with keep_opt it includes /optimizer_weights.
        model.save(files["h5"], include_optimizer=keep_opt)
        if keep_opt:
            model.save_weights(files["weights"])  # includes /optimizer/vars (Adam state)
        else:
            # save_weights always writes the attached optimizer; an uncompiled twin with the same
            # architecture, names and weights writes the same file without the /optimizer group.
            # (from get_config(), not model_from_json: to_json() carries compile_config, which
            # recompiles the model and brings the optimizer back.)
            twin = model.__class__.from_config(model.get_config())
            assert getattr(twin, "optimizer", None) is None
            assert [l.name for l in twin.layers] == [l.name for l in model.layers]
            twin.set_weights(model.get_weights())
            twin.save_weights(files["weights"])
        np.save(files["logits"], logits)
        files["config"].write_text(json.dumps(json.loads(model.to_json()), indent=1) + "\n")

        # Round trip with Keras itself: both files must reproduce the logits.
        m2 = keras.models.load_model(files["h5"], compile=False)
        l2 = np.asarray(m2.predict(xte, batch_size=250, verbose=0), dtype=np.float32)
        m3 = keras.models.model_from_json(files["config"].read_text())
        m3.load_weights(files["weights"])
        l3 = np.asarray(m3.predict(xte, batch_size=250, verbose=0), dtype=np.float32)
        assert np.array_equal(l2, logits) and np.array_equal(l3, logits), name

        bn_stats = {}
        for layer in model.layers:
            if isinstance(layer, layers.BatchNormalization):
                mm = keras.ops.convert_to_numpy(layer.moving_mean)
                mv = keras.ops.convert_to_numpy(layer.moving_variance)
                assert np.abs(mm).max() > 1e-3 and np.abs(mv - 1).max() > 1e-3, layer.name
                bn_stats[layer.name] = {"epsilon": layer.epsilon,
                                        "moving_mean_absmax": float(np.abs(mm).max()),
                                        "moving_variance_range": [float(mv.min()), float(mv.max())]}

        manifest["models"][name] = {
            "class": model.__class__.__name__,
            "keras_version": keras.__version__,
            "backend": keras.backend.backend(),
            "input_shape": list(xte.shape[1:]),
            "layout": "NC" if flat else "NHWC",
            "params": int(model.count_params()),
            "epochs": epochs,
            "batch_size": BATCH,
            "optimizer": f"Adam(CosineDecay({lr}, decay_steps={steps}))",
            "optimizer_state_saved": keep_opt,
            "test_accuracy": acc,
            "logits_absmax": float(np.abs(logits).max()),
            "batchnorm": bn_stats,
            "files": {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in files.values()},
        }
        print(f"{name:10s} acc={acc:.3f} params={model.count_params()} "
              f"({time.time() - t0:.1f}s)", flush=True)

    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
