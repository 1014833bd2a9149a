"""Winograd F(2x2, 3x3) convolution over NHWC float32 images (the ``winograd`` conv algorithm).

A 3x3 stride-1 convolution computes each 2x2 block of output pixels from a 4x4 block of input with 16 multiplies
per input and output channel instead of 36 (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks",
2016): with the input tile ``d`` (4x4), the filter ``g`` (3x3) and the constant matrices ``B``, ``G``, ``A`` of F(2, 3),

    Y = A^T [ (G g G^T) * (B^T d B) ] A        (``*`` elementwise over the 16 positions)

summed over input channels: three passes over a chunk of tiles (a few tile rows of one image, in L2):

1. input transform: ``B^T d B`` for every tile and 16-channel vector (16 loads, 32 adds, 16 stores), into
   ``U[16, tiles, cp]``;
2. 16 independent products ``M[xi] = U[xi] @ W[xi]`` (tiles x cp times cp x cop), run by the register-blocked
   tiles of nncomp/kernels/conv_blocked.py as 1x1 convolutions;
3. output transform ``A^T m A`` (16 loads, 24 adds, up to four stores), with the bias and the epilogue of the
   blocked kernel (affine map, residual add, clip) applied before the store, then the activation kernel on the
   chunk's output lines.

The filter transform ``G g G^T`` is done once, in float64, when the layer is prepared (:func:`winograd_weight`).
The transforms' coefficients are 0, +-1 and +-1/2, so the result differs from the direct sum by rounding only (the
NumPy twin is tests/reference_conv_winograd.py, which computes the same three passes; the property test checks
both against a float64 direct convolution). The transforms are LLVM IR over ``<16 x float>`` vectors, as the
blocked tiles are: plain Numba loops over 16 input and 16 output streams did not vectorize (LLVM could not rule
out aliasing; 4x slower than the products).

Shapes: the kernel reads the unpadded input and the layer's padding (no padded copy: 0.12 ms, a tenth of the
convolution, at 64x28x28x16); ``out`` has ``oh = h + pt + pb - 2`` lines and ``ow = w + pl + pr - 2`` columns.
Input tiles read zero for padding pixels without loading them (masked loads); an odd ``oh`` or ``ow`` ends with
half tiles, whose missing input line or column reads zero too (it only feeds the output that is not stored).
"""
import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from ._ir import declare, loop_latch, loop_phis, masked_v16, prefetch, store_v16
from . import aligned
from ._jit import both
from .isa import VECTOR_REGISTERS
from .epilogue import activation_rows

# F(2x2, 3x3): the filter transform (4x3); B^T and A^T are spelled out in the IR below.
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
# Tiles per chunk (a few tile lines of one image): U and M of a 64-channel chunk stay in L2.
CHUNK_TILES = 64


def winograd_weight(w):
    """``G g G^T`` of every (output, input) channel pair of ``w`` (co, c, 3, 3), as the products
    read it: ``(16, cp, cop)`` float32, position ``xi = 4 * r + s`` first, ``cp`` and ``cop`` the
    channel counts rounded up to 16 (extra rows and columns zero)."""
    w = np.asarray(w, np.float64)
    co, c = w.shape[:2]
    cp, cop = -(-c // 16) * 16, -(-co // 16) * 16
    u = np.einsum("ar,ocrs,bs->abco", G, w, G)
    out = aligned.zeros((16, cp, cop))
    out[:, :c, :co] = u.reshape(16, c, co)
    return out


def _product_function(module, P, V):
    """``m[moff + p * mpix:][:16 V] = sum_{j < span} u[uoff + p * upix + j] * w[woff + j * wrow:][:16 V]``
    for the ``P`` pixels of a tile: the blocked kernel's tile without its bias, accumulated output
    and epilogue (with a 16-long reduction, as at 16 input channels, those cost as much as the
    multiply-adds). A function of its own, never inlined, as the blocked tiles are."""
    name = f"nncomp_winograd_product_{P}x{V}"
    fn = module.globals.get(name)
    if fn is not None:
        return fn
    f32, intp, i32 = ir.FloatType(), ir.IntType(64), ir.IntType(32)
    v16 = ir.VectorType(f32, 16)
    vptr, fptr = v16.as_pointer(), f32.as_pointer()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [fptr, intp, intp, intp, fptr, intp, intp, fptr, intp,
                                                             intp]), name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    ud, uoff, upix, span, wd, woff, wrow, md, moff, mpix = fn.args
    entry = fn.append_basic_block("entry")
    loop = fn.append_basic_block("loop")
    done = fn.append_basic_block("done")
    b = ir.IRBuilder(entry)
    fma = declare(module, "llvm.fma.v16f32", ir.FunctionType(v16, [v16, v16, v16]))
    undef = ir.Constant(v16, ir.Undefined)
    splat = ir.Constant(ir.VectorType(i32, 16), [0] * 16)
    zero = ir.Constant(v16, None)
    b.branch(loop)
    b.position_at_end(loop)
    j, accs = loop_phis(b, intp, v16, [zero] * (P * V), entry)
    wrow_j = b.add(woff, b.mul(j, wrow))
    wv = [b.load(b.bitcast(b.gep(wd, [b.add(wrow_j, intp(16 * v))]), vptr), align=4) for v in range(V)]
    new = []
    for p in range(P):
        s_ = b.load(b.gep(ud, [b.add(b.add(uoff, b.mul(upix, intp(p))), j)]), align=4)
        xv = b.shuffle_vector(b.insert_element(undef, s_, i32(0)), undef, splat)
        new.extend(b.call(fma, [xv, wv[v], accs[p * V + v]]) for v in range(V))
    loop_latch(b, intp, j, accs, new, span, loop, done)
    b.position_at_end(done)
    for p in range(P):
        for v in range(V):
            at = b.add(b.add(moff, b.mul(mpix, intp(p))), intp(16 * v))
            b.store(new[p * V + v], b.bitcast(b.gep(md, [at]), vptr), align=4)
    b.ret_void()
    return fn


def _make_products(V, pmax):
    """Intrinsic ``products(P, u, uoff, upix, span, w, woff, wrow, m, moff, mpix)`` for P in 1..pmax
    (:func:`_product_function`; span >= 1)."""

    @intrinsic
    def products(typingctx, P, u, uoff, upix, span, w, woff, wrow, m, moff, mpix):
        sig = types.void(P, u, uoff, upix, span, w, woff, wrow, m, moff, mpix)

        def codegen(context, builder, signature, args):
            data = lambda k: context.make_array(signature.args[k])(context, builder, args[k]).data  # noqa: E731
            num = lambda k: context.cast(builder, args[k], signature.args[k], types.int64)  # noqa: E731
            call_args = [data(1), num(2), num(3), num(4), data(5), num(6), num(7), data(8), num(9), num(10)]
            p_ = num(0)
            after = builder.append_basic_block("products_after")
            switch = builder.switch(p_, after)
            for p in range(1, pmax + 1):
                block = builder.append_basic_block(f"products_p{p}")
                switch.add_case(p_.type(p), block)
                builder.position_at_end(block)
                builder.call(_product_function(builder.module, p, V), call_args)
                builder.branch(after)
            builder.position_at_end(after)
            return context.get_dummy_value()

        return sig, codegen

    return products


# Product tiles: pixels per number of 16-channel vectors (the blocked kernel's, but 14 pixels for two
# vectors: 12 ran 1.1-1.2x slower on 32-channel outputs; 28 for one vector and 7 for four did not
# help, 7 ran VGG-16's conv3_2 1.25x slower; Zen 4, one process alternating).
PRODUCT_PIXELS = {1: 14, 2: 14, 3: 8, 4: 6}
# With 16 vector registers (AVX2) the layers run products of one vector (nncomp/layers/conv_blocked.py
# winograd_step) of 6 pixels; one thread, AMD EPYC Zen 3, round-robin: 56 x 56 256 -> 256 (VGG-16's
# conv3_2) 25.3 ms against 60.0 for 4 vectors x 1 pixel, 28 x 28 64 -> 64 0.43 against 0.69, 14 x 14
# 32 -> 32 0.035 against 0.052 (2 x 2: 0.037). The widths for more vectors serve callers that ask.
AVX2_PRODUCT_PIXELS = {1: 6, 2: 2, 3: 1, 4: 1}
_products1, _products2, _products3, _products4 = (_make_products(v, PRODUCT_PIXELS[v]) for v in range(1, 5))


def _vec_types():
    f32 = ir.FloatType()
    v16 = ir.VectorType(f32, 16)
    return f32, v16, v16.as_pointer(), ir.IntType(32), ir.VectorType(ir.IntType(1), 16)


def _lane_mask(builder, lanes, i32):
    """``<16 x i1>``: lane < lanes."""
    splat = ir.Constant(ir.VectorType(i32, 16), [0] * 16)
    undef = ir.Constant(ir.VectorType(i32, 16), ir.Undefined)
    v = builder.shuffle_vector(builder.insert_element(undef, builder.trunc(lanes, i32), i32(0)), undef, splat)
    return builder.icmp_signed("<", ir.Constant(ir.VectorType(i32, 16), list(range(16))), v)


@intrinsic
def _input_tile(typingctx, x, xoff, xrow, xpix, rvalid, cvalid, u, uoff, ustride, lanes):
    """``U[uoff + xi * ustride:][:16] = (B^T d B)[xi]`` for the 4x4 input tile ``d`` whose pixel
    (r, s) is the 16 floats at ``x[xoff + r * xrow + s * xpix:]`` (masked to ``lanes``, the rest
    zero) where bit r of ``rvalid`` and bit s of ``cvalid`` are set, and zero (nothing read) where
    not: the padding, and the line or column past a half tile's end."""
    sig = types.void(x, xoff, xrow, xpix, rvalid, cvalid, u, uoff, ustride, lanes)

    def codegen(context, builder, signature, args):
        f32, v16, vptr, i32, mask_t = _vec_types()
        xd = context.make_array(signature.args[0])(context, builder, args[0]).data
        ud = context.make_array(signature.args[6])(context, builder, args[6]).data
        xoff, xrow, xpix, rv, cv, uoff, ustride, lanes = (
            context.cast(builder, args[k], signature.args[k], types.intp) for k in (1, 2, 3, 4, 5, 7, 8, 9))
        intp = xoff.type
        mload = masked_v16(builder.module)[0]
        mask = _lane_mask(builder, lanes, i32)
        none = ir.Constant(mask_t, [0] * 16)
        zero = ir.Constant(v16, None)
        rows = [builder.mul(xrow, intp(r)) for r in range(4)]
        cols = [builder.mul(xpix, intp(s)) for s in range(4)]

        def bit(v, k):
            return builder.icmp_signed("!=", builder.and_(v, intp(1 << k)), intp(0))
        # a masked-off load reads nothing: the address of a padding pixel may lie outside x
        d = [[builder.call(mload, [builder.bitcast(builder.gep(xd, [builder.add(xoff, builder.add(rows[r], cols[s]))]),
                                                   vptr), i32(4),
                                   builder.select(builder.and_(bit(rv, r), bit(cv, s)), mask, none), zero])
              for s in range(4)] for r in range(4)]
        sub, add = builder.fsub, builder.fadd

        def bt(v):      # B^T applied to four values
            return [sub(v[0], v[2]), add(v[1], v[2]), sub(v[2], v[1]), sub(v[1], v[3])]
        t = [bt([d[r][s] for r in range(4)]) for s in range(4)]          # t[s][r']: columns first
        for r in range(4):
            row = bt([t[s][r] for s in range(4)])
            for s in range(4):
                at = builder.add(uoff, builder.mul(intp(4 * r + s), ustride))
                builder.store(row[s], builder.bitcast(builder.gep(ud, [at]), vptr), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _output_tile(typingctx, m, moff, mstride, bias, scale, shift, boff, affine, res, add, out, ooff, orow, opix,
                 ny, nx, lanes, lo, hi, pool):
    """The 2x2 outputs ``A^T m A`` of the 16 vectors ``m[moff + xi * mstride:][:16]``, plus
    ``bias[boff:]``, then ``* scale + shift`` (if ``affine``), ``+ res`` at the output's own offsets
    (if ``add``), clipped to [lo, hi], stored at ``out[ooff + i * orow + j * opix:]`` for i < ny,
    j < nx (1 or 2), masked to ``lanes``: the blocked kernel's epilogue, in its order. ``pool``:
    instead, the maximum of the four (NaN winning, in the pool kernel's order) stored at
    ``out[ooff:]`` (the caller passes only whole tiles)."""
    sig = types.void(m, moff, mstride, bias, scale, shift, boff, affine, res, add, out, ooff, orow, opix, ny, nx,
                     lanes, lo, hi, pool)

    def codegen(context, builder, signature, args):
        f32, v16, vptr, i32, mask_t = _vec_types()
        arr = lambda k: context.make_array(signature.args[k])(context, builder, args[k]).data  # noqa: E731
        md, bd, scd, shd, rd, od = (arr(k) for k in (0, 3, 4, 5, 8, 10))
        moff, mstride, boff, affine, add_, ooff, orow, opix, ny, nx, lanes, pool = (
            context.cast(builder, args[k], signature.args[k], types.intp)
            for k in (1, 2, 6, 7, 9, 11, 12, 13, 14, 15, 16, 19))
        lo, hi = (context.cast(builder, args[k], signature.args[k], types.float32) for k in (17, 18))
        intp = moff.type
        mload = masked_v16(builder.module)[0]
        undef = ir.Constant(v16, ir.Undefined)
        zero = ir.Constant(v16, None)
        splat = ir.Constant(ir.VectorType(i32, 16), [0] * 16)
        bcast = lambda s_: builder.shuffle_vector(builder.insert_element(undef, s_, i32(0)), undef, splat)  # noqa: E731
        vload = lambda base, at: builder.load(builder.bitcast(builder.gep(base, [at]), vptr), align=4)  # noqa: E731
        mv = [vload(md, builder.add(moff, builder.mul(intp(k), mstride))) for k in range(16)]
        sub, fadd = builder.fsub, builder.fadd

        def at(v):      # A^T applied to four values: two
            return [fadd(fadd(v[0], v[1]), v[2]), sub(sub(v[1], v[2]), v[3])]
        cols = [at([mv[4 * r + s] for r in range(4)]) for s in range(4)]   # cols[s][i]
        y = [at([cols[s][i] for s in range(4)]) for i in range(2)]          # y[i][j]
        bias = vload(bd, boff)
        scale, shift = vload(scd, boff), vload(shd, boff)
        lanes_mask = _lane_mask(builder, lanes, i32)
        full = builder.icmp_signed(">=", lanes, intp(16))
        none = ir.Constant(mask_t, [0] * 16)
        do_affine = builder.icmp_signed("!=", affine, intp(0))
        do_add = builder.icmp_signed("!=", add_, intp(0))
        lo_v, hi_v = bcast(lo), bcast(hi)
        pooling = builder.icmp_signed("!=", pool, intp(0))
        # the next tile's residual lines (two pixels on; without a residual ``res`` is ``out``): from L3
        # where the residual is a block input two steps back, as in nncomp/kernels/conv_tiles.py
        for i, j in ((0, 2), (0, 3), (1, 2), (1, 3)):
            prefetch(builder, builder.gep(rd, [builder.add(ooff, builder.add(builder.mul(orow, intp(i)),
                                                                            builder.mul(opix, intp(j))))]), 3)
        best = None
        for i in range(2):
            for j in range(2):
                keep = builder.and_(builder.icmp_signed(">", ny, intp(i)), builder.icmp_signed(">", nx, intp(j)))
                keep = builder.and_(keep, builder.not_(pooling))
                mask = builder.select(keep, lanes_mask, none)
                o = builder.add(ooff, builder.add(builder.mul(orow, intp(i)), builder.mul(opix, intp(j))))
                val = fadd(y[i][j], bias)
                val = builder.select(do_affine, fadd(builder.fmul(val, scale), shift), val)
                rmask = builder.select(do_add, mask, none)
                r_ = builder.call(mload, [builder.bitcast(builder.gep(rd, [o]), vptr), i32(4), rmask, zero])
                val = builder.select(do_add, fadd(val, r_), val)
                val = builder.select(builder.fcmp_unordered(">", val, lo_v), val, lo_v)
                val = builder.select(builder.fcmp_unordered("<", val, hi_v), val, hi_v)
                store_v16(builder, val, builder.bitcast(builder.gep(od, [o]), vptr), mask, builder.and_(keep, full),
                          keep)
                if best is None:
                    best = val
                else:       # the pool kernel's ``v if v > m or v != v else m``
                    wins = builder.or_(builder.fcmp_ordered(">", val, best), builder.fcmp_unordered("uno", val, val))
                    best = builder.select(wins, val, best)
        pmask = builder.select(pooling, lanes_mask, none)
        store_v16(builder, best, builder.bitcast(builder.gep(od, [ooff]), vptr), pmask, builder.and_(pooling, full),
                  pooling)
        return context.get_dummy_value()

    return sig, codegen


def _winograd(x, pt, pb, pl, pr, wt, bias, scale, shift, affine, res, add, lo, hi, act, alpha, beta, nvec, pmax, rows,
              ubuf, mbuf, pool, out):
    """3x3 stride-1 convolution of an NHWC batch by Winograd F(2x2, 3x3) (module doc), with the
    blocked kernel's epilogue.

    IN  x (n, h, w, c) float32 C-contiguous, read as zero-padded by pt, pb lines above and below and
        pl, pr columns left and right (each >= 0; oh = h + pt + pb - 2, ow = w + pl + pr - 2); wt (16, cp, cop) float32 from
        :func:`winograd_weight`; bias, scale, shift (cop,) float32 (scale and shift used if
        ``affine``); res (n, oh, ow, co) float32 added if ``add`` (else any array of out's shape);
        lo, hi clip bounds; act, alpha, beta the activation (nncomp/kernels/epilogue.py); nvec (1..4)
        16-channel vectors and pmax pixels per product tile (at most PRODUCT_PIXELS[nvec]); rows tile
        lines per chunk; ubuf (threads, 16 * rows * ceil(ow/2) * cp), mbuf (threads, 16 * rows *
        ceil(ow/2) * cop) float32 work buffers, one slab per Numba thread; pool 0, or 2 for a 2x2
        max-pool with stride 2 (floor mode) of the convolution's output (then without an epilogue:
        affine, add and act off, lo and hi infinite).
    OUT out (n, oh, ow, co) float32 C-contiguous, overwritten; pooled (n, oh // 2, ow // 2, co).
    Call it once Numba's thread pool is up (``numba.get_num_threads()`` starts it; every step does):
    a serial build loaded from Numba's cache asks ``numba.get_thread_id()`` of a pool that was
    never started, and crashes.
    """
    n, h, wd, c = x.shape
    co = out.shape[3]
    oh, ow = h + pt + pb - 2, wd + pl + pr - 2
    cp, cop = wt.shape[1], wt.shape[2]
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    groups = (th + rows - 1) // rows
    tmax = rows * tw
    us, ms = tmax * cp, tmax * cop
    lo32, hi32 = np.float32(lo), np.float32(hi)
    for job in prange(n * groups):
        b = job // groups
        ti0 = (job - b * groups) * rows
        ti1 = min(th, ti0 + rows)
        ntiles = (ti1 - ti0) * tw
        slab = numba.get_thread_id()
        u, m = ubuf[slab], mbuf[slab]
        for ti in range(ti0, ti1):
            r0 = 2 * ti - pt        # the tile's first input line (negative: in the padding)
            rvalid = 0
            for r in range(4):
                if 0 <= r0 + r < h:
                    rvalid |= 1 << r
            for tj in range(tw):
                t = (ti - ti0) * tw + tj
                s0 = 2 * tj - pl
                cvalid = 0
                for q in range(4):
                    if 0 <= s0 + q < wd:
                        cvalid |= 1 << q
                xo = ((b * h + r0) * wd + s0) * c
                for c0 in range(0, cp, 16):
                    _input_tile(x, xo + c0, wd * c, c, rvalid, cvalid, u, t * cp + c0, us, min(16, c - c0))
        blocks = (ntiles + pmax - 1) // pmax
        p0 = (ntiles + blocks - 1) // blocks
        for xi in range(16):
            for co0 in range(0, cop, 16 * nvec):
                nv = min(nvec, (cop - co0) // 16)
                j0 = 0
                while j0 < ntiles:
                    p = min(p0, ntiles - j0)
                    a = (p, u, xi * us + j0 * cp, cp, cp, wt, xi * cp * cop + co0, cop, m, xi * ms + j0 * cop + co0,
                         cop)
                    if nv == 4:
                        _products4(*a)
                    elif nv == 3:
                        _products3(*a)
                    elif nv == 2:
                        _products2(*a)
                    else:
                        _products1(*a)
                    j0 += p
        for ti in range(ti0, ti1):
            ny = min(2, oh - 2 * ti)
            for tj in range(tw):
                t = (ti - ti0) * tw + tj
                nx = min(2, ow - 2 * tj)
                if pool != 0:
                    if ny < 2 or nx < 2:        # floor mode: a half window is dropped
                        continue
                    oo = ((b * (oh // 2) + ti) * (ow // 2) + tj) * co
                else:
                    oo = ((b * oh + 2 * ti) * ow + 2 * tj) * co
                for k0 in range(0, cop, 16):
                    _output_tile(m, t * cop + k0, ms, bias, scale, shift, k0, affine, res, add, out, oo + k0,
                                 ow * co, co, ny, nx, min(16, co - k0), lo32, hi32, pool)
        if act != 0:
            first = (b * oh + 2 * ti0) * ow
            last = (b * oh + min(oh, 2 * ti1)) * ow
            activation_rows(out.reshape(n * oh * ow, co)[first:last], act, np.float32(alpha), np.float32(beta))


winograd_nhwc, winograd_nhwc_parallel = both(_winograd)


def chunk_rows(oh, ow, n=1, threads=1):
    """Tile lines per chunk: about :data:`CHUNK_TILES` tiles, at least one line; for ``threads`` > 1
    (the parallel build) small enough that ``n`` images make two chunks per thread where they can
    (a 7x7 map at batch 1 is a single chunk otherwise, and ran 1.3x slower than the blocked kernel)."""
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    rows = max(1, min(th, CHUNK_TILES // tw))
    if threads < 2:
        return rows
    rows = max(1, min(rows, n * th // (2 * threads)))
    # then the chunk size whose busiest thread has the fewest tile lines (the largest on ties)
    return min(range(rows, 0, -1), key=lambda r: -(-n * -(-th // r) // threads) * r)


def product_pixels(nvec, registers=None):
    """The widest product tile for ``nvec`` vectors with ``registers`` zmm-sized registers (default:
    this CPU's; 16 registers, as with AVX2, take :data:`AVX2_PRODUCT_PIXELS`)."""
    registers = VECTOR_REGISTERS if registers is None else registers
    return PRODUCT_PIXELS[nvec] if registers >= 32 else AVX2_PRODUCT_PIXELS[nvec]


def work_sizes(oh, ow, cp, cop, rows):
    """Floats per thread of the ``ubuf`` and ``mbuf`` work buffers."""
    tiles = rows * ((ow + 1) // 2)
    return 16 * tiles * cp, 16 * tiles * cop
