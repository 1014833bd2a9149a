"""The epilogue a producing layer applies in place to its fresh output: batch norm's per-channel
affine map, a residual add, a clip (ReLU, ReLU6), in that order, in one pass over the values.

The same float32 operations as the layers run one by one (``y * scale + shift``, ``+ res``,
``np.maximum(y, lo)``, ``np.minimum(y, hi)``; no fused multiply-add), so results are bit-identical
to them; NaN passes through the clip and -0.0 becomes +0.0 at a clip to 0, as in NumPy.
"""
from numba import prange

from ._jit import both


def _epilogue(y, scale, shift, res, lo, hi):
    """``y = clip((y * scale + shift) + res, lo, hi)`` in place, each part optional.

    IN  y (m, c) float32 C-contiguous; scale, shift (c,) float32, or (0,) for no affine map;
        res (m, c) float32 C-contiguous, or (0, c) for no residual; lo, hi float (-inf, inf: none).
    OUT y, overwritten.
    """
    m, c = y.shape
    affine = scale.shape[0] > 0
    add = res.shape[0] > 0
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
            row[k] = v


epilogue_rows, epilogue_rows_parallel = both(_epilogue)
