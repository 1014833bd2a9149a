"""Portable codebook kernels: products with weights given as codes into a small float32 codebook.

Arithmetic contract, shared bit for bit with the AVX-512 kernels of kernels/codebook_vpermps.py:

- **4-bit packed codes** (``codebook_matmul4``): ``codes`` is ``(n_out, nb*16)`` uint8 and the input
  ``(n, nb*32)``: columns come in blocks of 32, and byte ``j`` of block ``b`` holds the code of column
  ``32b + j`` in its low nibble and of column ``32b + 16 + j`` in its high nibble. ``cb16`` is the
  codebook zero-padded to 16 entries.
- **byte codes** (``codebook_matmul8``): ``codes`` is ``(n_out, nb*16)`` uint8, one code per column,
  input ``(n, nb*16)``, codebook of up to 256 entries.
- For every output ``(i, o)`` sixteen float32 lane accumulators start at +0; lane ``l`` adds the
  products ``x[i, k] * cb[code(o, k)]`` of the columns ``k = l (mod 16)`` in increasing ``k``, each
  with one fused multiply-add (``acc = fma(x, w, acc)``: one rounding, as ``vfmadd`` does); the lanes
  are then summed by a fixed tree, ``(l, l+8)``, then ``(l, l+4)``, ``(l, l+2)``, ``(0, 1)``
  (:func:`reduce16`).

The plain loops call :func:`fma32` (nncomp/kernels/_ir.py), LLVM's target-independent ``llvm.fma.f32`` (a ``vfmadd`` where the
CPU has FMA, a correctly rounded ``fmaf`` call elsewhere), so they are portable and still match the
register kernels bit for bit.
"""
import numpy as np
from numba import njit, prange

from . import _ir, isa
from ._ir import CHUNK_NNZ, fma32
from ._jit import both, jit




@njit(cache=True, nogil=True, inline="always")
def reduce16(a):
    """The fixed lane-summation tree of the contract: a (16,) float32 -> float32."""
    t0, t1, t2, t3 = a[0] + a[8], a[1] + a[9], a[2] + a[10], a[3] + a[11]
    t4, t5, t6, t7 = a[4] + a[12], a[5] + a[13], a[6] + a[14], a[7] + a[15]
    u0, u1, u2, u3 = t0 + t4, t1 + t5, t2 + t6, t3 + t7
    return (u0 + u2) + (u1 + u3)


@jit(inline="always")
def lane_sums4(codes, o, x, cb16, acc):
    """The contract's 16 lane sums of row ``o`` for one sample ``x`` (nb*32,) into ``acc`` (16,)."""
    acc[:] = 0
    for b in range(codes.shape[1] // 16):
        for l in range(16):
            c = codes[o, b * 16 + l]
            acc[l] = fma32(x[b * 32 + 16 + l], cb16[c >> 4], fma32(x[b * 32 + l], cb16[c & 15], acc[l]))


def _matmul4(codes, x, cb16, out):
    """Codebook product with packed 4-bit codes: ``out[i, o] = sum_k x[i, k] * cb16[code(o, k)]``.

    IN  codes (n_out, nb*16) uint8 packed as in the module docstring; x (n, nb*32) float32;
        cb16 (16,) float32.
    OUT out (n, n_out) float32, overwritten, summed in the order of the contract.
    """
    n = x.shape[0]
    n_out, width = codes.shape
    if n == 1:
        for o in prange(n_out):
            acc = np.empty(16, np.float32)
            lane_sums4(codes, o, x[0], cb16, acc)
            out[0, o] = reduce16(acc)
        return
    xt = np.ascontiguousarray(x.T)      # (columns, samples): the sample loop is innermost, contiguous
    for o in prange(n_out):
        acc = np.zeros((16, n), np.float32)
        t = np.empty(16, np.float32)
        for b in range(width // 16):
            for l in range(16):
                c = codes[o, b * 16 + l]
                wlo = cb16[c & 15]
                whi = cb16[c >> 4]
                xlo = xt[b * 32 + l]
                xhi = xt[b * 32 + 16 + l]
                a = acc[l]
                for i in range(n):
                    a[i] = fma32(xhi[i], whi, fma32(xlo[i], wlo, a[i]))
        for i in range(n):
            for l in range(16):
                t[l] = acc[l, i]
            out[i, o] = reduce16(t)


codebook_matmul4, codebook_matmul4_parallel = both(_matmul4)


def _matmul8(codes, x, cb, out):
    """Codebook product with one code per byte: ``out[i, o] = sum_k x[i, k] * cb[codes[o, k]]``.

    IN  codes (n_out, nb*16) uint8, every code < len(cb); x (n, nb*16) float32; cb (<= 256,) float32.
    OUT out (n, n_out) float32, overwritten, summed in the order of the contract.
    """
    n = x.shape[0]
    n_out, width = codes.shape
    if n == 1:
        for o in prange(n_out):
            acc = np.zeros(16, np.float32)
            for b in range(width // 16):
                for l in range(16):
                    acc[l] = fma32(x[0, b * 16 + l], cb[codes[o, b * 16 + l]], acc[l])
            out[0, o] = reduce16(acc)
        return
    xt = np.ascontiguousarray(x.T)      # (columns, samples): the sample loop is innermost, contiguous
    for o in prange(n_out):
        acc = np.zeros((16, n), np.float32)
        t = np.empty(16, np.float32)
        for b in range(width // 16):
            for l in range(16):
                w = cb[codes[o, b * 16 + l]]
                xr = xt[b * 16 + l]
                a = acc[l]
                for i in range(n):
                    a[i] = fma32(xr[i], w, a[i])
        for i in range(n):
            for l in range(16):
                t[l] = acc[l, i]
            out[i, o] = reduce16(t)


codebook_matmul8, codebook_matmul8_parallel = both(_matmul8)


def _gram(codes, cov, k, out):
    """Least-squares normal matrix of a codebook layer: ``out += sum_o A_o.T @ cov @ A_o``.

    ``A_o`` is the one-hot ``(n_in, k)`` matrix of row ``o``'s codes, so ``out[j, l]`` sums
    ``cov[p, q]`` over the pairs of columns ``(p, q)`` of one row with codes ``(j, l)``.
    IN  codes (n_out, n_in) uint8 (unpacked, every code < k); cov (n_in, n_in) float64; k int.
    OUT out (k, k) float64, added to (serial: the caller splits rows across calls).
    """
    n_out, n_in = codes.shape
    t = np.empty((k, n_in), np.float64)
    for o in range(n_out):
        row = codes[o]
        t[:, :] = 0.0
        for p in range(n_in):
            tp = t[row[p]]
            cp = cov[p]
            for q in range(n_in):
                tp[q] += cp[q]
        for j in range(k):
            tj = t[j]
            oj = out[j]
            for q in range(n_in):
                oj[row[q]] += tj[q]


codebook_gram = jit(_gram)


def _csr_matvec(codes, indices, indptr, cb, x, out):
    """Sparse codebook product, one sample: ``out[o] = sum_j cb[codes[j]] * x[indices[j]]`` over row o.

    IN  codes (nnz,) uint8 < len(cb); indices (nnz,) uint16/int32 < len(x); indptr (n_out+1,) int64
        non-decreasing from 0 to nnz; cb (k,) float32; x (n_in,) float32.
    OUT out (n_out,) float32 (empty row: 0).
    """
    for o in prange(indptr.shape[0] - 1):
        lo = indptr[o]
        hi = indptr[o + 1]
        s = np.float32(0.0)
        for j0 in range(lo, hi, CHUNK_NNZ):        # chunks prefetching ahead, as csr_matvec's
            j1 = min(j0 + CHUNK_NNZ, hi)
            _ir.prefetch_chunk(codes, indices, j0)
            cd = codes[j0:j1]
            ix = indices[j0:j1]
            for j in range(j1 - j0):
                s += cb[cd[j]] * x[ix[j]]
        out[o] = s


def _csr_matvec_rows(codes, indices, indptr, cb, x, out):
    """:func:`_csr_matvec` with each row's sum one loop (no chunks, no prefetch): nncomp/kernels/csr.py's
    ``csr_matvec_rows``, for CPUs without AVX-512."""
    for o in prange(indptr.shape[0] - 1):
        lo = indptr[o]
        hi = indptr[o + 1]
        cd = codes[lo:hi]
        ix = indices[lo:hi]
        s = np.float32(0.0)
        for j in range(hi - lo):
            s += cb[cd[j]] * x[ix[j]]
        out[o] = s


csr_codebook_matvec_chunked, csr_codebook_matvec_chunked_parallel = both(_csr_matvec, fastmath=True)
csr_codebook_matvec_rows, csr_codebook_matvec_rows_parallel = both(_csr_matvec_rows, fastmath=True)
csr_codebook_matvec, csr_codebook_matvec_parallel = (
    (csr_codebook_matvec_chunked, csr_codebook_matvec_chunked_parallel) if isa.HAVE_AVX512
    else (csr_codebook_matvec_rows, csr_codebook_matvec_rows_parallel))


def _csr_gram(codes, indices, indptr, cov, k, out):
    """``codebook_gram`` for a sparse codebook layer: only the stored entries of each row count.

    IN  codes (nnz,) uint8 < k; indices (nnz,) int < n_in; indptr (n_out+1,) int64; cov (n_in, n_in)
        float64; k int.
    OUT out (k, k) float64, added to.
    """
    n_in = cov.shape[0]
    t = np.empty((k, n_in), np.float64)
    for o in range(indptr.shape[0] - 1):
        lo = indptr[o]
        hi = indptr[o + 1]
        cd = codes[lo:hi]
        ix = indices[lo:hi]
        t[:, :] = 0.0
        for p in range(hi - lo):
            tp = t[cd[p]]
            cp = cov[ix[p]]
            for q in range(n_in):
                tp[q] += cp[q]
        for j in range(k):
            tj = t[j]
            oj = out[j]
            for q in range(hi - lo):
                oj[cd[q]] += tj[ix[q]]


csr_codebook_gram = jit(_csr_gram)
