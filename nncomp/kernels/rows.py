"""Row-wise kernels of the small layers a transformer block or a two-branch CNN adds between its
products: layer normalization over each row, and the channel concatenation and channel slices of
NHWC maps.

NumPy runs each as several calls, or as a strided copy with a loop per row: PP-OCRv6's recognizer
(Intel Xeon, 2 threads, in the pass) spent 44 us on each of its five LayerNorms of 40 x 120 values
(mean, subtract, square, mean, sqrt, divide, scale, shift: eight calls) and 0.23 ms on one channel
concatenation of two 24 x 160 x 48 maps (3,840 rows of 192 bytes each, ~30 ns of loop per row), where
ONNX Runtime took 0.04 ms. Here one compiled call each (each row's run copied through a slice of the
row: indexing ``d[at + j]`` made a wraparound check per value and no vector loop, 2-3x slower than
NumPy's strided copy on YOLOv8's concatenations; now 1-4x faster). Twins: tests/reference.py
``layernorm_rows``, ``concat_columns``, ``take_columns``.
"""
import numpy as np
from numba import prange

from ._jit import both


def _layernorm(x, scale, bias, eps, out):
    """``out[i] = (x[i] - mean) / sqrt(var + eps) * scale + bias`` per row, in float32: the mean and
    the population variance (of the differences from the mean, as NumPy's formula) over the row,
    sums reassociated (vector partial sums).

    IN  x (m, k) float32 C-contiguous, k >= 1; scale, bias (k,) float32, or (0,) for none; eps >= 0.
    OUT out (m, k) float32 C-contiguous, overwritten.
    """
    m, k = x.shape
    inv_k = np.float32(1.0) / np.float32(k)
    for i in prange(m):
        row, dst = x[i], out[i]
        s = np.float32(0.0)
        for j in range(k):
            s += row[j]
        mean = s * inv_k
        q = np.float32(0.0)
        for j in range(k):
            d = row[j] - mean
            q += d * d
        r = np.float32(1.0) / np.sqrt(q * inv_k + np.float32(eps))
        for j in range(k):
            dst[j] = (row[j] - mean) * r
        if scale.shape[0] > 0:
            for j in range(k):
                dst[j] *= scale[j]
        if bias.shape[0] > 0:
            for j in range(k):
                dst[j] += bias[j]


layernorm_rows, layernorm_rows_parallel = both(_layernorm, fastmath={"reassoc"}, error_model="numpy")


def _concat(src, out, at):
    """Columns ``at .. at + k`` of every row of ``out`` = the rows of ``src``: one input of a
    concatenation along the last axis.

    IN  src (m, k) float32 C-contiguous; out (m, K) float32 C-contiguous, K >= at + k.
    OUT out, those columns overwritten (the others untouched).
    """
    m, k = src.shape
    for i in prange(m):
        s, d = src[i], out[i, at:at + k]        # (d[at + j] indexing: a wraparound check per value, no vectors)
        for j in range(k):
            d[j] = s[j]


concat_columns, concat_columns_parallel = both(_concat)


def _take(src, at, out):
    """``out`` = columns ``at .. at + k`` of every row of ``src``: a slice of the last axis (the
    channels of an NHWC map: a Split's part).

    IN  src (m, K) float32 C-contiguous; at >= 0 with at + k <= K.
    OUT out (m, k) float32 C-contiguous, overwritten.
    """
    m, k = out.shape
    for i in prange(m):
        s, d = src[i, at:at + k], out[i]
        for j in range(k):
            d[j] = s[j]


take_columns, take_columns_parallel = both(_take)
