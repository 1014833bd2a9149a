"""k-means weight sharing: kernels against their NumPy twins, codebook formats, share(), the pipeline."""
import numba
import numpy as np
import pytest
from hypothesis import example, given, strategies as st

import nncomp as nc
import reference as ref
from conftest import assert_close_f32
from nncomp.coding.index import gaps_of, positions_of
from nncomp.compress.sharing import kmeans_codebook
from nncomp.errors import CompressionParameterError, CorruptModelFileError
from nncomp.kernels import _ir, codebook as K
from nncomp.kernels import csr as C
from nncomp.kernels import kmeans as KM
from nncomp.kernels import codebook_avx2 as A
from nncomp.kernels import codebook_vpermps as V
from nncomp.kernels import isa
from nncomp.matrices.codebook import CodebookMatrix, pack, unpack
from nncomp.matrices.csr_codebook import CSRCodebookMatrix

needs_avx512 = pytest.mark.skipif(not V.HAVE_AVX512, reason="CPU without AVX-512F")
needs_avx2 = pytest.mark.skipif(not isa.HAVE_AVX2, reason="CPU without AVX2")
seeds = st.integers(0, 2**31 - 1)
# Under NUMBA_DISABLE_JIT the kernels run as Python loops: skip the tests that compress whole models.
heavy = pytest.mark.skipif(numba.config.DISABLE_JIT, reason="pure-Python kernels (NUMBA_DISABLE_JIT): too slow")


def _packed4(rng, n_out, nb, k=16, integer=False):
    codes = rng.integers(0, k, (n_out, nb * 32)).astype(np.uint8)
    cb = np.zeros(16, np.float32)
    cb[:k] = rng.integers(-8, 8, k) if integer else rng.standard_normal(k)
    return pack(codes, 4), cb


@pytest.mark.parametrize("kernel", [K.codebook_matmul4, K.codebook_matmul4_parallel])
@given(n=st.integers(1, 9), n_out=st.integers(1, 11), nb=st.integers(1, 4), seed=seeds, integer=st.booleans())
@example(n=1, n_out=9, nb=3, seed=0, integer=False)
@example(n=5, n_out=4, nb=1, seed=1, integer=True)
def test_codebook_matmul4_matches_reference(kernel, n, n_out, nb, seed, integer):
    rng = np.random.default_rng(seed)
    codes, cb = _packed4(rng, n_out, nb, integer=integer)
    x = (rng.integers(-8, 8, (n, nb * 32)) if integer else rng.standard_normal((n, nb * 32))).astype(np.float32)
    out = np.full((n, n_out), np.nan, np.float32)
    kernel(codes, x, cb, out)
    assert np.array_equal(out, ref.codebook_matmul4(codes, x, cb))    # the summation contract, bit for bit
    w = ref.codebook_dense(codes, cb, 4)
    assert_close_f32(out, x.astype(np.float64) @ w.T, np.abs(x) @ np.abs(w).T, nb * 32)


@needs_avx512
@pytest.mark.parametrize("kernel", [V.codebook_matmul_vpermps, V.codebook_matmul_vpermps_parallel])
@given(n=st.integers(1, 9), n_out=st.integers(1, 11), nb=st.integers(1, 4), seed=seeds, wide=st.booleans())
@example(n=1, n_out=9, nb=3, seed=0, wide=False)
@example(n=1, n_out=9, nb=3, seed=0, wide=True)
def test_codebook_matmul_vpermps_matches_reference(kernel, n, n_out, nb, seed, wide):
    rng = np.random.default_rng(seed)
    if wide:
        codes = rng.integers(0, 32, (n_out, nb * 16)).astype(np.uint8)
        cb = rng.standard_normal(32).astype(np.float32)
    else:
        codes, cb = _packed4(rng, n_out, nb)
    x = rng.standard_normal((n, nb * (16 if wide else 32))).astype(np.float32)
    out = np.full((n, n_out), np.nan, np.float32)
    kernel(codes, x, cb, wide, out)
    assert np.array_equal(out, ref.codebook_matmul_vpermps(codes, x, cb, wide))


@needs_avx512
@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 37, 200])
def test_register_paths_are_bit_identical_to_the_portable_loops(n, wide):
    """Every batch/row-tail shape: 45 rows (tails of the 4- and 8-row blocks), 70 blocks > KCHUNK,
    200 inputs > NCHUNK (chunks of inputs, a short last one)."""
    rng = np.random.default_rng(n)
    if wide:
        codes = rng.integers(0, 32, (45, 70 * 16)).astype(np.uint8)
        cb = rng.standard_normal(32).astype(np.float32)
        portable = K.codebook_matmul8
    else:
        codes, cb = _packed4(rng, 45, 70)
        portable = K.codebook_matmul4
    x = rng.standard_normal((n, codes.shape[1] * (1 if wide else 2))).astype(np.float32)
    outs = [np.empty((n, 45), np.float32) for _ in range(3)]
    portable(codes, x, cb, outs[0])
    V.codebook_matmul_vpermps(codes, x, cb, wide, outs[1])
    V.codebook_matmul_vpermps_parallel(codes, x, cb, wide, outs[2])
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


@needs_avx512
@pytest.mark.parametrize("nb", [V.AHEAD_ROW_BYTES // 16, V.AHEAD_ROW_BYTES // 16 + 1])
def test_one_row_with_and_without_prefetch_is_bit_identical(nb):
    """Batch 1 on rows at and just over AHEAD_ROW_BYTES: the blocks that prefetch the next rows
    and those that do not give the portable loops' bits (17 rows: two 8-row blocks and a tail)."""
    rng = np.random.default_rng(nb)
    codes, cb = _packed4(rng, 17, nb)
    x = rng.standard_normal((1, nb * 32)).astype(np.float32)
    outs = [np.empty((1, 17), np.float32) for _ in range(3)]
    K.codebook_matmul4(codes, x, cb, outs[0])
    V.codebook_matmul_vpermps(codes, x, cb, False, outs[1])
    V.codebook_matmul_vpermps_parallel(codes, x, cb, False, outs[2])
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


@pytest.mark.parametrize("kernel", [K.codebook_matmul8, K.codebook_matmul8_parallel])
@given(n=st.integers(1, 6), n_out=st.integers(1, 9), nb=st.integers(1, 4), k=st.integers(1, 256), seed=seeds)
def test_codebook_matmul8_matches_reference(kernel, n, n_out, nb, k, seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, k, (n_out, nb * 16)).astype(np.uint8)
    cb = rng.standard_normal(k).astype(np.float32)
    x = rng.standard_normal((n, nb * 16)).astype(np.float32)
    out = np.empty((n, n_out), np.float32)
    kernel(codes, x, cb, out)
    assert np.array_equal(out, ref.codebook_matmul8(codes, x, cb))
    w = cb.astype(np.float64)[codes]
    assert_close_f32(out, x.astype(np.float64) @ w.T, np.abs(x) @ np.abs(w).T, nb * 16)


@numba.njit
def _fma_many(a, b, c, out):
    for i in range(a.size):
        out[i] = _ir.fma32(a[i], b[i], c[i])


def _exact_fma32(a, b, c):
    """float32 nearest to the exact a*b + c (ties to even), with fractions."""
    from fractions import Fraction
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    f = np.float32(float(exact))
    cands = [f, np.nextafter(f, np.float32(np.inf)), np.nextafter(f, np.float32(-np.inf))]
    return min(cands, key=lambda v: (abs(Fraction(float(v)) - exact), int(np.array(v).view(np.int32)) & 1))


@given(seed=seeds)
def test_reduce16_matches_reference(seed):
    """The 16-lane summation tree, bit for bit (float32 sums in one fixed order)."""
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal(16) * 2.0 ** rng.integers(-30, 30, 16)).astype(np.float32)
    assert _reduce_one(a) == ref.reduce16(a)


@numba.njit
def _reduce_one(a):
    return K.reduce16(a)


def test_fma32_is_one_rounding_in_every_implementation():
    rng = np.random.default_rng(0)
    n = 3000
    a = (rng.standard_normal(n) * 2.0 ** rng.integers(-20, 20, n)).astype(np.float32)
    b = (rng.standard_normal(n) * 2.0 ** rng.integers(-20, 20, n)).astype(np.float32)
    c = (-(a.astype(np.float64) * b) * (1 + rng.standard_normal(n) * 2.0 ** -rng.integers(1, 30, n))).astype(np.float32)
    c[::3] = rng.standard_normal(n)[::3].astype(np.float32)         # cancellation and ordinary sums
    want = np.array([_exact_fma32(*t) for t in zip(a, b, c)], np.float32)
    out = np.empty(n, np.float32)
    _fma_many(a, b, c, out)
    assert np.array_equal(out, want)
    assert np.array_equal(ref.fma32(a, b, c), want)
    assert np.array_equal(np.array([_ir._fma32_py(*t) for t in zip(a, b, c)], np.float32), want)


@given(n_out=st.integers(1, 6), n_in=st.integers(1, 12), k=st.integers(1, 8), seed=seeds)
def test_codebook_gram_matches_reference(n_out, n_in, k, seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, k, (n_out, n_in)).astype(np.uint8)
    a = rng.integers(-3, 4, (5, n_in)).astype(np.float64)
    cov = a.T @ a                                             # small integers: exact
    g = np.zeros((k, k))
    K.codebook_gram(codes, cov, k, g)
    assert np.array_equal(g, ref.codebook_gram(codes, cov, k))


def _random_csr(rng, n_out, n_in, density, k):
    mask = rng.random((n_out, n_in)) < density
    pos = np.flatnonzero(mask)
    return CSRCodebookMatrix.from_positions(pos, rng.integers(0, k, pos.size), rng.standard_normal(k), 8,
                                            (n_out, n_in))


@given(n_out=st.integers(1, 6), n_in=st.integers(1, 12), k=st.integers(1, 8), seed=seeds)
def test_csr_codebook_gram_matches_reference(n_out, n_in, k, seed):
    rng = np.random.default_rng(seed)
    m = _random_csr(rng, n_out, n_in, 0.4, k)
    a = rng.integers(-3, 4, (5, n_in)).astype(np.float64)
    g = np.zeros((k, k))
    K.csr_codebook_gram(m.codes, m.indices, m.indptr, a.T @ a, k, g)
    assert np.array_equal(g, ref.csr_codebook_gram(m.codes, m.indices, m.indptr, a.T @ a, k))


@pytest.mark.parametrize("kernel", [K.csr_codebook_matvec_chunked, K.csr_codebook_matvec_chunked_parallel,
                                    K.csr_codebook_matvec_rows, K.csr_codebook_matvec_rows_parallel])
@given(n_out=st.integers(1, 9), n_in=st.integers(1, 40), density=st.floats(0, 1), seed=seeds)
def test_csr_codebook_matvec_matches_reference(kernel, n_out, n_in, density, seed):
    rng = np.random.default_rng(seed)
    m = _random_csr(rng, n_out, n_in, density, 7)
    x = rng.standard_normal(n_in).astype(np.float32)
    out = np.full(n_out, np.nan, np.float32)
    kernel(m.codes, m.indices, m.indptr, m.codebook, x, out)
    mag = ref.csr_codebook_matvec(m.codes, m.indices, m.indptr, np.abs(m.codebook), np.abs(x))
    assert_close_f32(out, ref.csr_codebook_matvec(m.codes, m.indices, m.indptr, m.codebook, x), mag, n_in)


@pytest.mark.parametrize("kernel", [C.csr_matmul, C.csr_matmul_parallel])
@given(n=st.integers(2, 70), n_out=st.integers(1, 9), n_in=st.integers(1, 40), density=st.floats(0, 1), seed=seeds,
       panel=st.sampled_from([0, 1, 4, 7]))
def test_csr_matmul_through_a_codebook_matches_reference(kernel, n, n_out, n_in, density, seed, panel):
    """The CSR batch kernel reading its values through a codebook (a sparse codebook layer's batch
    product) against the twin: exact on sums of small integers times quarters."""
    rng = np.random.default_rng(seed)
    m = _random_csr(rng, n_out, n_in, density, 7)
    x = rng.integers(-4, 5, (n, n_in)).astype(np.float32)
    cb = np.round(m.codebook * 4) / 4
    out = np.full((n, n_out), np.nan, np.float32)
    kernel((m.codes, cb), m.indices, m.indptr, x, out, panel)
    assert np.array_equal(out, ref.csr_matmul((m.codes, cb), m.indices, m.indptr, x))


@given(n=st.integers(0, 50), k=st.integers(1, 20), seed=seeds)
def test_kmeans_assign_matches_reference(n, k, seed):
    rng = np.random.default_rng(seed)
    cb = np.unique(rng.standard_normal(k).astype(np.float32))
    w = np.concatenate([rng.standard_normal(n), cb, (cb[:-1] + cb[1:]) / 2]).astype(np.float32)   # ties too
    out = np.empty(w.size, np.uint8)
    KM.kmeans_assign(w, cb, out)
    assert np.array_equal(out, ref.kmeans_assign(w, cb))


@given(k=st.integers(1, 6), per=st.integers(2, 20), seed=seeds)
def test_kmeans_lloyd_matches_reference(k, per, seed):
    rng = np.random.default_rng(seed)
    v = np.unique(np.concatenate([10.0 * j + rng.random(per) for j in range(k)]))   # k separated groups
    c = rng.integers(1, 5, v.size).astype(np.float64)
    s0, s1 = np.concatenate([[0], np.cumsum(c)]), np.concatenate([[0], np.cumsum(c * v)])
    cent = np.sort(10.0 * np.arange(k) + rng.random(k))
    want = ref.kmeans_lloyd(v, s0, s1, cent, 100)
    KM.kmeans_lloyd(v, s0, s1, cent, 100)
    np.testing.assert_allclose(cent, want, rtol=1e-12)


def test_kmeans_empty_clusters_are_reseeded_never_nan():
    v = np.array([0.0, 1.0, 2.0, 3.0, 100.0])
    c = np.ones(5)
    s0, s1 = np.concatenate([[0], np.cumsum(c)]), np.concatenate([[0], np.cumsum(c * v)])
    cent = np.array([50.0, 50.0, 50.0, 200.0])          # duplicates and a centroid beyond every value
    KM.kmeans_lloyd(v, s0, s1, cent, 100)
    assert np.isfinite(cent).all() and np.unique(cent).size == 4 and np.all(np.diff(cent) > 0)


# ----------------------------------------------------------------------------------- k-means rules
@heavy
@pytest.mark.parametrize("bits", [0, 9, 33, True, 8.5, "5", None])
def test_bad_bits_are_refused(bits):
    with pytest.raises(CompressionParameterError):
        kmeans_codebook(np.ones(4, np.float32), bits)
    with pytest.raises(CompressionParameterError):
        nc.share(nc.load(nc.data.model_path("lenet300")), bits)


@given(n=st.integers(1, 400), seed=seeds, init=st.sampled_from(["linear", "density", "random"]),
       dist=st.sampled_from(["normal", "laplace", "uniform", "few"]))
def test_kmeans_invariants(n, seed, init, dist):
    rng = np.random.default_rng(seed)
    w = {"normal": rng.standard_normal(n), "laplace": rng.laplace(size=n), "uniform": rng.random(n),
         "few": rng.integers(-3, 3, n) * 0.5}[dist].astype(np.float32)
    prev = np.inf
    for bits in range(1, 9):
        cb, codes = kmeans_codebook(w, bits, init=init, seed=seed)
        assert cb.dtype == np.float32 and np.isfinite(cb).all() and 1 <= cb.size <= 2 ** bits
        assert np.unique(cb[codes]).size <= 2 ** bits
        err = float(((w.astype(np.float64) - cb[codes]) ** 2).sum())
        assert err <= prev                       # error non-increasing in bits
        prev = err
        if np.unique(w).size <= 2 ** bits:
            assert np.array_equal(cb[codes], w)  # few distinct values: exact
    cb2, codes2 = kmeans_codebook(w, 3, init=init, seed=seed)
    cb3, codes3 = kmeans_codebook(w, 3, init=init, seed=seed)
    assert np.array_equal(cb2, cb3) and np.array_equal(codes2, codes3)     # seeded: reproducible


def test_degenerate_layers_have_exact_documented_codebooks():
    cb, codes = kmeans_codebook(np.zeros((3, 4), np.float32), 5)
    assert np.array_equal(cb, [0.0]) and codes.shape == (3, 4) and not codes.any()
    cb, codes = kmeans_codebook(np.full(7, -2.5, np.float32), 8)
    assert np.array_equal(cb, [-2.5]) and not codes.any()
    cb, codes = kmeans_codebook(np.array([1, 2, 3], np.float32), 8)          # more clusters than weights
    assert np.array_equal(cb, [1, 2, 3]) and np.array_equal(codes, [0, 1, 2])
    w = np.array([0, 0, 0, 1, 1.1, 5, 5.2, -3], np.float32)                  # exact zeros stay zero
    cb, codes = kmeans_codebook(w, 2)
    assert cb.size == 4 and 0.0 in cb and np.array_equal(cb[codes] == 0, w == 0)


# ----------------------------------------------------------------------------------- formats
@given(n_out=st.integers(1, 5), n_in=st.integers(1, 70), bits=st.integers(1, 8), seed=seeds)
def test_codebook_matrix_apply_pack_and_files(n_out, n_in, bits, seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 2 ** bits + 1))
    codes = rng.integers(0, k, (n_out, n_in))
    cb = rng.standard_normal(k).astype(np.float32)
    m = CodebookMatrix.from_codes(codes, cb, bits)
    assert np.array_equal(unpack(m.codes, bits, n_in), codes) and np.array_equal(m.to_dense(), cb[codes])
    assert m.nbytes >= m.codes.nbytes == n_out * (-(-n_in // 32) * 16 if bits <= 4 else -(-n_in // 16) * 16)
    x = rng.standard_normal((3, n_in)).astype(np.float32)
    w = m.to_dense().astype(np.float64)
    assert_close_f32(m.apply(x), x @ w.T, np.abs(x) @ np.abs(w).T, n_in)
    arrays, attrs = m.to_arrays()
    back = CodebookMatrix.from_arrays(arrays, attrs)
    assert np.array_equal(back.apply(x), m.apply(x))


@pytest.mark.parametrize("bits", [3, 4, 5])
def test_codebook_matrix_fast_path_and_fallback_agree(monkeypatch, bits):
    rng = np.random.default_rng(bits)
    m = CodebookMatrix.from_codes(rng.integers(0, 2 ** bits, (37, 300)), rng.standard_normal(2 ** bits), bits)
    x = rng.standard_normal((6, 300)).astype(np.float32)
    fast = [m.apply(x), m.apply(x[:1])]
    monkeypatch.setattr(V, "HAVE_AVX512", False)
    assert np.array_equal(fast[0], m.apply(x)) and np.array_equal(fast[1], m.apply(x[:1]))


@pytest.mark.parametrize("change, why", [
    (lambda a, t: a.__setitem__("codes", a["codes"] | 0xF0), "out of range"),
    (lambda a, t: a.__setitem__("codebook", a["codebook"].astype(np.float64)), "codebook"),
    (lambda a, t: a.__setitem__("codebook", np.full(3, np.nan, np.float32)), "finite"),
    (lambda a, t: t.__setitem__("bits", 9), "bits"),
    (lambda a, t: t.__setitem__("bits", True), "bits"),
    (lambda a, t: t.__setitem__("shape", [5, 64]), "shape"),
])
def test_codebook_from_arrays_refuses_corrupt_arrays(change, why):
    m = CodebookMatrix.from_codes(np.arange(12).reshape(3, 4) % 3, [1, 2, 3], 2)
    arrays, attrs = m.to_arrays()
    arrays, attrs = dict(arrays), dict(attrs)
    change(arrays, attrs)
    with pytest.raises(CorruptModelFileError, match=why):
        CodebookMatrix.from_arrays(arrays, attrs, path="f.h5", obj="fc/weight")


@given(n_out=st.integers(1, 8), n_in=st.integers(1, 300), density=st.floats(0, 1), g=st.integers(1, 8), seed=seeds)
def test_relative_indices_with_fillers_round_trip(n_out, n_in, density, g, seed):
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero(rng.random(n_out * n_in) < density)
    gaps = gaps_of(pos, g)
    assert gaps.size == 0 or (gaps.max() < 2 ** g and gaps[-1] != 0)
    assert np.array_equal(positions_of(gaps, g), pos)
    m = CSRCodebookMatrix.from_positions(pos, rng.integers(0, 3, pos.size), [0.5, -1, 2], 2, (n_out, n_in), g)
    arrays, attrs = m.to_arrays()
    back = CSRCodebookMatrix.from_arrays(arrays, attrs)
    assert np.array_equal(back.to_dense(), m.to_dense())
    x = rng.standard_normal((2, n_in)).astype(np.float32)
    w = m.to_dense().astype(np.float64)
    assert_close_f32(m.apply(x), x @ w.T, np.abs(x) @ np.abs(w).T, n_in)
    assert_close_f32(m.apply(x[:1]), x[:1] @ w.T, np.abs(x[:1]) @ np.abs(w).T, n_in)


@pytest.mark.parametrize("change, why", [
    (lambda a, t: a.__setitem__("gaps", np.append(a["gaps"], np.uint8(0))), "filler"),
    (lambda a, t: a.__setitem__("gaps", np.append(a["gaps"], np.uint8(200))), "entries|2\\*\\*"),
    (lambda a, t: a.__setitem__("codes", a["codes"][:-1]), "entries"),
    (lambda a, t: a.__setitem__("codes", a["codes"] + 5), "out of range"),
    (lambda a, t: t.__setitem__("nnz", t["nnz"] + 1), "entries"),
    (lambda a, t: t.__setitem__("shape", [1, 3]), "past the end"),
    (lambda a, t: t.__setitem__("index_bits", 0), "index_bits"),
])
def test_csr_codebook_from_arrays_refuses_corrupt_arrays(change, why):
    m = CSRCodebookMatrix.from_positions([0, 3, 40, 41], [0, 1, 2, 1], [0.5, -1, 2], 2, (5, 10), 3)
    arrays, attrs = m.to_arrays()
    arrays, attrs = dict(arrays), dict(attrs)
    change(arrays, attrs)
    with pytest.raises(CorruptModelFileError, match=why):
        CSRCodebookMatrix.from_arrays(arrays, attrs, path="f.h5", obj="fc/weight")


# ----------------------------------------------------------------------------------- share()
@pytest.fixture(scope="module")
def lenet300():
    return nc.load(nc.data.model_path("lenet300"))


@pytest.fixture(scope="module")
def digits(lenet300):
    x, y = nc.data.for_model(lenet300, "test")
    cal, _ = nc.data.for_model(lenet300, "train")
    return x, y, cal[:300]


@heavy
def test_share_dense_layers_accuracy_and_immutability(lenet300, digits):
    x, y, _ = digits
    before = lenet300["fc1"].layer.weight.w.copy()
    s = nc.share(lenet300, 4)
    assert np.array_equal(lenet300["fc1"].layer.weight.w, before)
    for name in ("fc1", "fc2", "fc3"):
        m = s[name].layer.weight
        assert isinstance(m, CodebookMatrix) and m.bits == 4 and np.unique(m.to_dense()).size <= 16
    acc = lambda mm: float((mm(x).argmax(1) == y).mean())  # noqa: E731
    assert acc(s) >= acc(lenet300) - 0.02
    only = nc.share(lenet300, {"fc1": 3, "dense": 6}, layers=["fc1", "fc3"])
    assert only["fc1"].layer.weight.bits == 3 and only["fc3"].layer.weight.bits == 6
    assert type(only["fc2"].layer.weight) is type(lenet300["fc2"].layer.weight)


@heavy
def test_share_bad_parameters(lenet300):
    for kw in ({"init": "kmeans++"}, {"seed": -1}, {"seed": True}, {"layers": ["nope"]},
               {"bits": {"conv": 5}}, {"bits": {"fc9": 5}}, {"calibration": np.zeros((0, 784), np.float32)},
               {"sparse": "yes"}):
        with pytest.raises(CompressionParameterError):
            nc.share(lenet300, **{"bits": 5, **kw})
    with pytest.raises(CompressionParameterError):    # already shared: not a dense or CSR layer
        nc.share(nc.share(lenet300, 4), 4, layers=["fc1"])


@heavy
def test_calibration_refit_never_increases_the_layer_error(lenet300, digits):
    from nncomp.compress.calibration import inputs_of
    _, _, cal = digits
    plain = nc.share(lenet300, 2)
    fit = nc.share(lenet300, 2, calibration=cal)
    for name in ("fc1", "fc2", "fc3"):
        target = lenet300[name].layer.forward(inputs_of(lenet300, cal, [name])[name])
        errs = []
        for m in (plain, fit):
            out = m[name].layer.forward(inputs_of(m, cal, [name])[name])
            errs.append(float(((out - target) ** 2).sum()))
        if name == "fc1":     # same inputs: the refit can only lower the error
            assert errs[1] <= errs[0]
        assert np.unique(fit[name].layer.weight.to_dense()).size <= 4


def _rounding_problem(rng, n_out, n_in, k, correlated=True):
    """Weights, a mask, calibration inputs (correlated columns) and a k-entry codebook."""
    from nncomp.compress.pruning import gram_of
    z = rng.standard_normal((400, max(1, n_in // 2)))
    x = z @ rng.standard_normal((z.shape[1], n_in)) + 0.3 * rng.standard_normal((400, n_in)) if correlated \
        else rng.standard_normal((400, n_in))
    w = rng.standard_normal((n_out, n_in))
    mask = rng.random((n_out, n_in)) < 0.6
    w = np.where(mask, w, 0.0)
    cb = np.sort(rng.standard_normal(k))
    return x, w, mask, cb, gram_of(x.astype(np.float32), (x @ w.T).astype(np.float32))


@given(n_out=st.integers(1, 6), n_in=st.integers(1, 40), k=st.integers(1, 8), seed=seeds,
       intercept=st.booleans(), block=st.integers(1, 16))
def test_assign_codes_rounds_to_the_codebook_on_the_mask(n_out, n_in, k, seed, intercept, block):
    """Every kept weight becomes a codebook value, every other one 0.0; the bias column (with
    ``intercept``) takes its share of the errors; the block size does not change the result."""
    from nncomp.compress.codes import assign_codes
    rng = np.random.default_rng(seed)
    x, w, mask, cb, gram = _rounding_problem(rng, n_out, n_in, k)
    wb = np.concatenate([w, rng.standard_normal((n_out, 1))], axis=1) if intercept else w
    q = assign_codes(wb, mask, gram, cb, intercept=intercept, block=block)
    assert q.shape == wb.shape and np.isfinite(q).all()
    vals = q[:, :n_in]
    assert np.isin(vals[mask], cb).all() and (vals[~mask] == 0).all()
    np.testing.assert_allclose(q, assign_codes(wb, mask, gram, cb, intercept=intercept, block=n_in + 1),
                               rtol=1e-9, atol=1e-9)


def test_assign_codes_is_exact_when_the_codebook_holds_every_weight():
    from nncomp.compress.codes import assign_codes
    rng = np.random.default_rng(3)
    x, w, mask, _, gram = _rounding_problem(rng, 5, 30, 4)
    cb = np.unique(w[mask])
    wb = np.concatenate([w, np.full((5, 1), 0.25)], axis=1)
    np.testing.assert_allclose(assign_codes(wb, mask, gram, cb), wb, atol=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_assign_codes_beats_nearest_rounding_on_correlated_inputs(seed):
    """Spreading each rounding error over the weights not yet rounded (GPTQ) leaves a smaller output
    error than rounding every weight to its nearest value of a k-means codebook, when inputs are correlated."""
    from nncomp.compress.codes import assign_codes
    rng = np.random.default_rng(seed)
    x, w, mask, _, gram = _rounding_problem(rng, 16, 48, 8)
    cb = kmeans_codebook(w[mask], 3)[0].astype(np.float64)
    xa = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
    wb = np.concatenate([w, np.zeros((16, 1))], axis=1)
    near = np.where(mask, cb[np.abs(w[..., None] - cb).argmin(-1)], 0.0)
    near = np.concatenate([near, np.zeros((16, 1))], axis=1)
    q = assign_codes(wb, mask, gram, cb)
    err = lambda v: float(((xa @ (v - wb).T) ** 2).sum())  # noqa: E731
    assert err(q) < 0.9 * err(near)       # 0.54-0.87 for these seeds


@heavy
@pytest.mark.parametrize("bits", [2, 3])
def test_code_assignment_lowers_the_layer_error_of_deep_compression(lenet300, digits, monkeypatch, bits):
    """share_pruned's refit keeps, per layer, the better of the centroid refit alone and the codes
    re-chosen by assign_codes, judged on held-out rows where the layer has more inputs than a
    quarter of the rows (all three here, 300 rows): on digits neither saw, fc3's outputs are nearer
    the float model's and no layer's are further (fc1, 784 inputs, keeps its centroid refit)."""
    from nncomp.compress import codes
    from nncomp.compress.calibration import inputs_of
    from nncomp.compress.pipeline import share_pruned
    x, _, cal = digits
    pruned = nc.prune(lenet300, sparsity=0.9, calibration=cal, storage="csr")
    names = ["fc1", "fc2", "fc3"]
    with_codes = share_pruned(lenet300, pruned, bits, names, calibration=cal)
    monkeypatch.setattr(codes, "assigned", lambda *a: None)
    without = share_pruned(lenet300, pruned, bits, names, calibration=cal)

    def error(m, name):
        target = lenet300[name].layer.forward(inputs_of(lenet300, x, [name])[name])
        return float(((m[name].layer.forward(inputs_of(m, x, [name])[name]) - target) ** 2).sum())
    errs = {name: (error(with_codes, name), error(without, name)) for name in names}
    assert all(a <= 1.0001 * b for a, b in errs.values()), errs
    assert errs["fc3"][0] < 0.9 * errs["fc3"][1], errs      # 0.65x at 2 bits, 0.80x at 3
    m = with_codes["fc3"].layer.weight
    assert isinstance(m, CSRCodebookMatrix) and m.nnz == pruned["fc3"].layer.weight.nnz
    assert np.array_equal(m.indices, pruned["fc3"].layer.weight.indices) and m.codebook.size <= 2 ** bits


@heavy
def test_share_pruned_layers_keeps_only_the_survivors(lenet300):
    pruned = nc.prune(lenet300, sparsity=0.9, storage="csr")
    s = nc.share(pruned, 5)
    for name in ("fc1", "fc2", "fc3"):
        m, p = s[name].layer.weight, pruned[name].layer.weight
        assert isinstance(m, CSRCodebookMatrix) and m.nnz == p.nnz
        assert np.array_equal(m.to_dense() != 0, p.to_dense() != 0) or np.array_equal(m.indices, p.indices)
        assert np.unique(m.codebook[m.codes]).size <= 32
    dense_zeros = nc.prune(lenet300, sparsity=0.5, storage="dense")          # pruned but stored dense
    s = nc.share(dense_zeros, 3)
    w = s["fc1"].layer.weight.to_dense()
    assert np.array_equal(w == 0, dense_zeros["fc1"].layer.weight.to_dense() == 0)
    assert isinstance(nc.share(dense_zeros, 3, sparse=True)["fc1"].layer.weight, CSRCodebookMatrix)


@heavy
def test_share_conv_layers_and_refuses_nonfinite_weights():
    m = nc.load(nc.data.model_path("lenet5"))
    s = nc.share(m, {"conv": 8, "dense": 4})
    x, _ = nc.data.for_model(m, "test")
    assert (s(x[:200]).argmax(1) == m(x[:200]).argmax(1)).mean() > 0.95
    assert s["features.2"].layer.weight.bits == 8
    w = m["classifier.2"].layer.weight.w.copy()
    w[0, 0] = np.nan
    bad = m.replace_layers({"classifier.2": m["classifier.2"].layer.replace(weight=nc.DenseMatrix(w))})
    with pytest.raises(CompressionParameterError, match="NaN"):
        nc.share(bad, 5)


@heavy
def test_deep_compression_pipeline(lenet300, digits, tmp_path):
    x, y, cal = digits
    dc = nc.deep_compression(lenet300, sparsity=0.9, calibration=cal)
    for name in ("fc1", "fc2", "fc3"):
        assert isinstance(dc[name].layer.weight, CSRCodebookMatrix) and dc[name].layer.weight.bits == 5
    report = nc.size_report(dc)
    assert report.total["dense"] == lenet300.nbytes
    assert report.total["huffman"] < report.total["shared"] < report.total["pruned"] < report.total["dense"]
    assert report.ratio > 25
    assert float((dc(x).argmax(1) == y).mean()) > 0.9
    path = tmp_path / "dc.h5"
    nc.save(dc, path, huffman=True)
    back = nc.load(path)
    assert np.array_equal(back(x[:50]), dc(x[:50]))
    with pytest.raises(CompressionParameterError):
        nc.deep_compression(lenet300, sparsity=1.5)
    with pytest.raises(CompressionParameterError):
        nc.deep_compression(lenet300, bits=0)


@needs_avx2
@pytest.mark.parametrize("kernel", [A.codebook_matmul4_avx2, A.codebook_matmul4_avx2_parallel])
@given(n_out=st.integers(1, 19), blocks=st.integers(0, 40), n=st.sampled_from([1, 1, 2, 3, 5, 8, 67]), seed=seeds)
def test_avx2_codebook_product_gives_the_portable_kernels_bits(kernel, n_out, blocks, n, seed):
    """The 4-bit product with AVX2's byte-plane lookups (one sample: four rows at a time; batches:
    a row's block decoded once for up to four samples, chunks of blocks, rows and samples) gives
    codebook_matmul4's bits (the contract's lane order), and the twin's values."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (n_out, 16 * blocks)).astype(np.uint8)
    cb = rng.standard_normal(16).astype(np.float32)
    x = rng.standard_normal((n, 32 * blocks)).astype(np.float32)
    want, got = np.full((n, n_out), np.nan, np.float32), np.full((n, n_out), np.nan, np.float32)
    K.codebook_matmul4(codes, x, cb, want)
    kernel(codes, x, cb, got)
    assert np.array_equal(got, want)
    mag = ref.codebook_matmul4(codes, np.abs(x), np.abs(cb))
    assert_close_f32(got, ref.codebook_matmul4_avx2(codes, x, cb), mag, max(1, 32 * blocks))


def test_a_codebook_layers_sample_has_the_same_bits_in_every_batch(lenet300):
    """A shared layer's result for a sample does not depend on the batch it runs in (a plan may
    split a batch over the threads): on CPUs without AVX-512 every batch of a 4-bit layer runs the
    AVX2 product, the contract's bits (batch 1 once ran it and batches a decoded weight)."""
    s = nc.share(lenet300, bits=4)
    x, _ = nc.data.for_model(lenet300, "test")
    one = np.concatenate([s(x[i:i + 1]) for i in range(5)])
    for n in (2, 5, 64):
        assert np.array_equal(s(x[:n])[:5], one[:min(n, 5)])


@given(n_out=st.integers(1, 5), blocks=st.integers(0, 4), seed=seeds)
def test_lane_sums_are_the_contracts(n_out, blocks, seed):
    """The 16 lane sums of a 4-bit row (codebook_matmul4's batch-1 loop; codebook_matmul4_avx2 is
    checked against that kernel above) equal the twin's float32 lane sums bit for bit."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (n_out, 16 * blocks)).astype(np.uint8)
    cb = rng.standard_normal(16).astype(np.float32)
    x = rng.standard_normal(32 * blocks).astype(np.float32)
    o = int(rng.integers(0, n_out))
    acc = np.full(16, np.nan, np.float32)
    K.lane_sums4(codes, o, x, cb, acc)
    assert np.array_equal(acc, ref.lane_sums4(codes, o, x, cb))
