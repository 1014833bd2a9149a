"""NumPy twins of the resize, col2im and channel-binary kernels (nncomp/kernels/resize.py,
conv_transpose.py, binary.py)."""
import numpy as np


def resize_nearest_nhwc(x, iy, ix):
    return np.asarray(x)[:, iy][:, :, ix].astype(np.float32)


def resize_linear_nhwc(x, y1, y2, dy1, dy2, x1, x2, dx1, dx2):
    x = np.asarray(x, np.float64)
    dy1, dy2 = np.asarray(dy1, np.float64)[None, :, None, None], np.asarray(dy2, np.float64)[None, :, None, None]
    dx1, dx2 = np.asarray(dx1, np.float64)[None, None, :, None], np.asarray(dx2, np.float64)[None, None, :, None]
    top, bottom = x[:, y1], x[:, y2]
    return (dx2 * dy2 * top[:, :, x1] + dx1 * dy2 * top[:, :, x2]
            + dx2 * dy1 * bottom[:, :, x1] + dx1 * dy1 * bottom[:, :, x2])


def col2im_tiles_epilogue_nhwc(cols, n, h, w, kh, kw, bias, scale, shift, res, lo, hi):
    """The tiling col2im in float32 (one tap per value: the bias add is exact), then the epilogue."""
    c = cols.shape[2] // (kh * kw)
    y = np.asarray(cols[0], np.float32).reshape(n, h, w, kh, kw, c).transpose(0, 1, 3, 2, 4, 5)
    y = y.reshape(n, h * kh, w * kw, c) + (np.asarray(bias, np.float32) if len(bias) else np.float32(0))
    if len(scale):
        y = y * scale + shift
    if len(res):
        y = y + res
    return np.minimum(np.maximum(y, np.float32(lo)), np.float32(hi)).astype(np.float32)


def col2im_nhwc(cols, n, h, w, kh, kw, sh, sw, pt, pl, dh, dw, bias, oh, ow):
    """Scatter-add of every input pixel's taps into a padded canvas, then the crop (float64)."""
    groups, _, width = cols.shape
    cg = width // (kh * kw)
    big = (h - 1) * sh + (kh - 1) * dh + 1 + pt + oh + ow + 1
    canvas = np.zeros((n, big + pt, big + pl, groups * cg))
    c = np.asarray(cols, np.float64).reshape(groups, n, h, w, kh, kw, cg)
    for i in range(kh):
        for j in range(kw):
            part = c[:, :, :, :, i, j].transpose(1, 2, 3, 0, 4).reshape(n, h, w, groups * cg)
            canvas[:, i * dh: i * dh + (h - 1) * sh + 1: sh, j * dw: j * dw + (w - 1) * sw + 1: sw] += part
    out = canvas[:, pt:pt + oh, pl:pl + ow]
    return out + (bias if len(bias) else 0.0)


def channel_binary_nhwc(x, s, op, reverse):
    """NumPy's ufunc of each row of x and the sample's (or the one) channel vector of s."""
    fn = [np.add, np.subtract, np.multiply, np.divide, np.maximum, np.minimum][op]
    s = np.asarray(s)[:, None, :]
    with np.errstate(all="ignore"):
        return fn(s, x) if reverse else fn(x, s)
