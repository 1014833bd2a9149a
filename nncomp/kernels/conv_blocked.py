"""Register-blocked direct convolution over NHWC float32 images (the ``blocked`` conv algorithm).

A micro-kernel computes a tile of ``P`` output pixels along one output line (where lines are short,
one pixel of ``P`` images) x ``V`` vectors of 16 output channels. Its ``P * V`` accumulators stay in vector registers while it walks the reduction:
for each input value it broadcasts the pixel's input scalar and multiply-adds it with ``V`` weight
vectors (one fused multiply-add per accumulator, no patch matrix, no horizontal sums). Because the
input is NHWC, the taps of one kernel row are one contiguous run of ``kw * c`` floats (undilated),
so a tile's reduction is ``kh`` contiguous runs, all in one micro-kernel call (with a dilation
along the width, one call per kernel column, adding into the tile it stored the call before).

LLVM does not keep an array of accumulators in registers from a plain Numba loop (the tile would
live in memory: two loads and a store per multiply-add), so the micro-kernel is written in LLVM IR
through ``numba.extending.intrinsic`` with ``<16 x float>`` vectors and ``llvm.fma``: AVX-512 where
the CPU has it (one zmm per vector), split by LLVM into narrower registers elsewhere. The tile
widths per ``V`` (:data:`TILE_PIXELS`) keep ``P * V`` accumulators within 28 of AVX-512's 32
registers; :func:`tile_pixels` halves them where the CPU has only 16 vector registers.

Contract (NumPy twin: tests/reference.py ``conv_blocked_nhwc``):
``out[b, i, j, o] = bias[o] + sum_{r, q, ci} xp[b, i*sh + r*dh, j*sw + q*dw, ci] * w[(r*kw + q)*c + ci, o]``
for ``o < co = out.shape[3]``, where ``xp`` is the zero-padded input and ``w`` the weight as
``(kh*kw*c, cop)`` with ``cop`` the channel count rounded up to 16 (extra columns ignored). The
order of the sum (fused multiply-adds over ``ci`` within a tap, taps in order) differs from BLAS.
"""
import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from ._ir import declare, loop_latch, loop_phis
from ._jit import both, jit
from .isa import VECTOR_REGISTERS
from .epilogue import activation_rows

# Output pixels per micro-kernel tile, by the number of 16-channel vectors per tile (1..4).
TILE_PIXELS = {1: 14, 2: 12, 3: 8, 4: 6}
VECTORS = 4                 # at most 4 vectors (64 channels) per tile




def tile_pixels(nvec, registers=None):
    """The widest tile (output pixels) for ``nvec`` vectors of channels with ``registers`` zmm-sized
    registers (default: this CPU's): AVX-512's 32 take :data:`TILE_PIXELS`; 16 (AVX2, where each
    16-float vector takes two registers) take a quarter of it."""
    registers = VECTOR_REGISTERS if registers is None else registers
    p = TILE_PIXELS[nvec]
    return p if registers >= 32 else max(1, p // 4)


def _emit_tile(context, builder, P, V, depthwise, ptrs, ints, epi, after):
    """One tile of ``P`` pixels x ``V`` vectors; branches to ``after`` when done."""
    xd, wd, bd, od, scd, shd, rd = ptrs
    xoff, pix, span, rows, xrow, wrs, woff, wrow, boff, first, ooff, opix, lanes, last, affine, add, xstep = ints
    lo, hi = epi
    intp = xoff.type
    f32 = ir.FloatType()
    v16 = ir.VectorType(f32, 16)
    vptr = v16.as_pointer()
    i32 = ir.IntType(32)
    mask_t = ir.VectorType(ir.IntType(1), 16)
    fma = declare(builder.module, "llvm.fma.v16f32", ir.FunctionType(v16, [v16, v16, v16]))
    mload = declare(builder.module, "llvm.masked.load.v16f32.p0v16f32",
                     ir.FunctionType(v16, [vptr, i32, mask_t, v16]))
    mstore = declare(builder.module, "llvm.masked.store.v16f32.p0v16f32",
                      ir.FunctionType(ir.VoidType(), [v16, vptr, i32, mask_t]))
    undef = ir.Constant(v16, ir.Undefined)
    zero = ir.Constant(v16, None)
    splat = ir.Constant(ir.VectorType(i32, 16), [0] * 16)
    # lanes of the last vector that are real output channels
    lanes_v = builder.shuffle_vector(builder.insert_element(ir.Constant(ir.VectorType(i32, 16), ir.Undefined),
                                                            builder.trunc(lanes, i32), i32(0)),
                                     ir.Constant(ir.VectorType(i32, 16), ir.Undefined), splat)
    mask = builder.icmp_signed("<", ir.Constant(ir.VectorType(i32, 16), list(range(16))), lanes_v)

    optrs = [[builder.bitcast(builder.gep(od, [builder.add(ooff, builder.add(builder.mul(opix, intp(p)),
                                                                            intp(16 * v)))]), vptr)
              for v in range(V)] for p in range(P)]
    bias = [builder.load(builder.bitcast(builder.gep(bd, [builder.add(boff, intp(16 * v))]), vptr), align=4)
            for v in range(V)]
    is_first = builder.icmp_signed("!=", first, intp(0))
    init = []
    for p in range(P):
        for v in range(V):
            if v == V - 1:
                old = builder.call(mload, [optrs[p][v], i32(4), mask, zero])
            else:
                old = builder.load(optrs[p][v], align=4)
            init.append(builder.select(is_first, bias[v], old))
    # rows x span multiply-adds per accumulator: kernel rows r (x at + r * xrow, w at + r * wrs),
    # each a contiguous run j < span (rows >= 1 and span >= 1: the loops run at least once)
    pre = builder.block
    outer = builder.append_basic_block(f"tile{P}x{V}_row")
    inner = builder.append_basic_block(f"tile{P}x{V}_run")
    latch = builder.append_basic_block(f"tile{P}x{V}_next_row")
    done = builder.append_basic_block(f"tile{P}x{V}_done")
    builder.branch(outer)

    builder.position_at_end(outer)
    r, acc_r = loop_phis(builder, intp, v16, init, pre)
    xrows = [builder.gep(xd, [builder.add(builder.add(xoff, builder.mul(r, xrow)), builder.mul(pix, intp(p)))])
             for p in range(P)]
    wbase = builder.gep(wd, [builder.add(woff, builder.mul(r, wrs))])
    builder.branch(inner)

    builder.position_at_end(inner)
    j, accs = loop_phis(builder, intp, v16, acc_r, outer)
    wrow_j = builder.mul(j, wrow)
    wv = [builder.load(builder.bitcast(builder.gep(wbase, [builder.add(wrow_j, intp(16 * v))]), vptr), align=4)
          for v in range(V)]
    new = []
    for p in range(P):
        if depthwise:       # each channel's own input: a vector load (the last one masked)
            at = builder.mul(j, xstep)
            xs = [builder.bitcast(builder.gep(xrows[p], [builder.add(at, intp(16 * v))]), vptr) for v in range(V)]
            xv = [builder.call(mload, [xs[v], i32(4), mask, zero]) if v == V - 1 else builder.load(xs[v], align=4)
                  for v in range(V)]
        else:               # one input value for every output channel: a broadcast
            s = builder.load(builder.gep(xrows[p], [j]), align=4)
            xv = [builder.shuffle_vector(builder.insert_element(undef, s, i32(0)), undef, splat)] * V
        new.extend(builder.call(fma, [xv[v], wv[v], accs[p * V + v]]) for v in range(V))
    loop_latch(builder, intp, j, accs, new, span, inner, latch)

    builder.position_at_end(latch)
    loop_latch(builder, intp, r, acc_r, new, rows, outer, done)

    builder.position_at_end(done)
    fins = list(new)
    # after the last call of the tile: the epilogue, as the epilogue kernel computes it (no fused
    # multiply-add: bit-identical to batch norm, residual add and clip run one by one)
    is_last = builder.icmp_signed("!=", last, intp(0))
    do_affine = builder.and_(is_last, builder.icmp_signed("!=", affine, intp(0)))
    do_add = builder.and_(is_last, builder.icmp_signed("!=", add, intp(0)))
    bcast = lambda s_: builder.shuffle_vector(builder.insert_element(undef, s_, i32(0)), undef, splat)  # noqa: E731
    lo_v, hi_v = bcast(lo), bcast(hi)
    scale = [builder.load(builder.bitcast(builder.gep(scd, [builder.add(boff, intp(16 * v))]), vptr), align=4)
             for v in range(V)]
    shift = [builder.load(builder.bitcast(builder.gep(shd, [builder.add(boff, intp(16 * v))]), vptr), align=4)
             for v in range(V)]
    for p in range(P):
        for v in range(V):
            val = fins[p * V + v]
            val = builder.select(do_affine, builder.fadd(builder.fmul(val, scale[v]), shift[v]), val)
            rptr = builder.bitcast(builder.gep(rd, [builder.add(ooff, builder.add(builder.mul(opix, intp(p)),
                                                                                intp(16 * v)))]), vptr)
            res = builder.call(mload, [rptr, i32(4), mask, zero]) if v == V - 1 else builder.load(rptr, align=4)
            val = builder.select(do_add, builder.fadd(val, res), val)
            # NumPy's maximum / minimum: keep v if it wins strictly or is NaN
            clipped = builder.select(builder.fcmp_unordered(">", val, lo_v), val, lo_v)
            clipped = builder.select(builder.fcmp_unordered("<", clipped, hi_v), clipped, hi_v)
            fins[p * V + v] = builder.select(is_last, clipped, val)
    for p in range(P):
        for v in range(V):
            if v == V - 1:
                builder.call(mstore, [fins[p * V + v], optrs[p][v], i32(4), mask])
            else:
                builder.store(fins[p * V + v], optrs[p][v], align=4)
    builder.branch(after)


def _tile_function(context, module, P, V, depthwise, ptrs, ints, epi):
    """The tile of ``P`` pixels x ``V`` vectors as a function of its own (defined once per module,
    never inlined): emitted inline in the switch of every tile shape, LLVM allocated registers for
    the whole switch at once and each tile paid ~150 ns of spills and reloads (a 3.9 KB stack frame)."""
    name = f"nncomp_conv_tile_{'dw' if depthwise else 'dense'}_{P}x{V}"
    fn = module.globals.get(name)
    if fn is not None:
        return fn
    fnty = ir.FunctionType(ir.VoidType(), [v.type for v in (*ptrs, *ints, *epi)])
    fn = ir.Function(module, fnty, name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    entry = fn.append_basic_block("entry")
    done = fn.append_basic_block("done")
    inner = ir.IRBuilder(entry)
    k, m = len(ptrs), len(ints)
    _emit_tile(context, inner, P, V, depthwise, list(fn.args[:k]), list(fn.args[k:k + m]), list(fn.args[k + m:]), done)
    inner.position_at_end(done)
    inner.ret_void()
    return fn


def make_tiles(V, pmax, depthwise=False):
    """Intrinsic ``tiles(P, x, xoff, pix, span, rows, xrow, wrs, w, woff, wrow, bias, boff, first, out,
    ooff, opix, lanes, last, scale, shift, affine, res, add, lo, hi, xstep)``.

    For ``P`` in 1..pmax output pixels (flat offsets ``xoff + p * pix`` into ``x``, ``ooff + p * opix``
    into ``out``) and ``V`` vectors of channels: ``tile = (bias[boff:] if first else tile) +
    sum_{r < rows, j < span} x[pixel + r * xrow + j] * w[woff + r * wrs + j * wrow:][:16 V]`` (rows,
    span >= 1), the last vector masked to ``lanes``. ``depthwise``: channel ``o`` of the tile reads
    its own input, ``x[pixel + r * xrow + j * xstep + o]``, instead of one value for all.
    When ``last``: then ``tile * scale + shift`` (if ``affine``), ``+ res`` at the tile's own offsets
    (if ``add``), clipped to ``[lo, hi]``, before the store.
    """

    @intrinsic
    def tiles(typingctx, P, x, xoff, pix, span, rows, xrow, wrs, w, woff, wrow, bias, boff, first, out, ooff,
              opix, lanes, last, scale, shift, affine, res, add, lo, hi, xstep):
        sig = types.void(P, x, xoff, pix, span, rows, xrow, wrs, w, woff, wrow, bias, boff, first, out, ooff,
                         opix, lanes, last, scale, shift, affine, res, add, lo, hi, xstep)

        def codegen(context, builder, signature, args):
            ptrs = [context.make_array(signature.args[k])(context, builder, args[k]).data
                    for k in (1, 8, 11, 14, 19, 20, 22)]
            ints = [context.cast(builder, args[k], signature.args[k], types.intp)
                    for k in (2, 3, 4, 5, 6, 7, 9, 10, 12, 13, 15, 16, 17, 18, 21, 23, 26)]
            epi = [context.cast(builder, args[k], signature.args[k], types.float32) for k in (24, 25)]
            p_ = context.cast(builder, args[0], signature.args[0], types.intp)
            after = builder.append_basic_block("tiles_after")
            switch = builder.switch(p_, after)
            for p in range(1, pmax + 1):
                block = builder.append_basic_block(f"tiles_p{p}")
                switch.add_case(p_.type(p), block)
                builder.position_at_end(block)
                fn = _tile_function(context, builder.module, p, V, depthwise, ptrs, ints, epi)
                builder.call(fn, [*ptrs, *ints, *epi])
                builder.branch(after)
            builder.position_at_end(after)
            return context.get_dummy_value()

        return sig, codegen

    return tiles


_tiles1, _tiles2, _tiles3, _tiles4 = (make_tiles(v, TILE_PIXELS[v]) for v in range(1, VECTORS + 1))


@jit(inline="always")
def _tile(nv, a):
    """The dense tiles of ``nv`` vectors on the arguments ``a`` (``tiles`` of :func:`make_tiles`)."""
    if nv == 4:
        _tiles4(*a)
    elif nv == 3:
        _tiles3(*a)
    elif nv == 2:
        _tiles2(*a)
    else:
        _tiles1(*a)


def _row(xp, w, bias, kh, kw, sh, sw, dh, dw, nvec, pmax, scale, shift, affine, res, add, lo, hi, act, alpha, beta,
         b, i, out, obase):
    """Output line ``i`` of image ``b`` into flat ``out[obase:]`` (ow pixels x co channels; ``res``
    read at the same offsets): the dense tiles of :func:`_blocked`."""
    ow, co = out.shape[-2], out.shape[-1]
    hp, wp, c = xp.shape[1], xp.shape[2], xp.shape[3]
    cop = w.shape[1]
    blocks = (ow + pmax - 1) // pmax
    p0 = (ow + blocks - 1) // blocks if blocks > 0 else 1       # balanced tiles along the line
    # one call over the kernel rows, each a contiguous kw * c run; one per kernel column when dilated
    span = kw * c if dw == 1 else c
    calls = 1 if dw == 1 else kw
    for co0 in range(0, cop, 16 * nvec):
        nv = min(nvec, (cop - co0) // 16)
        lanes = min(16, co - co0 - 16 * (nv - 1))
        j0 = 0
        while j0 < ow:
            p = min(p0, ow - j0)
            oo = obase + j0 * co + co0
            for q in range(calls):
                xo = ((b * hp + i * sh) * wp + j0 * sw + q * dw) * c
                a = (p, xp, xo, sw * c, span, kh, dh * wp * c, kw * c * cop, w, q * c * cop + co0, cop, bias,
                     co0, int(q == 0), out, oo, co, lanes, int(q == calls - 1), scale, shift, affine, res, add,
                     lo, hi, 1)
                _tile(nv, a)
            j0 += p
    if act != 0:        # on the line just stored (in L1): the activation kernel's own code, so bit-identical
        activation_rows(out.reshape(out.size // co, co)[obase // co:obase // co + ow], act, alpha, beta)


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


def _images(xp, w, bias, kh, kw, sh, sw, dh, dw, nvec, pmax, scale, shift, affine, res, add, lo, hi, act, alpha,
            beta, b0, nb, i, out):
    """Output line ``i`` of images ``b0 .. b0 + nb - 1`` (nb <= pmax), a tile the same pixel of each."""
    n, oh, ow, co = out.shape
    hp, wp, c = xp.shape[1], xp.shape[2], xp.shape[3]
    cop = w.shape[1]
    span = kw * c if dw == 1 else c
    calls = 1 if dw == 1 else kw
    for j in range(ow):
        for co0 in range(0, cop, 16 * nvec):
            nv = min(nvec, (cop - co0) // 16)
            lanes = min(16, co - co0 - 16 * (nv - 1))
            oo = ((b0 * oh + i) * ow + j) * co + co0
            for q in range(calls):
                xo = ((b0 * hp + i * sh) * wp + j * sw + q * dw) * c
                a = (nb, xp, xo, hp * wp * c, span, kh, dh * wp * c, kw * c * cop, w, q * c * cop + co0, cop, bias,
                     co0, int(q == 0), out, oo, oh * ow * co, lanes, int(q == calls - 1), scale, shift, affine, res,
                     add, lo, hi, 1)
                _tile(nv, a)
    if act != 0:
        for b in range(b0, b0 + nb):
            activation_rows(out[b, i], act, alpha, beta)


_images_inline = numba.njit(inline="always")(_images)


def _blocked(xp, w, bias, kh, kw, sh, sw, dh, dw, nvec, pmax, scale, shift, affine, res, add, lo, hi, act, alpha, beta,
             out):
    """Direct convolution of a padded NHWC batch with register-blocked tiles (module doc) along output
    lines, or across images where lines are short (:func:`_image_tiles`: the same bits), and the
    epilogue of nncomp/kernels/epilogue.py applied as each tile is stored.

    IN  xp (n, hp, wp, c) float32 C-contiguous, zero-padded; w (kh*kw*c, cop) float32 C-contiguous
        (cop = co rounded up to 16, extra columns zero); bias (cop,) float32; strides sh, sw;
        dilations dh, dw; nvec (1..4) 16-channel vectors and at most pmax (<= TILE_PIXELS[nvec])
        pixels per tile; epilogue: scale, shift (cop,) float32 used if ``affine``; res (n, oh, ow, co)
        float32 C-contiguous added if ``add`` (else any array of out's shape: ``out`` itself);
        ``lo``, ``hi`` float32 clip bounds (-inf, inf: none); then activation ``act`` (an ACT_*
        code of nncomp/kernels/epilogue.py, 0: none) with its ``alpha``, ``beta``, line by line as
        each line is stored (in LLVM IR inside the tiles it cost 11 s more compile time per build).
    OUT out (n, oh, ow, co) float32 C-contiguous, overwritten.
    """
    n, oh, ow, co = out.shape
    lo32, hi32 = np.float32(lo), np.float32(hi)
    if _image_tiles(n, ow, nvec, pmax):
        groups = (n + pmax - 1) // pmax
        for t in prange(groups * oh):
            g = t // oh
            i = t - g * oh
            b0 = g * n // groups
            _images_inline(xp, w, bias, kh, kw, sh, sw, dh, dw, nvec, pmax, scale, shift, affine, res, add, lo32,
                           hi32, act, np.float32(alpha), np.float32(beta), b0, (g + 1) * n // groups - b0, i, out)
        return
    for t in prange(n * oh):
        b = t // oh
        i = t - b * oh
        _row_inline(xp, w, bias, kh, kw, sh, sw, dh, dw, nvec, pmax, scale, shift, affine, res, add, lo32, hi32,
                    act, np.float32(alpha), np.float32(beta),
                    b, i, out, (b * oh + i) * ow * co)


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
    z = np.zeros(w.shape[1], np.float32)
    lo32, hi32, zero = np.float32(-np.inf), np.float32(np.inf), np.float32(0.0)
    for t in prange(n * ph):
        b = t // ph
        pi = t - b * ph
        slab = numba.get_thread_id()
        buf = lines[slab]
        for r in range(pool):
            _row_inline(xp, w, bias, kh, kw, sh, sw, dh, dw, nvec, pmax, z, z, False, lines, False, lo32, hi32,
                        0, zero, zero, b, pi * pool + r, lines, (slab * pool + r) * ow * co)
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


conv_blocked_nhwc, conv_blocked_nhwc_parallel = both(_blocked)
