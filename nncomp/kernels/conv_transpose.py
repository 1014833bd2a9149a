"""The scatter half of a transposed convolution over NHWC float32 images (col2im).

A transposed convolution is one matrix product ``cols = x(n*h*w, c_in) @ W.T`` giving each input
pixel's contribution to its ``kh x kw`` output taps, then this kernel summing those contributions
into the output. It gathers per output line (each line reads the input lines whose taps reach it),
so threads never write the same value and the sum order is fixed. A kernel as large as its stride,
with no padding or dilation and one group (the 2 x 2 / stride-2 upsampling of U-Nets and DBNet
heads), writes every output value from exactly one tap: :func:`col2im_tiles_epilogue_nhwc` copies
each input pixel's ``kh x kw`` block into place instead, with the layer's epilogue as it stores.
"""
import numpy as np
from numba import prange

from ._jit import both
from .epilogue import clip_value


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


def _col2im_tiles_epilogue(cols, h, w, bias, scale, shift, res, lo, hi, out):
    """The col2im of taps that tile the output: kernel = stride (``kh x kw``), no padding, no
    dilation, one group; ``y[b, iy*kh + i, ix*kw + j, o] = cols[0, (b*h + iy)*w + ix, (i*kw + j)*c + o]
    + bias[o]`` (+ 0.0 without a bias: the sum :func:`col2im_nhwc` computes, bit for bit); then, as
    each value is stored, the epilogue ``clip((y * scale + shift) + res, lo, hi)`` (each part
    optional; lo, hi = -inf, inf: none), the float32 operations of nncomp/kernels/epilogue.py
    ``epilogue_rows`` in that order, so the bits of the two run one after the other (DBNet's
    upsampling: batch norm, the FPN's residual add and ReLU in one pass over the output).
    Row slices, not offsets into flat views: LLVM vectorizes the copy (one thread, 160 x 160 x 24
    -> 320 x 320 x 24 on an AMD EPYC Zen 3: 8.4 -> 0.78 ms; the flat loop ran scalar).

    IN  cols (1, n*h*w, kh*kw*c) float32 C-contiguous; input size (h, w); bias (c,) or (0,);
        scale, shift (c,) float32, or (0,) for no affine map; res (n, h*kh, w*kw, c) float32
        C-contiguous, or (0, 1, 1, c) for none; lo, hi float32.
    OUT out (n, h*kh, w*kw, c) float32.
    """
    n, oh, ow, c = out.shape
    kh, kw = oh // h, ow // w
    span = kw * c
    shift0 = np.zeros(span, np.float32)
    sc, sh = np.ones(span, np.float32), np.zeros(span, np.float32)
    affine = scale.shape[0] > 0
    add = res.shape[0] > 0
    for q in range(span):
        if bias.shape[0] > 0:
            shift0[q] = bias[q % c]
        if affine:
            sc[q], sh[q] = scale[q % c], shift[q % c]
    src = cols[0]
    for r in prange(n * oh):
        b = r // oh
        y = r - b * oh
        iy = y // kh
        i = y - iy * kh
        line = out[b, y].reshape(ow * c)
        rline = res[b, y].reshape(ow * c) if add else line
        for ix in range(w):
            s = src[(b * h + iy) * w + ix, i * span:(i + 1) * span]
            d = line[ix * span:(ix + 1) * span]
            e = rline[ix * span:(ix + 1) * span]
            for q in range(span):
                v = shift0[q] + s[q]
                if affine:
                    v = v * sc[q]
                    v = v + sh[q]
                if add:
                    v = v + e[q]
                d[q] = clip_value(v, lo, hi)


col2im_tiles_epilogue_nhwc, col2im_tiles_epilogue_nhwc_parallel = both(_col2im_tiles_epilogue)
