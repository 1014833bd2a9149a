"""Keras files written by real Keras (data/keras/, tools/train_keras.py) load and give Keras's numbers."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import nncomp as nc
from nncomp.layers import AvgPool2D, BatchNorm, Conv2D, Dense, Flatten, MaxPool2D

DATA = Path(__file__).resolve().parent.parent / "data" / "keras"
MODELS = ["mlp", "lenet5", "mobilenet", "residual"]
LAYOUT = {"mlp": "NC", "lenet5": "NHWC", "mobilenet": "NHWC", "residual": "NHWC"}


def fixture(name, ext):
    path = DATA / f"{name}.{ext}"
    if not path.is_file():
        pytest.skip(f"data/keras/{name}.{ext} not generated yet (tools/train_keras.py)")
    return path


def assert_matches_keras(model, name, n=None):
    """Keras's logits on the test digits (all 1,000 unless ``n``): 100% argmax agreement, |diff| <= 1e-3."""
    want = np.load(fixture(name, "logits.npy"))[:n]
    x, y = nc.data.mnist("test", layout=LAYOUT[name])
    x, y = x[:n], y[:n]
    assert model.input_layout == LAYOUT[name]
    got = model(x)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got.argmax(1), want.argmax(1))            # 100% argmax agreement
    assert np.abs(got - want).max() <= 1e-3
    assert (got.argmax(1) == y).mean() > 0.9                         # a real, trained model


# ----------------------------------------------------------------------------- golden fixtures
@pytest.mark.parametrize("name", MODELS)
def test_legacy_h5_matches_keras(name):
    assert_matches_keras(nc.load(fixture(name, "h5")), name)


@pytest.mark.parametrize("name", MODELS)
def test_weights_h5_matches_keras(name):
    assert_matches_keras(nc.load(fixture(name, "weights.h5"), architecture=fixture(name, "h5")), name)


@pytest.mark.parametrize("name", MODELS)
def test_every_architecture_form_gives_the_same_model(name):
    """model_config as a .json file, a JSON string, a dict: the same model as from the legacy file."""
    config = fixture(name, "config.json")
    ref = nc.load(fixture(name, "h5"))
    x, _ = nc.data.for_model(ref)
    want = ref(x[:100])
    for arch in (config, str(config), config.read_text(), json.loads(config.read_text())):
        model = nc.load(fixture(name, "weights.h5"), architecture=arch)
        assert str(model) == str(ref)
        assert np.array_equal(model(x[:100]), want)
    assert np.array_equal(nc.load(fixture(name, "h5"), architecture=config)(x[:100]), want)


def test_weights_h5_needs_an_architecture():
    with pytest.raises(nc.UnsupportedModelError):
        nc.load(fixture("mlp", "weights.h5"))
    with pytest.raises(nc.NncompError):
        nc.load(fixture("mlp", "weights.h5"), architecture=42)


@pytest.mark.parametrize("name", MODELS)
def test_save_load_of_a_keras_model_is_bit_identical(tmp_path, name):
    model = nc.load(fixture(name, "h5"))
    nc.save(model, tmp_path / "m.h5")
    again = nc.load(tmp_path / "m.h5")
    x, _ = nc.data.for_model(model)
    assert np.array_equal(again(x[:200]), model(x[:200]))
    assert str(again) == str(model)
    assert again.input_layout == model.input_layout


@pytest.mark.parametrize("name", ["mlp", "mobilenet", "residual"])
def test_an_nncomp_model_serves_as_architecture(name):
    """A model built in Python (here: the loaded one with its weights zeroed) gets the file's weights by name."""
    ref = nc.load(fixture(name, "h5"))
    zero = {}
    for n in ref.nodes:
        layer = n.layer
        if isinstance(layer, (Dense, Conv2D)):
            zero[n.name] = layer.replace(weight=nc.DenseMatrix(np.zeros(layer.weight.shape, np.float32)),
                                         bias=None if layer.bias is None else np.zeros_like(layer.bias))
        elif isinstance(layer, BatchNorm):
            zero[n.name] = layer.replace(gamma=np.zeros_like(layer.gamma), mean=np.zeros_like(layer.mean))
    arch = ref.replace_layers(zero)
    x, _ = nc.data.for_model(ref)
    for path in (fixture(name, "weights.h5"), fixture(name, "h5")):
        assert np.array_equal(nc.load(path, architecture=arch)(x[:64]), ref(x[:64]))
    extra = arch.with_nodes(arch.nodes[:-1], outputs=None)            # a weighted layer too few
    with pytest.raises(nc.CorruptModelFileError):
        nc.load(fixture(name, "weights.h5"), architecture=extra)


# ----------------------------------------------------------------------------- the traps
def test_mobilenet_structure_has_the_keras_traps_right():
    model = nc.load(fixture("mobilenet", "h5"))
    stem = model["conv_stem"].layer
    assert stem.stride == (2, 2) and stem.padding == (0, 1, 0, 1)         # 28 -> 14: the odd pixel bottom/right
    assert model["bn_pw1"].layer.eps == pytest.approx(0.002)              # eps from the config
    assert model["bn_stem"].layer.eps == pytest.approx(0.001)
    dw2 = model["dw2"].layer
    assert dw2.groups == dw2.in_channels == 32 and dw2.out_channels == 64 and dw2.padding == (0, 1, 0, 1)
    with h5py.File(fixture("mobilenet", "h5"), "r") as f:
        kernel = f["model_weights/dw2/mobilenet/dw2/kernel"][()]          # (3, 3, 32, 2)
    w = dw2.weight.to_dense()
    for c, m in [(0, 0), (0, 1), (5, 1), (31, 0)]:                        # output channel c*2 + m
        assert np.array_equal(w[c * 2 + m], kernel[:, :, c, m].reshape(-1))
    assert isinstance(model["flatten"].layer, Flatten) and model["flatten"].layer.order == "hwc"
    assert model["relu6_stem"].layer.max_value == 6.0 and model["act_pw1"].layer.max_value == 6.0
    assert isinstance(model["avgpool"].layer, AvgPool2D)
    assert model.input_shape == (28, 28, 1) and model.input_layout == "NHWC"


def test_lenet5_has_no_relu_after_convs_and_a_fused_relu_after_fc1():
    model = nc.load(fixture("lenet5", "h5"))
    kinds = [(n.name, n.layer.kind) for n in model.nodes]
    assert kinds == [("conv1", "conv2d"), ("pool1", "maxpool2d"), ("conv2", "conv2d"), ("pool2", "maxpool2d"),
                     ("flatten", "flatten"), ("fc1", "dense"), ("fc1/relu", "relu"), ("logits", "dense")]
    assert isinstance(model["pool1"].layer, MaxPool2D)


def test_flatten_order_matters():
    """Flattening in (c, h, w) order instead of Keras's (h, w, c) ruins the model: the test can fail."""
    model = nc.load(fixture("lenet5", "h5"))
    wrong = model.replace_layers({"flatten": Flatten("chw")})
    x, y = nc.data.mnist("test", layout="NHWC")
    x, y = x[:300], y[:300]
    assert (wrong(x).argmax(1) == y).mean() < 0.8 < (model(x).argmax(1) == y).mean()


@pytest.mark.parametrize("name", ["mobilenet", "residual"])
def test_weights_h5_groups_are_matched_as_keras_matches_them(tmp_path, name):
    """With a Keras architecture, groups are matched by class name and order, as Keras does: no vars@name
    is read (fewer variable-length strings). A Python-built model needs vars@name."""
    src, arch = fixture(name, "weights.h5"), fixture(name, "h5")
    plain = tmp_path / "plain.weights.h5"
    shutil.copy(src, plain)
    with h5py.File(plain, "r+") as f:
        for g in f["layers"]:
            del f["layers"][g]["vars"].attrs["name"]
    assert_matches_keras(nc.load(plain, architecture=arch), name, n=200)
    with pytest.raises(nc.UnsupportedModelError):
        nc.load(plain, architecture=nc.load(arch))
    swapped = tmp_path / "swapped.weights.h5"
    shutil.copy(src, swapped)
    with h5py.File(swapped, "r+") as f:                                 # a BN and a conv trade names
        a, b = "batch_normalization", "conv2d"
        na, nb = f["layers"][a]["vars"].attrs["name"], f["layers"][b]["vars"].attrs["name"]
        f["layers"][a]["vars"].attrs["name"], f["layers"][b]["vars"].attrs["name"] = nb, na
    with pytest.raises(nc.CorruptModelFileError):
        nc.load(swapped, architecture=nc.load(arch))


def _keras2_config(cfg):
    """The same Functional model as Keras 2 wrote it: nested inbound lists, class 'Model'."""
    cfg = json.loads(json.dumps(cfg))
    cfg["class_name"] = "Model"
    inner = cfg["config"]
    for layer in inner["layers"]:
        refs = []

        def walk(o):
            if isinstance(o, dict) and o.get("class_name") == "__keras_tensor__":
                refs.append(list(o["config"]["keras_history"]) + [{}])
            elif isinstance(o, dict):
                for v in o.values():
                    walk(v)
            elif isinstance(o, list):
                for v in o:
                    walk(v)
        walk(layer["inbound_nodes"])
        layer["inbound_nodes"] = [refs] if refs else []
        c = layer["config"]
        c["dtype"] = "float32"
        if "batch_shape" in c:
            c["batch_input_shape"] = c.pop("batch_shape")
    inner["input_layers"] = [inner["input_layers"]]
    inner["output_layers"] = [inner["output_layers"]]
    return cfg


def test_keras2_names_and_nested_inbound_lists(tmp_path):
    """Keras 2 spelling (``kernel:0``, nested inbound lists, ``batch_input_shape``), derived from a real file."""
    src = fixture("residual", "h5")
    old = tmp_path / "keras2.h5"
    with h5py.File(src, "r") as f, h5py.File(old, "w") as g:
        cfg = json.loads(f.attrs["model_config"])
        g.attrs["model_config"] = json.dumps(_keras2_config(cfg)).encode()
        g.attrs["keras_version"] = b"2.13.1"
        mw = g.create_group("model_weights")
        for layer in f["model_weights"]:
            grp = mw.create_group(layer)
            names = []
            f["model_weights"][layer].visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            for n in names:
                grp.create_dataset(n + ":0", data=f["model_weights"][layer][n][()])
            grp.attrs["weight_names"] = np.array([n.encode() + b":0" for n in names], dtype="S")
    assert_matches_keras(nc.load(old), "residual", n=200)


# ----------------------------------------------------------------------------- more layers, real Keras
ZOO = r"""
import os, sys
os.environ["KERAS_BACKEND"] = "torch"
import numpy as np, keras
from keras import layers as L
out = sys.argv[1]
keras.utils.set_random_seed(7)
inp = keras.Input((14, 11, 3), name="img")
x = L.Conv2D(4, 3, strides=2, padding="same", name="c1")(inp)               # 14x11 -> 7x6, asymmetric
x = L.ZeroPadding2D(((1, 1), (1, 2)), name="zp")(x)                          # 9x9
x = L.SeparableConv2D(6, 3, padding="same", depth_multiplier=2, activation="relu", name="sep")(x)
x = L.BatchNormalization(center=False, epsilon=0.01, name="bn1")(x)
x = L.Conv2D(8, 3, dilation_rate=2, padding="same", activation="relu6", name="dil")(x)
x = L.Conv2D(8, 3, groups=2, name="grp")(x)                                  # 7x7
a = L.MaxPooling2D(2, strides=2, padding="same", name="mp")(x)               # asymmetric
b = L.AveragePooling2D(3, strides=2, padding="same", name="ap")(x)          # symmetric (torch backend quirk)
c = L.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(x)
x = L.Add(name="add3")([a, b, c])
x = L.BatchNormalization(scale=False, name="bn2")(x)
x = L.ReLU(max_value=4.5, name="r45")(x)
x = L.DepthwiseConv2D(2, depth_multiplier=3, use_bias=False, name="dw3")(x)
x = L.GlobalAveragePooling2D(keepdims=True, name="gap")(x)
x = L.Flatten(name="fl")(x)
x = L.Dense(7, name="d1")(x)
x = L.Dropout(0.5, name="drop")(x)
x = L.BatchNormalization(name="bn3")(x)
o1 = L.Activation("softmax", name="sm")(x)
o2 = L.Softmax(name="sm2")(L.Dense(5, use_bias=False, name="d2")(x))
m = keras.Model(inp, [o1, o2], name="zoo")
rng = np.random.default_rng(0)
for layer in m.layers:
    if isinstance(layer, L.BatchNormalization):
        layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") if ("variance" in w.path or "gamma" in w.path)
                           else rng.normal(0, 0.3, w.shape).astype("float32") for w in layer.weights])
x = rng.random((16, 14, 11, 3)).astype("float32")
np.save(out + "/x.npy", x)
for i, y in enumerate(m.predict(x, verbose=0)):
    np.save(out + f"/y{i}.npy", np.asarray(y))
m.save(out + "/zoo.h5")
m.save_weights(out + "/zoo.weights.h5")
open(out + "/zoo.json", "w").write(m.to_json())
"""


def test_layer_zoo_against_real_keras(tmp_path):
    """SeparableConv2D, BN without center/scale, dilation, groups, pooling 'same', Add of three, two outputs."""
    import importlib.util
    if importlib.util.find_spec("keras") is None or importlib.util.find_spec("torch") is None:
        pytest.skip("needs keras with the torch backend (/work/venv-fw)")
    env = dict(os.environ, KERAS_BACKEND="torch")
    subprocess.run([sys.executable, "-c", ZOO, str(tmp_path)], check=True, env=env, capture_output=True, timeout=300)
    x = np.load(tmp_path / "x.npy")
    want = [np.load(tmp_path / f"y{i}.npy") for i in range(2)]
    for path, arch in [(tmp_path / "zoo.h5", None), (tmp_path / "zoo.weights.h5", tmp_path / "zoo.json")]:
        model = nc.load(path, architecture=arch)
        got = model(x)
        assert len(got) == 2
        for g, w in zip(got, want):
            assert np.abs(g - w).max() <= 1e-5


@pytest.mark.parametrize("name", ["rows_dense", "pixel_dense"])
def test_dense_on_sequences_and_pixels_matches_keras(name):
    """Keras applies Dense to the last axis: each of a digit's 28 rows (Input (28, 28)), or each
    pixel's channels (a 1x1 convolution); trained models and Keras's logits from
    tools/make_keras_sequences.py. Pruning takes the per-row layers and keeps the predictions."""
    found = np.load(fixture("dense_ranks", "npz"))
    x = found["x"][..., 0] if name == "rows_dense" else found["x"]
    model = nc.load(fixture(name, "h5"))
    want = found[name]
    assert np.abs(model(x) - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    if name == "rows_dense":
        assert model.input_layout == "N*" and model["row_fc1"].layer.output_shape((28, 28)) == (28, 32)
    else:
        assert isinstance(model["pixel_fc"].layer, Conv2D) and model["pixel_fc"].layer.kernel_size == (1, 1)
    pruned = nc.prune(model, 0.5, scope="layer", calibration=x[:48])
    assert pruned["row_fc1" if name == "rows_dense" else "pixel_fc"].layer.weight.density <= 0.5
    assert (pruned(x[48:]).argmax(1) == want[48:].argmax(1)).mean() >= 0.9


def test_keras_activations_by_name_match_keras():
    """swish, gelu (the exact erf form), hard_silu, tanh and sigmoid, as Keras names them in a
    layer's config or an Activation layer: a model trained by Keras (tools/make_keras_activations.py)
    gives Keras's logits; the convolutions carry SiLU and GELU in their epilogues."""
    found = np.load(fixture("activations", "npz"))
    model = nc.load(fixture("activations", "h5"))
    kinds = [n.layer.kind for n in model.nodes]
    assert kinds == ["conv2d", "silu", "conv2d", "gelu", "hardswish", "flatten", "dense", "unary", "dense",
                     "sigmoid", "dense"]
    want = found["logits"]
    assert np.abs(model(found["x"]) - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    described = [layer.describe() for _, layer in model._plan((28, 28, 1), 4, model.outputs).layers]
    assert "conv2d+silu" in described and any(d.startswith("conv2d+gelu") for d in described)


def test_a_global_heap_tail_shorter_than_an_object_header_is_valid(tmp_path):
    """Keras 3.15 (h5py 3.16) wrote pixel_dense.h5 with a global heap collection whose last 8 bytes
    hold no free-space object (too short for its 16-byte header): the hostile-file scan accepts it,
    and still refuses an object whose size runs past its collection."""
    src = fixture("pixel_dense", "h5")
    data = bytearray(src.read_bytes())
    g = data.find(b"GCOL\x01\x00\x00\x00")
    end, p = g + int.from_bytes(data[g + 8:g + 16], "little"), g + 16
    while p + 16 <= end:
        last, size = p, int.from_bytes(data[p + 8:p + 16], "little")
        p += 16 + (size + 7) // 8 * 8
    assert 0 < end - p < 16
    nc.load(src)
    data[last + 8:last + 16] = (end - last - 15).to_bytes(8, "little")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(bytes(data))
    with pytest.raises(nc.CorruptModelFileError, match="global heap collection"):
        nc.load(bad)
