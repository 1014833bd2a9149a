"""Convolution kernels over NHWC float32 images.

Patches are laid out ``(kh, kw, c)``: the column order of every conv weight matrix in nncomp.
"""
import numpy as np
from numba import prange

from ._jit import both


def _im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, r0, r1, out):
    """Copy the (kh, kw, c) patch of every output pixel of output lines r0..r1 into rows of ``out``.

    IN  x (n, h, w, c) float32 C-contiguous; kernel (kh, kw); stride (sh, sw); top/left padding
        (ph, pw); dilation (dh, dw); output size (oh_n, ow_n); output lines [r0, r1) counted over
        n*oh_n (image-major), so that a caller can fill a bounded buffer chunk by chunk.
    OUT out ((r1-r0)*ow_n, kh*kw*c) float32; padded positions are zero.
    """
    n, h, w, c = x.shape
    for rr in prange(r1 - r0):
        r = r0 + rr
        b = r // oh_n
        oh = r - b * oh_n
        for ow in range(ow_n):
            row = out[rr * ow_n + ow]
            for i in range(kh):
                ih = oh * sh - ph + i * dh
                for j in range(kw):
                    iw = ow * sw - pw + j * dw
                    dst = row[(i * kw + j) * c:(i * kw + j + 1) * c]
                    if ih < 0 or ih >= h or iw < 0 or iw >= w:
                        dst[:] = 0.0
                    else:
                        src = x[b, ih, iw]
                        for k in range(c):
                            dst[k] = src[k]


im2col_nhwc, im2col_nhwc_parallel = both(_im2col)


def _depthwise(x, wt, bias, mult, kh, kw, sh, sw, ph, pw, dh, dw, out):
    """Depthwise convolution: output channel o reads input channel o // mult.

    IN  x (n, h, w, c) float32; wt (kh*kw, c*mult) float32 (tap-major); bias (c*mult,) float32;
        mult channel multiplier; kernel, stride, top/left padding, dilation as in im2col.
    OUT out (n, oh, ow, c*mult) float32.
    """
    n, h, w, c = x.shape
    _, oh_n, ow_n, co = out.shape
    for r in prange(n * oh_n):
        b = r // oh_n
        oh = r - b * oh_n
        for ow in range(ow_n):
            acc = out[b, oh, ow]
            for o in range(co):
                acc[o] = bias[o]
            for i in range(kh):
                ih = oh * sh - ph + i * dh
                if ih < 0 or ih >= h:
                    continue
                for j in range(kw):
                    iw = ow * sw - pw + j * dw
                    if iw < 0 or iw >= w:
                        continue
                    src = x[b, ih, iw]
                    tap = wt[i * kw + j]
                    for o in range(co):
                        acc[o] += src[o // mult] * tap[o]


depthwise_conv_nhwc, depthwise_conv_nhwc_parallel = both(_depthwise)
