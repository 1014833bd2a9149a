"""Register-blocked direct convolution over NHWC float32 images (the ``blocked`` conv algorithm).

A micro-kernel computes a tile of ``P`` output pixels along one output line (where lines are short,
one pixel of ``P`` images) x ``V`` vectors of 16 output channels. Its ``P * V`` accumulators stay in vector registers while it walks the reduction:
for each input value it broadcasts the pixel's input scalar and multiply-adds it with ``V`` weight
vectors (one fused multiply-add per accumulator, no patch matrix, no horizontal sums). Because the
input is NHWC, the taps of one kernel row are one contiguous run of ``kw * c`` floats (undilated),
so a tile's reduction is ``kh`` contiguous runs, all in one micro-kernel call (with a dilation
along the width, one call per kernel column, adding into the tile it stored the call before).

The tiles are the micro-kernel of nncomp/kernels/conv_tiles.py.

Contract (NumPy twin: tests/reference.py ``conv_blocked_nhwc``):
``out[b, i, j, o] = bias[o] + sum_{r, q, ci} xp[b, i*sh + r*dh, j*sw + q*dw, ci] * w[(r*kw + q)*c + ci, o]``
for ``o < co = out.shape[3]``, where ``xp`` is the zero-padded input and ``w`` the weight as
``(kh*kw*c, cop)`` with ``cop`` the channel count rounded up to 16 (extra columns ignored). The
order of the sum (fused multiply-adds over ``ci`` within a tap, taps in order) differs from BLAS.

The weight may also come in column panels (:func:`pack_panels`): ``(panels * rows, width)``, panel
``p`` holding columns ``p * width .. p * width + width - 1`` of all rows (the last one zero-padded),
``width`` a multiple of the tiles' ``16 * nvec`` so that a tile's vectors lie in one panel. A tile then
reads its weights as one contiguous run instead of a ``4 * cop``-byte stride between rows; same bits.
Intel Xeon, 2 threads, 1 x 1 layers on 3 x 80 and 6 x 80 maps (PP-OCRv6's recognizer): 64-column panels ran
768 -> 384 at 322-327 GFLOP/s against 250-261, 384 -> 768 255-268 against 225, 192 -> 384 273-278 against 250.
"""
import numba
import numpy as np
from numba import prange

from . import aligned
from ._jit import both, jit
from .conv_tiles import COMPILED_PIXELS, TILE_PIXELS, tile_pixels, tiles1, tiles2, tiles3, tiles4  # noqa: F401 - TILE_PIXELS, tile_pixels: the layers ask here
from .epilogue import activation_rows, tile_activation


@jit(inline="always")
def _tile(nv, a):
    """The dense tiles of ``nv`` vectors on the arguments ``a`` (``tiles`` of :func:`make_tiles`)."""
    if nv == 4:
        tiles4(*a)
    elif nv == 3:
        tiles3(*a)
    elif nv == 2:
        tiles2(*a)
    else:
        tiles1(*a)


@jit(inline="always")
def _weight_rows(w, cop, kh, kw, c, b):
    """The first row of image ``b``'s weight: 0 for one weight of ``kh * kw * c`` rows for all
    images, ``b * kh * kw * c`` for a weight per image (as many times the rows)."""
    k = kh * kw * c
    return b * k if _panel_rows(w, cop) > k else 0


@jit(inline="always")
def _panel_rows(w, cop):
    """The rows of each of ``w``'s column panels (module docstring): all its rows where ``w`` holds
    all ``cop`` columns side by side."""
    wid = w.shape[1]
    return w.shape[0] // ((cop + wid - 1) // wid)


@jit(inline="always")
def _weight_at(w, cop, row, co0):
    """The flat offset in ``w`` of row ``row``, column ``co0`` (the first of a tile's vectors, which
    lie in one panel)."""
    wid = w.shape[1]
    panel = co0 // wid
    return (panel * _panel_rows(w, cop) + row) * wid + co0 - panel * wid


@jit(inline="always")
def _taps(start, k, d, size):
    """``(lo, hi)``: the taps ``lo <= t < hi`` of a window of ``k`` taps ``d`` apart from ``start``
    that fall inside ``[0, size)`` (the others read the padding: zeros, skipped)."""
    lo = 0
    while lo < k and start + lo * d < 0:
        lo += 1
    hi = k
    while hi > lo and start + (hi - 1) * d >= size:
        hi -= 1
    return lo, hi


@jit
def _pixels(p, x, pt, pl, w, bias, kh, kw, sh, sw, dh, dw, pix, b, i, j, qlo, qhi, co0, nv, lanes, scale, shift,
            affine, res, add, lo, hi, out, oo, opix):
    """One tile of a dilated kernel (``dw`` > 1; undilated rows call the tiles themselves, a
    contiguous run of taps per kernel row): ``p`` pixels ``pix`` values apart in ``x`` (unpadded;
    first pixel: image ``b``, output line ``i``, column ``j``), taps ``qlo <= q < qhi`` of each kernel
    row, stored at ``out[oo:]`` (pixels ``opix`` apart); the kernel rows inside the input only."""
    h, wd, c = x.shape[1], x.shape[2], x.shape[3]
    cop, wid = bias.shape[0], w.shape[1]
    r0 = i * sh - pt
    rlo, rhi = _taps(r0, kh, dh, h)
    col = j * sw - pl
    xrow = ((b * h + r0 + rlo * dh) * wd + col) * c
    wrow = _weight_at(w, cop, _weight_rows(w, cop, kh, kw, c, b) + rlo * kw * c, co0)
    for q in range(qlo, qhi):       # a call per kernel column, adding into the tile
        a = (p, x, xrow + q * dw * c, pix, c, rhi - rlo, dh * wd * c, kw * c * wid, w, wrow + q * c * wid, wid, bias,
             co0, int(q == qlo), out, oo, opix, lanes, int(q == qhi - 1), scale, shift, affine, res, add, lo, hi, 1, 1, 0, 0,
             0, lo, lo)
        _tile(nv, a)


def _row(x, pt, pl, w, bias, kh, kw, sh, sw, dh, dw, nvec, pmax, scale, shift, affine, res, add, lo, hi, act, alpha,
         beta, b, i, out, obase, span):
    """Pixels ``js <= j < je`` of output line ``i`` of image ``b`` into flat ``out[obase:]`` (ow
    pixels x co channels; ``res`` read at the same offsets), channels ``c_lo`` up to ``c_hi`` (tiles'
    first channels; the activation pass only with all of them), ``span = (js, je, c_lo, c_hi)`` (one
    argument: a call of over 30 compiles to a star call, which Numba does not inline): the dense tiles of :func:`_blocked`,
    balanced along the pixels whose windows lie inside the input's columns (undilated: a run of
    tiles of ``p0`` pixels then one of ``p0 - 1``, each run one call), one pixel a tile where a
    window reaches the padding."""
    co = out.shape[-1]
    h, wd, c = x.shape[1], x.shape[2], x.shape[3]
    cop, wid = bias.shape[0], w.shape[1]
    js, je, c_lo, c_hi = span
    jl = max(js, min(je, (pl + sw - 1) // sw))          # pixels jl <= j < jr: every tap inside
    reach = wd - 1 + pl - (kw - 1) * dw
    jr = max(jl, min(je, reach // sw + 1 if reach >= 0 else 0))
    blocks = (jr - jl + pmax - 1) // pmax
    p0 = (jr - jl + blocks - 1) // blocks if blocks > 0 else 1       # balanced tiles along the line
    big = jr - jl - blocks * (p0 - 1)       # tiles of p0 pixels, the others of p0 - 1
    rlo, rhi = _taps(i * sh - pt, kh, dh, h)            # the kernel rows inside the input
    xrow = (b * h + i * sh - pt + rlo * dh) * wd * c
    wimg = _weight_rows(w, cop, kh, kw, c, b)           # image b's first weight row (per-image weights)
    tact, ta, tb = tile_activation(act, alpha, beta, dw)
    for co0 in range(c_lo, c_hi, 16 * nvec):
        nv = min(nvec, (cop - co0) // 16)
        lanes = min(16, co - co0 - 16 * (nv - 1))
        j0 = js
        while j0 < je:
            count = 1
            if j0 < jl or j0 >= jr:
                p = 1
            elif dw != 1:
                p = min(p0, jr - j0)
            elif j0 < jl + big * p0:
                p = p0
                count = (jl + big * p0 - j0) // p0
            else:
                p = p0 - 1
                count = (jr - j0) // p
            qlo, qhi = _taps(j0 * sw - pl, kw, dw, wd)
            if dw == 1:     # the tiles called here: through _pixels, passing its arrays cost as much as a
                # 1 x 1 tile over 16 channels (16 -> 72 at 56 x 56: 243 us a line-by-line pass against 87)
                _tile(nv, (p, x, xrow + (j0 * sw - pl + qlo) * c, sw * c, (qhi - qlo) * c, rhi - rlo, dh * wd * c,
                           kw * c * wid, w, _weight_at(w, cop, wimg + (rlo * kw + qlo) * c, co0), wid, bias, co0, 1, out,
                           obase + j0 * co + co0, co, lanes, 1, scale, shift, affine, res, add, lo, hi, 1,
                           count, p * sw * c, p * co, tact, ta, tb))
                p *= count
            else:
                _pixels(p, x, pt, pl, w, bias, kh, kw, sh, sw, dh, dw, sw * c, b, i, j0, qlo, qhi, co0, nv, lanes,
                        scale, shift, affine, res, add, lo, hi, out, obase + j0 * co + co0, co)
            j0 += p
    if act != 0 and tact == 0:      # on the line just stored: the activation kernel's own code, so bit-identical
        activation_rows(out.reshape(out.size // co, co)[obase // co + js:obase // co + je], act, alpha, beta)


_row_inline = numba.njit(inline="always")(_row)


@jit(inline="always")
def _image_tiles(n, ow, nvec, pmax):
    """Whether ``n`` images of output lines ``ow`` pixels wide run tiles across images (:func:`_images`):
    where a line's balanced tiles would hold at most 16 accumulators and the images' 1.5x as many.
    Against tiles along lines (Xeon with AMX, 2 threads, 64 images, development A/B): 32->64 3x3
    stride 2 to 7x7 0.80x the time, 64->64 at 7x7 0.78x, 16->32 1x1 to 7x7 0.96x, 32->32 at 14x14
    1.00x; not taken: 64->64 at 14x14 (0.92x) and 5x5 (0.95x), 16->16 at 14x14 (1.07x)."""
    blocks = (ow + pmax - 1) // pmax
    line = (ow + blocks - 1) // blocks * nvec
    return line <= 16 and 2 * min(n, pmax) * nvec >= 3 * line


image_tiles = getattr(_image_tiles, "py_func", _image_tiles)    # the rule in Python (the layers choose tile widths by it)

# A 1 x 1 convolution (stride 1, no padding) runs its batch's pixels as lines of up to FLAT_PIXELS
# pixels whose inputs and outputs take up to FLAT_BYTES (in L2), at least FLAT_LINES lines where the
# image lines are shorter: fewer, longer runs of full tiles than lines of the images. One thread, AMD EPYC
# Zen 3, batch 8, A/B against image lines: 16 -> 72 at 56 x 56 0.74-0.77x the time, 24 -> 88 at 28 x 28
# 0.78x, 14 x 14 40 -> 240 and 48 -> 144 0.84-0.88x, 7 x 7 96 -> 576 0.64-0.67x, 576 -> 96 0.88x (batch 1:
# 0.52-0.89x from 14 x 14 up; 7 x 7 keeps its lines). The bounds, same A/B over ten MobileNet 1x1 layers
# (HardSwish where the model has it): 32 KB 1.09x the time, 96 KB 1.03x, 512 KB and 1 MB / 1024 pixels
# 0.99x (noise): longer lines pay even where the activation's pass then reads them from L2.
FLAT_PIXELS = 512
FLAT_BYTES = 256 << 10
FLAT_LINES = 4
# ... and where its weight takes SLICE_BYTES or more (its activation, if any, the tiles'), up to SLICE_PIXELS
# pixels run as FLAT_LINES ranges of output channels (each task a part of the weight). Intel Xeon, 2 threads,
# against pixel ranges: 40 x 120 -> 18,710 0.63x the time, 7 x 7 x 1024 -> 1024 0.71x, 3 x 80 x 768 -> 384
# 0.94x, 384 -> 768 0.96-1.02x; not taken: 8 x 7 x 7 x 512 -> 512 (392 pixels) 1.06x.
SLICE_BYTES = 1 << 20
SLICE_PIXELS = 256


@jit(inline="always")
def _flat_line(m, ow, c, co):
    """``(line, parts)``: the pixels of a line when a 1 x 1 convolution's ``m`` pixels (``m // ow``
    lines of ``ow``) run as equal lines: the largest divisor of ``m`` within the bounds above whose
    lines split evenly over 1, 2 or 4 threads (a multiple of 4 lines, or 16 and more), one part a
    line. Where none is and the image lines would not split evenly either (fewer than 16, not a
    multiple of 4: a 7 x 7 map at batch 1), all ``m`` pixels as one line cut in FLAT_LINES
    near-equal parts (one thread, AMD EPYC Zen 3, batch 1, 7 x 7 96 -> 576 and 576 -> 96: 0.75x and
    0.87x the time of 7-pixel lines, two threads 0.75x and 0.81x). Else ``(ow, 1)``: the image's
    lines. (The thread count read in compiled code would keep Numba from caching the kernel.)"""
    cap = min(FLAT_PIXELS, FLAT_BYTES // (4 * (c + co)), m // FLAT_LINES)
    for d in range(cap, ow, -1):
        if m % d == 0 and ((m // d) % 4 == 0 or m // d >= 16):
            return d, 1
    lines = m // ow
    if lines % FLAT_LINES != 0 and lines < 16 and 8 * FLAT_LINES <= m <= FLAT_LINES * FLAT_PIXELS:
        return m, FLAT_LINES
    return ow, 1


flat_line = getattr(_flat_line, "py_func", _flat_line)


def _images(x, pt, pl, w, bias, kh, kw, sh, sw, dh, dw, nvec, pmax, scale, shift, affine, res, add, lo, hi, act,
            alpha, beta, b0, nb, i, out):
    """Output line ``i`` of images ``b0 .. b0 + nb - 1`` (nb <= pmax), a tile the same pixel of each."""
    n, oh, ow, co = out.shape
    h, wd, c = x.shape[1], x.shape[2], x.shape[3]
    cop, wid = bias.shape[0], w.shape[1]
    rlo, rhi = _taps(i * sh - pt, kh, dh, h)
    xrow = (b0 * h + i * sh - pt + rlo * dh) * wd * c
    for j in range(ow):
        qlo, qhi = _taps(j * sw - pl, kw, dw, wd)
        for co0 in range(0, cop, 16 * nvec):
            nv = min(nvec, (cop - co0) // 16)
            lanes = min(16, co - co0 - 16 * (nv - 1))
            oo = ((b0 * oh + i) * ow + j) * co + co0
            if dw == 1:     # called here, as in _row
                _tile(nv, (nb, x, xrow + (j * sw - pl + qlo) * c, h * wd * c, (qhi - qlo) * c, rhi - rlo, dh * wd * c,
                           kw * c * wid, w, _weight_at(w, cop, (rlo * kw + qlo) * c, co0), wid, bias, co0, 1, out, oo,
                           oh * ow * co, lanes, 1, scale, shift, affine, res, add, lo, hi, 1, 1, 0, 0, 0, lo, lo))
            else:
                _pixels(nb, x, pt, pl, w, bias, kh, kw, sh, sw, dh, dw, h * wd * c, b0, i, j, qlo, qhi, co0, nv,
                        lanes, scale, shift, affine, res, add, lo, hi, out, oo, oh * ow * co)
    if act != 0:
        for b in range(b0, b0 + nb):
            activation_rows(out[b, i], act, alpha, beta)


_images_inline = numba.njit(inline="always")(_images)


def _blocked(x, pt, pl, w, bias, kh, kw, sh, sw, dh, dw, nvec, pmax, scale, shift, affine, res, add, lo, hi, act, alpha,
             beta, out):
    """Direct convolution of a padded NHWC batch with register-blocked tiles (module doc) along output
    lines, or across images where lines are short (:func:`_image_tiles`: the same bits), and the
    epilogue of nncomp/kernels/epilogue.py applied as each tile is stored.

    IN  x (n, h, w, c) float32 C-contiguous, read as zero-padded by pt lines above and pl columns
        left (and as many below and right as out's shape needs), each window reaching at least one
        input line and column (pt, pl, and the padding below and right, under the kernel's extent;
        0, 0 for an input padded already): padding taps are skipped, not multiplied by zero;
        w (kh*kw*c, cop) float32 C-contiguous (cop = co rounded up to 16, extra columns zero), or
        (n*kh*kw*c, cop): a weight per image, image b's rows b*kh*kw*c onwards (an SE block's
        per-sample channel scale folded into the weight: nncomp/layers/scaled.py), or either in
        column panels (module docstring); bias (cop,)
        float32; strides sh, sw; dilations dh, dw; nvec (1..4) 16-channel vectors and at most pmax
        (>= 1; at most the compiled conv_tiles.COMPILED_PIXELS[nvec] are used) pixels per tile;
        epilogue: scale, shift (cop,) float32 used if ``affine``; res (n, oh, ow, co)
        float32 C-contiguous added if ``add`` (else any array of out's shape: ``out`` itself);
        ``lo``, ``hi`` float32 clip bounds (-inf, inf: none); then activation ``act`` (an ACT_*
        code of nncomp/kernels/epilogue.py, 0: none) with its ``alpha``, ``beta``, line by line as
        each line is stored, or (hard sigmoid, hard swish, leaky ReLU where epilogue.IN_TILES) by
        the tiles as they store (epilogue.tile_activation).
    OUT out (n, oh, ow, co) float32 C-contiguous, overwritten.
    """
    n, oh, ow, co = out.shape
    lo32, hi32 = np.float32(lo), np.float32(hi)
    c = x.shape[3]
    pmax = min(pmax, COMPILED_PIXELS[nvec])       # the widths compiled for this CPU
    per_image = _panel_rows(w, bias.shape[0]) > kh * kw * c    # a weight per image: lines and tiles within images
    parts, slices = 1, 1                        # work items per line: pixel ranges, channel ranges
    if kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0 and pl == 0 and x.shape[1] == oh and x.shape[2] == ow:
        images = n if per_image else 1
        m = n * oh * ow // images
        line, parts = _flat_line(m, ow, c, co)
        if (not per_image and m <= SLICE_PIXELS and 4 * c * bias.shape[0] >= SLICE_BYTES
                and (act == 0 or tile_activation(act, alpha, beta, 1)[0] != 0)):
            line, parts, slices = m, 1, FLAT_LINES      # few pixels, a large weight: each task a part of it
        if line > ow:       # a 1 x 1 convolution is a product of (pixels, c) by (c, co) rows: longer lines
            lines = m // line
            x = x.reshape((images, lines, line, c))
            res = res.reshape((images, lines, line, co))
            out = out.reshape((images, lines, line, co))
            n, oh, ow = images, lines, line
    across = not per_image and parts == 1 and _image_tiles(n, ow, nvec, pmax)
    groups = (n + pmax - 1) // pmax if across else n
    # one parallel loop for both ways (each prange loop is compiled with its own copy of the tiles:
    # two loops took twice the compile time)
    step = 16 * nvec
    nb = (bias.shape[0] + step - 1) // step
    for t in prange(groups * oh * parts * slices):
        u = t // slices
        g = u // (oh * parts)
        i = u // parts - g * oh
        k = u - (g * oh + i) * parts
        sl = t - u * slices
        if across:
            b0 = g * n // groups
            _images_inline(x, pt, pl, w, bias, kh, kw, sh, sw, dh, dw, nvec, pmax, scale, shift, affine, res, add,
                           lo32, hi32, act, np.float32(alpha), np.float32(beta), b0, (g + 1) * n // groups - b0, i, out)
        else:
            _row_inline(x, pt, pl, w, bias, kh, kw, sh, sw, dh, dw, nvec, pmax, scale, shift, affine, res, add, lo32,
                        hi32, act, np.float32(alpha), np.float32(beta), g, i, out, (g * oh + i) * ow * co,
                        (k * ow // parts, (k + 1) * ow // parts, sl * nb // slices * step,
                         (sl + 1) * nb // slices * step))


def _blocked_pooled(xp, w, bias, kh, kw, sh, sw, dh, dw, nvec, pmax, pool, lines, out):
    """:func:`_blocked` followed by a ``pool x pool`` max-pool with stride ``pool`` (floor mode), the
    convolution's lines computed ``pool`` at a time into a per-thread buffer and pooled from there.

    IN  as _blocked, without an epilogue; lines (threads, pool, ow, co) float32 C-contiguous work
        buffer (ow the convolution's output width; one slab per Numba thread).
    OUT out (n, oh // pool, ow // pool, co) float32: the max over each window, NaN winning, as
        nncomp/kernels/pool.py computes it.
    """
    n, ph, pw, co = out.shape
    ow = lines.shape[2]
    pmax = min(pmax, COMPILED_PIXELS[nvec])
    z = np.zeros(bias.shape[0], np.float32)
    lo32, hi32, zero = np.float32(-np.inf), np.float32(np.inf), np.float32(0.0)
    for t in prange(n * ph):
        b = t // ph
        pi = t - b * ph
        slab = numba.get_thread_id()
        buf = lines[slab]
        for r in range(pool):
            _row_inline(xp, 0, 0, w, bias, kh, kw, sh, sw, dh, dw, nvec, pmax, z, z, False, lines, False, lo32, hi32,
                        0, zero, zero, b, pi * pool + r, lines, (slab * pool + r) * ow * co, (0, ow, 0, bias.shape[0]))
        dst = out[b, pi]
        if pool == 2:       # the common window: four loads and one store per value, vectorizable
            for pj in range(pw):
                acc = dst[pj]
                s00, s01 = buf[0, 2 * pj], buf[0, 2 * pj + 1]
                s10, s11 = buf[1, 2 * pj], buf[1, 2 * pj + 1]
                for o in range(co):
                    m = s00[o]
                    v = s01[o]
                    m = v if v > m or v != v else m
                    v = s10[o]
                    m = v if v > m or v != v else m
                    v = s11[o]
                    acc[o] = v if v > m or v != v else m
            continue
        for pj in range(pw):
            acc = dst[pj]
            acc[:] = -np.inf
            for r in range(pool):
                for q in range(pool):
                    src = buf[r, pj * pool + q]
                    for o in range(co):
                        v = src[o]
                        if v > acc[o] or v != v:
                            acc[o] = v


conv_blocked_pooled_nhwc, conv_blocked_pooled_nhwc_parallel = both(_blocked_pooled)


@jit
def per_image_weight(w, s, out):
    """A weight per image for :func:`_blocked`: ``out[b * k + r] = w[r] * s[b, r % c]``, each row
    ``r`` (tap ``r // c``, input channel ``r % c``) of ``w`` scaled by image ``b``'s channel value.

    IN  w (k, cop) float32 C-contiguous, k = taps * c; s (n, c) float32 C-contiguous.
    OUT out (n * k, cop) float32 C-contiguous, overwritten. Twin: tests/reference.py.
    """
    n, c = s.shape
    k, cop = w.shape
    for b in range(n):
        for r in range(k):
            v = s[b, r % c]
            row = w[r]
            dst = out[b * k + r]
            for o in range(cop):
                dst[o] = row[o] * v


conv_blocked_nhwc, conv_blocked_nhwc_parallel = both(_blocked)


def pack_panels(w, width):
    """``w`` (rows, cop) float32 in column panels of ``width`` (module docstring): ``(panels * rows,
    width)``, C-contiguous, the last panel zero-padded. NumPy (once per layer and tile width)."""
    rows, cop = w.shape
    panels = -(-cop // width)
    out = aligned.zeros((panels, rows, width))
    for p in range(panels):
        part = w[:, p * width:(p + 1) * width]
        out[p, :, :part.shape[1]] = part
    return out.reshape(panels * rows, width)
