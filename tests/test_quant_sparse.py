"""Sparse int8 ("prune + int8"): kernels against their twins, CSRInt8Matrix, quantize() on pruned models."""
import numba
import numpy as np
import pytest
from hypothesis import example, given, strategies as st

import nncomp as nc
import reference as ref
from conftest import assert_close_f32
from nncomp.errors import CompressionParameterError, CorruptModelFileError, InputError
from nncomp.kernels import csr_int8 as K
from nncomp.matrices.csr import CSRMatrix
from nncomp.matrices.csr_int8 import CSRInt8Matrix, quantize_rows
from nncomp.matrices.int8 import Int8Matrix, quantize_weights

heavy = pytest.mark.skipif(numba.config.DISABLE_JIT, reason="pure-Python kernels (NUMBA_DISABLE_JIT): too slow")


def random_sparse(rng, n_out, n_in, density, empty_row=True):
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    w[rng.random((n_out, n_in)) >= density] = 0
    if empty_row and n_out > 1:
        w[rng.integers(0, n_out)] = 0
    return w


@st.composite
def problems(draw, max_n=80):
    """(codes, indices, indptr, scale, x float, xu uint8, integer) for random sparse code matrices."""
    n_out = draw(st.integers(1, 40))
    n_in = draw(st.sampled_from([1, 3, 17, 64, 300, 70000]))   # 70000 > 65536: int32 indices
    n = draw(st.integers(1, max_n))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    if n_in == 70000:
        n_out, n, density = min(n_out, 4), min(n, 20), min(density, 0.01)
    m = CSRMatrix.from_dense(random_sparse(rng, n_out, n_in, density))
    extreme = draw(st.booleans())     # every product at its largest magnitude
    codes = (np.full(m.nnz, -127, np.int8) if extreme else rng.integers(-127, 128, m.nnz).astype(np.int8))
    xu = np.full((n, n_in), 255, np.uint8) if extreme else rng.integers(0, 256, (n, n_in)).astype(np.uint8)
    integer = draw(st.booleans())
    scale = (np.ones(n_out, np.float32) if integer else
             rng.uniform(1e-3, 1, size=draw(st.sampled_from([1, n_out]))).astype(np.float32))
    x = (rng.integers(-4, 5, (n, n_in)) if integer else rng.standard_normal((n, n_in))).astype(np.float32)
    return codes, m.indices, m.indptr, scale, x, xu, integer


def _k(indptr):
    return max(1, int(np.diff(indptr).max(initial=1)))


def check_float(out, codes, indices, indptr, scale, x, twin, integer):
    expect = twin(codes, indices, indptr, scale, x)
    if integer:   # small integers, unit scales: exact whatever the summation order
        assert np.array_equal(out, expect.astype(np.float32))
    mag = twin(np.abs(codes.astype(np.int16)).astype(np.int8), indices, indptr, scale, np.abs(x))
    assert_close_f32(out, expect, mag, _k(indptr) + 1)


# ----------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("kernel", [K.csr_int8_matvec_float_chunked, K.csr_int8_matvec_float_chunked_parallel,
                                    K.csr_int8_matvec_float_rows, K.csr_int8_matvec_float_rows_parallel])
@given(p=problems(max_n=1))
def test_csr_int8_matvec_float_matches_reference(kernel, p):
    codes, indices, indptr, scale, x, _, integer = p
    out = np.full(indptr.shape[0] - 1, np.nan, np.float32)
    kernel(codes, indices, indptr, scale, x[0], out)
    check_float(out, codes, indices, indptr, scale, x[0], ref.csr_int8_matvec_float, integer)


@pytest.mark.parametrize("kernel", [K.csr_int8_matmul_float, K.csr_int8_matmul_float_parallel])
@given(p=problems())
@example(p=(np.array([3, -127, 5], np.int8), np.array([0, 1, 2], np.uint16), np.array([0, 1, 3, 3], np.int32),
            np.ones(3, np.float32), np.arange(3 * 130, dtype=np.float32).reshape(130, 3) % 7, None, True))
def test_csr_int8_matmul_float_matches_reference(kernel, p):
    codes, indices, indptr, scale, x, _, integer = p
    out = np.full((x.shape[0], indptr.shape[0] - 1), np.nan, np.float32)
    kernel(codes, indices, indptr, scale, x, out)
    check_float(out, codes, indices, indptr, scale, x, ref.csr_int8_matmul_float, integer)


@pytest.mark.parametrize("kernel", [K.csr_int8_matvec_u8s8, K.csr_int8_matvec_u8s8_parallel])
@pytest.mark.parametrize("packed", [False, True])
@given(p=problems(max_n=1))
def test_csr_int8_matvec_u8s8_matches_reference(kernel, packed, p):
    codes, indices, indptr, _, _, xu, _ = p
    out = np.full(indptr.shape[0] - 1, -1, np.int64)
    if packed:
        xw = np.full(-(-xu.shape[1] // 4) * 4, 255, np.uint8)     # padding codes are never read
        xw[:xu.shape[1]] = xu[0]
        xw = xw.view(np.int32)
    else:
        xw = xu[0].astype(np.int32)
    kernel(codes, indices, indptr, xw, packed, out)
    assert np.array_equal(out, ref.csr_int8_matvec_u8s8(codes, indices, indptr, xw, packed))


@pytest.mark.parametrize("kernel", [K.csr_int8_matmul_u8s8, K.csr_int8_matmul_u8s8_parallel])
@given(p=problems())
@example(p=(np.array([3, -127, 5], np.int8), np.array([0, 1, 2], np.uint16), np.array([0, 1, 3, 3], np.int32),
            None, None, (np.arange(3 * 130).reshape(130, 3) % 256).astype(np.uint8), True))
def test_csr_int8_matmul_u8s8_matches_reference(kernel, p):
    codes, indices, indptr, _, _, xu, _ = p
    out = np.full((xu.shape[0], indptr.shape[0] - 1), -1, np.int64)
    kernel(codes, indices, indptr, xu, out)
    assert np.array_equal(out, ref.csr_int8_matmul_u8s8(codes, indices, indptr, xu))


@heavy
@pytest.mark.parametrize("n", [1, 3])
def test_rows_longer_than_an_int32_block_are_exact(n):
    k = 70000    # 70000 * 255 * 127 > 2**31: needs the int64 sum across blocks of 65536 nonzeros
    m = CSRInt8Matrix(np.full(2 * k, 127, np.int8), np.tile(np.arange(k, dtype=np.int32), 2),
                      np.array([0, k, 2 * k], np.int32), (2, k), np.ones(2, np.float32), "static", "uint8", 1.0, 0)
    y = m.apply(np.full((n, k), 300.0, np.float32))      # saturates to code 255
    assert y.tolist() == [[float(np.float32(255 * 127 * k))] * 2] * n


# ----------------------------------------------------------------------------- the format
@given(n_out=st.integers(1, 12), n_in=st.integers(1, 300), density=st.sampled_from([0.0, 0.02, 0.1, 0.5, 1.0]),
       per_channel=st.booleans(), log_mag=st.integers(-30, 30), seed=st.integers(0, 2**31))
@example(n_out=9, n_in=207, density=1.0, per_channel=True, log_mag=3, seed=126313)   # a rounding tie
def test_quantized_rows_keep_the_pattern_and_the_int8_rules(n_out, n_in, density, per_channel, log_mag, seed):
    rng = np.random.default_rng(seed)
    w = random_sparse(rng, n_out, n_in, density) * np.float32(10.0 ** (log_mag / 3))
    csr = CSRMatrix.from_dense(w)
    m = CSRInt8Matrix.from_csr(csr, per_channel=per_channel)
    assert np.array_equal(m.indices, csr.indices) and np.array_equal(m.indptr, csr.indptr)
    assert m.codes.dtype == np.int8 and (m.codes >= -127).all()
    assert np.isfinite(m.scale).all() and (m.scale > 0).all()
    # the codes and scales are exactly those of the dense quantizer at the nonzeros
    q, scale = quantize_weights(w, per_channel)
    assert np.array_equal(m.scale, scale)
    assert np.array_equal(m.codes, q[np.nonzero(w)])
    rows = np.repeat(np.arange(n_out), np.diff(m.indptr))
    s = m.scale[rows] if per_channel else m.scale[0]
    deq = m.to_dense()[np.nonzero(w)]
    # half a step, plus the float32 rounding of the dequantized value (a tie such as -57.5 steps
    # rounds to -58 and lands a hair past half a step: found by hypothesis in a CI run)
    assert (np.abs(deq.astype(np.float64) - csr.data)
            <= s.astype(np.float64) * (0.5 + 1e-6) + np.abs(deq.astype(np.float64)) * 2.0 ** -23).all()
    assert np.array_equal(np.nonzero(m.to_dense())[0].size <= csr.nnz, True)
    for o in range(n_out):
        assert len(np.unique(m.codes[m.indptr[o]:m.indptr[o + 1]])) <= 255


def test_row_blocks_of_the_quantizer():
    rng = np.random.default_rng(4)
    w = random_sparse(rng, 300, 2000, 0.05)
    w[7] = rng.standard_normal(2000)          # one dense row: a long padded block
    csr = CSRMatrix.from_dense(w)
    import nncomp.matrices.csr_int8 as mod
    old = mod.PAD_ELEMENTS
    try:
        mod.PAD_ELEMENTS = 3000               # many blocks, one of them a single long row
        codes, scale = quantize_rows(csr.data, csr.indptr)
    finally:
        mod.PAD_ELEMENTS = old
    q, s = quantize_weights(w)
    assert np.array_equal(codes, q[np.nonzero(w)]) and np.array_equal(scale, s)


@given(n=st.integers(1, 70), n_out=st.integers(1, 20), n_in=st.integers(1, 200), seed=st.integers(0, 2**31),
       mode=st.sampled_from(["dynamic", "static"]), act_dtype=st.sampled_from(["uint8", "int8"]),
       per_channel=st.booleans(), relu=st.booleans())
def test_integer_apply_equals_the_dense_int8_format_bit_for_bit(n, n_out, n_in, seed, mode, act_dtype,
                                                                per_channel, relu):
    """Same codes, same activation codes, same exact sums: the sparse layer gives Int8Matrix's bits."""
    rng = np.random.default_rng(seed)
    w = random_sparse(rng, n_out, n_in, 0.2)
    x = rng.standard_normal((n, n_in)).astype(np.float32) * 3
    if relu:
        x = np.maximum(x, 0)
    kw = dict(per_channel=per_channel, activations=mode, act_dtype=act_dtype,
              act_range=(-2.0, 2.5) if mode == "static" else None)
    m = CSRInt8Matrix.from_csr(CSRMatrix.from_dense(w), **kw)
    d = Int8Matrix.from_float(w, **kw)
    assert np.array_equal(m.to_dense(), d.to_dense())
    assert np.array_equal(m.apply(x), d.apply(x))


@pytest.mark.parametrize("n", [1, 5, 70])
def test_weight_only_matches_the_dequantized_weights(n):
    rng = np.random.default_rng(3)
    m = CSRInt8Matrix.from_csr(CSRMatrix.from_dense(random_sparse(rng, 20, 300, 0.1)), activations="float")
    x = rng.standard_normal((n, 300)).astype(np.float32)
    d = m.to_dense().astype(np.float64)
    assert_close_f32(m.apply(x), x @ d.T, np.abs(x) @ np.abs(d).T, 301)


@pytest.mark.parametrize("mode", ["float", "dynamic", "static"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("n", [1, 2])
def test_nonfinite_inputs_are_refused(mode, bad, n):
    m = CSRInt8Matrix.from_csr(CSRMatrix.from_dense(np.eye(3, 70, dtype=np.float32)), activations=mode,
                               act_range=(-1, 1) if mode == "static" else None)
    x = np.zeros((n, 70), np.float32)
    x[-1, 69] = bad
    with pytest.raises(InputError):
        m.apply(x)


def test_nbytes_describe_and_empty_matrices():
    rng = np.random.default_rng(0)
    csr = CSRMatrix.from_dense(random_sparse(rng, 10, 101, 0.1))
    f = CSRInt8Matrix.from_csr(csr, activations="float")
    assert f.nbytes == csr.nnz * 3 + 11 * 4 + 10 * 4 == csr.nbytes - csr.nnz * 3 + 40
    d = CSRInt8Matrix.from_csr(csr, per_channel=False)
    assert d.nbytes == csr.nnz * 3 + 11 * 4 + 4 + 10 * 8        # + int64 row sums of the codes
    assert d.macs_per_row == csr.nnz and d.format == "csr_int8"
    assert f.describe().endswith("(uint16) + int8 w8 float-act")
    assert d.describe().endswith("w8a8 dynamic uint8 per-tensor") and "csr_int8" not in repr(d)
    for mode in ("float", "dynamic"):
        z = CSRInt8Matrix.from_csr(CSRMatrix.from_dense(np.zeros((3, 5), np.float32)), activations=mode)
        assert z.nnz == 0 and (z.scale == 1).all()
        for n in (1, 4):
            assert np.array_equal(z.apply(np.ones((n, 5), np.float32)), np.zeros((n, 3), np.float32))


def _good():
    w = np.array([[1, 0, 2, 0], [0, 0, 0, 0], [0, 3, 0, -4]], np.float32)
    return CSRInt8Matrix.from_csr(CSRMatrix.from_dense(w), activations="static", act_range=(0, 5))


def _arrays(m):
    return {k: np.array(v) for k, v in m.to_arrays()[0].items()}


def test_from_arrays_round_trips_and_rejects_hostile_arrays():
    good = _good()
    attrs = good.to_arrays()[1]
    back = CSRInt8Matrix.from_arrays(_arrays(good), attrs)
    x = np.linspace(-1, 6, 8, dtype=np.float32).reshape(2, 4)
    assert np.array_equal(back.apply(x), good.apply(x)) and back.nbytes == good.nbytes
    bad = []

    def case(**changes):
        a = _arrays(good)
        for k, v in changes.items():
            if v is None:
                del a[k]
            else:
                a[k] = v(a[k]) if callable(v) else v
        bad.append((a, attrs))

    def put(i, v):
        def f(arr):
            arr[i] = v
            return arr
        return f

    case(indices=put(1, 4))                                      # column index out of range
    case(indices=put(slice(0, 2), [2, 0]))                       # unsorted within a row
    case(codes=put(0, -128))                                     # outside the symmetric range
    case(codes=lambda a: a.astype(np.int16))
    case(scale=put(0, 0.0))
    case(scale=put(2, np.nan))
    case(scale=put(1, -1.0))
    case(scale=lambda a: a.astype(np.float64))
    case(scale=lambda a: a[:2])
    case(indptr=put(slice(1, 3), [2, 1]))                        # decreasing indptr
    case(indptr=put(-1, 3))                                      # wrong nnz
    case(indptr=lambda a: a[:-1])
    case(codes=lambda a: a[:-1])
    case(act_zero=np.array([300], np.int32))
    case(act_scale=np.array([-1], np.float32))
    case(act_scale=None)
    case(indptr=None)
    case(extra=np.zeros(1, np.int8))
    bad.append((_arrays(good), dict(attrs, shape=[3, 70000])))   # uint16 indices for n_in > 65536
    bad.append((_arrays(good), dict(attrs, shape=[3, 3])))       # column 3 out of range
    bad.append((_arrays(good), dict(attrs, activations="never")))
    bad.append((_arrays(good), dict(attrs, act_dtype="u4")))
    bad.append((_arrays(good), {}))
    for arrays, at in bad:
        with pytest.raises(CorruptModelFileError):
            CSRInt8Matrix.from_arrays(arrays, at, path="m.h5", obj="fc/weight")
    with pytest.raises(CompressionParameterError):
        CSRInt8Matrix(good.codes, good.indices[::-1].copy(), good.indptr, good.shape, good.scale)
    with pytest.raises(CompressionParameterError):
        CSRInt8Matrix.from_csr(np.eye(3, dtype=np.float32))


# ----------------------------------------------------------------------------- quantize()
@pytest.fixture(scope="module")
def lenet300():
    model = nc.load(nc.data.model_path("lenet300"))
    calib, _ = nc.data.mnist("train", layout="NC")
    x, y = nc.data.mnist("test", layout="NC")
    # calibrated pruning keeps LeNet-300 at ~94% (plain 90% magnitude pruning: ~37%, a weak check);
    # per layer, so that every layer (fc3 too) is 90% sparse and stored as CSR
    return model, nc.prune(model, sparsity=0.9, scope="layer", calibration=calib[:512]), calib[:512], x, y


@heavy
def test_prune_then_quantize_lenet300(lenet300, tmp_path):
    model, pruned, calib, x, y = lenet300
    names = ("fc1", "fc2", "fc3")
    assert all(pruned[n].layer.weight.format == "csr" for n in names)
    acc = lambda m: float(np.mean(m(x).argmax(1) == y))  # noqa: E731
    assert acc(pruned) > 0.9
    q = nc.quantize(pruned)
    assert all(q[n].layer.weight.format == "csr_int8" for n in names)
    for n in names:
        a, b = pruned[n].layer.weight, q[n].layer.weight
        assert np.array_equal(a.indices, b.indices) and np.array_equal(a.indptr, b.indptr)
        assert b.nbytes == a.nbytes - 3 * a.nnz + (4 + 8) * a.n_out    # 1-byte codes; scales, row sums
    assert abs(acc(q) - acc(pruned)) <= 0.01
    qc = nc.quantize(pruned, calibration=calib, activations="static")      # calibrated, bias-corrected
    assert all(qc[n].layer.weight.describe().endswith("w8a8 static uint8") for n in names)
    assert abs(acc(qc) - acc(pruned)) <= 0.01
    w = nc.quantize(pruned, weights_only=True, per_channel=False, layers=["fc2"])
    assert w["fc1"].layer.weight.format == "csr" and w["fc2"].layer.weight.describe().endswith("float-act per-tensor")
    for m, huffman in ((q, False), (qc, True), (w, True)):
        path = tmp_path / f"m{huffman}.h5"
        nc.save(m, path, huffman=huffman)
        back = nc.load(path)
        for n in names:
            a, b = m[n].layer.weight, back[n].layer.weight
            assert type(a) is type(b)
            for k, v in a.to_arrays()[0].items():
                assert np.array_equal(v, b.to_arrays()[0][k]) and v.dtype == b.to_arrays()[0][k].dtype
        assert np.array_equal(back(x[:64]), m(x[:64])) and np.array_equal(back(x[:1]), m(x[:1]))


@heavy
def test_bias_correction_on_sparse_layers_reduces_the_mean_error(lenet300):
    _, pruned, calib, _, _ = lenet300
    target = pruned(calib).astype(np.float64)
    errs = []
    for bc in (False, True):
        q = nc.quantize(pruned, activations="static", calibration=calib, bias_correction=bc, per_channel=False)
        assert q["fc1"].layer.weight.format == "csr_int8"
        errs.append(np.abs((q(calib) - target).mean(axis=0)).mean())
    assert errs[1] < errs[0]


def test_quantize_sparse_convolution_matches_the_dense_int8_path():
    rng = np.random.default_rng(0)
    w = random_sparse(rng, 8, 3 * 3 * 2, 0.3, empty_row=False)
    conv = nc.Conv2D(CSRMatrix.from_dense(w), rng.standard_normal(8).astype(np.float32),
                     in_channels=2, kernel_size=3, padding=1)
    model = nc.Model([nc.Node("conv", conv)], input_shape=(2, 6, 6), input_layout="NCHW")
    dense = model.replace_layers({"conv": conv.replace(weight=w)})
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    q, qd = nc.quantize(model, activation_dtype="int8"), nc.quantize(dense, activation_dtype="int8")
    assert q["conv"].layer.weight.format == "csr_int8" and qd["conv"].layer.weight.format == "int8"
    assert np.array_equal(q(x), qd(x))


@pytest.mark.parametrize("n_in", [8192, 8193, 9001])
def test_wide_layers_gather_packed_codes(n_in):
    """Beyond PACK_ABOVE inputs batch 1 reads codes packed four to a word: still Int8Matrix's bits."""
    rng = np.random.default_rng(n_in)
    w = random_sparse(rng, 5, n_in, 0.05)
    w[1, -1] = 3.0                                   # the last column (a padded word) is read
    x = rng.standard_normal((2, n_in)).astype(np.float32)
    m, d = CSRInt8Matrix.from_csr(CSRMatrix.from_dense(w)), Int8Matrix.from_float(w)
    assert np.array_equal(m.apply(x[:1]), d.apply(x[:1])) and np.array_equal(m.apply(x), d.apply(x))
