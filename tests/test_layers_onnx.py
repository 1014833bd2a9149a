"""The ONNX numeric layers against ONNX Runtime (one-node graphs, NCHW there, NHWC here) and their
kernels against the NumPy twins (models of them: tests/test_layers_onnx_models.py)."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import nncomp as nc
import reference as ref
from nncomp import layers as L
from nncomp.kernels.conv_transpose import (col2im_nhwc, col2im_nhwc_parallel, col2im_tiles_epilogue_nhwc,
                                           col2im_tiles_epilogue_nhwc_parallel)
from nncomp.kernels.resize import (resize_linear_nhwc, resize_linear_nhwc_parallel, resize_nearest_nhwc,
                                   resize_nearest_nhwc_parallel)

ort_graphs = pytest.importorskip("ort_graphs")
run, nhwc = ort_graphs.run, ort_graphs.nhwc

SPECIAL = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, -3.0, 3.0, -2.5, 1e-30, 50.0, -50.0], np.float32)


def _values(seed, shape=(2, 3, 4, 5)):
    x = (np.random.default_rng(seed).standard_normal(shape) * 4).astype(np.float32)
    x.flat[:SPECIAL.size] = SPECIAL
    return x


def _same(got, want, rtol=1e-6, atol=1e-6):
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)


# ----------------------------------------------------------------------------- activations
ACTIVATIONS = [
    ("Sigmoid", {}, 13, L.Sigmoid()),
    ("HardSigmoid", {}, 13, L.HardSigmoid()),
    ("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}, 13, L.HardSigmoid(1 / 6, 0.5)),
    ("HardSigmoid", {"alpha": -0.3, "beta": 0.2}, 13, L.HardSigmoid(-0.3, 0.2)),
    ("HardSwish", {}, 14, L.HardSwish()),
    ("LeakyRelu", {"alpha": 0.1}, 13, L.LeakyReLU(0.1)),
    ("LeakyRelu", {}, 13, L.LeakyReLU()),
]


@pytest.mark.parametrize("op, attrs, opset, layer", ACTIVATIONS, ids=lambda v: str(v)[:24])
def test_activations_match_onnxruntime(op, attrs, opset, layer):
    x = _values(1)
    _same(layer.forward(nhwc(x)), nhwc(run(op, [x], attrs, opset)))


@pytest.mark.parametrize("low, high", [(0.0, 6.0), (-1.0, None), (None, 2.5), (None, None), (3.0, 1.0)])
def test_clip_matches_onnxruntime(low, high):
    x = _values(2)
    args = [x, None if low is None else ("const", np.float32(low)), None if high is None else ("const", np.float32(high))]
    layer = L.Clip(-math.inf if low is None else low, math.inf if high is None else high)
    _same(layer.forward(nhwc(x)), nhwc(run("Clip", args, opset=13)))


@pytest.mark.parametrize("op, onnx_op", [("sqrt", "Sqrt"), ("exp", "Exp"), ("log", "Log"), ("neg", "Neg"),
                                         ("abs", "Abs"), ("reciprocal", "Reciprocal"), ("tanh", "Tanh"), ("erf", "Erf")])
def test_unary_matches_onnxruntime(op, onnx_op):
    x = _values(3)
    got = L.Unary(op).forward(nhwc(x))
    assert got.dtype == np.float32
    _same(got, nhwc(run(onnx_op, [x], opset=13)), rtol=2e-6)


def _check_activation(y, act, a, b):
    """Both builds of activation_rows on a copy of ``y`` against the NumPy twin: bit for bit, but
    sigmoid (ONNX Runtime's rational approximation) within 2.5e-7 of the exact one, NaN kept."""
    from nncomp.kernels.epilogue import activation_rows, activation_rows_parallel
    want = ref.activation_rows(y, act, a, b)
    for kern in (activation_rows, activation_rows_parallel):
        got = y.copy()
        kern(got, act, a, b)
        if act == 1:
            np.testing.assert_allclose(got, want, rtol=0, atol=2.5e-7)
            assert np.array_equal(np.isnan(got), np.isnan(y))
        elif act == 6:          # GELU: within erf's error (4.1e-7, times |y| / 2) and a few roundings
            ok = np.isfinite(y)
            assert np.all(np.abs(got[ok] - want[ok]) <= 4e-7 * np.abs(y[ok]) + 4e-7 * np.abs(want[ok]))
            assert np.array_equal(np.isnan(got), np.isnan(y) | (y == -np.inf)) and np.all(got[y == np.inf] == np.inf)
        elif act == 5:          # SiLU: the kernel's sigmoid times y, bit for bit
            sig = y.copy()
            kern(sig, 1, a, b)
            with np.errstate(all="ignore"):
                assert np.array_equal(got.view(np.int32), (y * sig).view(np.int32))
                assert np.all((got == want) | (np.abs(got - want) <= 2.5e-7 * np.abs(y)) | (np.isnan(got) & np.isnan(want)))
        else:
            assert np.array_equal(got.view(np.int32), want.view(np.int32))


@given(m=st.integers(0, 9), c=st.integers(1, 20), act=st.sampled_from([1, 2, 3, 4, 5, 6]),
       alpha=st.sampled_from([0.2, 1 / 6, -0.5, 0.01]), beta=st.sampled_from([0.5, 0.0, -1.0]),
       seed=st.integers(0, 2**31))
def test_activation_rows_matches_reference(m, c, act, alpha, beta, seed):
    """Bit for bit NumPy's float32 sequence (NaN, inf and -0.0 included) for the clipped activations
    and leaky ReLU; sigmoid (ONNX Runtime's rational approximation) within 2.5e-7 of the exact one,
    SiLU that sigmoid times y, GELU within its erf's error."""
    rng = np.random.default_rng(seed)
    y = (rng.standard_normal((m, c)) * 8).astype(np.float32)
    y.flat[:min(y.size, SPECIAL.size)] = SPECIAL[:y.size]
    a, b = np.float32(alpha), np.float32(beta)
    _check_activation(y, act, a, b)


@given(n=st.integers(0, 100), seed=st.integers(0, 2**31))
def test_vector_sigmoid_is_the_scalar_rational_function_bit_for_bit(n, seed):
    """The 16-lane sigmoid (epilogue.logistic_ir) runs _logistic's float32 operations lane by lane:
    the same bits as the scalar code on the tail, NaN, infinities, -0.0 and the clamps included."""
    from nncomp.kernels.epilogue import ACT_SIGMOID, _logistic, activation_rows
    y = (np.random.default_rng(seed).standard_normal((n, 1)) * 10).astype(np.float32)
    specials = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 18.0, -18.0, 18.5, -17.99, 1e-30], np.float32)
    y[:min(n, specials.size), 0] = specials[:n]
    want = np.array([_logistic(v) for v in y[:, 0]], np.float32)
    activation_rows(y, ACT_SIGMOID, np.float32(0), np.float32(0))
    assert np.array_equal(y[:, 0].view(np.int32), want.view(np.int32))


@pytest.mark.parametrize("act", [1, 2, 3, 4, 5, 6])
def test_activation_rows_over_several_tasks_matches_reference(act):
    """Several ACT_CHUNK tasks and a tail that is not a whole vector (2 x 16,384 + 9,732 values),
    specials spread over the tasks' edges."""
    from nncomp.kernels.epilogue import ACT_CHUNK
    rng = np.random.default_rng(act)
    y = (rng.standard_normal((2500, 17)) * 8).astype(np.float32)
    for at in (0, ACT_CHUNK - 1, ACT_CHUNK, 2 * ACT_CHUNK + 5, y.size - 1):
        y.flat[at:at + SPECIAL.size] = SPECIAL[:y.size - at]
    a, b = np.float32(0.2), np.float32(0.5)
    _check_activation(y, act, a, b)


def test_activation_layers_are_monotone_as_declared():
    """``monotone`` lets a max-pool run before the activation (fused into the conv kernel): it must
    hold bit for bit, on every float32, not only for the real function."""
    assert L.Clip(0, 1).monotone and L.LeakyReLU(0.1).monotone and L.HardSigmoid(0.2).monotone
    assert not L.HardSwish().monotone and not L.LeakyReLU(-1.0).monotone and not L.HardSigmoid(-0.2).monotone
    # every 61st float32 of [-20, 20], in order
    half = np.arange(0, np.float32(20).view(np.uint32), 61, dtype=np.uint32).view(np.float32)
    grid = np.concatenate([-half[::-1], half])[None, :]
    x = np.sort(np.concatenate([_values(13).reshape(-1), grid[0]]))[None, :]
    x = x[:, ~np.isnan(x[0])]
    for layer in (L.Clip(-1, 2), L.LeakyReLU(0.1), L.HardSigmoid(0.3, 0.1), L.Sigmoid()):
        steps = np.diff(layer.forward(x))
        assert np.all(steps >= 0) == layer.monotone, layer
        assert np.all(steps >= -2.4e-7), layer       # the sigmoid dips within its 2.3e-7 error (2 ulps of 0.5)


# ----------------------------------------------------------------------------- binary, reduce, layer norm
def _internal_const(c):
    """An ONNX constant broadcasting against NCHW in the internal per-sample layout: padded to rank
    4 on the left (NumPy's rule), transposed to NHWC, batch axis dropped."""
    return nhwc(c.reshape((1,) * (4 - c.ndim) + c.shape))[0]


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "pow", "max", "min"])
@pytest.mark.parametrize("cshape", [(1, 3, 1, 1), (1, 3, 4, 1), (5,), (), (1, 1, 4, 5)])
@pytest.mark.parametrize("first", [False, True])
def test_binary_with_a_constant_matches_onnxruntime(op, cshape, first):
    rng = np.random.default_rng(5)
    x = _values(5)
    c = rng.uniform(0.5, 2.0, cshape).astype(np.float32)
    if op == "pow":
        x = np.abs(x)
    onnx_op = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow", "max": "Max", "min": "Min"}[op]
    args = [("const", c), x] if first else [x, ("const", c)]
    want = nhwc(run(onnx_op, args, opset=13))
    layer = L.Binary(op, _internal_const(c), constant_first=first)
    assert layer.n_inputs == 1
    _same(layer.forward(nhwc(x)), want, rtol=2e-6)


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "max"])
@pytest.mark.parametrize("bshape", [(2, 3, 1, 1), (2, 3, 4, 5), (2, 1, 4, 5), (2, 1, 1, 1)])
def test_binary_with_two_inputs_broadcasts_like_onnxruntime(op, bshape):
    x = _values(6)
    y = np.random.default_rng(6).uniform(0.5, 2.0, bshape).astype(np.float32)
    onnx_op = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max"}[op]
    layer = L.Binary(op)
    assert layer.n_inputs == 2
    for a, b in ((x, y), (y, x)):
        got = layer.forward(nhwc(a), nhwc(b))
        _same(got, nhwc(run(onnx_op, [a, b], opset=13)))
        assert layer.output_shape(nhwc(a).shape[1:], nhwc(b).shape[1:]) == got.shape[1:]


@pytest.mark.parametrize("first", [False, True])
def test_binary_with_a_constant_larger_than_its_input(first):
    rng = np.random.default_rng(17)
    c, x = rng.standard_normal((4, 5, 3)).astype(np.float32), rng.standard_normal((2, 1, 1, 3)).astype(np.float32)
    got = L.Binary("sub", c, constant_first=first).forward(x)
    assert np.array_equal(got, c - x if first else x - c)


def test_binary_of_an_image_and_a_vector_right_aligns():
    x, s = _values(7), np.random.default_rng(7).standard_normal((2, 3)).astype(np.float32)
    got = L.Binary("mul").forward(nhwc(x), s)
    assert np.array_equal(got, nhwc(x) * s[:, None, None, :], equal_nan=True)


def test_se_scaling_allocates_only_its_output():
    """x * s with s (n, 1, 1, c): one pass, no broadcast copy of s (the product's own buffer only)."""
    x = nhwc(_values(8, (1, 8, 32, 32)))
    s = np.random.default_rng(8).random((1, 1, 1, 8)).astype(np.float32)
    step = L.Binary("mul").prepare(1, x.shape[1:], s.shape[1:])
    import tracemalloc
    step(x, s)
    tracemalloc.start()
    y = step(x, s)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.array_equal(y, x * s, equal_nan=True) and peak < y.nbytes + 4096


@given(n=st.integers(0, 3), m=st.integers(0, 7), c=st.integers(1, 9), op=st.integers(0, 5), reverse=st.booleans(),
       per_sample=st.booleans(), seed=st.integers(0, 2**31))
def test_channel_binary_nhwc_matches_reference(n, m, c, op, reverse, per_sample, seed):
    """NumPy's ufuncs bit for bit (NaN, inf, signed zeros and division by zero included)."""
    from nncomp.kernels.binary import channel_binary_nhwc, channel_binary_nhwc_parallel
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, m, c)) * 4).astype(np.float32)
    x.flat[:min(x.size, SPECIAL.size)] = SPECIAL[:x.size]
    s = rng.standard_normal((max(n, 1) if per_sample else 1, c)).astype(np.float32)
    s.flat[:min(s.size, 3)] = np.array([0.0, -0.0, np.nan], np.float32)[:min(s.size, 3)]
    want = ref.channel_binary_nhwc(x, s, op, reverse)
    for kern in (channel_binary_nhwc, channel_binary_nhwc_parallel):
        out = np.empty_like(x)
        kern(x, s, op, reverse, out)
        assert np.array_equal(out.view(np.int32), want.view(np.int32)) or np.array_equal(
            np.where(np.isnan(out), 0, out).view(np.int32), np.where(np.isnan(want), 0, want).view(np.int32))


@pytest.mark.parametrize("op", ["mean", "sum", "max", "min"])
@pytest.mark.parametrize("axes, internal", [([2, 3], (0, 1)), ([1], (2,)), ([1, 2, 3], (0, 1, 2)), ([3], (-2,))])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_matches_onnxruntime(op, axes, internal, keepdims):
    x = np.random.default_rng(9).standard_normal((2, 3, 4, 5)).astype(np.float32)
    onnx_op = "Reduce" + op.capitalize()
    if op == "sum":             # axes an input from opset 13 on (the others: from 18)
        want = run(onnx_op, [x, ("const", np.array(axes, np.int64))], {"keepdims": keepdims}, opset=13)
    else:
        want = run(onnx_op, [x], {"axes": axes, "keepdims": keepdims}, opset=13)
    layer = L.Reduce(op, internal, keepdims=bool(keepdims))
    got = layer.forward(nhwc(x))
    if keepdims:
        want = nhwc(want)
    elif len(axes) == 1 and axes[0] != 1:      # (n, c, w) or (n, c, h) left: channels were axis 1
        want = want.transpose(0, 2, 1)
    _same(got, want, rtol=1e-5, atol=1e-5)
    assert layer.output_shape(nhwc(x).shape[1:]) == got.shape[1:]


@pytest.mark.parametrize("axis", [-1, -2, 1])
def test_layernorm_matches_onnxruntime(axis):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 6, 7, 8)).astype(np.float32) * 3 + 1
    inner = x.shape[1:][axis:] if axis < 0 else x.shape[1 + axis:]
    scale, bias = rng.standard_normal(inner).astype(np.float32), rng.standard_normal(inner).astype(np.float32)
    onnx_axis = axis if axis < 0 else axis + 1
    want = run("LayerNormalization", [x, ("const", scale), ("const", bias)], {"axis": onnx_axis, "epsilon": 1e-5})
    _same(L.LayerNorm(axis, scale, bias, 1e-5).forward(x), want, rtol=1e-5, atol=2e-5)
    _same(L.LayerNorm(axis, None, None).forward(x), run("LayerNormalization", [x, ("const", np.ones(inner, np.float32))],
                                                       {"axis": onnx_axis}), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("onnx_axis, axis", [(1, 2), (2, 0), (3, 1), (-1, 1), (-3, 2)])
def test_softmax_on_any_axis_matches_onnxruntime(onnx_axis, axis):
    x = np.random.default_rng(11).standard_normal((2, 3, 4, 5)).astype(np.float32) * 5
    _same(L.Softmax(axis).forward(nhwc(x)), nhwc(run("Softmax", [x], {"axis": onnx_axis}, opset=13)), rtol=1e-5, atol=1e-7)
    assert L.Softmax().axis == -1


def test_global_maxpool_matches_onnxruntime():
    """(NaN: ONNX Runtime skips it, nncomp's pools return it, as PyTorch's do.)"""
    x = np.random.default_rng(12).standard_normal((2, 3, 4, 5)).astype(np.float32)
    x[0, 1, 2, 2] = np.inf
    want = run("GlobalMaxPool", [x])
    _same(L.GlobalMaxPool2D(keepdims=True).forward(nhwc(x)), nhwc(want))
    _same(L.GlobalMaxPool2D().forward(nhwc(x)), want[:, :, 0, 0])


# ----------------------------------------------------------------------------- resize
@st.composite
def resize_case(draw):
    mode = draw(st.sampled_from(["nearest", "linear"]))
    coord = draw(st.sampled_from(list(L.resize.COORDINATE_MODES)))
    nearest = draw(st.sampled_from(list(L.resize.NEAREST_MODES)))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    if draw(st.booleans()):
        size = (draw(st.integers(1, 20)), draw(st.integers(1, 20)))
        scale = None
    else:
        size = None
        scale = (draw(st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0, 0.7, 2.5])), draw(st.sampled_from([0.5, 1.0, 2.0, 4.0, 1.3])))
        if min(math.floor(h * scale[0]), math.floor(w * scale[1])) < 1:
            h, w = 4, 4
    return mode, coord, nearest, (draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w), size, scale


@given(case=resize_case(), seed=st.integers(0, 2**31))
def test_resize_matches_onnxruntime(case, seed):
    _check_resize(*case, seed)


@pytest.mark.parametrize("case", [
    ("nearest", "asymmetric", "round_prefer_ceil", (1, 2, 3, 7), (3, 2), None),      # 1 * 7 / 2 is 3.5
    ("nearest", "asymmetric", "round_prefer_ceil", (1, 1, 7, 7), (16, 8), None),
    ("nearest", "tf_half_pixel_for_nn", "round_prefer_floor", (1, 1, 2, 7), (2, 19), None),  # 9.5 * 7 / 19
    ("nearest", "tf_half_pixel_for_nn", "round_prefer_ceil", (1, 1, 7, 7), (1, 1), None),
    ("nearest", "half_pixel", "floor", (1, 2, 1, 2), None, (1.0, 1.3)),   # 1x2 stays 1x2: a copy
    ("nearest", "tf_half_pixel_for_nn", "ceil", (2, 1, 3, 3), None, (1.0, 1.3)),
    ("linear", "half_pixel", "floor", (1, 2, 6, 10), None, (1.1, 1.0)),
    ("linear", "asymmetric", "floor", (1, 1, 2, 7), (2, 2), None),       # linear keeps the float32 scale
])
def test_resize_ties_and_copies_as_onnxruntime(case):
    """Cases the float32 scale alone gets wrong: exact halves from given sizes (nearest) and an
    output the size of its input (a copy, whatever the scale)."""
    _check_resize(*case, seed=3)


def _check_resize(mode, coord, nearest, shape, size, scale, seed):
    if mode == "linear" and coord == "tf_half_pixel_for_nn":
        coord = "half_pixel"            # ONNX Runtime refuses it outside nearest mode
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    attrs = {"mode": mode, "coordinate_transformation_mode": coord, "nearest_mode": nearest}
    if size is not None:
        args = [x, None, None, ("const", np.array(shape[:2] + size, np.int64))]
    else:
        args = [x, None, ("const", np.array((1, 1) + scale, np.float32))]
    want = nhwc(run("Resize", args, attrs, opset=13))
    layer = L.Resize(size=size, scale=scale, mode=mode, coordinate_mode=coord, nearest_mode=nearest)
    got = layer.forward(nhwc(x))
    if mode == "nearest":
        assert np.array_equal(got, want)
    else:
        _same(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, layer", [
    ({"scale_factor": 2, "mode": "nearest"}, L.Resize(scale=(2, 2), coordinate_mode="asymmetric", nearest_mode="floor")),
    ({"size": (7, 5), "mode": "nearest"}, L.Resize(size=(7, 5), coordinate_mode="asymmetric", nearest_mode="floor")),
    ({"scale_factor": 2, "mode": "bilinear", "align_corners": False},
     L.Resize(scale=(2, 2), mode="linear", coordinate_mode="pytorch_half_pixel")),
    ({"size": (9, 4), "mode": "bilinear", "align_corners": False},
     L.Resize(size=(9, 4), mode="linear", coordinate_mode="pytorch_half_pixel")),
    ({"size": (9, 13), "mode": "bilinear", "align_corners": True},
     L.Resize(size=(9, 13), mode="linear", coordinate_mode="align_corners")),
])
def test_resize_matches_pytorch_interpolate_as_exported(kwargs, layer):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(14).standard_normal((2, 3, 6, 8)).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(x), **kwargs).numpy()
    _same(layer.forward(nhwc(x)), nhwc(want), rtol=1e-5, atol=1e-6)


@given(n=st.integers(0, 3), h=st.integers(1, 6), w=st.integers(1, 6), c=st.integers(1, 5),
       oh=st.integers(1, 9), ow=st.integers(1, 9), seed=st.integers(0, 2**31))
def test_resize_kernels_match_reference(n, h, w, c, oh, ow, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    iy, ix = rng.integers(0, h, oh), rng.integers(0, w, ow)
    for kern in (resize_nearest_nhwc, resize_nearest_nhwc_parallel):
        out = np.empty((n, oh, ow, c), np.float32)
        kern(x, iy, ix, out)
        assert np.array_equal(out, ref.resize_nearest_nhwc(x, iy, ix))
    coords_y, coords_x = rng.uniform(-1, h, oh).astype(np.float32), rng.uniform(-1, w, ow).astype(np.float32)
    args = L.resize.linear_taps(coords_y, h) + L.resize.linear_taps(coords_x, w)
    for kern in (resize_linear_nhwc, resize_linear_nhwc_parallel):
        out = np.empty((n, oh, ow, c), np.float32)
        kern(x, *args, out)
        want = ref.resize_linear_nhwc(x, *args)
        np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6 * max(1.0, np.abs(x).max(initial=0)))


# ----------------------------------------------------------------------------- transposed convolution
@st.composite
def conv_transpose_case(draw):
    g = draw(st.sampled_from([1, 1, 2, 3]))
    cin, cout = g * draw(st.integers(1, 3)), g * draw(st.integers(1, 3))
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    extra = tuple(draw(st.integers(0, s[i] - 1)) for i in range(2))        # ONNX Runtime: < stride
    pads = tuple(draw(st.integers(0, k[i // 2] - 1)) for i in range(4))      # (top, bottom, left, right)
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    return g, cin, cout, k, s, d, extra, pads, (draw(st.integers(1, 3)), cin, h, w), draw(st.booleans())


@given(case=conv_transpose_case(), seed=st.integers(0, 2**31))
def test_conv_transpose_matches_onnxruntime(case, seed):
    g, cin, cout, k, s, d, extra, pads, shape, has_bias = case
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cin, cout // g) + k).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) if has_bias else None
    layer = L.ConvTranspose2D.from_onnx_weight(w, b, stride=s, padding=pads, output_padding=extra, dilation=d, groups=g)
    x = rng.standard_normal(shape).astype(np.float32)
    try:
        out_shape = layer.output_shape(nhwc(x).shape[1:])
    except nc.NncompError:
        return                                  # padding larger than the output: refused
    attrs = {"strides": list(s), "dilations": list(d), "group": g, "output_padding": list(extra),
             "pads": [pads[0], pads[2], pads[1], pads[3]], "kernel_shape": list(k)}
    want = nhwc(run("ConvTranspose", [x, ("const", w)] + ([("const", b)] if has_bias else []), attrs, opset=13))
    got = layer.forward(nhwc(x))
    assert got.shape[1:] == out_shape
    _same(got, want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max(initial=0)))
    # the same layer from the Matrix and its geometry, and from the array given to the constructor
    again = L.ConvTranspose2D(layer.weight, b, stride=s, padding=pads, output_padding=extra, dilation=d,
                              groups=g, kernel_size=k, out_channels=cout)
    assert np.array_equal(again.forward(nhwc(x)), got)
    assert np.array_equal(L.ConvTranspose2D(w, b, stride=s, padding=pads, output_padding=extra, dilation=d,
                                            groups=g).forward(nhwc(x)), got)


@given(groups=st.integers(1, 3), cg=st.integers(1, 3), n=st.integers(0, 2), h=st.integers(1, 5), w=st.integers(1, 5),
       k=st.integers(1, 3), s=st.integers(1, 3), d=st.integers(1, 2), pad=st.integers(0, 2), extra=st.integers(0, 2),
       bias=st.booleans(), seed=st.integers(0, 2**31))
def test_col2im_nhwc_matches_reference(groups, cg, n, h, w, k, s, d, pad, extra, bias, seed):
    rng = np.random.default_rng(seed)
    oh, ow = (h - 1) * s + d * (k - 1) + 1 - pad + extra, (w - 1) * s + d * (k - 1) + 1 - pad + extra
    if min(oh, ow) < 1:
        return
    cols = rng.standard_normal((groups, n * h * w, k * k * cg)).astype(np.float32)
    b = rng.standard_normal(groups * cg).astype(np.float32) if bias else np.zeros(0, np.float32)
    want = ref.col2im_nhwc(cols, n, h, w, k, k, s, s, pad, pad, d, d, b, oh, ow)
    for kern in (col2im_nhwc, col2im_nhwc_parallel):
        out = np.full((n, oh, ow, groups * cg), np.nan, np.float32)
        kern(cols, n, h, w, k, k, s, s, pad, pad, d, d, b, out)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


@given(c=st.integers(1, 20), n=st.integers(0, 2), h=st.integers(1, 5), w=st.integers(1, 5), kh=st.integers(1, 3),
       kw=st.integers(1, 3), bias=st.booleans(), zeros=st.booleans(), seed=st.integers(0, 2**31))
def test_col2im_of_tiling_taps_is_the_general_col2im_bit_for_bit(c, n, h, w, kh, kw, bias, zeros, seed):
    """Kernel = stride (DBNet's 2 x 2 upsampling): the block copy gives the general kernel's bits
    (a -0.0 tap without a bias included) and its twin's numbers."""
    rng = np.random.default_rng(seed)
    cols = rng.standard_normal((1, n * h * w, kh * kw * c)).astype(np.float32)
    if zeros:
        cols[:, ::2] = -0.0
    b = rng.standard_normal(c).astype(np.float32) if bias else np.zeros(0, np.float32)
    general = np.empty((n, h * kh, w * kw, c), np.float32)
    col2im_nhwc(cols, n, h, w, kh, kw, kh, kw, 0, 0, 1, 1, b, general)
    want = ref.col2im_nhwc(cols, n, h, w, kh, kw, kh, kw, 0, 0, 1, 1, b, h * kh, w * kw)
    none = np.zeros(0, np.float32)
    for kern in (col2im_tiles_epilogue_nhwc, col2im_tiles_epilogue_nhwc_parallel):
        out = np.full((n, h * kh, w * kw, c), np.nan, np.float32)
        kern(cols, h, w, b, none, none, np.zeros((0, 1, 1, c), np.float32), np.float32(-np.inf), np.float32(np.inf), out)
        assert np.array_equal(out.view(np.int32), general.view(np.int32))
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


@given(c=st.integers(1, 20), n=st.integers(1, 2), h=st.integers(1, 5), w=st.integers(1, 5), k=st.integers(1, 3),
       bias=st.booleans(), affine=st.booleans(), add=st.booleans(), clip=st.sampled_from([(-np.inf, np.inf), (0.0, np.inf),
                                                                                     (0.0, 6.0)]),
       seed=st.integers(0, 2**31))
def test_col2im_tiles_with_the_epilogue_is_the_two_passes_bit_for_bit(c, n, h, w, k, bias, affine, add, clip, seed):
    """The block copy with batch norm, residual add and clip as it stores: the bits of the copy then
    the epilogue kernel (NaN passing the clip), and its twin's numbers."""
    from nncomp.kernels.epilogue import epilogue_rows
    rng = np.random.default_rng(seed)
    cols = rng.standard_normal((1, n * h * w, k * k * c)).astype(np.float32)
    cols[0, 0, 0] = np.nan
    b = rng.standard_normal(c).astype(np.float32) if bias else np.zeros(0, np.float32)
    scale, shift = ((rng.standard_normal(c).astype(np.float32) for _ in range(2)) if affine
                    else (np.zeros(0, np.float32), np.zeros(0, np.float32)))
    res = rng.standard_normal((n, h * k, w * k, c)).astype(np.float32) if add else np.zeros((0, 1, 1, c), np.float32)
    lo, hi = np.float32(clip[0]), np.float32(clip[1])
    want = np.empty((n, h * k, w * k, c), np.float32)
    col2im_nhwc(cols, n, h, w, k, k, k, k, 0, 0, 1, 1, b, want)       # the general scatter, no epilogue
    epilogue_rows(want.reshape(-1, c), scale, shift, res.reshape(-1, c), lo, hi)
    twin = ref.col2im_tiles_epilogue_nhwc(cols, n, h, w, k, k, b, scale, shift, res, lo, hi)
    for kern in (col2im_tiles_epilogue_nhwc, col2im_tiles_epilogue_nhwc_parallel):
        out = np.full_like(want, -7.0)
        kern(cols, h, w, b, scale, shift, res, lo, hi, out)
        assert np.array_equal(out.view(np.int32), want.view(np.int32))
        np.testing.assert_array_equal(out, twin)


def test_only_tiling_transposed_convolutions_take_the_block_copy():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    assert L.ConvTranspose2D.from_onnx_weight(w, None, stride=2).tiles_output((5, 6, 4))
    for kw in ({"stride": 1}, {"stride": 2, "padding": 1}, {"stride": 2, "output_padding": 1},
               {"stride": 2, "dilation": 2}):
        assert not L.ConvTranspose2D.from_onnx_weight(w, None, **kw).tiles_output((5, 6, 4)), kw


@pytest.mark.parametrize("h, oh", [(6, 4), (3, 5), (5, 3), (7, 3), (4, 6), (6, 9), (5, 8)])
def test_resize_nearest_rounds_exact_halves_as_onnxruntime(h, oh):
    """Sizes whose source coordinates land on (or one float32 ulp off) a pixel or a half."""
    x = np.arange(h * h, dtype=np.float32).reshape(1, 1, h, h)
    for coord in L.resize.COORDINATE_MODES:
        for nearest in L.resize.NEAREST_MODES:
            attrs = {"mode": "nearest", "coordinate_transformation_mode": coord, "nearest_mode": nearest}
            want = run("Resize", [x, None, None, ("const", np.array((1, 1, oh, oh), np.int64))], attrs, opset=13)
            got = L.Resize(size=(oh, oh), coordinate_mode=coord, nearest_mode=nearest).forward(nhwc(x))
            assert np.array_equal(got, nhwc(want)), (coord, nearest)
