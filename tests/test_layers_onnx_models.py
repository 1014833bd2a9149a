"""Models of the ONNX numeric layers: native files, fusion into epilogues, parameter errors, and
the compression methods on a transposed convolution (the layers alone: tests/test_layers_onnx.py)."""
import numpy as np
import pytest

import nncomp as nc
from nncomp import layers as L
from nncomp.matrices import DenseMatrix
from nncomp.model import Model, Node


def nhwc(x):
    return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 3, 1))


# ----------------------------------------------------------------------------- models: files, fusion
def onnx_style_model(seed=0, c0=3, size=8):
    """A small model with every new layer: conv -> bn -> hard swish, an SE block (global average,
    1x1 convs, hard sigmoid, a two-input mul), a transposed conv, a per-channel constant add, a
    resize, leaky ReLU, clip, sigmoid, global max pool, a layer norm and softmax on features."""
    rng = np.random.default_rng(seed)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    c = 4
    nodes = [
        Node("c1", nc.Conv2D(f32(c, 9 * c0), f32(c), in_channels=c0, kernel_size=3, padding=1)),
        Node("b1", nc.BatchNorm(f32(c), f32(c), f32(c), np.abs(f32(c)) + 0.5), ("c1",)),
        Node("hs", L.HardSwish(), ("b1",)),
        Node("gap", nc.GlobalAvgPool2D(keepdims=True), ("hs",)),
        Node("se1", nc.Conv2D(f32(2, c), f32(2), in_channels=c), ("gap",)),
        Node("se_r", nc.ReLU(), ("se1",)),
        Node("se2", nc.Conv2D(f32(c, 2), f32(c), in_channels=2), ("se_r",)),
        Node("hsig", L.HardSigmoid(1 / 6, 0.5), ("se2",)),
        Node("scale", L.Binary("mul"), ("hs", "hsig")),
        Node("up", L.ConvTranspose2D.from_onnx_weight(f32(c, c, 2, 2), f32(c), stride=2), ("scale",)),
        Node("shift", L.Binary("add", f32(c)), ("up",)),
        Node("lrelu", L.LeakyReLU(0.1), ("shift",)),
        Node("rs", L.Resize(scale=(0.5, 0.5), mode="linear", coordinate_mode="half_pixel"), ("lrelu",)),
        Node("c2", nc.Conv2D(f32(c, 9 * c), f32(c), in_channels=c, kernel_size=3, padding=1), ("rs",)),
        Node("clip", L.Clip(-1.0, 1.5), ("c2",)),
        Node("c3", nc.Conv2D(f32(c, c), None, in_channels=c), ("clip",)),
        Node("sig", L.Sigmoid(), ("c3",)),
        Node("gmp", L.GlobalMaxPool2D(), ("sig",)),
        Node("ln", L.LayerNorm(-1, f32(c), f32(c)), ("gmp",)),
        Node("fc", nc.Dense(f32(3, c), f32(3)), ("ln",)),
        Node("sm", L.Softmax(-1), ("fc",)),
    ]
    model = Model(nodes, input_shape=(c0, size, size), input_layout="NCHW")
    return model, rng.standard_normal((2, c0, size, size)).astype(np.float32)


def _node_by_node(model, x):
    values = {"input": nhwc(x)}
    for node in model.nodes:
        values[node.name] = node.layer.forward(*(values[s] for s in node.inputs))
    return values


def test_a_model_of_the_new_layers_round_trips_through_the_native_file(tmp_path):
    model, x = onnx_style_model()
    nc.save(model, tmp_path / "m.h5")
    back = nc.load(tmp_path / "m.h5")
    assert [n.layer.kind for n in back.nodes] == [n.layer.kind for n in model.nodes]
    for a, b in zip(model.nodes, back.nodes):
        assert a.layer.config() == b.layer.config(), a.name
    assert np.array_equal(back(x), model(x))


def test_activations_after_a_producer_run_in_its_epilogue_bit_for_bit():
    model, x = onnx_style_model()
    plan = model._plan((8, 8, 3), 2, model.outputs)
    kinds = [layer.describe() for _, layer in plan.layers if isinstance(layer, L.Fused)]
    for want in ("conv2d+batchnorm+hardswish", "conv2d+clip", "conv2d+sigmoid", "conv2d+hardsigmoid",
                 "conv_transpose2d+binary+leakyrelu"):
        assert want in kinds, (want, kinds)
    names = [n.name for n in model.nodes]
    want = _node_by_node(model, x)
    got = model.activations(x, names)
    for name in names:
        assert np.array_equal(got[name], want[name], equal_nan=True), name


def test_epilogues_out_of_the_kernels_order_run_in_one_pass_bit_for_bit():
    """An activation followed by constant affine maps (PP-LCNet's learnable affine blocks), and a
    residual add after a resize: fused into their producers, the same bits as one by one."""
    rng = np.random.default_rng(3)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    nodes = [Node("c", nc.Conv2D(f32(5, 9 * 2), f32(5), in_channels=2, kernel_size=3, padding=1)),
             Node("hs", L.HardSwish(), ("c",)), Node("mul", L.Binary("mul", f32(1)), ("hs",)),
             Node("add", L.Binary("add", f32(5)), ("mul",)), Node("relu", nc.ReLU(), ("add",)),
             Node("d", nc.Conv2D(f32(5, 5), None, in_channels=5, stride=2), ("relu",)),
             Node("up", L.Resize(scale=(2.0, 2.0), mode="nearest"), ("d",)),
             Node("sum", nc.Add(), ("up", "relu")), Node("sig", L.Sigmoid(), ("sum",))]
    model = Model(nodes, input_shape=(2, 8, 8), input_layout="NCHW")
    x = rng.standard_normal((3, 2, 8, 8)).astype(np.float32)
    kinds = [layer.describe() for _, layer in model._plan((8, 8, 2), 3, model.outputs).layers]
    assert kinds[0] == "conv2d+hardswish+binary+binary+relu" and kinds[2] == "resize+add+sigmoid", kinds
    want = _node_by_node(model, x)
    got = model.activations(x, ["relu", "sig"])
    for name in ("relu", "sig"):
        assert np.array_equal(got[name], want[name]), name
    assert np.array_equal(model(x), want["sig"].transpose(0, 3, 1, 2))
    # an SE block's scale then its residual (PP-OCR's RSE layers): x + x * s as one step
    se = Model([nodes[0], Node("gap", nc.GlobalAvgPool2D(keepdims=True), ("c",)),
                Node("hsig", L.HardSigmoid(1 / 6, 0.5), ("gap",)), Node("mul", L.Binary("mul"), ("c", "hsig")),
                Node("res", nc.Add(), ("c", "mul"))], input_shape=(2, 8, 8), input_layout="NCHW")
    assert "binary+add" in [la.describe() for _, la in se._plan((8, 8, 2), 3, se.outputs).layers]
    assert np.array_equal(se.activations(x, ["res"])["res"], _node_by_node(se, x)["res"])


@pytest.mark.parametrize("act", [L.HardSigmoid(0.2, 0.5), L.LeakyReLU(0.1), L.Clip(0.0, 6.0)])
def test_monotone_activations_let_the_max_pool_into_the_conv_kernel(act):
    rng = np.random.default_rng(15)
    nodes = [Node("c", nc.Conv2D(rng.standard_normal((4, 9 * 2)).astype(np.float32), None, in_channels=2,
                                 kernel_size=3, padding=1)),
             Node("a", act, ("c",)), Node("p", nc.MaxPool2D(2), ("a",))]
    model = Model(nodes, input_shape=(2, 8, 8), input_layout="NCHW")
    x = rng.standard_normal((3, 2, 8, 8)).astype(np.float32)
    kinds = [layer.describe() for _, layer in model._plan((8, 8, 2), 3, model.outputs).layers]
    assert kinds == [f"conv2d+maxpool2d+{act.kind}"], kinds
    assert np.array_equal(model.activations(x, ["p"])["p"], _node_by_node(model, x)["p"])
    swish = Model([nodes[0], Node("a", L.HardSwish(), ("c",)), nodes[2]], input_shape=(2, 8, 8), input_layout="NCHW")
    assert [la.describe() for _, la in swish._plan((8, 8, 2), 3, swish.outputs).layers] == ["conv2d+hardswish", "-"]


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("make, match", [
    (lambda: L.Unary("cos"), "unary op must be one of"),
    (lambda: L.Binary("mod"), "binary op must be one of"),
    (lambda: L.Binary("sub", constant_first=True), "needs a constant"),
    (lambda: L.Binary("add").output_shape((4, 5, 3), (4, 3)), "do not broadcast"),
    (lambda: L.Binary("add", np.ones((2, 3), np.float32)).output_shape((4, 5, 3)), "do not broadcast"),
    (lambda: L.Reduce("prod", (0,)), "reduce op must be one of"),
    (lambda: L.Reduce("mean", (3,)).output_shape((4, 5, 3)), "axes"),
    (lambda: L.Reduce("mean", (0, -3)).output_shape((4, 5, 3)), "distinct"),
    (lambda: L.LayerNorm(-1, np.ones(4, np.float32)).output_shape((4, 5, 3)), "broadcast"),
    (lambda: L.LayerNorm(-1, epsilon=-1.0), "epsilon"),
    (lambda: L.Softmax(3).output_shape((4, 5, 3)), "softmax axis"),
    (lambda: L.HardSigmoid(alpha=float("nan")), "finite"),
    (lambda: L.LeakyReLU(alpha=float("inf")), "finite"),
    (lambda: L.Clip(float("nan"), 1.0), "clip bounds"),
    (lambda: L.Resize(), "exactly one of"),
    (lambda: L.Resize(size=(4, 4), scale=(2, 2)), "exactly one of"),
    (lambda: L.Resize(size=(-1, 4)), "positive"),
    (lambda: L.Resize(size=(2.5, 4)), "positive"),
    (lambda: L.Resize(scale=(0, 2)), "positive"),
    (lambda: L.Resize(scale=(2, 2), mode="cubic"), "cubic resizing is not supported"),
    (lambda: L.Resize(scale=(2, 2), coordinate_mode="tf_crop_and_resize"), "coordinate_mode"),
    (lambda: L.Resize(scale=(2, 2), nearest_mode="round"), "nearest_mode"),
    (lambda: L.Resize(scale=(0.1, 0.1)).output_shape((4, 4, 1)), "at least 1 pixel"),
    (lambda: L.Resize(scale=(2, 2)).output_shape((4,)), "image"),
    (lambda: L.ConvTranspose2D(np.ones((4, 2), np.float32)), "kernel_size"),
    (lambda: L.ConvTranspose2D(np.ones((4, 2), np.float32), kernel_size=3, out_channels=2), "rows"),
    (lambda: L.ConvTranspose2D(np.ones((4, 2, 3, 3), np.float32), groups=3), "divisible by groups"),
    (lambda: L.ConvTranspose2D(np.ones((4, 2, 3, 3), np.float32), stride=-1), "stride"),
    (lambda: L.ConvTranspose2D(np.ones((4, 2, 3, 3), np.float32), output_padding=-1), "output_padding"),
    (lambda: L.ConvTranspose2D(np.ones((4, 2, 3, 3), np.float32), stride=2, output_padding=2), "output_padding"),
    (lambda: L.ConvTranspose2D(np.ones((4, 2, 3, 3), np.float32), kernel_size=2), "does not match"),
    (lambda: L.ConvTranspose2D(np.ones((4, 2, 3, 3), np.float32)).output_shape((5, 5, 3)), "input channels"),
    (lambda: L.ConvTranspose2D(np.ones((4, 2, 3, 3), np.float32), padding=3).output_shape((1, 1, 4)), "less padding"),
    (lambda: L.ConvTranspose2D.from_onnx_weight(np.ones((4, 2), np.float32)), "c_in, c_out"),
    (lambda: L.GlobalMaxPool2D().output_shape((5,)), "image"),
])
def test_bad_parameters_raise_nncomp_errors_with_the_fix(make, match):
    with pytest.raises(nc.NncompError, match=match):
        make()


def test_grouped_conv_transpose_needs_dense_weights():
    from nncomp.matrices.csr import CSRMatrix
    layer = L.ConvTranspose2D(np.ones((4, 1, 2, 2), np.float32), groups=2)
    with pytest.raises(nc.NncompError, match="dense weights"):
        layer.replace(weight=CSRMatrix.from_dense(layer.weight.to_dense()))


# ----------------------------------------------------------------------------- compression
@pytest.mark.parametrize("calibrated", [False, True])
def test_compression_methods_treat_conv_transpose_as_an_ordinary_weight(calibrated):
    model, _ = onnx_style_model(seed=3, size=12)
    x = np.random.default_rng(16).standard_normal((16,) + model.input_shape).astype(np.float32)
    calib = x if calibrated else None
    pruned = nc.prune(model, sparsity=0.5, calibration=calib)
    w = pruned["up"].layer.weight
    assert w.format in ("csr", "pruned_dense") or "csr" in w.format, w.format
    assert np.count_nonzero(w.to_dense()) <= 0.5 * w.shape[0] * w.shape[1] + 1
    assert np.array_equal(pruned["up"].layer.bias, model["up"].layer.bias)
    shared = nc.share(model, bits=3, calibration=calib)
    assert shared["up"].layer.weight.format == "codebook"
    assert np.unique(shared["up"].layer.weight.to_dense()).size <= 2 ** 3
    q = nc.quantize(model, calibration=calib, activations="static" if calibrated else "dynamic")
    assert q["up"].layer.weight.format == "int8"
    xin = model.activations(x, ["scale"])["scale"]
    for m, tol in ((pruned, 1e-5), (shared, 1e-5), (q, 3e-2)):
        y = m(x)
        assert y.shape == model(x).shape and np.isfinite(y).all()
        layer = m["up"].layer           # each format's product is the one its dense matrix gives
        dense = layer.replace(weight=DenseMatrix(layer.weight.to_dense()))
        want = dense.forward(xin)
        np.testing.assert_allclose(layer.forward(xin), want, rtol=tol, atol=tol * np.abs(want).max())
    if calibrated:   # the refit keeps the layer's output close: error below the uncalibrated one's
        ref = model.activations(x, ["up"])["up"]
        raw = nc.prune(model, sparsity=0.5).activations(x, ["up"])["up"]
        fit = pruned.activations(x, ["up"])["up"]
        assert np.abs(fit - ref).mean() <= np.abs(raw - ref).mean() * 1.001
    dc = nc.deep_compression(model, sparsity=0.5, bits=4, calibration=calib)
    assert "codebook" in dc["up"].layer.weight.format


@pytest.mark.parametrize("calibrated", [False, True])
def test_factorize_splits_a_transposed_conv_into_a_1x1_conv_and_a_thinner_one(calibrated):
    model, _ = onnx_style_model(seed=5, size=12)
    x = np.random.default_rng(18).standard_normal((8,) + model.input_shape).astype(np.float32)
    calib = x if calibrated else None
    full = nc.factorize(model, rank={"up": 4}, calibration=calib)      # rank 4 = c_in: exact
    assert full["up/v"].layer.kind == "conv2d" and full["up"].layer.kind == "conv_transpose2d"
    assert full["up"].layer.in_channels == 4 and np.array_equal(full["up"].layer.bias, model["up"].layer.bias)
    want = model.activations(x, ["up"])["up"]
    np.testing.assert_allclose(full.activations(x, ["up"])["up"], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    thin = nc.factorize(model, rank={"up": 2}, calibration=calib)
    assert thin["up"].layer.in_channels == 2 and thin(x).shape == model(x).shape
    assert "up" in [n.name for n in nc.factorize(model, speedup=1.5).nodes]
    grouped = model.replace_layers({"up": L.ConvTranspose2D(np.ones((4, 2, 2, 2), np.float32), stride=2, groups=2)})
    with pytest.raises(nc.NncompError, match="grouped transposed"):
        nc.factorize(grouped, rank={"up": 2})


def test_filter_pruning_leaves_spaces_read_by_other_layers_alone():
    """The SE scale (a two-input mul, either input) reads channel spaces that filter pruning must not
    cut; the new activations carry a space on (c2 -> clip -> c3 loses filters)."""
    model, x = onnx_style_model(seed=4, size=12)
    out = nc.prune_filters(model, ratio=0.5)
    for name in ("c1", "se2"):
        assert out[name].layer.out_channels == model[name].layer.out_channels, name
    assert out["c2"].layer.out_channels == 2 and out["c3"].layer.in_channels == 2
    assert out(x).shape == model(x).shape
