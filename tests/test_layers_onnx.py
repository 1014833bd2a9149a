"""The ONNX numeric layers against ONNX Runtime (one-node graphs, NCHW there, NHWC here), their
kernels against the NumPy twins, their errors, files and fusion."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import nncomp as nc
import reference as ref
from nncomp import layers as L
from nncomp.kernels.conv_transpose import col2im_nhwc, col2im_nhwc_parallel
from nncomp.kernels.resize import (resize_linear_nhwc, resize_linear_nhwc_parallel, resize_nearest_nhwc,
                                   resize_nearest_nhwc_parallel)
from nncomp.model import Model, Node

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


@given(m=st.integers(0, 9), c=st.integers(1, 20), act=st.sampled_from([1, 2, 3, 4]),
       alpha=st.sampled_from([0.2, 1 / 6, -0.5, 0.01]), beta=st.sampled_from([0.5, 0.0, -1.0]),
       seed=st.integers(0, 2**31))
def test_activation_rows_matches_reference(m, c, act, alpha, beta, seed):
    """Bit for bit NumPy's float32 sequence (NaN, inf and -0.0 included) for the clipped activations
    and leaky ReLU; sigmoid (ONNX Runtime's rational approximation) within 2.5e-7 of the exact one."""
    from nncomp.kernels.epilogue import activation_rows, activation_rows_parallel
    rng = np.random.default_rng(seed)
    y = (rng.standard_normal((m, c)) * 8).astype(np.float32)
    y.flat[:min(y.size, SPECIAL.size)] = SPECIAL[:y.size]
    a, b = np.float32(alpha), np.float32(beta)
    want = ref.activation_rows(y, act, a, b)
    for kern in (activation_rows, activation_rows_parallel):
        got = y.copy()
        kern(got, act, a, b)
        if act == 1:
            np.testing.assert_allclose(got, want, rtol=0, atol=2.5e-7)
            assert np.array_equal(np.isnan(got), np.isnan(y))
        else:
            assert np.array_equal(got.view(np.int32), want.view(np.int32))


def test_activation_layers_are_monotone_as_declared():
    assert L.Sigmoid().monotone and L.Clip(0, 1).monotone and L.LeakyReLU(0.1).monotone
    assert L.HardSigmoid(0.2).monotone
    assert not L.HardSwish().monotone and not L.LeakyReLU(-1.0).monotone and not L.HardSigmoid(-0.2).monotone
    x = np.sort(_values(13).reshape(-1))[None, :]
    x = x[:, ~np.isnan(x[0])]
    for layer in (L.Sigmoid(), L.Clip(-1, 2), L.LeakyReLU(0.1), L.HardSigmoid(0.3, 0.1)):
        assert np.all(np.diff(layer.forward(x)) >= 0), layer


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
