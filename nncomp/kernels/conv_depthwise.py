"""Register-blocked depthwise convolution over NHWC float32 images: the tiles of
nncomp/kernels/conv_blocked.py with each output channel reading its own input channel (a vector load
where the dense tiles broadcast one value). Twin: tests/reference.py ``depthwise_blocked_nhwc``."""
import numpy as np
from numba import prange

from ._jit import both
from .conv_tiles import COMPILED_DEPTHWISE_PIXELS, VECTORS, make_tiles
from .epilogue import activation_rows
from .isa import VECTOR_REGISTERS

_dw1, _dw2, _dw3, _dw4 = (make_tiles(v, COMPILED_DEPTHWISE_PIXELS[v], depthwise=True) for v in range(1, VECTORS + 1))

# Stride-1 lines of 3- and 5-tap rows run sliding tiles (each input vector loaded once per kernel
# row, not once per tap): at most this many pixels by vectors, so that the P * V accumulators, the
# S * V taps and a loaded vector fit AVX-512's 32 registers; none where the CPU has 16.
SLIDE = VECTOR_REGISTERS >= 32
# Measured on one thread (Intel Xeon, AVX-512, A/B in one process, same bits): stride-1 3 x 3 lines
# 0.70-0.87x the general tiles' time (112 x 112 x 16 to 28 x 28 x 88), 5 x 5 of 1-2 vectors
# 0.75-0.98x. 5-tap rows of 3 vectors leave room for 4 pixels a tile (the general tile: 8): slower on
# lines of 7-14 pixels (MobileNetV3's last stages), 0.75-0.84x on wide ones, so they slide from
# SLIDE_WIDE pixels; of 4 vectors, 2 pixels: 0.88-1.11x, never.
SLIDE_WIDE = 32
# 7-tap rows (PP-OCRv6's 7 x 7 depthwise layers) slide over at most 2 vectors (32 channels) at a time:
# 7 pixels x 2 vectors, 14 taps and 2 loaded vectors hold 30 registers. Against the general tiles of
# up to 4 vectors (Intel Xeon, 2 threads, the layer's step alone): 160 x 160 x 96 2.2 -> 1.45 ms, 80 x
# 80 x 96 0.54 -> 0.35 ms (PyTorch 1.5 and 0.41); 1 vector of 14 pixels: 1.6-2.2 ms.
SLIDE_PIXELS = {3: (14, 11, 6, 3), 5: (14, 9, 4, 0), 7: (14, 7, 0, 0)}
# (Where the CPU has 16 registers the sliding tiles are compiled empty: never called.)
_s3_1, _s3_2, _s3_3, _s3_4 = (make_tiles(v, SLIDE_PIXELS[3][v - 1] if SLIDE else 0, depthwise=True, slide=3)
                              for v in range(1, VECTORS + 1))
_s5_1, _s5_2, _s5_3 = (make_tiles(v, SLIDE_PIXELS[5][v - 1] if SLIDE else 0, depthwise=True, slide=5)
                       for v in range(1, 4))
_s7_1, _s7_2 = (make_tiles(v, SLIDE_PIXELS[7][v - 1] if SLIDE else 0, depthwise=True, slide=7) for v in range(1, 3))
_SP3, _SP5, _SP7 = SLIDE_PIXELS[3], SLIDE_PIXELS[5], SLIDE_PIXELS[7]
# Where the CPU has 16 registers (AVX2), stride-1 3- and 5-tap lines slide over 8 channels at a time
# instead: one ymm of 8 channels per pixel, so P accumulators, the S taps' weights and the loaded
# input fit the 16 registers (P + S + 1 <= 16); line ends run one-pixel tiles of 8 channels.
SLIDE8 = not SLIDE
SLIDE8_PIXELS = {3: 12, 5: 10}
_P8_3, _P8_5 = SLIDE8_PIXELS[3], SLIDE8_PIXELS[5]
_l3, _l5 = (make_tiles(1, SLIDE8_PIXELS[k] if SLIDE8 else 0, depthwise=True, slide=k, lane8=True) for k in (3, 5))
_e8 = make_tiles(1, 1 if SLIDE8 else 0, depthwise=True, lane8=True)


def _depthwise(x, pt, pl, w, bias, kh, kw, sh, sw, dh, dw, nvec, pmax, scale, shift, affine, res, add, lo, hi, act,
               alpha, beta, out):
    """Depthwise convolution (one input channel per output channel) of an NHWC batch with
    register-blocked tiles: ``out[b, i, j, o] = bias[o] + sum_{r, q} xp[b, i*sh + r*dh, j*sw + q*dw, o]
    * w[r*kw + q, o]``, ``xp`` being ``x`` zero-padded by ``pt`` rows on top and ``pl`` columns on the
    left (and as many at the bottom and right as the output's size needs), then the epilogue as in
    :func:`_blocked`. The padding is not copied: a window reaching it leaves those taps out (a pixel
    at a line's ends is a one-pixel tile of the taps inside), which adds nothing but zeros'
    products. Needs every window to reach the input: with ``pt`` or ``pl`` > 0, each padding under
    the kernel's size and no dilation.

    IN  x (n, h, wd, c) float32 C-contiguous; pt, pl >= 0; w (kh*kw, cop) float32 tap-major (cop =
        c rounded up to 16, extra columns zero); bias, scale, shift (cop,); the rest as in _blocked.
    OUT out (n, oh, ow, c) float32 C-contiguous, overwritten.
    """
    n, oh, ow, c = out.shape
    hp, wp = x.shape[1], x.shape[2]
    cop = w.shape[1]
    width = 16 * nvec
    pmax = min(pmax, COMPILED_DEPTHWISE_PIXELS[nvec])     # the widths compiled for this CPU
    # interior output columns: every tap inside the input
    jl = (pl + sw - 1) // sw
    jr = min(ow - 1, (wp - 1 - (kw - 1) * dw + pl) // sw) if wp - 1 - (kw - 1) * dw + pl >= 0 else -1
    inner = max(0, jr - jl + 1)
    slide = SLIDE and sw == dw and (kw == 3 or kw == 5 or kw == 7)
    use8 = SLIDE8 and sw == dw and (kw == 3 or kw == 5) and inner >= 2 and pmax > 1     # pmax 1: one-pixel tiles
    step = 8 if use8 else min(width, 32) if slide and kw == 7 and inner >= 2 else width
    lo32, hi32 = np.float32(lo), np.float32(hi)
    # a driver of its own: one shared with _blocked (a flag and both dispatch chains) ran 1.7-2x slower
    for t in prange(n * oh):
        b = t // oh
        i = t - b * oh
        y0 = i * sh - pt                    # input row of the window's first tap row
        r0 = 0 if y0 >= 0 else (dh - 1 - y0) // dh
        r1 = min(kh, (hp - 1 - y0) // dh + 1)
        row = (b * hp + y0 + r0 * dh) * wp
        for c0 in range(0, c if use8 else cop, step):
            if use8:
                nv = 1
                lanes = min(8, c - c0)
                pm = _P8_3 if kw == 3 else _P8_5
                sl = True
            else:
                nv = min(step // 16, (cop - c0) // 16)
                lanes = min(16, c - c0 - 16 * (nv - 1))
                sp = _SP3[nv - 1] if kw == 3 else _SP5[nv - 1] if kw == 5 else _SP7[nv - 1] if nv <= 2 else 0
                pm = min(pmax, sp)      # a sliding tile's pixels
                sl = slide and pm >= 2 and (kw == 3 or nv <= 2 or ow >= SLIDE_WIDE)
                if not sl:
                    pm = pmax
            blocks = (inner + pm - 1) // pm
            p0 = (inner + blocks - 1) // blocks if blocks > 0 else 1
            big = inner - blocks * (p0 - 1)     # tiles of p0 pixels, the others of p0 - 1
            j = 0
            while j < ow:
                x0 = j * sw - pl
                count = 1
                if jl <= j <= jr:           # interior: a run of tiles of p0 pixels, one of p0 - 1, every column tap
                    q0, q1 = 0, kw
                    if j < jl + big * p0:
                        p = p0
                        count = (jl + big * p0 - j) // p0
                    else:
                        p = p0 - 1
                        count = (jr + 1 - j) // p
                else:                       # a pixel at a line's end: the column taps inside
                    p = 1
                    q0 = 0 if x0 >= 0 else (dw - 1 - x0) // dw
                    q1 = min(kw, (wp - 1 - x0) // dw + 1)
                a = (p, x, (row + x0 + q0 * dw) * c + c0, sw * c, q1 - q0, r1 - r0, dh * wp * c, kw * cop,
                     w, c0 + (r0 * kw + q0) * cop, cop, bias, c0, 1, out, ((b * oh + i) * ow + j) * c + c0, c, lanes, 1,
                     scale, shift, affine, res, add, lo32, hi32, dw * c, count, p * sw * c, p * c, 0, lo32, lo32)
                if use8:
                    if p > 1 and kw == 3:
                        _l3(*a)
                    elif p > 1:
                        _l5(*a)
                    else:
                        _e8(*a)
                elif sl and p > 1 and kw == 3:
                    if nv == 4:
                        _s3_4(*a)
                    elif nv == 3:
                        _s3_3(*a)
                    elif nv == 2:
                        _s3_2(*a)
                    else:
                        _s3_1(*a)
                elif sl and p > 1 and kw == 7:      # 7 taps: at most 2 vectors
                    if nv == 2:
                        _s7_2(*a)
                    else:
                        _s7_1(*a)
                elif sl and p > 1:      # 5 taps: never 4 vectors
                    if nv == 3:
                        _s5_3(*a)
                    elif nv == 2:
                        _s5_2(*a)
                    else:
                        _s5_1(*a)
                elif nv == 4:
                    _dw4(*a)
                elif nv == 3:
                    _dw3(*a)
                elif nv == 2:
                    _dw2(*a)
                else:
                    _dw1(*a)
                j += p * count
        if act != 0:    # a pass per line: in the tiles' epilogue (epilogue.tile_activation) 14 x 14 x 240
            # 5 x 5 hard swish ran 1.04-1.07x slower (one thread, Zen 3: the 2-pixel, 4-vector tile's registers)
            r = (b * oh + i) * ow
            activation_rows(out.reshape(n * oh * ow, c)[r:r + ow], act, np.float32(alpha), np.float32(beta))


depthwise_blocked_nhwc, depthwise_blocked_nhwc_parallel = both(_depthwise)
