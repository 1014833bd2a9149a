"""The 4-bit codebook product at batch 1 with AVX2's ``vpermps``, for CPUs without AVX-512.

The register path (nncomp/kernels/codebook_vpermps.py) looks a 16-value codebook up with one
AVX-512 ``vpermps``; the portable kernel (``codebook_matmul4`` of nncomp/kernels/codebook.py) does it
with a scalar load per weight, and on an AVX2 CPU LLVM emulates those gathers one value at a time
(fc6, 4096 x 25088, on a Zen 3 guest: 26 ms at 2 threads, 1.8x slower than NumPy's dense float32
product; 11-16 ms here). AVX2's ``vpermps`` indexes 8 values: here each code looks up both halves of the codebook
and a blend on the code's bit 3 picks one, 8 weights an instruction triple; each lane's sums are the
contract's (one fused multiply-add for the low nibble, then one for the high, block after block; the
same tree of 16 lanes), so the result is bit-identical to ``codebook_matmul4``.

Contract (NumPy twin: tests/reference_codebook.py): ``codebook_matvec4_avx2(codes, x, cb16, out)`` is
``codebook_matmul4`` for one sample. Compiles only for an AVX2 target (``HAVE``).
"""
import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from . import isa
from ._ir import declare
from ._jit import both
from .codebook import lane_sums4, reduce16

HAVE = isa.HAVE_AVX2 and not isa.HAVE_AVX512     # AVX-512 CPUs run the register path instead


def _row_ir(typingctx, codes, o, x, cb16, acc):
    """``row(codes, o, x, cb16, acc)``: :func:`nncomp.kernels.codebook.lane_sums4` with AVX2's
    ``vpermps`` (the module doc). One row a call: two or four rows side by side (more independent
    chains of multiply-adds) measured no faster on fc6 on a Zen 3 guest (noisy: 11-17 ms a call)."""
    sig = types.void(codes, o, x, cb16, acc)

    def codegen(context, builder, signature, args):
        c_arr, x_arr, cb_arr, a_arr = (context.make_array(signature.args[k])(context, builder, args[k])
                                       for k in (0, 2, 3, 4))
        i64, i32, i8, f32 = ir.IntType(64), ir.IntType(32), ir.IntType(8), ir.FloatType()
        v8f, v8i = ir.VectorType(f32, 8), ir.VectorType(i32, 8)
        perm = declare(builder.module, "llvm.x86.avx2.permps", ir.FunctionType(v8f, [v8f, v8i]))
        fma = declare(builder.module, "llvm.fma.v8f32", ir.FunctionType(v8f, [v8f, v8f, v8f]))
        row = context.cast(builder, args[1], signature.args[1], types.int64)
        width = builder.extract_value(c_arr.shape, 1)
        stride = builder.extract_value(c_arr.strides, 0)             # bytes: one per code byte
        base = builder.gep(c_arr.data, [builder.mul(row, stride)])

        def vec(ptr, at, ty):
            return builder.load(builder.bitcast(builder.gep(ptr, [at]), ty.as_pointer()), align=1)
        cb_lo, cb_hi = vec(cb_arr.data, i64(0), v8f), vec(cb_arr.data, i64(8), v8f)
        splat = lambda v: ir.Constant(v8i, [i32(v)] * 8)  # noqa: E731

        def lookup(idx):
            return builder.select(builder.icmp_unsigned(">", idx, splat(7)), builder.call(perm, [cb_hi, idx]),
                                  builder.call(perm, [cb_lo, idx]))
        pre = builder.block
        head, body, done = (builder.append_basic_block(f"cb4.{s}") for s in ("head", "body", "done"))
        builder.branch(head)
        builder.position_at_end(head)
        b = builder.phi(i64)
        accs = [builder.phi(v8f) for _ in range(2)]       # lanes 0-7 and 8-15
        b.add_incoming(i64(0), pre)
        for a in accs:
            a.add_incoming(ir.Constant(v8f, [0.0] * 8), pre)
        builder.cbranch(builder.icmp_signed("<", builder.mul(b, i64(16)), width), body, done)
        builder.position_at_end(body)
        new = []
        for half, a in enumerate(accs):
            xo = builder.add(builder.mul(b, i64(32)), i64(8 * half))
            c = builder.zext(vec(base, builder.add(builder.mul(b, i64(16)), i64(8 * half)), ir.VectorType(i8, 8)), v8i)
            a = builder.call(fma, [vec(x_arr.data, xo, v8f), lookup(builder.and_(c, splat(15))), a])
            new.append(builder.call(fma, [vec(x_arr.data, builder.add(xo, i64(16)), v8f),
                                          lookup(builder.lshr(c, splat(4))), a]))
        b.add_incoming(builder.add(b, i64(1)), builder.block)
        for p, a in zip(accs, new):
            p.add_incoming(a, builder.block)
        builder.branch(head)
        builder.position_at_end(done)
        for k, a in enumerate(accs):
            builder.store(a, builder.bitcast(builder.gep(a_arr.data, [i64(8 * k)]), v8f.as_pointer()), align=4)
        return context.get_dummy_value()
    return sig, codegen


row4 = lane_sums4 if numba.config.DISABLE_JIT else intrinsic(_row_ir)


def _matvec4(codes, x, cb16, out):
    """``codebook_matmul4(codes, x, cb16, out)`` for ``x`` (1, nb*32) (nncomp/kernels/codebook.py)."""
    for o in prange(codes.shape[0]):
        acc = np.empty(16, np.float32)
        row4(codes, o, x[0], cb16, acc)
        out[0, o] = reduce16(acc)


codebook_matvec4_avx2, codebook_matvec4_avx2_parallel = both(_matvec4)
