"""Compressed weights decoded into the blocked convolution's layout, call by call.

The blocked convolution kernel (nncomp/kernels/conv_blocked.py) reads its weight as ``(k, cop)``
float32: the transposed matrix, output channels zero-padded to a multiple of 16. A compressed
convolution decodes its weight into that layout in a per-thread work buffer right before the
kernel runs, so the layer keeps only its compressed arrays between calls (no dense copy lives in
the model) and still runs the register-blocked kernel instead of a patch matrix times a
compressed product. Each kernel writes every element of ``out`` (the padding columns as zeros), so
the buffer needs no clearing; the values are exactly the format's ``to_dense()`` (the same float32
operations). Layouts of the inputs: nncomp/matrices/.

Work: one pass over the weight (k x cop stores); rows of ``out`` split over the threads.
"""
import numpy as np
from numba import prange

from ._jit import both, jit


def _codebook_t(codes, codebook, bits, n_out, out):
    """``out[j, o] = codebook[code(o, j)]``; columns ``o >= n_out`` zero.

    IN  codes (n_out, width) uint8 packed as nncomp/matrices/codebook.py lays them out (bits <= 4:
        blocks of 32 columns, byte i holding column i in its low nibble and 16 + i in its high one;
        else one code per byte); codebook (m,) float32; bits 1..8.
    OUT out (k, cop) float32, k <= the codes' columns, cop >= n_out.

    One row of ``out`` per iteration, written in order; the codes are read down a column, whose
    cache lines (one per weight row) serve the next 15-63 rows of ``out`` from L1.
    """
    k, cop = out.shape
    for j in prange(k):
        row = out[j]
        if bits <= 4:
            byte = (j >> 5) * 16 + (j & 15)
            shift = 4 * ((j >> 4) & 1)
            for o in range(n_out):
                row[o] = codebook[(codes[o, byte] >> shift) & 15]
        else:
            for o in range(n_out):
                row[o] = codebook[codes[o, j]]
        for o in range(n_out, cop):
            row[o] = 0.0


decode_codebook_t, decode_codebook_t_parallel = both(_codebook_t)


def _int8_t(q, scale, out):
    """``out[j, o] = float32(q[o, j]) * scale[o]`` (one scale for all rows when ``scale`` has one
    entry); columns ``o >= n_out`` zero. Rows of ``out`` in order, as the codebook decoder.

    IN  q (n_out, k) int8; scale (n_out,) or (1,) float32.
    OUT out (k, cop) float32, cop >= n_out.
    """
    n_out = q.shape[0]
    k, cop = out.shape
    one = scale.shape[0] == 1
    for j in prange(k):
        row = out[j]
        for o in range(n_out):
            row[o] = np.float32(q[o, j]) * scale[0 if one else o]
        for o in range(n_out, cop):
            row[o] = 0.0


decode_int8_t, decode_int8_t_parallel = both(_int8_t)


def _sparse_t(values, codes, indices, indptr, out):
    """CSR rows scattered into ``out[col, row]``, zeros elsewhere: the value of entry ``p`` is
    ``values[p]`` when ``codes`` is empty, else ``values[codes[p]]`` (a codebook).

    IN  values float32 (nnz,) or (m,); codes (nnz,) uint8 or (0,); indices (nnz,) column indices
        (uint16 or int32), sorted within rows; indptr (n_out + 1,) int.
    OUT out (k, cop) float32, k > every column index, cop >= n_out.
    """
    k, cop = out.shape
    n_out = indptr.shape[0] - 1
    coded = codes.shape[0] > 0
    for j in prange(k):
        out[j, :] = 0.0
    # a task owns 16 weight rows, 16 adjacent columns of out (a 64-byte line when the rows of out
    # are so aligned): threads do not write into one another's cache lines
    for ob in prange((n_out + 15) // 16):
        for o in range(ob * 16, min(n_out, ob * 16 + 16)):
            for p in range(indptr[o], indptr[o + 1]):
                out[np.int64(indices[p]), o] = values[codes[p]] if coded else values[p]


decode_sparse_t, decode_sparse_t_parallel = both(_sparse_t)


@jit
def _winograd_channel(wt, c, ci, g_mat, out):
    """:func:`_winograd_t` for input channel ``ci``, every output channel."""
    cop = out.shape[2]
    span, k = g_mat.shape
    g = np.empty((k, k))
    t = np.empty((span, k))
    for o in range(cop):
        for r in range(k):
            for s in range(k):
                g[r, s] = wt[(r * k + s) * c + ci, o]
        for a in range(span):           # t = G g
            for s in range(k):
                acc = g_mat[a, 0] * g[0, s]
                for j in range(1, k):
                    acc += g_mat[a, j] * g[j, s]
                t[a, s] = acc
        for a in range(span):           # (G g) G^T
            for b in range(span):
                acc = t[a, 0] * g_mat[b, 0]
                for j in range(1, k):
                    acc += t[a, j] * g_mat[b, j]
                out[span * a + b, ci, o] = acc


def _winograd_t(wt, c, g_mat, out):
    """The Winograd F(m x m, r x r) weight ``G g G^T`` of a decoded weight, in float64 and rounded once,
    as nncomp.kernels.conv_winograd.winograd_weight computes it from the dense weight.

    IN  wt (r * r * c, cop) float32: the blocked layout (rows ordered kernel row, column, channel);
        g_mat (span, r) float64: G (conv_winograd.filter_matrix), span = m + r - 1.
    OUT out (span**2, cp, cop) float32, position ``span * a + b`` first; input channels ``>= c`` zero.
    """
    cp = out.shape[1]
    for ci in prange(cp):
        if ci >= c:
            for xi in range(out.shape[0]):
                out[xi, ci, :] = 0.0
        else:
            _winograd_channel(wt, c, ci, g_mat, out)


decode_winograd_t, decode_winograd_t_parallel = both(_winograd_t)
