"""A large float32 dense weight times a few samples (2 .. 8): several mat-vecs sharing each weight load.

At one sample a dense layer is a mat-vec (nncomp/kernels/dense_small.py): the weight streams once and
each 16 weights take one fused multiply-add. At a few samples the register tiles of the matrix
products waste their vectors: the weight-streaming product (dense_stream.py) puts the samples in the
vector lanes, and 2 samples fill 2 of 16 (fc7 at 4 samples: 3.8 ms against ONNX Runtime's 1.4 and
the one-sample mat-vec's 1.2, Xeon with AMX, 2 threads). Here the vectors run along the features,
as in the mat-vec: a tile of ``R`` weight rows x ``N`` samples (R = 4, N <= 4: at most 16
accumulators in registers) loads 16 features of each row and each sample once and does ``R * N``
fused multiply-adds with them, so the weight is read once from memory for up to 4 samples; the next
4 samples re-read the tile's rows from L2 (fc6's 4 rows: 400 KB). The same tiles serve CPUs with 16
vector registers (AVX2, two per 16-float vector: the tile spills): an AVX2 build on the Xeon ran
fc7 at 2 and 4 samples in 1.19 and 1.77 ms, against 1.24 and 1.90 with 2 x 2 tiles that fit.

Arithmetic (the same for every tile shape, so a sample's bits do not depend on the batch it came in
or on the threads): for weight row j and sample b, lane l of a 16-float accumulator sums
``w[j, 16 i + l] * x[b, 16 i + l]`` over the full vectors ``i`` in order, one fused multiply-add each;
the lanes are added by the fixed tree of nncomp/kernels/codebook.py ``reduce16``; then the remaining
``k mod 16`` products are added in order (a multiply, then an add), then the bias; then the epilogue
of nncomp/kernels/sparse_small.py ``finish_row``.

Contract (NumPy twin: tests/reference.py ``few_gemm``):
``out[b, j] = act(clip((w[j] @ x[b] + bias[j]) * scale[j] + shift[j] + res[b, j], lo, hi))``.
"""
import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._ir import declare, loop_latch, loop_phis
from ._jit import both
from .codebook import reduce16
from .sparse_small import finish_row

ROWS = 4            # weight rows per tile
SAMPLES = 4         # samples per tile at most
BLOCK_ROWS = 64     # weight rows per parallel work item
MAX_BATCH = 8       # the layers use this kernel for 2 .. MAX_BATCH samples (nncomp/layers/dense.py)


def _make_tile(R, N):
    """Intrinsic ``tile(w, x, r0, s0, k16, acc)``: rows ``r0 .. r0+R`` of ``w`` x samples
    ``s0 .. s0+N`` of ``x`` over features ``0 .. 16*k16``; accumulator (r, s), 16 floats, stored at
    ``acc[16 * (r * N + s):]``."""

    @intrinsic
    def tile(typingctx, w, x, r0, s0, k16, acc):
        sig = types.void(w, x, r0, s0, k16, acc)

        def codegen(context, builder, signature, args):
            wa = context.make_array(signature.args[0])(context, builder, args[0])
            xa = context.make_array(signature.args[1])(context, builder, args[1])
            aa = context.make_array(signature.args[5])(context, builder, args[5])
            intp = context.get_value_type(types.intp)
            r0_, s0_, k16_ = (context.cast(builder, args[i], signature.args[i], types.intp) for i in (2, 3, 4))
            k = cgutils.unpack_tuple(builder, wa.shape, 2)[1]
            v16 = ir.VectorType(ir.FloatType(), 16)
            fma = declare(builder.module, "llvm.fma.v16f32", ir.FunctionType(v16, [v16, v16, v16]))
            wrow = [builder.gep(wa.data, [builder.mul(builder.add(r0_, intp(r)), k)]) for r in range(R)]
            xrow = [builder.gep(xa.data, [builder.mul(builder.add(s0_, intp(s)), k)]) for s in range(N)]
            zero = ir.Constant(v16, None)

            def vload(row, off):
                return builder.load(builder.bitcast(builder.gep(row, [off]), v16.as_pointer()), align=4)

            pre = builder.block
            loop = builder.append_basic_block("few_loop")
            done = builder.append_basic_block("few_done")
            builder.cbranch(builder.icmp_signed(">", k16_, intp(0)), loop, done)
            builder.position_at_end(loop)
            i, accs = loop_phis(builder, intp, v16, [zero] * (R * N), pre)
            off = builder.mul(i, intp(16))
            wv = [vload(p, off) for p in wrow]
            xv = [vload(p, off) for p in xrow]
            new = [builder.call(fma, [wv[r], xv[s], accs[r * N + s]]) for r in range(R) for s in range(N)]
            end = builder.block
            loop_latch(builder, intp, i, accs, new, k16_, loop, done)
            builder.position_at_end(done)
            fins = []
            for v in new:                   # every phi first: LLVM wants them at the block top
                fins.append(builder.phi(v16))
                fins[-1].add_incoming(zero, pre)
                fins[-1].add_incoming(v, end)
            for j, fin in enumerate(fins):
                builder.store(fin, builder.bitcast(builder.gep(aa.data, [intp(16 * j)]), v16.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen

    tile.__name__ = f"_few_tile_{R}x{N}"
    return tile


def _plain_tile(R, N):
    """The tile as plain Python, for NUMBA_DISABLE_JIT runs (an intrinsic needs the compiler)."""
    def tile(w, x, r0, s0, k16, acc):
        for r in range(R):
            for s in range(N):
                a = np.zeros(16, np.float32)
                for i in range(k16):
                    a = (w[r0 + r, 16 * i:16 * i + 16].astype(np.float64) * x[s0 + s, 16 * i:16 * i + 16]
                         + a).astype(np.float32)
                acc[16 * (r * N + s):16 * (r * N + s) + 16] = a
    return tile


_make = _plain_tile if numba.config.DISABLE_JIT else _make_tile
_t41, _t42, _t43, _t44 = (_make(ROWS, s) for s in (1, 2, 3, 4))
_t11, _t12, _t13, _t14 = (_make(1, s) for s in (1, 2, 3, 4))


def _few(w, x, bias, scale, shift, res, lo, hi, act, alpha, beta, out):
    """``out = epilogue(x @ w.T + bias)`` (module doc).

    IN  w (co, k) float32 C-contiguous; x (n, k) float32 C-contiguous, n >= 1; bias (co,) float32,
        or (0,) for none; scale, shift (co,) float32, or (0,) for no affine map; res (n, co)
        float32, or (0, co) for no residual; lo, hi float32 clip bounds (-inf, inf: none); act an
        ACT_* code of nncomp/kernels/epilogue.py (0: none) with its alpha, beta.
    OUT out (n, co) float32 C-contiguous, overwritten.
    """
    n, k = x.shape
    co = w.shape[0]
    k16 = k // 16
    for blk in prange((co + BLOCK_ROWS - 1) // BLOCK_ROWS):
        acc = np.empty(16 * ROWS * SAMPLES, np.float32)
        r = blk * BLOCK_ROWS
        r_end = min(co, r + BLOCK_ROWS)
        while r < r_end:
            rows = ROWS if r_end - r >= ROWS else 1
            for s0 in range(0, n, SAMPLES):
                m = min(SAMPLES, n - s0)
                if rows == ROWS:
                    if m == 4:
                        _t44(w, x, r, s0, k16, acc)
                    elif m == 3:
                        _t43(w, x, r, s0, k16, acc)
                    elif m == 2:
                        _t42(w, x, r, s0, k16, acc)
                    else:
                        _t41(w, x, r, s0, k16, acc)
                elif m == 4:
                    _t14(w, x, r, s0, k16, acc)
                elif m == 3:
                    _t13(w, x, r, s0, k16, acc)
                elif m == 2:
                    _t12(w, x, r, s0, k16, acc)
                else:
                    _t11(w, x, r, s0, k16, acc)
                for q in range(rows):
                    for s in range(m):
                        a = 16 * (q * m + s)
                        v = reduce16(acc[a:a + 16])
                        for i in range(16 * k16, k):
                            v += w[r + q, i] * x[s0 + s, i]
                        if bias.shape[0] > 0:
                            v += bias[r + q]
                        out[s0 + s, r + q] = v
            r += rows
    for b in prange(n):
        finish_row(out[b:b + 1], scale, shift, res[b:b + 1] if res.shape[0] > 0 else res, lo, hi, act, alpha, beta)


few_gemm, few_gemm_parallel = both(_few, error_model="numpy")
