"""The epilogue a producing layer applies in place to its fresh output: batch norm's per-channel
affine map, a residual add, a clip (ReLU, ReLU6, Clip), then one activation function, in that order,
in one pass over the values.

The same float32 operations as the layers run one by one (``y * scale + shift``, ``+ res``,
``np.maximum(y, lo)``, ``np.minimum(y, hi)``; no fused multiply-add), so results are bit-identical
to them; NaN passes through the clip and -0.0 becomes +0.0 at a clip to 0, as in NumPy. The
activations (sigmoid, hard sigmoid, hard swish, leaky ReLU) have no NumPy sequence of their own:
their layers run this same kernel on a copy of their input, so fused and unfused agree bit for bit.
"""
import numpy as np
from numba import prange

from ._jit import both

# Activation codes of the kernel's ``act`` argument.
ACT_NONE, ACT_SIGMOID, ACT_HARDSIGMOID, ACT_HARDSWISH, ACT_LEAKYRELU = 0, 1, 2, 3, 4


def _epilogue(y, scale, shift, res, lo, hi, act, alpha, beta):
    """``y = act(clip((y * scale + shift) + res, lo, hi))`` in place, each part optional.

    IN  y (m, c) float32 C-contiguous; scale, shift (c,) float32, or (0,) for no affine map;
        res (m, c) float32 C-contiguous, or (0, c) for no residual; lo, hi float (-inf, inf: none);
        act one of the ACT_* codes; alpha, beta float32 (hard sigmoid's slope and offset, leaky
        ReLU's slope).
    OUT y, overwritten.
    """
    m, c = y.shape
    affine = scale.shape[0] > 0
    add = res.shape[0] > 0
    one, zero = np.float32(1.0), np.float32(0.0)
    sixth, half = np.float32(1.0 / 6.0), np.float32(0.5)
    for i in prange(m):
        row = y[i]
        for k in range(c):
            v = row[k]
            if affine:
                v = v * scale[k]
                v = v + shift[k]
            if add:
                v = v + res[i, k]
            # NumPy's maximum and minimum: the first operand only if it wins strictly or is NaN
            # (so max(-0.0, 0.0) is +0.0, as np.maximum gives)
            if not (v > lo or v != v):
                v = lo
            if not (v < hi or v != v):
                v = hi
            if act == ACT_SIGMOID:
                v = one / (one + np.exp(-v))
            elif act == ACT_HARDSIGMOID or act == ACT_HARDSWISH:
                t = v * alpha + beta if act == ACT_HARDSIGMOID else v * sixth + half
                t = min(max(t, zero), one) if t == t else t
                v = t if act == ACT_HARDSIGMOID else v * t
            elif act == ACT_LEAKYRELU:
                v = v if v >= zero or v != v else v * alpha
            row[k] = v


epilogue_rows, epilogue_rows_parallel = both(_epilogue)
