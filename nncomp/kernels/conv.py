"""Convolution kernels over NHWC float32 images.

Patches are laid out ``(kh, kw, c)``: the column order of every conv weight matrix in nncomp.
"""
import numpy as np
from numba import prange

from ._jit import both, jit


@jit(inline="always")
def _patch_line(x, flat, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, r, fill, out, row0):
    """The patch rows of output line ``r`` (of n*oh_n) into rows ``row0..`` of ``out`` (``flat``:
    ``x`` as (n, h, w*c)): padded positions and the columns past ``kh*kw*c`` get ``fill``. Generic
    over the dtype of ``x``/``out``; inlined (as a called function the float im2col ran 12% slower)."""
    n, h, w, c = x.shape
    span = kw * c
    b = r // oh_n
    oh = r - b * oh_n
    for ow in range(ow_n):
        row = out[row0 + ow]
        iw0 = ow * sw - pw
        whole = dw == 1 and iw0 >= 0 and iw0 + kw <= w
        for i in range(kh):
            ih = oh * sh - ph + i * dh
            dst = row[i * span:(i + 1) * span]
            if ih < 0 or ih >= h:
                dst[:] = fill
            elif whole:         # the kw taps of this line are kw*c contiguous input values
                src = flat[b, ih, iw0 * c:iw0 * c + span]
                for q in range(span):
                    dst[q] = src[q]
            else:
                for j in range(kw):
                    iw = iw0 + j * dw
                    part = dst[j * c:(j + 1) * c]
                    if 0 <= iw < w:
                        src = x[b, ih, iw]
                        for k in range(c):
                            part[k] = src[k]
                    else:
                        part[:] = fill
        for q in range(kh * span, row.shape[0]):
            row[q] = fill


def _im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, r0, r1, out):
    """Copy the (kh, kw, c) patch of every output pixel of output lines r0..r1 into rows of ``out``.

    IN  x (n, h, w, c) float32 C-contiguous; kernel (kh, kw); stride (sh, sw); top/left padding
        (ph, pw); dilation (dh, dw); output size (oh_n, ow_n); output lines [r0, r1) counted over
        n*oh_n (image-major), so that a caller can fill a bounded buffer chunk by chunk.
    OUT out ((r1-r0)*ow_n, kh*kw*c) float32; padded positions are zero.
    """
    n, h, w, c = x.shape
    flat = x.reshape(n, h, w * c)
    for rr in prange(r1 - r0):
        _patch_line(x, flat, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, r0 + rr, np.float32(0.0), out, rr * ow_n)


im2col_nhwc, im2col_nhwc_parallel = both(_im2col)


def _im2col_u8(x, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, r0, r1, fill, out):
    """:func:`_im2col` over uint8 activation codes: padded positions and the columns past
    ``kh*kw*c`` get ``fill`` (the zero point, the code of 0.0).

    IN  x (n, h, w, c) uint8 C-contiguous; the geometry as ``_im2col``; fill 0..255.
    OUT out ((r1-r0)*ow_n, kp) uint8, kp >= kh*kw*c.
    """
    n, h, w, c = x.shape
    flat = x.reshape(n, h, w * c)
    for rr in prange(r1 - r0):
        _patch_line(x, flat, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, r0 + rr, np.uint8(fill), out, rr * ow_n)


im2col_u8_nhwc, im2col_u8_nhwc_parallel = both(_im2col_u8)


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


def _direct(x, wt, bias, kh, kw, sh, sw, ph, pw, dh, dw, out):
    """Direct convolution for few input channels, one output line at a time.

    For every (tap, input channel) the line's input values are gathered into a contiguous vector
    ``xs`` (zeros in the padding), and each output channel's accumulator line gets ``wt[tap, o] * xs``
    in fixed blocks of 16 (one AVX-512 register; the line is padded to a multiple of 16), on a
    ``(co, ow)`` block that stays in L1.

    IN  x (n, h, w, c) float32; wt (kh*kw*c, co) float32, rows ordered (kh, kw, c) (the transposed
        weight matrix); bias (co,) float32; kernel, stride, top/left padding, dilation as in im2col.
    OUT out (n, oh, ow, co) float32.
    """
    n, h, w, c = x.shape
    _, oh_n, ow_n, co = out.shape
    owp = (ow_n + 15) // 16 * 16
    for r in prange(n * oh_n):
        b = r // oh_n
        oh = r - b * oh_n
        acc = np.empty((co, owp), np.float32)
        xs = np.zeros(owp, np.float32)
        for o in range(co):
            acc[o, :] = bias[o]
        for i in range(kh):
            ih = oh * sh - ph + i * dh
            if ih < 0 or ih >= h:
                continue
            line = x[b, ih]
            for j in range(kw):
                for k in range(c):
                    for ow in range(ow_n):
                        iw = ow * sw - pw + j * dw
                        xs[ow] = line[iw, k] if 0 <= iw < w else 0.0
                    wrow = wt[(i * kw + j) * c + k]
                    for o in range(co):
                        wv = wrow[o]
                        a = acc[o]
                        for q in range(owp):
                            a[q] += wv * xs[q]
        dst = out[b, oh]
        for ow in range(ow_n):
            for o in range(co):
                dst[ow, o] = acc[o, ow]


conv_direct_nhwc, conv_direct_nhwc_parallel = both(_direct)


def _pad(x, n0, t, l, out):
    """Zero-pad images ``n0 .. n0 + len(out)`` of ``x`` into ``out``, the image at offset (t, l).

    IN  x (n, h, w, c) float32; n0 first image; t, l top and left padding.
    OUT out (g, hp, wp, c) float32 with hp >= t + h, wp >= l + w; images past ``n`` are left as they are.
    """
    n, h, w, c = x.shape
    g, hp, wp, _ = out.shape
    gn = min(g, n - n0)
    for r in prange(gn * hp):
        b = r // hp
        i = r - b * hp
        dst = out[b, i]
        ih = i - t
        if ih < 0 or ih >= h:
            dst[:, :] = 0.0
            continue
        dst[:l, :] = 0.0
        dst[l + w:, :] = 0.0
        src = x[n0 + b, ih]
        for j in range(w):
            for k in range(c):
                dst[l + j, k] = src[j, k]


conv_pad_nhwc, conv_pad_nhwc_parallel = both(_pad)


def _crop_bias(grid, bias, n0, out):
    """Crop the padded-width output grid of a shifted convolution and add the bias.

    IN  grid (g, hp, wp, co) float32 (rows past the output are ignored); bias (co,) float32;
        n0 first image of this chunk in ``out``.
    OUT out[n0 + b, i, j] = grid[b, i, j] + bias for b < min(g, n - n0), i < oh, j < ow.
    """
    n, oh, ow, co = out.shape
    g = grid.shape[0]
    gn = min(g, n - n0)
    for r in prange(gn * oh):
        b = r // oh
        i = r - b * oh
        for j in range(ow):
            src = grid[b, i, j]
            dst = out[n0 + b, i, j]
            for o in range(co):
                dst[o] = src[o] + bias[o]


conv_crop_bias_nhwc, conv_crop_bias_nhwc_parallel = both(_crop_bias)
