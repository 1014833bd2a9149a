"""Linear int8 quantization: kernels against their NumPy twins, the Int8Matrix format, quantize()."""
import numba
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import nncomp as nc
import reference as ref
from conftest import assert_close_f32
from nncomp.errors import CompressionParameterError, CorruptModelFileError, InputError
from nncomp.kernels import int8 as quant, int8_vnni as vnni
from nncomp.matrices.int8 import Int8Matrix, activation_params, pack_panels, panel_width, quantize_weights
from nncomp.compress.quantization import calibrated_range

# Under NUMBA_DISABLE_JIT the kernels run as Python loops: skip the tests that multiply big matrices.
heavy = pytest.mark.skipif(numba.config.DISABLE_JIT, reason="pure-Python kernels (NUMBA_DISABLE_JIT): too slow")
needs_vnni = pytest.mark.skipif(not vnni.HAVE_BLOCK, reason="CPU (or JIT target) lacks AVX-512 VNNI and AVX2")
MATMULS = [quant.int8_matmul_u8s8, quant.int8_matmul_u8s8_parallel,
           pytest.param(vnni.int8_matmul_u8s8_vnni, marks=needs_vnni),
           pytest.param(vnni.int8_matmul_u8s8_vnni_parallel, marks=needs_vnni)]


def _codes(rng, shape, dtype, extreme):
    lo, hi = (0, 255) if dtype == np.uint8 else (-128, 127)
    if extreme:   # worst case for overflow: every product at its largest magnitude
        return np.full(shape, lo if dtype == np.int8 else hi, dtype)
    return rng.integers(lo, hi + 1, size=shape).astype(dtype)


# ----------------------------------------------------------------------------- kernels
def _panels(rng, n_panels, width, k, extreme=False):
    return pack_panels(_codes(rng, (n_panels * width, k), np.int8, extreme), width)


@pytest.mark.parametrize("kernel", MATMULS)
@given(n=st.integers(1, 11), n_panels=st.integers(1, 3), width=st.sampled_from([16, 32, 48, 64]),
       groups=st.integers(1, 40), seed=st.integers(0, 2**31), extreme=st.booleans(), k0_groups=st.integers(0, 3))
@example(n=1, n_panels=1, width=16, groups=1, seed=0, extreme=True, k0_groups=0)
def test_int8_matmul_u8s8_matches_reference(kernel, n, n_panels, width, groups, seed, extreme, k0_groups):
    rng = np.random.default_rng(seed)
    k = 4 * (groups + k0_groups)
    xu, wp = _codes(rng, (n, k), np.uint8, extreme), _panels(rng, n_panels, width, k, extreme)
    out = rng.integers(-1000, 1000, size=(n, n_panels * width)).astype(np.int32)
    expect = ref.int8_matmul_u8s8(xu, wp, 4 * k0_groups, k, out)
    kernel(xu, wp, 4 * k0_groups, k, out)
    assert np.array_equal(out, expect)


@heavy
@pytest.mark.parametrize("kernel", MATMULS)
def test_int8_matmul_u8s8_longest_block_is_exact(kernel):
    # 65536 products of 255 * -128: -2,139,095,040, just inside int32.
    xu = np.full((5, 65536), 255, np.uint8)
    wp = pack_panels(np.full((16, 65536), -128, np.int8), 16)
    out = np.zeros((5, 16), np.int32)
    kernel(xu, wp, 0, 65536, out)
    assert (out == -255 * 128 * 65536).all()


@needs_vnni
@given(n=st.integers(1, 140), n_out=st.integers(1, 150), groups=st.integers(1, 300), seed=st.integers(0, 2**31))
@example(n=70, n_out=130, groups=700, seed=1)     # several k-blocks and row tiles, every tail shape
def test_int8_matmul_u8s8_vnni_matches_reference(n, n_out, groups, seed):
    """Larger shapes than the shared test: several k-blocks and row tiles; VNNI == portable == twin."""
    rng = np.random.default_rng(seed)
    xu = _codes(rng, (n, 4 * groups), np.uint8, False)
    wp = pack_panels(_codes(rng, (n_out, 4 * groups), np.int8, False), panel_width(n_out))
    a = np.zeros((n, wp.shape[0] * wp.shape[2] // 4), np.int32)
    b = a.copy()
    quant.int8_matmul_u8s8_parallel(xu, wp, 0, 4 * groups, a)
    vnni.int8_matmul_u8s8_vnni_parallel(xu, wp, 0, 4 * groups, b)
    assert np.array_equal(a, b) and np.array_equal(b, ref.int8_matmul_u8s8(xu, wp, 0, 4 * groups, np.zeros_like(b)))


@pytest.mark.parametrize("kernel", [quant.int8_quantize, quant.int8_quantize_parallel])
@given(n=st.integers(1, 4), k=st.integers(1, 70), pad=st.integers(0, 70), seed=st.integers(0, 2**31),
       log2_scale=st.integers(-6, 3), zero=st.integers(0, 255), nonfinite=st.booleans())
def test_int8_quantize_matches_reference(kernel, n, k, pad, seed, log2_scale, zero, nonfinite):
    rng = np.random.default_rng(seed)
    scale = np.float32(2.0 ** log2_scale)
    # Half-integer multiples of a power-of-two scale are exact ties; wide values saturate.
    x = (rng.integers(-600, 600, size=(n, k)) / 2 * scale).astype(np.float32)
    x[rng.random((n, k)) < 0.3] = rng.standard_normal() * 50
    if nonfinite:
        x.flat[rng.integers(0, x.size, 2)] = [np.nan, -np.inf]
    out = np.empty((n, k + pad), np.uint8)
    bad = kernel(x, scale, zero, 0, 255, out)
    expect, expect_bad = ref.int8_quantize(x, scale, zero, 0, 255, k + pad)
    assert bad == expect_bad
    finite = np.isfinite(np.pad(x, ((0, 0), (0, pad)), constant_values=0))
    assert np.array_equal(out[finite], expect[finite])


def test_quantize_rounds_ties_to_even_and_saturates():
    x = np.array([[0.25, 0.75, 1.25, -0.25, -0.75, -1.25, 1000.0, -1000.0, 0.0]], np.float32)
    out = np.empty((1, 9), np.uint8)
    quant.int8_quantize(x, np.float32(0.5), 10, 0, 255, out)
    # x / 0.5 = 0.5, 1.5, 2.5, -0.5, -1.5, -2.5 -> 0, 2, 2, -0, -2, -2 (half to even); then + 10
    assert out.tolist() == [[10, 12, 12, 10, 8, 8, 255, 0, 10]]


@pytest.mark.parametrize("kernel", [quant.int8_dequantize, quant.int8_dequantize_parallel])
@given(n=st.integers(1, 5), n_out=st.integers(1, 6), seed=st.integers(0, 2**31), per_row=st.booleans(),
       wide=st.booleans(), zero=st.integers(0, 255))
def test_int8_dequantize_matches_reference(kernel, n, n_out, seed, per_row, wide, zero):
    rng = np.random.default_rng(seed)
    pad = int(rng.integers(0, 20))     # padded accumulator columns are ignored
    acc = rng.integers(-2**31, 2**31, size=(n, n_out + pad)).astype(np.int64 if wide else np.int32)
    if wide:
        acc *= 7
    colsum = rng.integers(-10**6, 10**6, size=n_out + pad).astype(np.int64)
    scale = rng.uniform(1e-4, 1, size=n_out if per_row else 1).astype(np.float32)
    xscale = np.float32(rng.uniform(1e-3, 1))
    out = np.empty((n, n_out), np.float32)
    kernel(acc, zero, colsum, xscale, scale, out)
    assert np.array_equal(out, ref.int8_dequantize(acc, zero, colsum, xscale, scale, n_out))


@pytest.mark.parametrize("kernel", [quant.int8_matmul_float, quant.int8_matmul_float_parallel])
@given(n=st.integers(1, 9), n_out=st.integers(1, 7), k=st.integers(1, 150), seed=st.integers(0, 2**31),
       integer=st.booleans(), per_row=st.booleans())
def test_int8_matmul_float_matches_reference(kernel, n, n_out, k, seed, integer, per_row):
    rng = np.random.default_rng(seed)
    w = rng.integers(-127, 128, size=(n_out, k)).astype(np.int8)
    if integer:   # exact by construction
        x = rng.integers(-4, 5, size=(n, k)).astype(np.float32)
        scale = np.ones(n_out if per_row else 1, np.float32)
    else:
        x = rng.standard_normal((n, k)).astype(np.float32)
        scale = rng.uniform(1e-3, 1, size=n_out if per_row else 1).astype(np.float32)
    out = np.empty((n, n_out), np.float32)
    kernel(x, w, scale, out)
    expect = ref.int8_matmul_float(x, w, scale)
    if integer:
        assert np.array_equal(out, expect)
    else:
        mag = ref.int8_matmul_float(np.abs(x), np.abs(w.astype(np.int16)).astype(np.int8), scale)
        assert_close_f32(out, expect, mag, k + 1)


# ----------------------------------------------------------------------------- weights
@given(n_out=st.integers(1, 6), n_in=st.integers(1, 40), seed=st.integers(0, 2**31), per_channel=st.booleans(),
       log_mag=st.integers(-30, 30))
def test_weight_quantization_invariants(n_out, n_in, seed, per_channel, log_mag):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n_out, n_in)) * 10.0 ** (log_mag / 3)).astype(np.float32)
    q, scale = quantize_weights(w, per_channel)
    assert q.dtype == np.int8 and np.abs(q.astype(int)).max() <= 127
    assert scale.shape == ((n_out,) if per_channel else (1,))
    assert np.isfinite(scale).all() and (scale > 0).all()
    s = scale[:, None] if per_channel else scale[0]
    deq = Int8Matrix.from_codes(q, scale).to_dense()
    assert (np.abs(deq.astype(np.float64) - w) <= s * (0.5 + 1e-5)).all()
    assert len(np.unique(q)) <= 255


def test_weight_ties_round_half_to_even():
    w = np.array([[63.5, 1.25, 1.75, -1.25, 0.25]], np.float32)   # amax 63.5 -> scale 0.5 exactly
    q, scale = quantize_weights(w)
    assert scale[0] == 0.5 and q.tolist() == [[127, 2, 4, -2, 0]]


@pytest.mark.parametrize("per_channel", [True, False])
def test_zero_constant_and_subnormal_layers(per_channel):
    w = np.array([[0.0] * 4, [0.3] * 4, [-0.3, 0.3, 0.0, 0.3], [1e-40, -1e-42, 0.0, 1e-39]], np.float32)
    rows = [w[i:i + 1] for i in range(4)] if not per_channel else [w]
    for part in rows:
        q, scale = quantize_weights(part, per_channel)
        assert np.isfinite(scale).all() and (scale > 0).all()
        m = Int8Matrix.from_codes(q, scale)
        x = np.ones((2, 4), np.float32)
        assert np.isfinite(m.apply(x)).all()
    q, scale = quantize_weights(w, per_channel)
    if per_channel:
        assert scale[0] == 1.0 and scale[3] == 1.0 and not q[[0, 3]].any()   # zero and subnormal rows
        deq = Int8Matrix.from_codes(q, scale).to_dense()
        assert np.array_equal(deq[:3], w[:3])                                # constant magnitude: exact
        assert np.array_equal(deq[3], np.zeros(4, np.float32))               # subnormals flush to 0
    for p in (np.zeros((3, 5), np.float32), np.full((3, 5), -2.7, np.float32)):
        q, scale = quantize_weights(p, per_channel)
        assert np.array_equal(Int8Matrix.from_codes(q, scale).to_dense(), p)


# ----------------------------------------------------------------------------- the matrix
def _expected_apply(m, x):
    """The specified arithmetic, from the twins: quantize, exact int64 product, dequantize."""
    if m.activations == "static":
        sx, z = m.act_scale, m.act_zero
    else:
        sx, z = activation_params(x.min(), x.max(), m.act_dtype)
    xu, _ = ref.int8_quantize(x, sx, z, 0, 255, x.shape[1])
    acc = xu.astype(np.int64) @ m.q.astype(np.int64).T
    colsum = m.q.astype(np.int64).sum(axis=1)
    return ref.int8_dequantize(acc, z, colsum, sx, m.scale)


@given(n=st.integers(1, 6), n_out=st.integers(1, 9), n_in=st.integers(1, 200), seed=st.integers(0, 2**31),
       mode=st.sampled_from(["dynamic", "static"]), act_dtype=st.sampled_from(["uint8", "int8"]),
       per_channel=st.booleans(), relu=st.booleans())
def test_int8_matrix_apply_is_the_specified_arithmetic(n, n_out, n_in, seed, mode, act_dtype, per_channel, relu):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    x = rng.standard_normal((n, n_in)).astype(np.float32) * 3
    if relu:
        x = np.maximum(x, 0)
    m = Int8Matrix.from_float(w, per_channel=per_channel, activations=mode, act_dtype=act_dtype,
                              act_range=(-2.0, 2.5) if mode == "static" else None)   # static: some saturate
    y = m.apply(x)
    assert np.array_equal(y, _expected_apply(m, x))
    # against float: each activation is off by at most sx/2 (inside the range)
    if mode == "dynamic":
        sx, _ = activation_params(x.min(), x.max(), act_dtype)
        bound = (np.abs(m.to_dense()).sum(axis=1) * (sx * 0.5001) + 1e-5 * np.abs(y).max())
        assert (np.abs(y - x @ m.to_dense().T) <= bound).all()


def test_static_inputs_outside_the_range_saturate():
    m = Int8Matrix.from_codes(np.array([[1, -1]], np.int8), np.ones(1, np.float32), "static", "uint8", 0.5, 10)
    x = np.array([[1000.0, -1000.0], [-1000.0, 1000.0], [4.0, 1.0]], np.float32)
    # codes: 255, 0 | 0, 255 | 18, 12 -> (u - 10) . (1, -1) * 0.5
    assert m.apply(x).tolist() == [[127.5], [-127.5], [3.0]]


def test_weight_only_matches_the_dequantized_weights():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((20, 300)).astype(np.float32)
    x = rng.standard_normal((7, 300)).astype(np.float32)
    m = Int8Matrix.from_float(w, activations="float")
    d = m.to_dense().astype(np.float64)
    assert_close_f32(m.apply(x), x @ d.T, np.abs(x) @ np.abs(d).T, 301)


@heavy
def test_rows_longer_than_a_block_accumulate_in_int64():
    k = 70000      # 70000 * 255 * 127 > 2**31: needs the int64 block sum
    m = Int8Matrix.from_codes(np.full((2, k), 127, np.int8), np.ones(2, np.float32), "static", "uint8", 1.0, 0)
    y = m.apply(np.full((1, k), 300.0, np.float32))      # saturates to code 255
    assert y.tolist() == [[float(np.float32(255 * 127 * k))] * 2]


@pytest.mark.parametrize("mode", ["float", "dynamic", "static"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_inputs_are_refused(mode, bad):
    m = Int8Matrix.from_float(np.ones((3, 70), np.float32), activations=mode,
                              act_range=(-1, 1) if mode == "static" else None)
    x = np.zeros((2, 70), np.float32)
    x[1, 69] = bad
    with pytest.raises(InputError):
        m.apply(x)
    model = nc.Model([nc.Node("fc", nc.Dense(m, np.zeros(3, np.float32)))], input_shape=(70,), input_layout="NC")
    with pytest.raises(InputError):
        model(x)


@heavy
def test_vnni_and_portable_paths_and_thread_counts_agree(monkeypatch):
    rng = np.random.default_rng(5)
    m = Int8Matrix.from_float(rng.standard_normal((300, 1000)).astype(np.float32))
    x = rng.standard_normal((9, 1000)).astype(np.float32)
    y = m.apply(x)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        y1 = m.apply(x)
    finally:
        numba.set_num_threads(threads)
    monkeypatch.setattr(vnni, "HAVE_BLOCK", False)
    assert np.array_equal(y, y1) and np.array_equal(y, m.apply(x))
    f = Int8Matrix.from_float(rng.standard_normal((300, 1000)).astype(np.float32), activations="float")
    y = f.apply(x)
    try:
        numba.set_num_threads(1)
        assert np.array_equal(y, f.apply(x))     # same build, any thread count: same bits
    finally:
        numba.set_num_threads(threads)


@pytest.mark.parametrize("mode", ["float", "dynamic", "static"])
def test_zero_inputs_and_zero_weights_give_the_bias_exactly(mode):
    rng = np.random.default_rng(2)
    bias = rng.standard_normal(5).astype(np.float32)
    for w, x in ((rng.standard_normal((5, 33)), np.zeros((3, 33))), (np.zeros((5, 33)), rng.standard_normal((3, 33)))):
        m = Int8Matrix.from_float(w.astype(np.float32), activations=mode,
                                  act_range=(-4, 4) if mode == "static" else None)
        layer = nc.Dense(m, bias)
        assert np.array_equal(layer.forward(x.astype(np.float32)), np.broadcast_to(bias, (3, 5)))


def test_nbytes_packing_and_padding():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((10, 101)).astype(np.float32)
    m = Int8Matrix.from_float(w)          # 10 rows -> one 16-channel panel; 101 inputs -> 26 groups of 4
    assert m.shape == (10, 101) and m.packed.shape == (1, 26, 64)
    assert np.array_equal(m.q, quantize_weights(w)[0])
    assert m.nbytes == 16 * 104 + 10 * 4 + 16 * 8
    f = Int8Matrix.from_float(w, activations="float", per_channel=False)
    assert f.packed.shape == (10, 101) and f.nbytes == 1010 + 4
    assert [panel_width(n) for n in (1, 16, 17, 40, 64, 100, 300, 1000, 4096)] == [16] * 9
    q = rng.integers(-127, 128, size=(70, 9)).astype(np.int8)
    assert np.array_equal(ref.unpack(pack_panels(q, 48))[:70, :9], q)
    with pytest.raises(CompressionParameterError):   # packed codes that do not fit the shape
        Int8Matrix(m.packed, (10, 200), m.scale)


def test_bad_fields_are_refused():
    q, s = np.zeros((2, 3), np.int8), np.ones(2, np.float32)
    for args in [(q.astype(np.int16), s), (q, s * 0), (q, s * np.nan), (q, -s), (q, np.ones(3, np.float32)),
                 (q, s, "sometimes"), (q, s, "dynamic", "int4"), (q, s, "static"), (q, s, "static", "int8", 1.0, 3),
                 (q, s, "static", "uint8", 1.0, 256), (q, s, "dynamic", "uint8", 1.0, 0), (q[:0], s)]:
        with pytest.raises(CompressionParameterError):
            Int8Matrix.from_codes(*args)
    with pytest.raises(CompressionParameterError):
        Int8Matrix.from_float(np.array([[1.0, np.nan]], np.float32))


def test_from_arrays_validates_and_round_trips():
    m = Int8Matrix.from_float(np.arange(12, dtype=np.float32).reshape(3, 4), activations="static", act_range=(0, 5))
    arrays, attrs = m.to_arrays()
    back = Int8Matrix.from_arrays(arrays, attrs)
    x = np.linspace(-1, 6, 8, dtype=np.float32).reshape(2, 4)
    assert np.array_equal(back.apply(x), m.apply(x)) and back.nbytes == m.nbytes
    corrupt = [dict(arrays, scale=np.zeros(3, np.float32)), dict(arrays, scale=np.full(3, np.inf, np.float32)),
               dict(arrays, q=arrays["q"].astype(np.float32)), dict(arrays, act_zero=np.array([300], np.int32)),
               {k: v for k, v in arrays.items() if k != "act_scale"}, dict(arrays, act_scale=np.array([-1], np.float32))]
    for a in corrupt:
        with pytest.raises(CorruptModelFileError):
            Int8Matrix.from_arrays(a, attrs)
    for at in [dict(attrs, activations="never"), dict(attrs, act_dtype="u4"), {}]:
        with pytest.raises(CorruptModelFileError):
            Int8Matrix.from_arrays(arrays, at)


# ----------------------------------------------------------------------------- quantize()
@pytest.fixture(scope="module")
def lenet300():
    model = nc.load(nc.data.model_path("lenet300"))
    calib, _ = nc.data.mnist("train", layout="NC")
    x, y = nc.data.mnist("test", layout="NC")
    return model, calib[:512], x, y


@pytest.mark.parametrize("bits", [True, False, 0, 4, 33, 8.5, "8", None])
def test_quantize_rejects_bits(lenet300, bits):
    with pytest.raises(CompressionParameterError):
        nc.quantize(lenet300[0], bits=bits)


@pytest.mark.parametrize("kw", [dict(activations="static"), dict(activations="lazy"), dict(method="kl"),
                                dict(weights_only="yes"), dict(per_channel=1), dict(percentile=40),
                                dict(percentile=float("nan")), dict(activation_dtype="int4"),
                                dict(layers=["relu"]), dict(layers=["nope"]), dict(calibration=np.zeros((0, 784))),
                                dict(calibration=np.full((2, 784), np.nan))])
def test_quantize_rejects_bad_parameters(lenet300, kw):
    with pytest.raises(CompressionParameterError):
        nc.quantize(lenet300[0], **kw)


@heavy
def test_quantize_static_accuracy_and_immutability(lenet300):
    model, calib, x, y = lenet300
    before = model["fc1"].layer.weight.w.copy()
    q = nc.quantize(model, activations="static", calibration=calib)
    assert np.array_equal(model["fc1"].layer.weight.w, before)
    assert all(q[n].layer.weight.format == "int8" for n in ("fc1", "fc2", "fc3"))
    acc_float = (model(x).argmax(1) == y).mean()
    acc_q = (q(x).argmax(1) == y).mean()
    assert acc_q >= acc_float - 0.003
    again = nc.quantize(model, activations="static", calibration=calib)
    assert np.array_equal(q(x[:50]), again(x[:50]))
    assert q.nbytes < model.nbytes / 3.5


@heavy
def test_bias_correction_removes_the_mean_error(lenet300):
    model, calib, _, _ = lenet300
    target = model(calib).astype(np.float64)
    errs = []
    for bc in (False, True):
        q = nc.quantize(model, activations="static", calibration=calib, bias_correction=bc, per_channel=False)
        errs.append(np.abs((q(calib) - target).mean(axis=0)).mean())
    assert errs[1] < errs[0]


@heavy
def test_quantize_layers_and_modes(lenet300, tmp_path):
    model, calib, x, _ = lenet300
    q = nc.quantize(model, layers=["fc2"], weights_only=True)
    assert q["fc1"].layer.weight.format == "dense" and q["fc2"].layer.weight.describe() == "int8 w8 float-act"
    d = nc.quantize(model, activation_dtype="int8", per_channel=False)
    assert d["fc1"].layer.weight.describe() == "int8 w8a8 dynamic int8 per-tensor"
    s = nc.quantize(model, activations="static", calibration=calib, method="mse")
    nc.save(s, tmp_path / "q.h5")
    assert np.array_equal(nc.load(tmp_path / "q.h5")(x[:20]), s(x[:20]))


@heavy
def test_quantize_convolutions():
    rng = np.random.default_rng(0)
    conv = nc.Conv2D(rng.standard_normal((8, 3 * 3 * 2)).astype(np.float32), np.zeros(8, np.float32),
                     in_channels=2, kernel_size=3, padding=1)
    model = nc.Model([nc.Node("conv", conv), nc.Node("relu", nc.ReLU(), ("conv",))],
                     input_shape=(2, 9, 9), input_layout="NCHW")
    x = rng.standard_normal((6, 2, 9, 9)).astype(np.float32)
    for kw in (dict(), dict(activations="static", calibration=x, method="percentile")):
        q = nc.quantize(model, **kw)
        assert q["conv"].layer.weight.format == "int8"
        ref_y = model(x)
        assert np.abs(q(x) - ref_y).max() <= 0.03 * np.abs(ref_y).max()


def test_quantize_refuses_nonfinite_weights():
    w = np.ones((3, 4), np.float32)
    w[1, 2] = np.inf
    model = nc.Model([nc.Node("fc", nc.Dense(w))], input_shape=(4,), input_layout="NC")
    with pytest.raises(CompressionParameterError, match="fc"):
        nc.quantize(model)


def test_calibrated_ranges():
    v = np.concatenate([np.linspace(-1, 1, 10001), [40.0]]).astype(np.float32)
    assert calibrated_range(v, "minmax") == (-1.0, 40.0)
    lo, hi = calibrated_range(v, "percentile", percentile=99.9)
    assert -1 <= lo < -0.99 and 0.99 < hi < 40
    lo, hi = calibrated_range(v, "mse")
    assert -1 <= lo and hi < 40      # clipping the lone outlier costs less than coarse steps


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 12), co=st.integers(1, 20), k=st.sampled_from([1, 3]), stride=st.integers(1, 2),
       pad=st.integers(0, 1), act_dtype=st.sampled_from(["uint8", "int8"]), seed=st.integers(0, 2 ** 31))
def test_int8_convolutions_quantize_the_image_once_to_the_same_bits(c, co, k, stride, pad, act_dtype, seed):
    """Static activations (dynamic ones keep float patches, whose range a strided window may not
    span): patches of the quantized image are the quantized patches (the padding is the zero point), so
    the int8 conv's product equals quantizing the float patch matrix, to the bit."""
    from nncomp.layers import conv_algorithms as A
    from nncomp.matrices.int8 import Int8Matrix
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 7, 6, c)).astype(np.float32)
    w = Int8Matrix.from_float(rng.standard_normal((co, k * k * c)).astype(np.float32), act_dtype=act_dtype,
                              activations="static", act_range=(-2.0, 3.0))
    conv = nc.Conv2D(w, in_channels=c, kernel_size=k, stride=stride, padding=pad)
    oh, ow, _ = conv.shape_of(x.shape[1:])
    want = A.patch_product(x, conv.window, oh, ow, w.apply)
    assert np.array_equal(A.int8_patch_product(x, conv.window, oh, ow, w), want)
    assert np.array_equal(A.forward(conv, x).reshape(want.shape), want)


def test_activation_code_helpers_refuse_what_their_kernels_cannot_read():
    rng = np.random.default_rng(3)
    w = Int8Matrix.from_float(rng.standard_normal((8, 10)).astype(np.float32), activations="static",
                              act_range=(-1.0, 1.0))
    x = rng.standard_normal((3, 10)).astype(np.float32)
    xu, sx, z = w.quantize_rows(x, w.code_width)
    assert xu.shape == (3, 12) and np.array_equal(w.product_codes(xu, sx, z), w.apply(x))
    for bad_x, width in ((x.astype(np.float64), 12), (x, 9), (x[:, ::2], 12), (x[0], 12)):
        with pytest.raises(InputError, match="quantize_rows needs"):
            w.quantize_rows(bad_x, width)
    for bad in (xu[:, :10], xu.astype(np.int8), np.asfortranarray(xu), xu[0]):
        with pytest.raises(InputError, match="product_codes needs"):
            w.product_codes(bad, sx, z)
    floaty = Int8Matrix.from_float(rng.standard_normal((8, 10)).astype(np.float32), activations="float")
    with pytest.raises(InputError, match="float activations"):
        floaty.quantize_rows(x, 12)
