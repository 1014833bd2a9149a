"""Register-blocked depthwise convolution over NHWC float32 images: the tiles of
nncomp/kernels/conv_blocked.py with each output channel reading its own input channel (a vector load
where the dense tiles broadcast one value). Twin: tests/reference.py ``depthwise_blocked_nhwc``."""
import numpy as np
from numba import prange

from ._jit import both
from .conv_tiles import TILE_PIXELS, VECTORS, make_tiles
from .epilogue import activation_rows

_dw1, _dw2, _dw3, _dw4 = (make_tiles(v, TILE_PIXELS[v], depthwise=True) for v in range(1, VECTORS + 1))


def _depthwise(xp, w, bias, kh, kw, sh, sw, dh, dw, nvec, pmax, scale, shift, affine, res, add, lo, hi, act, alpha,
               beta, out):
    """Depthwise convolution (one input channel per output channel) of a padded NHWC batch with
    register-blocked tiles: ``out[b, i, j, o] = bias[o] + sum_{r, q} xp[b, i*sh + r*dh, j*sw + q*dw, o]
    * w[r*kw + q, o]``, then the epilogue as in :func:`_blocked`.

    IN  xp (n, hp, wp, c) float32 C-contiguous, zero-padded; w (kh*kw, cop) float32 tap-major (cop =
        c rounded up to 16, extra columns zero); bias, scale, shift (cop,); the rest as in _blocked.
    OUT out (n, oh, ow, c) float32 C-contiguous, overwritten.
    """
    n, oh, ow, c = out.shape
    hp, wp = xp.shape[1], xp.shape[2]
    cop = w.shape[1]
    width = 16 * nvec
    blocks = (ow + pmax - 1) // pmax
    p0 = (ow + blocks - 1) // blocks if blocks > 0 else 1
    lo32, hi32 = np.float32(lo), np.float32(hi)
    # a driver of its own: one shared with _blocked (a flag and both dispatch chains) ran 1.7-2x slower
    for t in prange(n * oh):
        b = t // oh
        i = t - b * oh
        for c0 in range(0, cop, width):
            nv = min(nvec, (cop - c0) // 16)
            lanes = min(16, c - c0 - 16 * (nv - 1))
            j0 = 0
            while j0 < ow:
                p = min(p0, ow - j0)
                a = (p, xp, ((b * hp + i * sh) * wp + j0 * sw) * c + c0, sw * c, kw, kh, dh * wp * c, kw * cop,
                     w, c0, cop, bias, c0, 1, out, ((b * oh + i) * ow + j0) * c + c0, c, lanes, 1, scale, shift,
                     affine, res, add, lo32, hi32, dw * c)
                if nv == 4:
                    _dw4(*a)
                elif nv == 3:
                    _dw3(*a)
                elif nv == 2:
                    _dw2(*a)
                else:
                    _dw1(*a)
                j0 += p
        if act != 0:
            row = (b * oh + i) * ow
            activation_rows(out.reshape(n * oh * ow, c)[row:row + ow], act, np.float32(alpha), np.float32(beta))


depthwise_blocked_nhwc, depthwise_blocked_nhwc_parallel = both(_depthwise)
