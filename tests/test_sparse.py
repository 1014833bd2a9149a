"""CSR kernels against their NumPy twins, and the CSRMatrix format (validation, round trips)."""
import numpy as np
import pytest
from hypothesis import example, given, strategies as st

import nncomp as nc
import reference as ref
from conftest import assert_close_f32
from nncomp.errors import CompressionParameterError, CorruptModelFileError
from nncomp.kernels import csr as K
from nncomp.matrices.csr import CSRMatrix, PrunedDenseMatrix, index_dtype


def random_sparse(rng, n_out, n_in, density, integer=False, empty_rows=True):
    w = np.round(rng.standard_normal((n_out, n_in)) * 2) if integer else rng.standard_normal((n_out, n_in))
    w = w.astype(np.float32)
    w[rng.random((n_out, n_in)) >= density] = 0
    if empty_rows and n_out > 1:
        w[rng.integers(0, n_out)] = 0
    return w


@st.composite
def problems(draw, max_n=80):
    n_out = draw(st.integers(1, 40))
    n_in = draw(st.sampled_from([1, 3, 17, 64, 300, 70000]))   # 70000 > 65536: the int32 index path
    n = draw(st.integers(0, max_n))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    integer = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    if n_in == 70000:
        n_out, n = min(n_out, 4), min(n, 20)
        density = min(density, 0.01)
    w = random_sparse(rng, n_out, n_in, density, integer)
    x = (rng.integers(-4, 5, (n, n_in)) if integer else rng.standard_normal((n, n_in))).astype(np.float32)
    return CSRMatrix.from_dense(w), w, x, integer


def check(y, expect, mag, m, integer):
    if integer:   # small integers: exact whatever the summation order
        assert np.array_equal(y, expect.astype(np.float32))
    assert_close_f32(y, expect, mag, max(1, np.diff(m.indptr).max(initial=1)))


@pytest.mark.parametrize("kernel", [K.csr_matvec_chunked, K.csr_matvec_chunked_parallel, K.csr_matvec_rows,
                                    K.csr_matvec_rows_parallel])
@given(p=problems(max_n=1))
def test_csr_matvec_matches_reference(kernel, p):
    """Both loop structures of the batch-1 kernel (csr_matvec is one of them, by CPU)."""
    m, w, x, integer = p
    x = x[0] if len(x) else np.zeros(w.shape[1], np.float32)
    out = np.full(w.shape[0], np.nan, np.float32)
    kernel(m.data, m.indices, m.indptr, x, out)
    expect = ref.csr_matvec(m.data, m.indices, m.indptr, x)
    mag = ref.csr_matvec(np.abs(m.data), m.indices, m.indptr, np.abs(x))
    check(out, expect, mag, m, integer)


@pytest.mark.parametrize("kernel", [K.csr_matmul, K.csr_matmul_parallel])
@given(p=problems(), panel=st.sampled_from([0, 1, 2, 3, 5, 8, 1000]))
@example(p=(CSRMatrix.from_dense(np.eye(3, dtype=np.float32)), np.eye(3, dtype=np.float32),
            np.arange(3 * 130, dtype=np.float32).reshape(130, 3), True), panel=0)
def test_csr_matmul_matches_reference(kernel, p, panel):
    """Any column panel width (columns per pass for up to 64 samples) gives the twin's product."""
    m, w, x, integer = p
    out = np.full((x.shape[0], w.shape[0]), np.nan, np.float32)
    kernel(m.data, m.indices, m.indptr, x, out, panel)
    expect = ref.csr_matmul(m.data, m.indices, m.indptr, x)
    mag = ref.csr_matmul(np.abs(m.data), m.indices, m.indptr, np.abs(x))
    check(out, expect, mag, m, integer)


@given(p=problems(max_n=200))
def test_csr_matrix_apply_equals_dense_product(p):
    m, w, x, integer = p
    assert np.array_equal(m.to_dense(), w)
    y = m.apply(x)
    assert y.shape == (x.shape[0], w.shape[0]) and y.dtype == np.float32
    expect = x.astype(np.float64) @ w.T.astype(np.float64)
    check(y, expect, np.abs(x).astype(np.float64) @ np.abs(w).T, m, integer)


def test_index_types_and_sizes():
    rng = np.random.default_rng(0)
    small = CSRMatrix.from_dense(random_sparse(rng, 8, 65536, 0.001))
    big = CSRMatrix.from_dense(random_sparse(rng, 8, 65537, 0.001))
    assert small.indices.dtype == np.uint16 and big.indices.dtype == np.int32
    assert index_dtype(65536) == np.uint16 and index_dtype(65537) == np.int32
    assert small.indptr.dtype == np.int32
    assert small.nbytes == small.nnz * 6 + 9 * 4
    assert small.macs_per_row == small.nnz
    assert small.describe().startswith("csr 100%") and "(uint16)" in small.describe()
    assert "int32" in big.describe()


def test_all_zero_and_empty_rows():
    m = CSRMatrix.from_dense(np.zeros((3, 5), np.float32))
    assert m.nnz == 0 and m.describe() == "csr 100% (uint16)"
    x = np.ones((4, 5), np.float32)
    assert np.array_equal(m.apply(x), np.zeros((4, 3), np.float32))
    assert np.array_equal(m.apply(x[:1]), np.zeros((1, 3), np.float32))
    assert m.apply(x[:0]).shape == (0, 3)


def _arrays(m):
    return {k: np.array(v) for k, v in m.to_arrays()[0].items()}


def test_from_arrays_rejects_corrupt_arrays():   # F27
    w = np.array([[1, 0, 2, 0], [0, 0, 0, 0], [0, 3, 0, 4]], np.float32)
    good = CSRMatrix.from_dense(w)
    attrs = good.to_arrays()[1]
    assert np.array_equal(CSRMatrix.from_arrays(_arrays(good), attrs).to_dense(), w)
    bad_cases = []
    a = _arrays(good); a["indices"][1] = 4; bad_cases.append((a, attrs))          # out of range
    a = _arrays(good); a["indices"][:2] = [2, 0]; bad_cases.append((a, attrs))    # unsorted
    a = _arrays(good); a["indices"][3] = 1; bad_cases.append((a, attrs))          # duplicate
    a = _arrays(good); a["indptr"][1:3] = [2, 1]; bad_cases.append((a, attrs))    # indptr decreasing
    a = _arrays(good); a["indptr"][-1] = 3; bad_cases.append((a, attrs))          # wrong nnz
    a = _arrays(good); a["indptr"][0] = 1; bad_cases.append((a, attrs))
    a = _arrays(good); a["indptr"] = a["indptr"][:-1]; bad_cases.append((a, attrs))
    a = _arrays(good); a["data"][0] = np.nan; bad_cases.append((a, attrs))
    a = _arrays(good); a["data"] = a["data"].astype(np.float64); bad_cases.append((a, attrs))
    a = _arrays(good); a["indices"] = a["indices"].astype(np.int64); bad_cases.append((a, attrs))
    a = _arrays(good); a["indices"] = a["indices"].astype(np.int32); a["indices"][0] = -1
    bad_cases.append((a, attrs))
    a = _arrays(good); a["data"] = a["data"][:-1]; bad_cases.append((a, attrs))
    a = _arrays(good); del a["indptr"]; bad_cases.append((a, attrs))
    bad_cases.append((_arrays(good), {"shape": [3]}))
    bad_cases.append((_arrays(good), {"shape": [3, 70000]}))                      # uint16 for n_in > 65536
    bad_cases.append((_arrays(good), {"shape": [3, 3]}))                          # index 3 out of range
    for arrays, at in bad_cases:
        with pytest.raises(CorruptModelFileError):
            CSRMatrix.from_arrays(arrays, at, path="m.h5", obj="fc/weight")
    with pytest.raises(CompressionParameterError):
        CSRMatrix(good.data, good.indices[::-1].copy(), good.indptr, (3, 4))


def test_native_round_trip_at_compressed_size(tmp_path):
    rng = np.random.default_rng(1)
    w = random_sparse(rng, 300, 784, 0.08)
    m = CSRMatrix.from_dense(w)
    model = nc.Model([nc.Node("fc", nc.Dense(m, rng.standard_normal(300).astype(np.float32)))],
                     input_shape=(784,), input_layout="NC")
    dense = model.replace_layers({"fc": nc.Dense(w, model["fc"].layer.bias)})
    sp, dn = tmp_path / "sparse.h5", tmp_path / "dense.h5"
    nc.save(model, sp)
    nc.save(dense, dn)
    back = nc.load(sp)
    assert isinstance(back["fc"].layer.weight, CSRMatrix)
    assert np.array_equal(back["fc"].layer.weight.to_dense(), w)
    x = rng.standard_normal((5, 784)).astype(np.float32)
    assert np.array_equal(back(x), model(x))
    payload = m.nnz * 6
    size = sp.stat().st_size
    assert payload < size < payload + 4 * 301 + 1200 * 4 + 16384, (size, payload)
    assert size < dn.stat().st_size / 5


def test_pruned_dense_round_trip_and_summary(tmp_path):
    w = np.array([[1, 0], [2, 3]], np.float32)
    m = PrunedDenseMatrix(w)
    assert "kept dense" in m.describe() and "25% zeros" in m.describe()
    model = nc.Model([nc.Node("fc", nc.Dense(m))], input_shape=(2,), input_layout="NC")
    nc.save(model, tmp_path / "p.h5")
    back = nc.load(tmp_path / "p.h5")["fc"].layer.weight
    assert type(back) is PrunedDenseMatrix and np.array_equal(back.w, w)


def test_column_panels_fill_half_the_l2_only_when_the_inputs_do_not():
    assert K.column_panel(4096, 32, l2=2 << 20) == 0              # 0.5 MB of transposed inputs: one pass
    assert K.column_panel(25088, 32, l2=2 << 20) == 8192          # 3.2 MB: passes of 1 MB
    assert K.column_panel(16000, 1, l2=2 << 20) == 0              # 64 bytes a column: 1 MB fits
    assert K.column_panel(25088, 16, l2=2 << 20) == 16384         # 1.6 MB does not
    assert K.column_panel(25088, 64, l2=1 << 20) == 2048
    assert K.column_panel(10 ** 6, 64, l2=1 << 10) == 256         # never narrower than 256 columns
    assert K.column_panel(25088, 65, l2=1 << 10) == 0             # blocks of 64 samples: their own buffers
