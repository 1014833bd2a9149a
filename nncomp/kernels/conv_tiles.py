"""The register-blocked micro-kernel of the float32 convolutions and dense products: LLVM IR tiles.

A tile of ``P`` pixels (any stride between them: output pixels along a line, the same pixel of
``P`` images, or ``P`` weight rows) x ``V`` vectors of 16 channels keeps its ``P * V`` accumulators
in vector registers while it walks a reduction of ``rows`` runs of ``span`` values: for each value it
broadcasts the pixel's scalar and multiply-adds it with ``V`` vectors (one fused multiply-add per
accumulator). LLVM does not keep an array of accumulators in registers from a plain Numba loop (the
tile would live in memory: two loads and a store per multiply-add), so the tile is written in LLVM
IR through ``numba.extending.intrinsic`` with ``<16 x float>`` vectors and ``llvm.fma``: AVX-512
where the CPU has it (one zmm per vector), split by LLVM into narrower registers elsewhere. The tile
widths per ``V`` (:data:`TILE_PIXELS`) keep ``P * V`` accumulators within 28 of AVX-512's 32
registers; :func:`tile_pixels` narrows them where the CPU has only 16 vector registers (AVX2).

Users: nncomp/kernels/conv_blocked.py (direct convolution), conv_depthwise.py (each channel its own
input: a vector load instead of a broadcast), dense_stream.py (weight rows broadcast, samples as the
vectors), conv_winograd.py's products follow the same design.
"""
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._ir import declare, loop_latch, loop_phis, masked_v, prefetch, splat, store_v8, store_v16, when
from .epilogue import ACT_HARDSIGMOID, ACT_HARDSWISH, ACT_LEAKYRELU, IN_TILES, hard_ir, leaky_ir
from .isa import VECTOR_REGISTERS

# Output pixels per micro-kernel tile, by the number of 16-channel vectors per tile (1..4).
TILE_PIXELS = {1: 14, 2: 12, 3: 8, 4: 6}
VECTORS = 4                 # at most 4 vectors (64 channels) per tile




# Output pixels per tile where the CPU has 16 vector registers (AVX2: each 16-float vector takes two
# ymm, so a tile of P pixels x V vectors holds 2 P V accumulators). One thread, AMD EPYC Zen 3, GMAC/s
# against the quartered AVX-512 widths (3, 3, 2, 1) used before: dense tiles 28 x 28 x 16 -> 16
# 3 x 3 33.8 against 28.0 (1 x 6), 64 images of 7 x 7 x 64 -> 64 43.3 against ~31 (1 x 6 across
# images), 12 x 12 x 20 -> 50 5 x 5 28.4 against 24.3 (2 x 2); depthwise 56 x 56 x 16 1.20x the
# time's inverse at 6 pixels, 2 vectors and more 1.06-1.09x at 2 pixels (16 accumulators: LLVM spills
# a few, still faster than 1 pixel).
AVX2_PIXELS = {1: 6, 2: 2, 3: 1, 4: 1}
# AVX2: a 16-lane vector is two ymm, so a last vector of at most 8 channels (24, 40, 72, 120 of a
# MobileNet; 8 alone) runs a tile whose last vector is one ymm instead of multiply-adding a dead
# upper half (AVX-512 computes a masked zmm at a full one's cost)
HALF_TILES = VECTOR_REGISTERS < 32
AVX2_DEPTHWISE_PIXELS = {1: 6, 2: 2, 3: 2, 4: 2}


def tile_pixels(nvec, registers=None, depthwise=False):
    """The widest tile (output pixels) for ``nvec`` vectors of channels with ``registers`` zmm-sized
    registers (default: this CPU's): AVX-512's 32 take :data:`TILE_PIXELS`; 16 (AVX2, where each
    16-float vector takes two registers) :data:`AVX2_PIXELS` (``depthwise``: :data:`AVX2_DEPTHWISE_PIXELS`)."""
    registers = VECTOR_REGISTERS if registers is None else registers
    if registers >= 32:
        return TILE_PIXELS[nvec]
    return (AVX2_DEPTHWISE_PIXELS if depthwise else AVX2_PIXELS)[nvec]


def _emit_tile(context, builder, P, V, depthwise, ptrs, ints, epi, after, slide=0, plain=False, half=False,
               lane8=False):
    """One tile of ``P`` pixels x ``V`` vectors; branches to ``after`` when done. ``slide`` (depthwise
    only): the runs are ``slide`` taps long and a pixel's next tap is the next pixel's first
    (``xstep == pix``, stride 1): each input vector is loaded once per row and serves every pixel
    whose window holds it (:func:`_slide_rows`). ``plain`` (depthwise, for tiles whose last vector
    is whole): the inputs are loaded without a mask. ``half`` (dense tiles whose last vector has at
    most 8 channels): that vector is ``<8 x float>``, so AVX2 computes no dead upper ymm. ``lane8``:
    every vector is ``<8 x float>`` (AVX2's sliding depthwise tiles: 8 channels fit its registers)."""
    xd, wd, bd, od, scd, shd, rd = ptrs
    xoff, pix, span, rows, xrow, wrs, woff, wrow, boff, first, ooff, opix, lanes, last, affine, add, xstep = ints
    intp = xoff.type
    f32 = ir.FloatType()
    i32 = ir.IntType(32)
    widths = [8] * V if lane8 else [16] * (V - 1) + [8 if half else 16]      # lanes of each vector
    offs = [sum(widths[:v]) for v in range(V)]
    vts = [ir.VectorType(f32, w) for w in widths]
    fmas = {w: declare(builder.module, f"llvm.fma.v{w}f32", ir.FunctionType(t, [t, t, t])) for w, t in zip(widths, vts)}
    lw = widths[-1]
    mload = masked_v(builder.module, lw)[0]
    zero_last = ir.Constant(vts[-1], None)
    # lanes of the last vector that are real output channels
    mask = builder.icmp_signed("<", ir.Constant(ir.VectorType(i32, lw), list(range(lw))),
                               splat(builder, builder.trunc(lanes, i32), lw))
    full = builder.icmp_signed(">=", lanes, lanes.type(lw))

    optrs = [[builder.bitcast(builder.gep(od, [builder.add(ooff, builder.add(builder.mul(opix, intp(p)),
                                                                            intp(offs[v])))]), vts[v].as_pointer())
              for v in range(V)] for p in range(P)]
    bias = [builder.load(builder.bitcast(builder.gep(bd, [builder.add(boff, intp(offs[v]))]), vts[v].as_pointer()),
                         align=4) for v in range(V)]
    # the first call of a tile starts from the bias, later ones from what the tile stored
    init = when(builder, builder.icmp_signed("==", first, intp(0)), [bias[v] for p in range(P) for v in range(V)],
                 lambda _: [builder.call(mload, [optrs[p][v], i32(4), mask, zero_last]) if v == V - 1
                            else builder.load(optrs[p][v], align=4) for p in range(P) for v in range(V)])
    if slide:
        new = _slide_rows(builder, P, widths, slide, init, (xd, wd), (xoff, pix, rows, xrow, wrs, woff, wrow), mask,
                          plain)
        _epilogue(builder, P, widths, new, (od, scd, shd, rd), (boff, ooff, opix, last, affine, add), epi,
                  mask, optrs, full, IN_TILES and not depthwise)
        builder.branch(after)
        return
    # rows x span multiply-adds per accumulator: kernel rows r (x at + r * xrow, w at + r * wrs),
    # each a contiguous run j < span (rows >= 1 and span >= 1: the loops run at least once)
    pre = builder.block
    outer = builder.append_basic_block(f"tile{P}x{V}_row")
    inner = builder.append_basic_block(f"tile{P}x{V}_run")
    latch = builder.append_basic_block(f"tile{P}x{V}_next_row")
    done = builder.append_basic_block(f"tile{P}x{V}_done")
    builder.branch(outer)

    builder.position_at_end(outer)
    r, acc_r = loop_phis(builder, intp, None, init, pre)
    xrows = [builder.gep(xd, [builder.add(builder.add(xoff, builder.mul(r, xrow)), builder.mul(pix, intp(p)))])
             for p in range(P)]
    wbase = builder.gep(wd, [builder.add(woff, builder.mul(r, wrs))])
    builder.branch(inner)

    builder.position_at_end(inner)
    j, accs = loop_phis(builder, intp, None, acc_r, outer)
    wrow_j = builder.mul(j, wrow)
    wv = [builder.load(builder.bitcast(builder.gep(wbase, [builder.add(wrow_j, intp(offs[v]))]), vts[v].as_pointer()),
                       align=4) for v in range(V)]
    new = []
    for p in range(P):
        if depthwise:       # each channel's own input: a vector load (the last one masked)
            at = builder.mul(j, xstep)
            xs = [builder.bitcast(builder.gep(xrows[p], [builder.add(at, intp(offs[v]))]), vts[v].as_pointer())
                  for v in range(V)]
            xv = [builder.call(mload, [xs[v], i32(4), mask, zero_last]) if v == V - 1 and not plain
                  else builder.load(xs[v], align=4) for v in range(V)]
        else:               # one input value for every output channel: a broadcast
            s = builder.load(builder.gep(xrows[p], [j]), align=4)
            xb = {w: splat(builder, s, w) for w in set(widths)}
            xv = [xb[w] for w in widths]
        new.extend(builder.call(fmas[widths[v]], [xv[v], wv[v], accs[p * V + v]]) for v in range(V))
    loop_latch(builder, intp, j, accs, new, span, inner, latch)

    builder.position_at_end(latch)
    loop_latch(builder, intp, r, acc_r, new, rows, outer, done)

    builder.position_at_end(done)
    _epilogue(builder, P, widths, new, (od, scd, shd, rd), (boff, ooff, opix, last, affine, add), epi, mask,
              optrs, full, IN_TILES and not depthwise)
    builder.branch(after)


def _slide_rows(builder, P, widths, S, init, arrays, ints, mask, plain=False):
    """The accumulators of a depthwise tile whose runs are ``S`` taps, a tap's step equal to the
    pixels' (stride 1): per kernel row, the ``P + S - 1`` input vectors of the row are loaded once
    each and multiply-added into every pixel whose window holds them (pixel ``p``, tap ``j`` reads
    input ``p + j``), in the order of the general tile (per pixel: taps in increasing order), so
    the bits are the same; a load serves up to ``S`` multiply-adds instead of one."""
    xd, wd = arrays
    xoff, pix, rows, xrow, wrs, woff, wrow = ints
    intp = xoff.type
    V = len(widths)
    offs = [sum(widths[:v]) for v in range(V)]
    vts = [ir.VectorType(ir.FloatType(), w) for w in widths]
    i32 = ir.IntType(32)
    fmas = [declare(builder.module, f"llvm.fma.v{w}f32", ir.FunctionType(t, [t, t, t])) for w, t in zip(widths, vts)]
    mload = masked_v(builder.module, widths[-1])[0]
    zero = ir.Constant(vts[-1], None)
    pre = builder.block
    row = builder.append_basic_block(f"slide{P}x{V}x{S}_row")
    done = builder.append_basic_block(f"slide{P}x{V}x{S}_done")
    builder.branch(row)
    builder.position_at_end(row)
    r, accs = loop_phis(builder, intp, None, init, pre)
    xbase = builder.gep(xd, [builder.add(xoff, builder.mul(r, xrow))])
    wbase = builder.gep(wd, [builder.add(woff, builder.mul(r, wrs))])
    wv = [[builder.load(builder.bitcast(builder.gep(wbase, [builder.add(builder.mul(intp(j), wrow), intp(offs[v]))]),
                                        vts[v].as_pointer()), align=4) for v in range(V)] for j in range(S)]
    new = list(accs)
    for t in range(P + S - 1):
        at = builder.mul(intp(t), pix)
        xs = [builder.bitcast(builder.gep(xbase, [builder.add(at, intp(offs[v]))]), vts[v].as_pointer())
              for v in range(V)]
        xv = [builder.call(mload, [xs[v], i32(4), mask, zero]) if v == V - 1 and not plain
              else builder.load(xs[v], align=4) for v in range(V)]
        for j in range(S):
            p = t - j
            if 0 <= p < P:
                for v in range(V):
                    new[p * V + v] = builder.call(fmas[v], [xv[v], wv[j][v], new[p * V + v]])
    loop_latch(builder, intp, r, accs, new, rows, row, done)
    builder.position_at_end(done)
    return new


def _epilogue(builder, P, widths, new, arrays, ints, epi, mask, optrs, full, acts):
    """Store the tile's accumulators ``new`` (``P`` pixels x vectors of ``widths`` lanes); after the
    last call of the tile first the epilogue, as the epilogue kernel computes it (no fused
    multiply-add: bit-identical to batch norm, residual add and clip run one by one). ``full``: the
    last vector's lanes are all output channels. Each part runs only where its flag asks for it
    (at 16 input channels, computing all of them and selecting cost 10-15% of the 1 x 1 tile's
    time). ``acts`` (dense tiles where epilogue.IN_TILES): then the activation ``act`` (hard
    sigmoid, hard swish, leaky ReLU), one branch each."""
    od, scd, shd, rd = arrays
    boff, ooff, opix, last, affine, add = ints
    lo, hi, act, alpha, beta = epi
    V = len(widths)
    intp = boff.type
    f32, i32 = ir.FloatType(), ir.IntType(32)
    vptrs = [ir.VectorType(f32, w).as_pointer() for w in widths]
    mload = masked_v(builder.module, widths[-1])[0]
    zero_last = ir.Constant(ir.VectorType(f32, widths[-1]), None)
    is_last = builder.icmp_signed("!=", last, intp(0))
    bcast = lambda s_, v_: splat(builder, s_, v_.type.count)  # noqa: E731
    offs = [sum(widths[:v]) for v in range(V)]
    at = [[builder.add(ooff, builder.add(builder.mul(opix, intp(p)), intp(offs[v]))) for v in range(V)]
          for p in range(P)]

    def affine_map(vals):
        scale = [builder.load(builder.bitcast(builder.gep(scd, [builder.add(boff, intp(offs[v]))]), vptrs[v]), align=4)
                 for v in range(V)]
        shift = [builder.load(builder.bitcast(builder.gep(shd, [builder.add(boff, intp(offs[v]))]), vptrs[v]), align=4)
                 for v in range(V)]
        return [builder.fadd(builder.fmul(vals[k], scale[k % V]), shift[k % V]) for k in range(P * V)]

    def residual(vals):
        # prefetch the next tile's residual (the run's next P pixels): a block input two steps back
        # comes from L3 (ResNet-small's shortcut at batch 32: 800 kB), and loaded cold here it cost
        # 1 x 1 convolutions 1.1-1.5x their time without the add (AMD EPYC Zen 3, one thread). Only
        # on the add's branch: prefetching in every tile cost 1 x 1 tiles without an add 3-4%
        ahead = builder.mul(opix, intp(P))
        for p in range(P):
            for v in range(V):
                prefetch(builder, builder.gep(rd, [builder.add(at[p][v], ahead)]), 3)
        out = []
        for p in range(P):
            for v in range(V):
                rptr = builder.bitcast(builder.gep(rd, [at[p][v]]), vptrs[v])
                res = builder.call(mload, [rptr, i32(4), mask, zero_last]) if v == V - 1 else builder.load(rptr, align=4)
                out.append(builder.fadd(vals[p * V + v], res))
        return out

    def clip(vals, bound, pred):
        # NumPy's maximum / minimum: keep v if it wins strictly or is NaN
        return [builder.select(builder.fcmp_unordered(pred, val, bcast(bound, val)), val, bcast(bound, val))
                for val in vals]

    def hard(vals, swish):
        # the activation kernel's vector operations (epilogue.hard_ir, leaky_ir): the same bits; one
        # branch per activation (computing all of them and selecting cost 1/3 more arithmetic)
        out = []
        for v in vals:
            t = hard_ir(builder, v, bcast(alpha, v), bcast(beta, v))
            out.append(builder.fmul(v, t) if swish else t)
        return out

    def leaky(vals):
        return [leaky_ir(builder, v, bcast(alpha, v)) for v in vals]

    def activate(vals):
        vals = when(builder, builder.icmp_signed("==", act, intp(ACT_HARDSWISH)), vals, lambda v: hard(v, True))
        vals = when(builder, builder.icmp_signed("==", act, intp(ACT_HARDSIGMOID)), vals, lambda v: hard(v, False))
        return when(builder, builder.icmp_signed("==", act, intp(ACT_LEAKYRELU)), vals, leaky)

    def finish(vals):
        vals = when(builder, builder.icmp_signed("!=", affine, intp(0)), vals, affine_map)
        vals = when(builder, builder.icmp_signed("!=", add, intp(0)), vals, residual)
        vals = when(builder, builder.fcmp_ordered("!=", lo, f32(float("-inf"))), vals, lambda v: clip(v, lo, ">"))
        vals = when(builder, builder.fcmp_ordered("!=", hi, f32(float("inf"))), vals, lambda v: clip(v, hi, "<"))
        if not acts:
            return vals
        return when(builder, builder.icmp_signed("!=", act, intp(0)), vals, activate)

    fins = when(builder, is_last, list(new), finish)
    for p in range(P):
        for v in range(V):
            if v == V - 1 and widths[v] == 8:
                store_v8(builder, fins[p * V + v], optrs[p][v], mask, full)
            elif v == V - 1:      # a full last vector stores unmasked (_ir.store_v16)
                store_v16(builder, fins[p * V + v], optrs[p][v], mask, full)
            else:
                builder.store(fins[p * V + v], optrs[p][v], align=4)


def _tile_function(context, module, P, V, depthwise, ptrs, ints, epi, slide=0, half=False, lane8=False):
    """The tile of ``P`` pixels x ``V`` vectors as a function of its own (defined once per module,
    never inlined), run ``count`` times along a line: the k-th tile reads from ``xoff + k * xadv``
    and stores at ``ooff + k * oadv`` (three arguments after the tile's). Emitted inline in the
    switch of every tile shape, LLVM allocated registers for the whole switch at once and each tile
    paid ~150 ns of spills and reloads (a 3.9 KB stack frame). A run of tiles in one call: the
    caller's ~10 ns of argument passing and bookkeeping a tile (a K = 16 tile: 50 ns from the
    kernel's line loop, 40 from a loop calling the tile directly) is paid once a run (one thread, AMD
    EPYC Zen 3, 1 x 1 convolutions at batch 8, A/B: 16 -> 72 at 56 x 56 0.83-0.85x the time, 24 -> 88
    at 28 x 28 0.95x, 7 x 7 and 14 x 14 0.98-1.05x)."""
    name = (f"nncomp_conv_tile_{'dw' if depthwise else 'dense'}_{P}x{V}" + (f"_slide{slide}" if slide else "")
            + ("_half" if half else "") + ("_lane8" if lane8 else ""))
    fn = module.globals.get(name)
    if fn is not None:
        return fn
    intp = ints[0].type
    fnty = ir.FunctionType(ir.VoidType(), [v.type for v in (*ptrs, *ints, *epi)] + [intp] * 3)
    fn = ir.Function(module, fnty, name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    entry = fn.append_basic_block("entry")
    head = fn.append_basic_block("run")
    latch = fn.append_basic_block("run_next")
    done = fn.append_basic_block("done")
    b = ir.IRBuilder(entry)
    k, m = len(ptrs), len(ints)
    args = list(fn.args)
    count, xadv, oadv = args[-3:]
    b.branch(head)
    b.position_at_end(head)
    t = b.phi(intp)
    t.add_incoming(intp(0), entry)
    tints = list(args[k:k + m])
    tints[0] = b.add(tints[0], b.mul(t, xadv))      # xoff
    tints[10] = b.add(tints[10], b.mul(t, oadv))    # ooff
    tptrs, tepi = list(args[:k]), list(args[k + m:k + m + 5])
    if depthwise and VECTOR_REGISTERS < 32:
        # AVX2: LLVM loads a masked vector with vmaskmovps whatever the mask, 7-14% of a depthwise
        # tile's time on Zen 3 (one thread, batch 8, A/B against plain loads: 3x3 and 5x5, 16-240
        # channels); a tile whose last vector is whole (lanes == 16) runs a copy that loads plainly
        plain, masked = fn.append_basic_block("plain"), fn.append_basic_block("masked")
        b.cbranch(b.icmp_signed(">=", tints[12], tints[12].type(8 if lane8 else 16)), plain, masked)
        b.position_at_end(plain)
        _emit_tile(context, b, P, V, depthwise, tptrs, tints, tepi, latch, slide, plain=True, lane8=lane8)
        b.position_at_end(masked)
    _emit_tile(context, b, P, V, depthwise, tptrs, tints, tepi, latch, slide, half=half, lane8=lane8)
    b.position_at_end(latch)
    nxt = b.add(t, intp(1))
    t.add_incoming(nxt, latch)
    b.cbranch(b.icmp_signed("<", nxt, count), head, done)
    b.position_at_end(done)
    b.ret_void()
    return fn


def make_tiles(V, pmax, depthwise=False, slide=0, lane8=False):
    """Intrinsic ``tiles(P, x, xoff, pix, span, rows, xrow, wrs, w, woff, wrow, bias, boff, first, out,
    ooff, opix, lanes, last, scale, shift, affine, res, add, lo, hi, xstep, count, xadv, oadv, act,
    alpha, beta)``.

    For ``P`` in 1..pmax output pixels (flat offsets ``xoff + p * pix`` into ``x``, ``ooff + p * opix``
    into ``out``) and ``V`` vectors of channels: ``tile = (bias[boff:] if first else tile) +
    sum_{r < rows, j < span} x[pixel + r * xrow + j] * w[woff + r * wrs + j * wrow:][:16 V]`` (rows,
    span >= 1), the last vector masked to ``lanes``. ``depthwise``: channel ``o`` of the tile reads
    its own input, ``x[pixel + r * xrow + j * xstep + o]``, instead of one value for all.
    When ``last``: then ``tile * scale + shift`` (if ``affine``), ``+ res`` at the tile's own offsets
    (if ``add``), clipped to ``[lo, hi]``, then activation ``act`` (0: none; hard sigmoid, hard swish
    or leaky ReLU with ``alpha``, ``beta`` as epilogue._activation passes them to its vector code:
    1/6 and 1/2 for hard swish) before the store. ``slide`` (depthwise): the same for runs
    of exactly ``span == slide`` taps with ``xstep == pix`` only, each input loaded once per row.
    ``lane8``: vectors of 8 channels (``[:8 V]``, ``lanes`` <= 8). All that ``count`` (>= 1) times:
    the k-th tile at ``xoff + k * xadv`` and ``ooff + k * oadv``.
    """

    @intrinsic
    def tiles(typingctx, P, x, xoff, pix, span, rows, xrow, wrs, w, woff, wrow, bias, boff, first, out, ooff,
              opix, lanes, last, scale, shift, affine, res, add, lo, hi, xstep, count, xadv, oadv, act, alpha, beta):
        sig = types.void(P, x, xoff, pix, span, rows, xrow, wrs, w, woff, wrow, bias, boff, first, out, ooff,
                         opix, lanes, last, scale, shift, affine, res, add, lo, hi, xstep, count, xadv, oadv, act,
                         alpha, beta)

        def codegen(context, builder, signature, args):
            ptrs = [context.make_array(signature.args[k])(context, builder, args[k]).data
                    for k in (1, 8, 11, 14, 19, 20, 22)]
            ints = [context.cast(builder, args[k], signature.args[k], types.intp)
                    for k in (2, 3, 4, 5, 6, 7, 9, 10, 12, 13, 15, 16, 17, 18, 21, 23, 26)]
            epi = [context.cast(builder, args[k], signature.args[k], types.float32) for k in (24, 25)]
            epi += [context.cast(builder, args[30], signature.args[30], types.intp),
                    *(context.cast(builder, args[k], signature.args[k], types.float32) for k in (31, 32))]
            p_ = context.cast(builder, args[0], signature.args[0], types.intp)
            run = [context.cast(builder, args[k], signature.args[k], types.intp) for k in (27, 28, 29)]
            after = builder.append_basic_block("tiles_after")
            switch = builder.switch(p_, after)
            for p in range(1, pmax + 1):
                block = builder.append_basic_block(f"tiles_p{p}")
                switch.add_case(p_.type(p), block)
                builder.position_at_end(block)
                fn = _tile_function(context, builder.module, p, V, depthwise, ptrs, ints, epi, slide, lane8=lane8)
                if HALF_TILES and not depthwise:
                    # a last vector of at most 8 channels runs a tile of its own (a branch in one
                    # function cost the whole tiles 10-20% in LLVM's register allocation)
                    fh = _tile_function(context, builder.module, p, V, depthwise, ptrs, ints, epi, slide, half=True)
                    with builder.if_else(builder.icmp_signed("<=", ints[12], ints[12].type(8))) as (then, other):
                        with then:
                            builder.call(fh, [*ptrs, *ints, *epi, *run])
                        with other:
                            builder.call(fn, [*ptrs, *ints, *epi, *run])
                else:
                    builder.call(fn, [*ptrs, *ints, *epi, *run])
                builder.branch(after)
            builder.position_at_end(after)
            return context.get_dummy_value()

        return sig, codegen

    return tiles


# The tiles compiled: this CPU's widths only (AVX2: 10 tile functions instead of AVX-512's 40, each
# copied into every kernel that calls them); the kernels clamp a wider ``pmax`` to them (same bits).
COMPILED_PIXELS = (0, *(tile_pixels(v) for v in range(1, VECTORS + 1)))
COMPILED_DEPTHWISE_PIXELS = (0, *(tile_pixels(v, depthwise=True) for v in range(1, VECTORS + 1)))
tiles1, tiles2, tiles3, tiles4 = (make_tiles(v, COMPILED_PIXELS[v]) for v in range(1, VECTORS + 1))
