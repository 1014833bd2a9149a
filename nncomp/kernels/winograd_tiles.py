"""The input and output tiles of Winograd F(m x m, r x r) for the kernel of nncomp/kernels/conv_winograd.py,
and the constants of F(4x4, 3x3) and F(2x2, 5x5) (F(2x2, 3x3)'s are in conv_winograd.py).

A tile's transforms are LLVM IR over ``<16 x float>`` vectors (16 channels), built by
:func:`input_tile` and :func:`output_tile` from the one-dimensional transform of ``span = m + r - 1``
values (``B^T``) and its inverse (``A^T``, span values to m). F(4x4, 3x3) takes each 4x4 block of
output pixels from a 6x6 block of input with 36 multiplies per input and output channel instead of
144 (F(2x2, 3x3): 16 instead of 36), with the interpolation points 0, +-1, +-2 (Lavin and Gray 2016):

    Y = A^T [ (G g G^T) * (B^T d B) ] A

Per output pixel and 16-channel vector of a 16 -> 16 channel layer, the products take 72 multiply-adds
where F(2x2, 3x3) takes 128, and the transforms about as many operations as F(2x2, 3x3)'s (a 6x6
tile is shared by 16 outputs, a 4x4 one by 4). The coefficients reach 8 (A) and 1/24 (G): rounding
errors grow with them (tests/test_kernels_winograd.py bounds both by the magnitudes). The filter
transform (conv_winograd.winograd_weight) is done once, in float64.

F(2x2, 5x5) takes each 2x2 block of outputs of a 5x5 filter from the same 6x6 input tile, with the same
points: its B^T is F(4x4, 3x3)'s (B depends on the points only), its A^T the first and the highest
power of them (2 x 6), and its G (6 x 5) the points' powers with F(4x4, 3x3)'s scales. 36 multiplies
per input and output channel instead of 100, and a 2x2 block is one window of a fused 2x2 max-pool
(LeNet-5's second convolution).
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._ir import declare, lane_mask, masked_v16, prefetch, store_v16, vec_types

BT4 = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
G4 = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
AT4 = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)
# F(2x2, 5x5): row i of G is F(4x4, 3x3)'s scale of point p_i times (1, p, p^2, p^3, p^4); the point
# at infinity takes the highest coefficient.
G25 = np.array([[s * p ** k for k in range(5)] for p, s in zip((0, 1, -1, 2, -2), G4[:5, 0])] + [[0, 0, 0, 0, 1]],
               np.float64)
AT25 = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 1]], np.float64)


def arith(builder):
    """``(fma(a, k, b) = a * k + b for a constant k, add, sub)`` on ``<16 x float>``."""
    v16 = vec_types()[1]
    fma = declare(builder.module, "llvm.fma.v16f32", ir.FunctionType(v16, [v16, v16, v16]))
    return (lambda a, k, b: builder.call(fma, [a, ir.Constant(v16, [float(k)] * 16), b]),
            builder.fadd, builder.fsub)


def bt4(builder, v):
    """B^T of F(4x4, 3x3) applied to six vectors."""
    fma, add, sub = arith(builder)
    p, q = sub(v[4], v[2]), sub(v[3], v[1])
    return [fma(v[0], 4, fma(v[2], -5, v[4])), fma(add(v[1], v[2]), -4, add(v[3], v[4])),
            fma(sub(v[1], v[2]), 4, sub(v[4], v[3])), fma(q, 2, p), fma(q, -2, p), fma(v[1], 4, fma(v[3], -5, v[5]))]


def at4(builder, v):
    """A^T of F(4x4, 3x3) applied to six vectors: four."""
    fma, add, sub = arith(builder)
    a, b, c, d = add(v[1], v[2]), sub(v[1], v[2]), add(v[3], v[4]), sub(v[3], v[4])
    return [add(add(v[0], a), c), fma(d, 2, b), fma(c, 4, a), add(fma(d, 8, b), v[5])]


def at25(builder, v):
    """A^T of F(2x2, 5x5) applied to six vectors: two."""
    fma, add, sub = arith(builder)
    return [add(add(add(v[0], v[1]), v[2]), add(v[3], v[4])), add(fma(sub(v[3], v[4]), 2, sub(v[1], v[2])), v[5])]


def input_tile(span, bt):
    """Intrinsic ``tile(x, xoff, xrow, xpix, rvalid, cvalid, u, uoff, ustride, lanes)``:
    ``U[uoff + xi * ustride:][:16] = (B^T d B)[xi]`` for the ``span x span`` input tile ``d`` whose
    pixel (r, s) is the 16 floats at ``x[xoff + r * xrow + s * xpix:]`` (masked to ``lanes``, the
    rest zero) where bit r of ``rvalid`` and bit s of ``cvalid`` are set, and zero (nothing read)
    where not: the padding, and the lines or columns past a partial tile's end. ``bt(builder,
    values)``: B^T on ``span`` vectors."""

    @intrinsic
    def tile(typingctx, x, xoff, xrow, xpix, rvalid, cvalid, u, uoff, ustride, lanes):
        sig = types.void(x, xoff, xrow, xpix, rvalid, cvalid, u, uoff, ustride, lanes)

        def codegen(context, builder, signature, args):
            f32, v16, vptr, i32, mask_t = vec_types()
            xd = context.make_array(signature.args[0])(context, builder, args[0]).data
            ud = context.make_array(signature.args[6])(context, builder, args[6]).data
            xoff, xrow, xpix, rv, cv, uoff, ustride, lanes = (
                context.cast(builder, args[k], signature.args[k], types.intp) for k in (1, 2, 3, 4, 5, 7, 8, 9))
            intp = xoff.type
            mload = masked_v16(builder.module)[0]
            mask = lane_mask(builder, lanes, i32)
            none, zero = ir.Constant(mask_t, [0] * 16), ir.Constant(v16, None)

            def bit(v, k):
                return builder.icmp_signed("!=", builder.and_(v, intp(1 << k)), intp(0))

            def load(r, s):     # a masked-off load reads nothing: a padding pixel's address may lie outside x
                at = builder.add(xoff, builder.add(builder.mul(xrow, intp(r)), builder.mul(xpix, intp(s))))
                keep = builder.select(builder.and_(bit(rv, r), bit(cv, s)), mask, none)
                return builder.call(mload, [builder.bitcast(builder.gep(xd, [at]), vptr), i32(4), keep, zero])
            t = [bt(builder, [load(r, s) for r in range(span)]) for s in range(span)]   # t[s][r']: columns first
            for r in range(span):
                row = bt(builder, [t[s][r] for s in range(span)])
                for s in range(span):
                    at = builder.add(uoff, builder.mul(intp(span * r + s), ustride))
                    builder.store(row[s], builder.bitcast(builder.gep(ud, [at]), vptr), align=4)
            return context.get_dummy_value()

        return sig, codegen

    tile.__name__ = f"_input_tile{span}"
    return tile


def output_tile(m, at, span=None):
    """Intrinsic ``tile(mv, moff, mstride, bias, scale, shift, boff, affine, res, add, out, ooff, orow,
    opix, ny, nx, lanes, lo, hi, pool)``: the m x m outputs ``A^T M A`` of the ``span**2`` vectors
    ``mv[moff + xi * mstride:][:16]``, plus ``bias[boff:]``, then ``* scale + shift`` (if ``affine``),
    ``+ res`` at the output's own offsets (if ``add``), clipped to [lo, hi], stored at ``out[ooff +
    i * orow + j * opix:]`` for i < ny, j < nx, masked to ``lanes``: the blocked kernel's epilogue,
    in its order. ``pool``: instead, the maximum of each 2x2 window (NaN winning, in the pool
    kernel's order) stored at ``out[ooff + i * orow + j * opix:]`` for the windows i < ny, j < nx.
    ``at(builder, values)``: A^T on ``span`` vectors (default m + 2: a 3x3 filter)."""
    span = m + 2 if span is None else span

    @intrinsic
    def tile(typingctx, mv, moff, mstride, bias, scale, shift, boff, affine, res, add, out, ooff, orow, opix,
             ny, nx, lanes, lo, hi, pool):
        sig = types.void(mv, moff, mstride, bias, scale, shift, boff, affine, res, add, out, ooff, orow, opix, ny,
                         nx, lanes, lo, hi, pool)

        def codegen(context, builder, signature, args):
            f32, v16, vptr, i32, mask_t = vec_types()
            arr = lambda k: context.make_array(signature.args[k])(context, builder, args[k]).data  # noqa: E731
            md, bd, scd, shd, rd, od = (arr(k) for k in (0, 3, 4, 5, 8, 10))
            moff, mstride, boff, affine, add_, ooff, orow, opix, ny, nx, lanes, pool = (
                context.cast(builder, args[k], signature.args[k], types.intp)
                for k in (1, 2, 6, 7, 9, 11, 12, 13, 14, 15, 16, 19))
            lo, hi = (context.cast(builder, args[k], signature.args[k], types.float32) for k in (17, 18))
            intp = moff.type
            mload = masked_v16(builder.module)[0]
            undef, zero = ir.Constant(v16, ir.Undefined), ir.Constant(v16, None)
            bcast = lambda s_: builder.shuffle_vector(builder.insert_element(undef, s_, i32(0)), undef,  # noqa: E731
                                                      ir.Constant(ir.VectorType(i32, 16), [0] * 16))
            vload = lambda base, k: builder.load(builder.bitcast(builder.gep(base, [k]), vptr), align=4)  # noqa: E731
            fadd = builder.fadd
            cols = [at(builder, [vload(md, builder.add(moff, builder.mul(intp(span * r + s), mstride)))
                                 for r in range(span)]) for s in range(span)]          # cols[s][i]
            y = [at(builder, [cols[s][i] for s in range(span)]) for i in range(m)]      # y[i][j]
            bias, scale, shift = vload(bd, boff), vload(scd, boff), vload(shd, boff)
            lanes_mask = lane_mask(builder, lanes, i32)
            full = builder.icmp_signed(">=", lanes, intp(16))
            none = ir.Constant(mask_t, [0] * 16)
            do_affine = builder.icmp_signed("!=", affine, intp(0))
            do_add = builder.icmp_signed("!=", add_, intp(0))
            lo_v, hi_v = bcast(lo), bcast(hi)
            pooling = builder.icmp_signed("!=", pool, intp(0))

            def inside(i, j):
                return builder.and_(builder.icmp_signed(">", ny, intp(i)), builder.icmp_signed(">", nx, intp(j)))

            def offset(i, j):
                return builder.add(ooff, builder.add(builder.mul(orow, intp(i)), builder.mul(opix, intp(j))))
            # the next tile's residual lines (m pixels on; without a residual ``res`` is ``out``): from L3
            # where the residual is a block input two steps back, as in nncomp/kernels/conv_tiles.py
            for i in range(m):
                for j in range(m, 2 * m):
                    prefetch(builder, builder.gep(rd, [offset(i, j)]), 3)
            vals = {}
            for i in range(m):
                for j in range(m):
                    keep = builder.and_(inside(i, j), builder.not_(pooling))
                    mask = builder.select(keep, lanes_mask, none)
                    o = offset(i, j)
                    val = fadd(y[i][j], bias)
                    val = builder.select(do_affine, fadd(builder.fmul(val, scale), shift), val)
                    rmask = builder.select(do_add, mask, none)
                    r_ = builder.call(mload, [builder.bitcast(builder.gep(rd, [o]), vptr), i32(4), rmask, zero])
                    val = builder.select(do_add, fadd(val, r_), val)
                    val = builder.select(builder.fcmp_unordered(">", val, lo_v), val, lo_v)
                    val = builder.select(builder.fcmp_unordered("<", val, hi_v), val, hi_v)
                    store_v16(builder, val, builder.bitcast(builder.gep(od, [o]), vptr), mask,
                              builder.and_(keep, full), keep)
                    vals[i, j] = val
            for i in range(m // 2):
                for j in range(m // 2):
                    best = vals[2 * i, 2 * j]
                    for a, b in ((0, 1), (1, 0), (1, 1)):     # the pool kernel's ``v if v > m or v != v else m``
                        v = vals[2 * i + a, 2 * j + b]
                        wins = builder.or_(builder.fcmp_ordered(">", v, best), builder.fcmp_unordered("uno", v, v))
                        best = builder.select(wins, v, best)
                    keep = builder.and_(inside(i, j), pooling)
                    store_v16(builder, best, builder.bitcast(builder.gep(od, [offset(i, j)]), vptr),
                              builder.select(keep, lanes_mask, none), builder.and_(keep, full), keep)
            return context.get_dummy_value()

        return sig, codegen

    tile.__name__ = f"_output_tile{m}_{span}"
    return tile
