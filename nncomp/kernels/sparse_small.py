"""Compressed dense layers as one compiled call: the product, the bias and the epilogue.

The float32 dense layers got this in nncomp/kernels/dense_small.py; the compressed formats ran
their product kernel, then the bias (NumPy), then the epilogue and activation kernels, each a
Python step: 4-8 us per layer, as much as a 90%-sparse LeNet-300-100's whole arithmetic. Here the
CSR and CSR-codebook products at batch 1 write ``w @ x[perm] + bias`` and apply the epilogue of
nncomp/kernels/epilogue.py in the same call (a flatten's feature order gathered by ``perm``, as
the dense mat-vec does; the register codebook kernel has its own, nncomp/kernels/codebook_vpermps.py).
The sums are the gathered dot products of nncomp/kernels/csr.py and codebook.py (reassociated into
vector lanes), so they differ from those kernels in the last bits only; a layer's unfused and fused
steps both run these kernels, so fusion changes no bit. Every other format and batch runs its
product, then ``bias_epilogue_rows``: the bias, the epilogue and the activation in one call.

Contract (NumPy twin: tests/reference.py ``csr_gemv_epilogue``):
``out[0, o] = act(clip((sum_j w_j * x[perm][indices[j]] + bias[o]) * scale[o] + shift[o] + res[0, o],
lo, hi))`` over row o's stored entries ``w_j``: ``data[j]``, or ``cb[codes[j]]`` for data given as
``(codes, cb)`` (as nncomp/kernels/csr.py's batch kernel takes them).
"""
import numpy as np
from numba import prange, types
from numba.extending import overload

from ._jit import both, jit
from .epilogue import activation_rows, epilogue_rows

_REASSOC = {"reassoc", "contract", "nsz"}     # vector lanes, but NaN and inf kept (no nnan / ninf)


@jit
def gathered(x, perm):
    """``x[perm]`` (a new array), or x itself when ``perm`` is empty."""
    if perm.shape[0] == 0:
        return x
    xs = np.empty(perm.shape[0], np.float32)
    for i in range(perm.shape[0]):
        xs[i] = x[perm[i]]
    return xs


@jit
def finish_row(out, scale, shift, res, lo, hi, act, alpha, beta):
    """The epilogue and activation of output rows (m, co), in place, as the layers run them."""
    if scale.shape[0] > 0 or res.shape[0] > 0 or lo > -np.inf or hi < np.inf:
        epilogue_rows(out, scale, shift, res, lo, hi)
    if act != 0:
        activation_rows(out, act, alpha, beta)


def _entries(data, j0, j1):
    """Entries j0..j1 of the stored values: ``data[j0:j1]``, or ``(codes[j0:j1], cb)`` for data
    ``(codes, cb)``."""
    return (data[0][j0:j1], data[1]) if isinstance(data, tuple) else data[j0:j1]


def _value(d, j):
    """Value j of :func:`_entries`: ``d[j]``, or ``cb[codes[j]]``."""
    return d[1][d[0][j]] if isinstance(d, tuple) else d[j]


@overload(_entries, jit_options={"cache": True})
def _entries_jit(data, j0, j1):
    if isinstance(data, types.BaseTuple):
        return lambda data, j0, j1: (data[0][j0:j1], data[1])
    return lambda data, j0, j1: data[j0:j1]


@overload(_value, jit_options={"cache": True})
def _value_jit(d, j):
    if isinstance(d, types.BaseTuple):
        return lambda d, j: d[1][d[0][j]]
    return lambda d, j: d[j]


def _csr(data, indices, indptr, x, perm, bias, scale, shift, res, lo, hi, act, alpha, beta, out):
    """CSR weights, one sample (module doc).

    IN  data (nnz,) float32 values, or a tuple ``(codes, cb)``: uint8 codes (nnz,) into the float32
        codebook cb (the values ``cb[codes]``); indices (nnz,) uint16 or int32 < k; indptr (co + 1,)
        int32/int64 non-decreasing from 0 to nnz; x (k0,) float32; perm (k,) int64 indices into x,
        or (0,); bias (co,) float32; scale, shift (co,) or (0,); res (1, co) or (0, co); lo, hi
        float32; act an ACT_* code with alpha, beta.
    OUT out (1, co) float32 C-contiguous, overwritten.
    """
    x = gathered(x, perm)
    y = out[0]
    for o in prange(indptr.shape[0] - 1):
        j0 = indptr[o]
        j1 = indptr[o + 1]
        d = _entries(data, j0, j1)
        ix = indices[j0:j1]
        s = np.float32(0.0)
        for j in range(j1 - j0):
            s += _value(d, j) * x[ix[j]]
        y[o] = s + bias[o]
    finish_row(out, scale, shift, res, lo, hi, act, alpha, beta)


csr_gemv_epilogue, csr_gemv_epilogue_parallel = both(_csr, fastmath=_REASSOC)


def _bias_epilogue(y, bias, scale, shift, res, lo, hi, act, alpha, beta):
    """``y = act(clip((y + bias) * scale + shift + res, lo, hi))`` in place, row by row: a compressed
    product's bias and epilogue in one call, the same float32 operations as the layers run them
    (NumPy's ``y += bias``, then epilogue_rows, then activation_rows: bit-identical).

    IN  y (m, c) float32 C-contiguous; bias (c,) float32, or (0,) for none; res (m, c) or (0, c); the rest as in
        csr_gemv_epilogue.
    OUT y, overwritten.
    """
    m, c = y.shape
    for i in prange(m):
        if bias.shape[0] > 0:
            row = y[i]
            for k in range(c):
                row[k] = row[k] + bias[k]
        finish_row(y[i:i + 1], scale, shift, res[i:i + 1], lo, hi, act, alpha, beta)


bias_epilogue_rows, bias_epilogue_rows_parallel = both(_bias_epilogue, error_model="numpy")
