"""The scatter half of a transposed convolution over NHWC float32 images (col2im).

A transposed convolution is one matrix product ``cols = x(n*h*w, c_in) @ W.T`` giving each input
pixel's contribution to its ``kh x kw`` output taps, then this kernel summing those contributions
into the output. It gathers per output line (each line reads the input lines whose taps reach it),
so threads never write the same value and the sum order is fixed.
"""
from numba import prange

from ._jit import both


def _col2im(cols, n, h, w, kh, kw, sh, sw, pt, pl, dh, dw, bias, out):
    """``out[b, y, x, g*cg + o] = bias + sum of cols[g, (b*h + iy)*w + ix, (i*kw + j)*cg + o]``
    over the taps with ``y = iy*sh - pt + i*dh`` and ``x = ix*sw - pl + j*dw``.

    IN  cols (groups, n*h*w, kh*kw*cg) float32 C-contiguous; input size (n, h, w); kernel, stride,
        top/left padding, dilation; bias (groups*cg,) float32 or (0,) for none.
    OUT out (n, oh, ow, groups*cg) float32.
    """
    groups = cols.shape[0]
    _, oh_n, ow_n, c = out.shape
    cg = c // groups
    has_bias = bias.shape[0] > 0
    for r in prange(n * oh_n):
        b = r // oh_n
        y = r - b * oh_n
        line = out[b, y]
        for ox in range(ow_n):
            for k in range(c):
                line[ox, k] = bias[k] if has_bias else 0.0
        for i in range(kh):
            t = y + pt - i * dh
            if t < 0 or t % sh != 0 or t // sh >= h:
                continue
            base = (b * h + t // sh) * w
            for ox in range(ow_n):
                d = line[ox]
                for j in range(kw):
                    u = ox + pl - j * dw
                    if u < 0 or u % sw != 0 or u // sw >= w:
                        continue
                    at = (i * kw + j) * cg
                    for g in range(groups):
                        s = cols[g, base + u // sw]
                        for o in range(cg):
                            d[g * cg + o] += s[at + o]


col2im_nhwc, col2im_nhwc_parallel = both(_col2im)
