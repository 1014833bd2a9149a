"""Resize kernels over NHWC float32 images: gathers through per-axis index and weight tables that
the layer computes once per shape (nncomp/layers/resize.py holds ONNX's coordinate rules)."""
from numba import prange

from ._jit import both


def _nearest(x, iy, ix, out):
    """``out[b, i, j] = x[b, iy[i], ix[j]]``, one output row per iteration.

    IN  x (n, h, w, c) float32; iy (oh,) int64 in [0, h); ix (ow,) int64 in [0, w).
    OUT out (n, oh, ow, c) float32.
    """
    n, _, _, c = x.shape
    oh_n, ow_n = iy.shape[0], ix.shape[0]
    for r in prange(n * oh_n):
        b = r // oh_n
        i = r - b * oh_n
        src = x[b, iy[i]]
        dst = out[b, i]
        for j in range(ow_n):
            s = src[ix[j]]
            d = dst[j]
            for k in range(c):
                d[k] = s[k]


resize_nearest_nhwc, resize_nearest_nhwc_parallel = both(_nearest)


def _linear(x, y1, y2, dy1, dy2, x1, x2, dx1, dx2, out):
    """Bilinear interpolation as ONNX Runtime computes it: ``dx2*dy2*x[y1,x1] + dx1*dy2*x[y1,x2]
    + dx2*dy1*x[y2,x1] + dx1*dy1*x[y2,x2]`` (``dx1``, ``dx2``: distances to the two taps).

    IN  x (n, h, w, c) float32; y1, y2 (oh,) int64 taps in [0, h) with dy1, dy2 (oh,) float32;
        x1, x2 (ow,) int64 taps in [0, w) with dx1, dx2 (ow,) float32.
    OUT out (n, oh, ow, c) float32.
    """
    n, _, _, c = x.shape
    oh_n, ow_n = y1.shape[0], x1.shape[0]
    for r in prange(n * oh_n):
        b = r // oh_n
        i = r - b * oh_n
        top, bottom = x[b, y1[i]], x[b, y2[i]]
        dst = out[b, i]
        for j in range(ow_n):
            w11 = dx2[j] * dy2[i]
            w21 = dx1[j] * dy2[i]
            w12 = dx2[j] * dy1[i]
            w22 = dx1[j] * dy1[i]
            a, e, f, g = top[x1[j]], top[x2[j]], bottom[x1[j]], bottom[x2[j]]
            d = dst[j]
            for k in range(c):
                d[k] = w11 * a[k] + w21 * e[k] + w12 * f[k] + w22 * g[k]


resize_linear_nhwc, resize_linear_nhwc_parallel = both(_linear)
