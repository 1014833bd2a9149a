"""The few-sample dense product (nncomp/kernels/dense_few.py) against its NumPy twin."""
import numpy as np
from hypothesis import example, given, strategies as st

import reference as ref
from conftest import check_dense_product, random_epilogue
from nncomp.kernels import dense_few as F

F32 = np.float32
_KERNELS = {False: F.few_gemm, True: F.few_gemm_parallel}


def _run(w, x, bias, epi, parallel=True):
    n, co = x.shape[0], w.shape[0]
    scale, shift, res, lo, hi, act = epi
    out = np.full((n, co), np.nan, F32)
    _KERNELS[parallel](w, x, bias, scale, shift, res, lo, hi, act, F32(0.2), F32(0.5), out)
    return out


@given(co=st.integers(1, 140), k=st.integers(1, 100), n=st.integers(1, 12), with_bias=st.booleans(),
       affine=st.booleans(), add=st.booleans(), clip=st.sampled_from([None, (0.0, np.inf), (0.0, 6.0)]),
       act=st.sampled_from([0, 2, 3, 4]), parallel=st.booleans(), seed=st.integers(0, 2**31))
@example(co=70, k=33, n=7, with_bias=True, affine=False, add=False, clip=None, act=0, parallel=True, seed=0)
def test_few_gemm_matches_reference(co, k, n, with_bias, affine, add, clip, act, parallel, seed):
    """Every tile shape (rows in 4s and a tail of 1-3, samples in 4s and a tail, several 64-row
    blocks, features in 16s and a tail) against the twin: the sums within float32 rounding (bound
    from the sum of |terms|), the epilogue's own float32 steps after them."""
    check_dense_product(lambda w, x, bias, epi: _run(w, x, bias, epi, parallel), ref.few_gemm,
                        np.random.default_rng(seed), co, k, n, with_bias, affine, add, clip, act)


@given(n=st.integers(2, 11), k=st.sampled_from([15, 16, 47, 64]), seed=st.integers(0, 2**31))
def test_a_samples_bits_do_not_depend_on_its_batch(n, k, seed):
    """Each sample of a batch, in whichever tile of samples it falls, gives the bits it gives alone,
    serial or threaded (67 rows: 64-row blocks and a tail of 3 single rows)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((67, k)).astype(F32)
    x = rng.standard_normal((n, k)).astype(F32)
    bias = rng.standard_normal(67).astype(F32)
    epi = random_epilogue(rng, n, 67, False, False, None, 0)
    batch = _run(w, x, bias, epi)
    for b in range(n):
        alone = _run(w, x[b:b + 1], bias, random_epilogue(rng, 1, 67, False, False, None, 0), parallel=False)
        assert np.array_equal(alone[0], batch[b])
