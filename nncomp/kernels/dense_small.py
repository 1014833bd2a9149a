"""A dense layer on one sample as one compiled call: the mat-vec, the bias and the epilogue.

At batch 1 a dense layer streams its weight once, and a plain loop that LLVM vectorizes does that
as fast as OpenBLAS's sgemv called through NumPy (Zen 4, one thread: 300x784 12.0 us against 14.7,
128x576 3.0 against 5.5, 500x800 20.2 against 21.4). What the BLAS path cost was around the
arithmetic: NumPy's call, a copy of the transposed result, the bias add and the epilogue kernel's
dispatch, 5-8 us of Python per layer, as much as LeNet-300-100's arithmetic (its batch-1 pass:
26 us in the kernels, 45 us a call). Four weight rows share each load of the input; the sums are
reassociated (vector lanes), so they differ from BLAS's in the last bits.

Contract (NumPy twin: tests/reference.py ``gemv_epilogue``):
``out[0, j] = act(clip((w[j] @ x[perm] + bias[j]) * scale[j] + shift[j] + res[0, j], lo, hi))`` with the
parts after the bias those of nncomp/kernels/epilogue.py, applied by its own kernels (bit-identical
to the epilogue run after the product).
"""
import numpy as np
from numba import prange

from ._jit import both
from .epilogue import activation_rows, epilogue_rows

ROWS = 64       # weight rows per parallel work item
_REASSOC = {"reassoc", "contract", "nsz"}


def _gemv(w, x, perm, bias, scale, shift, res, lo, hi, act, alpha, beta, out):
    """``out[0] = epilogue(w @ x[perm] + bias)`` (module doc).

    IN  w (co, k) float32 C-contiguous; x (k,) float32 contiguous; perm (k,) int64 indices into x
        (a flatten's feature order) or (0,) for x as it is; bias (co,) float32; scale, shift (co,)
        float32, or (0,) for no affine map; res (1, co) float32, or (0, co) for no residual;
        lo, hi float32 clip bounds (-inf, inf: none); act an ACT_* code of nncomp/kernels/epilogue.py
        (0: none) with its alpha, beta.
    OUT out (1, co) float32 C-contiguous, overwritten.
    """
    co, k = w.shape
    y = out[0]
    if perm.shape[0] > 0:
        xs = np.empty(k, np.float32)
        for i in range(k):
            xs[i] = x[perm[i]]
        x = xs
    for blk in prange((co + ROWS - 1) // ROWS):
        j = blk * ROWS
        end = min(co, j + ROWS)
        while j + 4 <= end:
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            a3 = np.float32(0.0)
            for i in range(k):
                v = x[i]
                a0 += w[j, i] * v
                a1 += w[j + 1, i] * v
                a2 += w[j + 2, i] * v
                a3 += w[j + 3, i] * v
            y[j] = a0 + bias[j]
            y[j + 1] = a1 + bias[j + 1]
            y[j + 2] = a2 + bias[j + 2]
            y[j + 3] = a3 + bias[j + 3]
            j += 4
        while j < end:
            a = np.float32(0.0)
            for i in range(k):
                a += w[j, i] * x[i]
            y[j] = a + bias[j]
            j += 1
    if scale.shape[0] > 0 or res.shape[0] > 0 or lo > -np.inf or hi < np.inf:
        epilogue_rows(out, scale, shift, res, lo, hi)
    if act != 0:
        activation_rows(out, act, alpha, beta)


gemv_epilogue, gemv_epilogue_parallel = both(_gemv, fastmath=_REASSOC)
