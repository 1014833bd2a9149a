"""AVX2 u8 x s8 -> int32 blocks (``vpmaddwd``): the int8 block of kernels/int8_vnni.py where the CPU
lacks AVX-512 VNNI (AMD Zen 2/3, Intel before Ice Lake), exact like it.

AVX2's byte product ``vpmaddubsw`` (u8 x s8 pairs into int16) saturates: 255 * 127 * 2 = 64770 does
not fit in int16, which is why ONNX Runtime asks for 7-bit weights on such CPUs. Here each 16-byte
slice of a weight panel (4 output channels x 4 inputs) is sign-extended to 16 int16 lanes
(``vpmovsxbw``), a row's 4 activation codes, **kept as int16** by the caller (:data:`CODE`), are
broadcast to the same pattern (one ``vpbroadcastq`` load), and ``vpmaddwd`` adds pairs of int16
products into 8 int32 lanes: two partial sums per channel (inputs ``4g, 4g+1`` and ``4g+2, 4g+3``),
exact. The pairs are added once per call, when the block leaves registers.

Each product costs a ``vpmaddwd`` and a ``vpaddd`` per 16 multiply-adds, plus the weights' widening
shared by the rows of a block: blocks of 6 rows x 8 channels (12 ymm accumulators, 2 weight and 1
code register of the 16) did 28 multiply-adds a cycle on one Zen 3 core from L1 (2.45 GHz nominal),
against 25.7 for 2 rows x 16 channels and 19-23 when the codes were widened in the loop (uint8
codes). ORT's saturating ``vpmaddubsw`` + ``vpmaddwd`` pair needs fewer operations per product: at
batch 32 this block stays slower than ORT's 7-bit path (README, Zen 3 tables).

Same arguments and contract as ``int8_vnni.vnni_block`` but with int16 codes ``x`` (the same element
offsets; the same panels, segments and strides; the same int32 sums): :func:`avx2_block` splits a
block of ``mr`` rows x ``nb`` 16-channel registers into blocks of up to :data:`ROWS` rows x 8
channels (a one-row block takes 16). Compiles only for a target with AVX2 (``isa.HAVE_AVX2``).
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._ir import declare, segment_loops
from ._jit import jit

ROWS = 6        # rows of one block of 8 channels: 6 x 2 ymm accumulators
CODE = np.int16  # the codes' type in x (values 0..255)


def _make_block(mr, nq):
    """Intrinsic ``block(x, xoff, xstride, xseg, wp, woff, gstride, wseg, ngroups, nseg, out, ooff,
    ostride)`` of ``mr`` rows x ``4 * nq`` channels (``nq`` quads of 4 channels: the first ``16 * nq``
    bytes of each 64-byte group at ``woff``): ``int8_vnni``'s block with ``nb = 1`` when ``nq = 4``."""

    @intrinsic
    def block(typingctx, x, xoff, xstride, xseg, wp, woff, gstride, wseg, ngroups, nseg, out, ooff, ostride):
        sig = types.void(x, xoff, xstride, xseg, wp, woff, gstride, wseg, ngroups, nseg, out, ooff, ostride)

        def codegen(context, builder, signature, args):
            xdata, wdata, odata = (context.make_array(signature.args[k])(context, builder, args[k]).data
                                   for k in (0, 4, 10))
            intp = context.get_value_type(types.intp)
            xoff_, xs_, xseg_, woff_, gs_, wseg_, ng_, ns_, ooff_, os_ = (
                context.cast(builder, args[k], signature.args[k], types.intp) for k in (1, 2, 3, 5, 6, 7, 8, 9, 11, 12))
            i8, i16, i32 = (ir.IntType(b) for b in (8, 16, 32))
            v8, w16, b16, d4 = (ir.VectorType(i32, 8), ir.VectorType(i16, 16), ir.VectorType(i8, 16),
                                ir.VectorType(i32, 4))
            madd = declare(builder.module, "llvm.x86.avx2.pmadd.wd", ir.FunctionType(v8, [w16, w16]))
            i64, q4 = ir.IntType(64), ir.VectorType(ir.IntType(64), 4)

            def group(ctx, g, accs):
                wbase, xrows = ctx
                wo = builder.mul(g, gs_)
                wv = [builder.sext(builder.load(builder.bitcast(builder.gep(wbase, [builder.add(wo, intp(16 * q))]),
                                                                b16.as_pointer()), align=1), w16) for q in range(nq)]
                xo = builder.mul(g, intp(4))
                new = [None] * (nq * mr)
                for m in range(mr):     # the row's 4 int16 codes, broadcast: [x0 x1 x2 x3] x 4
                    word = builder.load(builder.bitcast(builder.gep(xrows[m], [xo]), i64.as_pointer()), align=2)
                    splat = builder.shuffle_vector(builder.insert_element(ir.Constant(q4, ir.Undefined), word, i32(0)),
                                                   ir.Constant(q4, ir.Undefined), ir.Constant(d4, [0] * 4))
                    xb = builder.bitcast(splat, w16)
                    for q in range(nq):
                        new[nq * m + q] = builder.add(accs[nq * m + q], builder.call(madd, [xb, wv[q]]))
                return new

            fins = segment_loops(builder, intp, v8, nq * mr, ns_, ng_, (xdata, xoff_, xseg_, xs_, mr),
                                 (wdata, woff_, wseg_), group)
            lanes = 4 * nq                  # channels; the accumulators hold 2 partial sums of each
            vc = ir.VectorType(i32, lanes)
            for m in range(mr):
                a = fins[nq * m:nq * m + nq]
                while len(a) > 1:           # concatenate: lane 2c + h holds channel c's half h
                    n = 2 * a[0].type.count
                    a = [builder.shuffle_vector(a[k], a[k + 1], ir.Constant(ir.VectorType(i32, n), list(range(n))))
                         for k in range(0, len(a), 2)]
                both_ = a[0]
                even = builder.shuffle_vector(both_, both_, ir.Constant(vc, list(range(0, 2 * lanes, 2))))
                odd = builder.shuffle_vector(both_, both_, ir.Constant(vc, list(range(1, 2 * lanes, 2))))
                pos = builder.add(ooff_, builder.mul(os_, intp(m)))
                ptr = builder.bitcast(builder.gep(odata, [pos]), vc.as_pointer())
                builder.store(builder.add(builder.load(ptr, align=4), builder.add(even, odd)), ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return block


_q4 = _make_block(1, 4)
_k1, _k2, _k3, _k4, _k5, _k6 = (_make_block(m, 2) for m in range(1, ROWS + 1))


@jit
def avx2_block(mr, nb, x, xoff, xstride, xseg, wp, woff, gstride, rstride, wseg, ngroups, nseg, out, ooff,
               ostride):
    """``int8_vnni.vnni_block``'s block (any ``mr`` rows x ``nb`` registers of 16 channels, the same
    arguments, int16 codes ``x``) as blocks of up to :data:`ROWS` rows x 8 channels, or one row x 16."""
    for r in range(nb):
        if mr == 1:
            _q4(x, xoff, xstride, xseg, wp, woff + r * rstride, gstride, wseg, ngroups, nseg, out, ooff + 16 * r,
                ostride)
            continue
        for h in range(2):
            wr = woff + r * rstride + 32 * h
            for m0 in range(0, mr, ROWS):
                m = min(ROWS, mr - m0)
                xo = xoff + m0 * xstride
                oo = ooff + m0 * ostride + 16 * r + 8 * h
                if m == 6:
                    _k6(x, xo, xstride, xseg, wp, wr, gstride, wseg, ngroups, nseg, out, oo, ostride)
                elif m == 5:
                    _k5(x, xo, xstride, xseg, wp, wr, gstride, wseg, ngroups, nseg, out, oo, ostride)
                elif m == 4:
                    _k4(x, xo, xstride, xseg, wp, wr, gstride, wseg, ngroups, nseg, out, oo, ostride)
                elif m == 3:
                    _k3(x, xo, xstride, xseg, wp, wr, gstride, wseg, ngroups, nseg, out, oo, ostride)
                elif m == 2:
                    _k2(x, xo, xstride, xseg, wp, wr, gstride, wseg, ngroups, nseg, out, oo, ostride)
                else:
                    _k1(x, xo, xstride, xseg, wp, wr, gstride, wseg, ngroups, nseg, out, oo, ostride)
