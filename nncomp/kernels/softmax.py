"""Softmax over the last axis of a batch's rows, one compiled call for a classifier's few outputs.

NumPy's softmax is five calls (max, subtract, exp, sum, divide), ~20 us together on a handful of
values (PP-LCNet's 4 classes at batch 1: 24 us of a 1.8 ms pass, Intel Xeon); this kernel is one
call. Larger inputs keep NumPy (:data:`KERNEL_MAX_VALUES`): its exp is vectorized, Numba calls the
scalar ``expf`` (a text recognizer's 40 x 6625 probabilities a line would run slower here).
Twin: tests/reference.py ``softmax_rows``.
"""
import numpy as np
from numba import prange

from ._jit import both

KERNEL_MAX_VALUES = 4096


def _softmax_rows(x, out):
    """``out[i] = exp(x[i] - max x[i]) / sum_j exp(x[i, j] - max x[i])``, in float32: a row holding
    a NaN, or an infinity, gives NaNs as NumPy's formula does.

    IN  x (m, k) float32 C-contiguous, k >= 1.
    OUT out (m, k) float32 C-contiguous, overwritten.
    """
    m, k = x.shape
    for i in prange(m):
        top = x[i, 0]
        for j in range(1, k):
            v = x[i, j]
            if v > top or v != v:       # a NaN stays the maximum once met (v > NaN is false)
                top = v
        s = np.float32(0.0)
        for j in range(k):
            e = np.exp(x[i, j] - top)
            out[i, j] = e
            s += e
        for j in range(k):
            out[i, j] = out[i, j] / s


softmax_rows, softmax_rows_parallel = both(_softmax_rows)
