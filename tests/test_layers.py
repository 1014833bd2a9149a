"""Layers against the NumPy reference: conv (im2col + BLAS, chunked, grouped, depthwise), pools, BN."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import reference as ref
from conftest import assert_close_f32
import nncomp as nc
from nncomp.layers import conv_algorithms as convolution
from nncomp import layers as L
from nncomp.kernels import erf, rows, softmax
from nncomp.matrices.int8 import Int8Matrix


def torch_to_matrix(w):
    """(c_out, c_in/g, kh, kw) -> (c_out, kh*kw*c_in/g), nncomp's patch order."""
    return np.ascontiguousarray(w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1))


@st.composite
def conv_case(draw, stride1=False):
    groups = 1 if stride1 else draw(st.sampled_from([1, 1, 2, 3]))
    cg = draw(st.integers(1, 3))
    og = draw(st.integers(1, 3))
    c, co = cg * groups, og * groups
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (1, 1) if stride1 else (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad = tuple(draw(st.integers(0, 2)) for _ in range(4))
    h = draw(st.integers(dil[0] * (kh - 1) + 1, 10))
    w = draw(st.integers(dil[1] * (kw - 1) + 1, 10))
    n = draw(st.integers(0, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    wt = rng.standard_normal((co, cg, kh, kw)).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32) if draw(st.booleans()) else None
    return x, wt, bias, stride, pad, dil, groups


@given(case=conv_case(), chunk=st.sampled_from([64, 1 << 20]), algo=st.sampled_from(convolution.ALGORITHMS),
       fused=st.booleans())
def test_conv2d_layer_matches_reference(case, chunk, algo, fused):
    x, wt, bias, stride, pad, dil, groups = case
    layer = nc.Conv2D(torch_to_matrix(wt), bias, in_channels=x.shape[3], kernel_size=wt.shape[2:],
                      stride=stride, padding=pad, dilation=dil, groups=groups)
    if algo not in layer.algorithms:
        algo = None
    names = ("IM2COL_CHUNK_BYTES", "SHIFTED_CHUNK_BYTES", "FUSED_BLOCK_BYTES", "FUSED_SPLIT_MIN_MACS", "_fusable")
    old = {k: getattr(convolution, k) for k in names}
    # small chunks exercise the chunked patch product, the shifted GEMM's image chunks, and the fused
    # kernel's blocks of one line, split over the threads however small the layer
    for k in names[:3]:
        setattr(convolution, k, chunk)
    if chunk == 64:
        convolution.FUSED_SPLIT_MIN_MACS = 0
    if not fused:       # the unfused im2col path (compressed weights; or no CBLAS, no JIT)
        convolution._fusable = lambda *a: False
    try:
        y = convolution.forward(layer, x, algo)
    finally:
        for k, v in old.items():
            setattr(convolution, k, v)
    expect = ref.conv2d_nhwc(x, wt, bias, stride, pad, dil, groups)
    mag = ref.conv2d_nhwc(np.abs(x), np.abs(wt), None if bias is None else np.abs(bias), stride, pad, dil, groups)
    assert y.shape == expect.shape == (x.shape[0],) + layer.output_shape(x.shape[1:])
    assert_close_f32(y, expect, mag, wt[0].size + 1)


@given(case=conv_case(stride1=True), chunk=st.sampled_from([64, 1 << 20]))
def test_shifted_conv_matches_reference(case, chunk):
    """The shifted GEMM on every padding, dilation and kernel shape, in chunks of 1 image or all."""
    x, wt, bias, stride, pad, dil, groups = case
    layer = nc.Conv2D(torch_to_matrix(wt), bias, in_channels=x.shape[3], kernel_size=wt.shape[2:],
                      stride=stride, padding=pad, dilation=dil)
    old = convolution.SHIFTED_CHUNK_BYTES
    convolution.SHIFTED_CHUNK_BYTES = chunk
    try:
        y = convolution.forward(layer, x, "shifted")
    finally:
        convolution.SHIFTED_CHUNK_BYTES = old
    expect = ref.conv2d_nhwc(x, wt, bias, stride, pad, dil, 1)
    mag = ref.conv2d_nhwc(np.abs(x), np.abs(wt), None if bias is None else np.abs(bias), stride, pad, dil, 1)
    assert_close_f32(y, expect, mag, wt[0].size + 1)


def test_conv_algorithm_choice_and_refusal():
    big = nc.Conv2D(np.zeros((512, 4608), np.float32), in_channels=512, kernel_size=3, padding=1)
    assert convolution.choose(big, (28, 28, 512), 1) == "shifted"         # VGG-16 conv4_2
    # its 16.8 MB Winograd weight streams from memory: Winograd from 1024 output pixels a call
    assert convolution.choose(big, (28, 28, 512), 2) == "winograd"
    assert convolution.choose(big, (14, 14, 512), 32) == "winograd"
    assert convolution.choose(big, (14, 14, 512), 1) == "im2col"          # padding is 31% of the grid
    first = nc.Conv2D(np.zeros((20, 25), np.float32), in_channels=1, kernel_size=5)
    # LeNet-5 conv1: the blocked kernel beats the direct one and im2col + BLAS (bench/results)
    assert first.algorithms == ("blocked", "direct", "im2col", "shifted")
    assert convolution.choose(first, (28, 28, 1), 32) == "blocked"
    assert "blocked" not in big.algorithms          # a 9.4 MB weight: BLAS as fast, and no copy of it
    sparse = nc.Conv2D(nc.prune(nc.Model([nc.model.Node("c", first)], input_shape=(1, 28, 28),
                                         input_layout="NCHW"), sparsity=0.5).nodes[0].layer.weight,
                       in_channels=1, kernel_size=5)
    assert sparse.algorithms == ("blocked", "im2col")    # compressed weights: decoded per call, or their product
    quantized = nc.Conv2D(Int8Matrix.from_float(np.ones((20, 25), np.float32)), in_channels=1, kernel_size=5)
    assert quantized.algorithms == ("im2col",)      # int8 activations: the integer product
    strided = nc.Conv2D(np.zeros((8, 144), np.float32), in_channels=16, kernel_size=3, stride=2)
    assert strided.algorithms == ("blocked", "im2col")
    # 3x3 stride 1 over 16+ channels: Winograd F(2x2, 3x3), F(4x4, 3x3) (dense weights; the rule's
    # choice) first; fewer channels keep the blocked kernel
    same = nc.Conv2D(np.zeros((8, 144), np.float32), in_channels=16, kernel_size=3, padding=1)
    assert same.algorithms[:3] == ("winograd", "winograd4", "blocked")
    assert convolution.choose(same, (14, 14, 16), 1) == "winograd4"
    narrow = nc.Conv2D(np.zeros((8, 72), np.float32), in_channels=8, kernel_size=3, padding=1)
    assert narrow.algorithms[0] == "blocked"
    with pytest.raises(ValueError, match="cannot run"):
        convolution.forward(strided, np.zeros((1, 9, 9, 16), np.float32), "shifted")


def test_blocked_tile_width_fills_short_lines():
    """The dense blocked kernel's vectors per tile: 3 where 4 would leave 7-pixel lines in tiles of 4
    and 3 pixels and 96 channels as 4 + 2 vectors; 4 where images tile (64 channels, 64 images of 7 x
    7) with AVX-512's 32 registers, 1 with AVX2's 16 (6 images a tile: 12 ymm accumulators, where 4
    vectors fit one pixel: 8); never more vectors than the channels fill, never more than 4."""
    from nncomp.layers.conv_blocked import tile_vectors
    assert tile_vectors(96, 1, 7, 32) == 3 and tile_vectors(576, 8, 7, 32) == 3
    assert tile_vectors(64, 64, 7, 32) == 4 and tile_vectors(16, 1, 112, 32) == 1
    assert tile_vectors(32, 64, 14, 32) == 2 and tile_vectors(64, 64, 7, 16) == 1
    # AVX2, a 1 x 1 convolution with a stride over at most 32 channels: every vector of co in a tile
    assert tile_vectors(32, 32, 14, 16, strided_1x1=16) == 2 and tile_vectors(64, 32, 7, 16, strided_1x1=32) == 4
    assert tile_vectors(128, 8, 14, 16, strided_1x1=64) == 1 and tile_vectors(64, 32, 7, 16, strided_1x1=0) == 1
    assert tile_vectors(576, 1, 1, 16, pixels=1) == 4 and tile_vectors(144, 8, 1, 16, pixels=8) == 1
    for co in range(1, 300, 7):
        for n, ow in ((1, 7), (1, 56), (8, 14), (64, 7)):
            for registers in (None, 16, 32):
                for strided in (0, 16, 64):
                    assert 1 <= tile_vectors(co, n, ow, registers, strided) <= min(4, -(-co // 16))


def test_depthwise_layer_uses_multiplier():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)
    wt = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)
    layer = nc.Conv2D(torch_to_matrix(wt), None, in_channels=3, kernel_size=3, stride=2, padding=(0, 1, 0, 1), groups=3)
    assert layer.depthwise
    expect = ref.conv2d_nhwc(x, wt, None, (2, 2), (0, 1, 0, 1), (1, 1), 3)
    assert_close_f32(layer.forward(x), expect, ref.conv2d_nhwc(np.abs(x), np.abs(wt), None, (2, 2), (0, 1, 0, 1), (1, 1), 3), 10)


@pytest.mark.parametrize("ceil", [False, True])
def test_pool_layers_follow_torch_output_sizes(ceil):
    # PyTorch: MaxPool2d(3, 2, padding=1, ceil_mode=True) on 6x6 gives 4x4 (the last window starts
    # inside the padded image), on 5x5 gives 3x3; floor mode gives 3x3 and 3x3.
    for size, want in ((6, 4 if ceil else 3), (5, 3)):
        layer = nc.MaxPool2D(3, 2, 1, ceil_mode=ceil)
        assert layer.output_shape((size, size, 1)) == (want, want, 1)
        assert nc.AvgPool2D(3, 2, 1, ceil_mode=ceil).output_shape((size, size, 1)) == (want, want, 1)


def test_batchnorm_matches_formula():
    rng = np.random.default_rng(2)
    g, b, m, v = (rng.standard_normal(4).astype(np.float32) for _ in range(4))
    v = np.abs(v)
    x = rng.standard_normal((3, 5, 5, 4)).astype(np.float32)
    y = nc.BatchNorm(g, b, m, v, eps=1e-3).forward(x)
    expect = (x.astype(np.float64) - m) / np.sqrt(v.astype(np.float64) + 1e-3) * g + b
    assert np.allclose(y, expect, rtol=1e-5, atol=1e-5)


def test_flatten_orders():
    x = np.arange(2 * 2 * 3 * 4, dtype=np.float32).reshape(2, 2, 3, 4)   # NHWC
    assert np.array_equal(nc.Flatten("hwc").forward(x), x.reshape(2, -1))
    assert np.array_equal(nc.Flatten("chw").forward(x), x.transpose(0, 3, 1, 2).reshape(2, -1))


def test_relu6_and_softmax():
    x = np.array([[-1.0, 3.0, 9.0]], np.float32)
    assert np.array_equal(nc.ReLU(6.0).forward(x), [[0, 3, 6]])
    big = np.array([[1e30, -1e30, 0.0]], np.float32)
    for s in (nc.Softmax().forward(big), nc.Softmax().prepare(1, (3,))(big)):
        assert np.isfinite(s).all() and np.allclose(s.sum(), 1)


@pytest.mark.parametrize("kernel", [softmax.softmax_rows, softmax.softmax_rows_parallel])
@given(m=st.integers(1, 5), k=st.integers(1, 200), scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]),
       special=st.sampled_from([None, np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0]), seed=st.integers(0, 2**31))
def test_softmax_rows_matches_reference(kernel, m, k, scale, special, seed):
    """Within a few float32 roundings of the float64 softmax (exp's and the sum's, relative to the
    row's largest value, which is 1 or more); a NaN, a +inf or only -infs make a row NaN, as NumPy's
    formula does (a -inf among finite values is a zero probability). NaNs of either sign: the row
    maximum is taken over integer keys of the bits, where a negative NaN sorts lowest."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((m, k)) * scale).astype(np.float32)
    if special is not None:
        x[rng.integers(m), rng.integers(k)] = special
    out = np.full((m, k), -1.0, np.float32)
    kernel(x, out)
    want = ref.softmax_rows(x)
    nan = np.isnan(want).any(axis=1)
    assert np.isnan(out[nan]).all() and not np.isnan(out[~nan]).any()
    assert np.allclose(out[~nan], want[~nan], rtol=0, atol=(k + 4) * 2 ** -23)
    assert np.array_equal(nan, (np.isnan(x) | (x == np.inf)).any(axis=1) | (x == -np.inf).all(axis=1))


@pytest.mark.parametrize("kernel", [erf.erf_values, erf.erf_values_parallel])
@given(n=st.integers(1, 300), scale=st.sampled_from([1e-6, 1e-2, 1.0, 3.0, 100.0]), seed=st.integers(0, 2**31))
def test_erf_values_match_reference(kernel, n, scale, seed):
    """Within 8 float32 units in the last place of erf (kernels/erf.py: the fit measured 7 on [-6, 6]),
    for tiny, ordinary and saturated inputs; NaN stays NaN, +-inf gives +-1."""
    x = (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)
    x[:3] = np.array([np.nan, np.inf, -np.inf], np.float32)[:n]
    out = np.full(n, 7.0, np.float32)
    kernel(x, out)
    want = ref.erf_values(x)
    ok = ~np.isnan(x)
    assert np.isnan(out[~ok]).all()
    ulp = np.spacing(np.abs(want[ok]).astype(np.float32)).astype(np.float64)
    assert (np.abs(out[ok] - want[ok]) <= 8 * ulp).all()


@pytest.mark.parametrize("kernel", [erf.gelu_values, erf.gelu_values_parallel])
@given(n=st.integers(1, 300), scale=st.sampled_from([1e-6, 1e-2, 1.0, 3.0, 100.0]), seed=st.integers(0, 2**31))
def test_gelu_values_match_reference(kernel, n, scale, seed):
    """``x (1 + erf(x / sqrt 2)) / 2`` within a few float32 roundings of its float64 value: erf's 8
    units in the last place, carried by the multiply (relative to |x|, so also where GELU cancels to
    near 0 for large negative x), and in place; NaN stays NaN, +inf gives +inf, -inf NaN (the five
    ONNX nodes' -inf * 0)."""
    x = (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)
    x[:3] = np.array([np.nan, np.inf, -np.inf], np.float32)[:n]
    want = ref.gelu_values(x)
    out = x.copy()
    kernel(out)
    ok = np.isfinite(x)
    assert np.isnan(out[:min(n, 3)][[True, False, True][:n]]).all() and (n < 2 or out[1] == np.inf)
    assert (np.abs(out[ok] - want[ok]) <= 12 * 2.0 ** -24 * np.abs(x[ok]) + 1e-45).all()


@pytest.mark.parametrize("kernel", [softmax.softmax_mid, softmax.softmax_mid_parallel])
@given(o=st.integers(1, 4), k=st.integers(1, 40), i=st.integers(1, 20), scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]),
       special=st.sampled_from([None, np.nan, -np.nan, np.inf, -np.inf]), seed=st.integers(0, 2**31))
def test_softmax_mid_matches_reference(kernel, o, k, i, scale, special, seed):
    """Over the middle axis of (o, k, i), within float32 roundings of the float64 softmax; the
    NaN rules of the rows kernel for each (a, :, b) column."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((o, k, i)) * scale).astype(np.float32)
    if special is not None:
        x[rng.integers(o), rng.integers(k), rng.integers(i)] = special
    out = np.full(x.shape, -1.0, np.float32)
    kernel(x, out, np.full((o, i), 5, np.int32))
    want = ref.softmax_mid(x, out, None)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(out), nan)
    assert np.allclose(out[~nan], want[~nan], rtol=0, atol=(k + 4) * 2 ** -23)


@pytest.mark.parametrize("kernel", [rows.layernorm_rows, rows.layernorm_rows_parallel])
@given(m=st.integers(1, 5), k=st.integers(1, 200), scale=st.sampled_from([1e-3, 1.0, 1e3]), offset=st.sampled_from([0.0, 10.0]),
       affine=st.booleans(), eps=st.sampled_from([0.0, 1e-5, 1e-3]), seed=st.integers(0, 2**31))
def test_layernorm_rows_match_reference(kernel, m, k, scale, offset, affine, eps, seed):
    """Within float32 roundings of the float64 formula, relative to the normalized values' size (at
    most sqrt(k)), over small and large values, rows far from zero (the mean subtracted first), with
    and without scale and bias; a constant row with eps = 0 gives NaN (0 / 0) as NumPy's formula."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((m, k)) * scale + offset * scale).astype(np.float32)
    g, b = ((rng.standard_normal(k).astype(np.float32), rng.standard_normal(k).astype(np.float32)) if affine
            else (np.zeros(0, np.float32), np.zeros(0, np.float32)))
    out = np.full((m, k), 7.0, np.float32)
    kernel(x, g, b, np.float32(eps), out)
    want = ref.layernorm_rows(x, g, b, np.float32(eps), out)
    size = np.sqrt(k) * (1 + (np.abs(g).max() + np.abs(b).max() if affine else 0))
    ok = np.isfinite(want)
    assert (np.isnan(out) == ~ok).all()
    assert np.abs(out[ok] - want[ok]).max(initial=0) <= size * (k + 8) * 2 ** -23 * (1 + 10 * offset)


@pytest.mark.parametrize("kernel", [rows.concat_columns, rows.concat_columns_parallel])
@given(m=st.integers(1, 6), k=st.integers(1, 40), extra=st.integers(0, 40), seed=st.integers(0, 2**31))
def test_concat_columns_match_reference(kernel, m, k, extra, seed):
    rng = np.random.default_rng(seed)
    src = rng.standard_normal((m, k)).astype(np.float32)
    out = rng.standard_normal((m, k + extra)).astype(np.float32)
    at = int(rng.integers(0, extra + 1))
    want = ref.concat_columns(src, out, at)
    kernel(src, out, at)
    assert np.array_equal(out, want)


@pytest.mark.parametrize("kernel", [rows.take_columns, rows.take_columns_parallel])
@given(m=st.integers(1, 6), k=st.integers(1, 40), extra=st.integers(0, 40), seed=st.integers(0, 2**31))
def test_take_columns_match_reference(kernel, m, k, extra, seed):
    rng = np.random.default_rng(seed)
    src = rng.standard_normal((m, k + extra)).astype(np.float32)
    at = int(rng.integers(0, extra + 1))
    out = np.full((m, k), np.nan, np.float32)
    kernel(src, at, out)
    assert np.array_equal(out, ref.take_columns(src, at, out))


def test_slice_steps_match_numpy():
    """Channel slices (a Split's parts) run the compiled copy; other slices NumPy's indexing."""
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 10)).astype(np.float32)
    for starts, ends, axes, steps in (((2,), (7,), (2,), (1,)), ((-4,), (100,), (-1,), (1,)), ((0,), (9,), (2,), (2,)),
                                      ((1,), (3,), (0,), (1,)), ((0, 1), (3, 5), (0, 2), (1, 1))):
        layer = L.Slice(starts=starts, ends=ends, axes=axes, steps=steps)
        got = layer.prepare(2, x.shape[1:])(x)
        assert got.flags.c_contiguous and np.array_equal(got, layer.forward(x))


def test_concat_and_layernorm_steps_match_numpy():
    """The compiled steps of Concat (channels of NHWC maps; another axis: NumPy's) and LayerNorm
    (over the last axis or the last two, scale broadcast) against NumPy's formulas."""
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal((2, 3, 4, ch)).astype(np.float32) for ch in (5, 1, 7))
    for axis, xs in ((-1, (a, b, c)), (0, (a, a))):
        got = L.Concat(axis=axis).prepare(2, *(x.shape[1:] for x in xs))(*xs)
        assert np.array_equal(got, np.concatenate(xs, axis=axis % 3 + 1))
    x = rng.standard_normal((3, 6, 10)).astype(np.float32) + 5
    for axis, scale in ((-1, rng.standard_normal(10)), (0, rng.standard_normal((1, 10)))):
        layer = L.LayerNorm(axis=axis, scale=scale.astype(np.float32), bias=np.float32([0.5]), epsilon=1e-5)
        axes = (2,) if axis == -1 else (1, 2)
        x64 = x.astype(np.float64)
        d = x64 - x64.mean(axis=axes, keepdims=True)
        want = d / np.sqrt((d ** 2).mean(axis=axes, keepdims=True) + 1e-5) * scale + 0.5
        assert np.abs(layer.forward(x) - want).max() < 1e-5


def test_erf_layer_runs_the_kernel():
    x = np.linspace(-5, 5, 2 * 3 * 40, dtype=np.float32).reshape(2, 3, 40)
    got = L.Unary("erf").forward(x)
    assert got.dtype == np.float32 and got.shape == x.shape
    assert np.abs(got - ref.erf_values(x)).max() <= 5e-7


def test_softmax_steps_of_small_and_large_batches():
    """Over the last axis the compiled step at every size (a classifier's 4 values, a recognizer's
    40 x 18,710), and over another axis the middle-axis kernel (attention scores); the same numbers
    as NumPy's formula within rounding, and the layer's forward is the step."""
    rng = np.random.default_rng(0)
    layer = nc.Softmax()
    for n, shape in ((1, (4,)), (8, (10,)), (2, (3, 5)), (1, (40, 18710))):
        x = rng.standard_normal((n, *shape)).astype(np.float32) * 5
        step = layer.prepare(n, shape)
        assert step != layer._numpy
        assert np.allclose(step(x), layer._numpy(x), rtol=1e-5, atol=1e-7)
        assert np.array_equal(step(x), layer.forward(x))
    for axis, n, shape in ((0, 1, (3, 4)), (1, 2, (40, 40, 8)), (-3, 3, (5, 2, 7))):
        layer = nc.Softmax(axis=axis)
        x = rng.standard_normal((n, *shape)).astype(np.float32) * 5
        step = layer.prepare(n, shape)
        assert step != layer._numpy
        assert np.allclose(step(x), layer._numpy(x), rtol=1e-5, atol=1e-7)
        assert np.array_equal(step(x), layer.forward(x))


def test_bad_layer_parameters_raise_nncomp_errors():
    with pytest.raises(nc.NncompError):
        nc.Conv2D(np.zeros((4, 10), np.float32), in_channels=3, kernel_size=3)
    with pytest.raises(nc.NncompError):
        nc.Conv2D(np.zeros((4, 27), np.float32), in_channels=3, kernel_size=3, groups=2)
    with pytest.raises(nc.NncompError):
        nc.MaxPool2D(kernel_size=0)
    with pytest.raises(nc.NncompError):
        nc.Dense(np.zeros((3, 4), np.float32), np.zeros(4, np.float32))


@given(m=st.integers(0, 70), c=st.integers(1, 20), kinds=st.lists(st.integers(0, 3), min_size=1, max_size=5),
       act=st.sampled_from([1, 2, 3, 4]), seed=st.integers(0, 2**31))
def test_chain_rows_matches_reference(m, c, kinds, act, seed):
    """Ops in any order in one pass: bit for bit the layers' sequence (sigmoid: the kernel's
    rational approximation, within 3e-7 of the exact twin), serial and parallel."""
    from nncomp.kernels.epilogue import chain_rows, chain_rows_parallel
    rng = np.random.default_rng(seed)
    y = (rng.standard_normal((m, c)) * 8).astype(np.float32)
    if y.size:
        y.flat[rng.integers(0, y.size, 2)] = [np.nan, -0.0]
    kinds = np.array(kinds, np.int64)
    params = np.zeros((len(kinds), 3), np.float32)
    params[kinds == 2] = (0.0, 6.0, 0.0)
    params[kinds == 3] = (act, 0.1, 0.4)
    vecs = rng.standard_normal((len(kinds), 2, c)).astype(np.float32)
    res = rng.standard_normal((m, c)).astype(np.float32) if 1 in kinds else np.zeros((0, c), np.float32)
    want = ref.chain_rows(y, kinds, params, vecs, res)
    for kern in (chain_rows, chain_rows_parallel):
        got = y.copy()
        kern(got, kinds, params, vecs, res)
        if act == 1 and 3 in kinds:
            assert np.allclose(got, want, rtol=0, atol=3e-6 * max(1.0, np.nanmax(np.abs(want), initial=0)),
                               equal_nan=True)
        else:
            assert np.array_equal(got.view(np.int32), want.view(np.int32))


@given(v=st.floats(width=32) | st.sampled_from([np.nan, -0.0, 0.0, np.inf, -np.inf]),
       clip=st.sampled_from([(-np.inf, np.inf), (0.0, np.inf), (0.0, 6.0), (-0.0, 0.0)]))
def test_clip_value_is_numpys_maximum_then_minimum(v, clip):
    """Bit for bit, NaN passing and -0.0 clipped to +0.0 at 0, as np.maximum and np.minimum give."""
    from nncomp.kernels.epilogue import clip_value
    lo, hi = (np.float32(b) for b in clip)
    got = clip_value(np.float32(v), lo, hi)
    want = ref.clip_value(v, lo, hi)
    assert np.array_equal(np.float32(got).view(np.int32), want.view(np.int32))


@given(m=st.integers(0, 40), c=st.integers(1, 40), affine=st.booleans(), add=st.booleans(),
       clip=st.sampled_from([None, (0.0, np.inf), (0.0, 6.0)]), seed=st.integers(0, 2**31))
def test_epilogue_rows_matches_reference(m, c, affine, add, clip, seed):
    """Bit for bit the layers' own float32 sequence, NaN and -0.0 included, serial and parallel."""
    from nncomp.kernels.epilogue import epilogue_rows, epilogue_rows_parallel
    rng = np.random.default_rng(seed)
    y = (rng.standard_normal((m, c)) * 8).astype(np.float32)
    if y.size:
        y.flat[rng.integers(0, y.size, 2)] = [np.nan, -0.0]
    scale = rng.standard_normal(c).astype(np.float32) if affine else np.zeros(0, np.float32)
    shift = rng.standard_normal(c).astype(np.float32) if affine else np.zeros(0, np.float32)
    res = rng.standard_normal((m, c)).astype(np.float32) if add else np.zeros((0, c), np.float32)
    lo, hi = (np.float32(v) for v in (clip or (-np.inf, np.inf)))
    want = ref.epilogue_rows(y, scale, shift, res, lo, hi)
    for kern in (epilogue_rows, epilogue_rows_parallel):
        got = y.copy()
        kern(got, scale, shift, res, lo, hi)
        assert np.array_equal(got.view(np.int32), want.view(np.int32))


@given(co=st.integers(1, 70), k=st.integers(1, 300), affine=st.booleans(), add=st.booleans(),
       clip=st.sampled_from([None, (0.0, np.inf), (0.0, 6.0)]), act=st.sampled_from([0, 2, 3, 4]),
       seed=st.integers(0, 2**31))
def test_gemv_epilogue_matches_reference(co, k, affine, add, clip, act, seed):
    """The one-sample dense kernel (serial and parallel, gathering its input or not) against its
    twin: the sums within float32 rounding of the reassociated order (bound from the sum of
    |terms|), NaN inputs propagating."""
    from nncomp.kernels.dense_small import gemv_epilogue, gemv_epilogue_parallel
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((co, k)).astype(np.float32)
    x = rng.standard_normal(k).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32)
    scale, shift = ((rng.standard_normal(co).astype(np.float32), rng.standard_normal(co).astype(np.float32))
                    if affine else (np.zeros(0, np.float32),) * 2)
    res = rng.standard_normal((1, co)).astype(np.float32) if add else np.zeros((0, co), np.float32)
    lo, hi = (np.float32(v) for v in (clip or (-np.inf, np.inf)))
    alpha, beta = np.float32(0.2), np.float32(0.5)
    perm = rng.permutation(k) if seed % 2 else np.zeros(0, np.int64)
    want = ref.gemv_epilogue(w, x, perm, bias, scale, shift, res, lo, hi, act, alpha, beta)
    mag = (np.abs(w) @ np.abs(x) + np.abs(bias)) * (np.abs(scale) if affine else 1) + 1
    for kern in (gemv_epilogue, gemv_epilogue_parallel):
        got = np.full((1, co), np.nan, np.float32)
        kern(w, x, perm, bias, scale, shift, res, lo, hi, act, alpha, beta, got)
        assert np.all(np.abs(got - want) <= 4 * k * np.finfo(np.float32).eps * mag)
    x[rng.integers(0, k)] = np.nan
    got = np.zeros((1, co), np.float32)
    gemv_epilogue(w, x, perm, bias, scale, shift, res, np.float32(-np.inf), np.float32(np.inf), 0, alpha, beta, got)
    assert np.isnan(got).all()


@pytest.mark.parametrize("n", [1, 3])
def test_a_1x1_convolution_of_a_1x1_map_runs_as_a_mat_vec(n):
    """A classifier head as a 1x1 convolution after a global mean (PP-LCNet's 512 -> 1280, 2.6 MB):
    at one sample it runs the Dense layer's mat-vec step, with the bias and the HardSwish in its
    kernel, within float32 rounding of the float64 product; a batch, and a weight under
    conv.GEMV_MIN_BYTES (a compiled run's row), keep the blocked tiles."""
    from nncomp.layers.conv import GEMV_MIN_BYTES
    from nncomp.model import Node
    rng = np.random.default_rng(0)
    ci, co = 512, 640                       # 1.3 MB of weight
    w, b = rng.standard_normal((co, ci), np.float32) / 20, rng.standard_normal(co, np.float32)
    assert w.nbytes >= GEMV_MIN_BYTES
    conv = L.Conv2D(w, b, in_channels=ci)
    model = nc.Model([Node("mean", L.GlobalAvgPool2D(keepdims=True)), Node("head", conv, ("mean",)),
                      Node("act", L.HardSwish(), ("head",))], input_shape=(ci, 3, 3), input_layout="NCHW")
    x = rng.standard_normal((n, ci, 3, 3), np.float32)
    m = x.mean(axis=(2, 3), dtype=np.float64).astype(np.float32).astype(np.float64)
    y = m @ w.T.astype(np.float64) + b
    mag = np.abs(m) @ np.abs(w.T.astype(np.float64)) + np.abs(b)
    head = conv.prepare(n, (1, 1, ci))
    assert ("_gemv" in head.__qualname__) == (n == 1)
    assert_close_f32(head(m.astype(np.float32).reshape(n, 1, 1, ci)).reshape(n, co), y, mag, ci + 1)
    got = model(x).reshape(n, co)
    want = y * np.clip(y + 3, 0, 6) / 6
    assert np.abs(got - want).max() <= 1e-5 * np.abs(mag).max()
    small = L.Conv2D(w[:100], b[:100], in_channels=ci)         # 0.2 MB: the tiles
    assert "_gemv" not in small.prepare(1, (1, 1, ci)).__qualname__
