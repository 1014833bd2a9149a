"""The 4-bit codebook product at batch 1 for CPUs with AVX2 but no AVX-512: byte-plane lookups.

The register path (nncomp/kernels/codebook_vpermps.py) looks a 16-value codebook up with one
AVX-512 ``vpermps``; the portable kernel (``codebook_matmul4`` of nncomp/kernels/codebook.py) does it
with a scalar load per weight, which LLVM emulates one value at a time on AVX2 (fc6, 4096 x 25088,
Zen 3 guest: 26 ms at 2 threads, 1.8x slower than NumPy's dense float32 product). AVX2's
``vpshufb`` looks 16 entries up per 128-bit lane, one byte each: here the codebook's four bytes are
four 16-entry tables, a block's 32 codes (16 bytes) become one index vector (a dword permute puts
each lane's codes in place, a shift and masks take the nibbles), four ``vpshufb`` give the weights'
four byte planes, and two rounds of unpacks assemble 32 float32 weights: 13 shuffles for 32 weights.
The weights come out as the columns 0-7, 16-23, 8-15, 24-31 of the block, so each of the 16 lanes
adds the low nibble's product, then the high nibble's, block after block (the contract's order and
tree), and the result is bit-identical to ``codebook_matmul4``. ROWS rows run side by side (their
multiply-add chains interleaved, the x vectors loaded once). One thread, Zen 3 guest, fc6: 20.1 ms
with the previous kernel (``vpermps`` on each codebook half and a blend, one row at a time), 11.8 ms
with this one (5.8-6.7 against 10.1-10.4 ms at 2 threads); a C version of both measured 15.5 and
10.5 ms. Models do not call it (a codebook layer's result may not depend on the batch it runs in, and
batches decode the weight on CPUs without AVX-512: nncomp/layers/dense.py); the matrix product does.

Contract (NumPy twin: tests/reference_codebook.py): ``codebook_matmul4_avx2(codes, x, cb16, out)`` is
``codebook_matmul4`` for one sample. Compiles only for an AVX2 target (``HAVE``).
"""
import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from . import isa
from ._ir import declare
from ._jit import both, jit
from .codebook import fma32, reduce16

HAVE = isa.HAVE_AVX2 and not isa.HAVE_AVX512     # AVX-512 CPUs run the register path instead


# One sample: ROWS rows a call, their multiply-add chains interleaved, the x vectors loaded once.
# Batches: a row's block decoded once for SAMPLES samples (2 * SAMPLES accumulators), over chunks of
# KCHUNK blocks (the chunk's x rows stay in L1/L2 while the row block's rows and samples pass), for
# SAMPLE_CHUNK samples at a time (their accumulators: ROW_BLOCK x SAMPLE_CHUNK x 64 bytes).
ROWS, SAMPLES = 4, 4
ROW_BLOCK, KCHUNK, SAMPLE_CHUNK = 8, 32, 64


def _lanes(builder, a, b, lo, width):
    """Per 128-bit lane ``vpunpckl*`` (``lo``) or ``vpunpckh*`` of ``a`` and ``b``, ``width``
    elements a vector, as a shufflevector (LLVM emits the one instruction)."""
    per = width // 2
    start = 0 if lo else per // 2
    mask = [i for lane in range(2) for k in range(start, start + per // 2)
            for i in (lane * per + k, width + lane * per + k)]
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), width), mask))


def _block_ir(R, C):
    """Intrinsic ``block(codes, o, x, i0, b0, nb, cb16, acc)``: the contract's lane sums of rows
    ``o .. o+R-1`` for samples ``i0 .. i0+C-1`` over column blocks ``b0 .. b0+nb-1``, continued from
    and stored back to ``acc[(r*C + c)*16 :][:16]`` (the module doc)."""
    def block_ir(typingctx, codes, o, x, i0, b0, nb, cb16, acc):
        sig = types.void(codes, o, x, i0, b0, nb, cb16, acc)

        def codegen(context, builder, signature, args):
            c_arr, x_arr, cb_arr, a_arr = (context.make_array(signature.args[k])(context, builder, args[k])
                                           for k in (0, 2, 6, 7))
            i64, i32, i16, i8, f32 = ir.IntType(64), ir.IntType(32), ir.IntType(16), ir.IntType(8), ir.FloatType()
            v8f, v32b, v16s = ir.VectorType(f32, 8), ir.VectorType(i8, 32), ir.VectorType(i16, 16)
            pshufb = declare(builder.module, "llvm.x86.avx2.pshuf.b", ir.FunctionType(v32b, [v32b, v32b]))
            fma = declare(builder.module, "llvm.fma.v8f32", ir.FunctionType(v8f, [v8f, v8f, v8f]))
            row, s0, first, count = (context.cast(builder, args[k], signature.args[k], types.int64) for k in (1, 3, 4, 5))
            c_stride = builder.extract_value(c_arr.strides, 0)             # bytes: one per code byte
            x_stride = builder.sdiv(builder.extract_value(x_arr.strides, 0), i64(4))      # floats
            bases = [builder.gep(c_arr.data, [builder.mul(builder.add(row, i64(r)), c_stride)]) for r in range(R)]
            xrows = [builder.gep(x_arr.data, [builder.mul(builder.add(s0, i64(c)), x_stride)]) for c in range(C)]

            def const32(values):
                return ir.Constant(v32b, [i8(v) for v in values])

            def vec(ptr, at, ty):
                return builder.load(builder.bitcast(builder.gep(ptr, [at]), ty.as_pointer()), align=1)
            # the codebook's bytes as four 16-entry tables (byte j of each value), in both 128-bit lanes
            cb_bytes = vec(cb_arr.data, i64(0), ir.VectorType(i8, 64))
            planes = [builder.shuffle_vector(cb_bytes, cb_bytes, ir.Constant(ir.VectorType(i32, 32),
                                                                           [4 * (k % 16) + j for k in range(32)]))
                      for j in range(4)]
            # lane 0 takes bytes 0-3 and 8-11 of a block, lane 1 bytes 4-7 and 12-15, each twice: low
            # nibbles in the first copy, high nibbles in the second, so that the assembled floats are
            # the weights of columns 0-7 | 16-23 | 8-15 | 24-31 (the contract's lanes, in order)
            spread = const32([0, 1, 2, 3, 0, 1, 2, 3, 8, 9, 10, 11, 8, 9, 10, 11,
                              4, 5, 6, 7, 4, 5, 6, 7, 12, 13, 14, 15, 12, 13, 14, 15])
            low = const32(([15] * 4 + [0] * 4) * 4)
            high = const32(([0] * 4 + [15] * 4) * 4)
            four = ir.Constant(v16s, [i16(4)] * 16)
            both_lanes = ir.Constant(ir.VectorType(i32, 32), list(range(16)) * 2)

            def weights(ptr, at):
                raw = vec(ptr, at, ir.VectorType(i8, 16))
                t = builder.call(pshufb, [builder.shuffle_vector(raw, raw, both_lanes), spread])
                hi = builder.bitcast(builder.lshr(builder.bitcast(t, v16s), four), v32b)
                idx = builder.or_(builder.and_(t, low), builder.and_(hi, high))
                p = [builder.call(pshufb, [plane, idx]) for plane in planes]
                lo01, hi01 = (_lanes(builder, p[0], p[1], lo, 32) for lo in (True, False))
                lo23, hi23 = (_lanes(builder, p[2], p[3], lo, 32) for lo in (True, False))
                lo01, hi01, lo23, hi23 = (builder.bitcast(v, v16s) for v in (lo01, hi01, lo23, hi23))
                return [builder.bitcast(_lanes(builder, a, b, lo, 16), v8f)
                        for a, b in ((lo01, lo23), (hi01, hi23)) for lo in (True, False)]
            acc_ptr = builder.bitcast(a_arr.data, v8f.as_pointer())
            starts = [builder.load(builder.gep(acc_ptr, [i64(k)]), align=4) for k in range(2 * R * C)]
            pre = builder.block
            head, body, done = (builder.append_basic_block(f"cb4.{s}") for s in ("head", "body", "done"))
            builder.branch(head)
            builder.position_at_end(head)
            b = builder.phi(i64)
            accs = [builder.phi(v8f) for _ in range(2 * R * C)]      # (row r, sample c): lanes 0-7, 8-15
            b.add_incoming(first, pre)
            for a, v in zip(accs, starts):
                a.add_incoming(v, pre)
            builder.cbranch(builder.icmp_signed("<", b, builder.add(first, count)), body, done)
            builder.position_at_end(body)
            xo = builder.mul(b, i64(32))
            new = list(accs)
            for r in range(R):
                w0, w16, w8, w24 = weights(bases[r], builder.mul(b, i64(16)))
                for c in range(C):
                    xs = [vec(xrows[c], builder.add(xo, i64(8 * k)), v8f) for k in range(4)]
                    k = 2 * (r * C + c)
                    new[k] = builder.call(fma, [xs[2], w16, builder.call(fma, [xs[0], w0, accs[k]])])
                    new[k + 1] = builder.call(fma, [xs[3], w24, builder.call(fma, [xs[1], w8, accs[k + 1]])])
            b.add_incoming(builder.add(b, i64(1)), builder.block)
            for p_, a in zip(accs, new):
                p_.add_incoming(a, builder.block)
            builder.branch(head)
            builder.position_at_end(done)
            for k, a in enumerate(accs):
                builder.store(a, builder.gep(acc_ptr, [i64(k)]), align=4)
            return context.get_dummy_value()
        return sig, codegen
    return block_ir


def _portable_block(R, C):
    def block(codes, o, x, i0, b0, nb, cb16, acc):
        for r in range(R):
            for c in range(C):
                k = (r * C + c) * 16
                for b in range(b0, b0 + nb):
                    for lane in range(16):
                        code = codes[o + r, b * 16 + lane]
                        acc[k + lane] = fma32(x[i0 + c, b * 32 + 16 + lane], cb16[code >> 4],
                                              fma32(x[i0 + c, b * 32 + lane], cb16[code & 15], acc[k + lane]))
    return block


_SHAPES = ((1, 1), (ROWS, 1), (1, 2), (1, 3), (1, SAMPLES))
_block = {rc: _portable_block(*rc) if numba.config.DISABLE_JIT else intrinsic(_block_ir(*rc)) for rc in _SHAPES}
row1, rows4, s2, s3, s4 = (_block[rc] for rc in _SHAPES)


@jit(inline="always")
def _samples(codes, o, x, i0, m, b0, nb, cb16, acc):
    """Row ``o``, samples ``i0 .. i0+m-1`` (acc ``[c*16:]``), blocks ``b0 .. b0+nb-1``."""
    c = 0
    while c + SAMPLES <= m:
        s4(codes, o, x, i0 + c, b0, nb, cb16, acc[c * 16:])
        c += SAMPLES
    if m - c == 3:
        s3(codes, o, x, i0 + c, b0, nb, cb16, acc[c * 16:])
    elif m - c == 2:
        s2(codes, o, x, i0 + c, b0, nb, cb16, acc[c * 16:])
    elif m - c == 1:
        row1(codes, o, x, i0 + c, b0, nb, cb16, acc[c * 16:])


def _matmul4(codes, x, cb16, out):
    """``codebook_matmul4(codes, x, cb16, out)`` for ``x`` (n, nb*32), any n (nncomp/kernels/codebook.py)."""
    n_out, n, nb = codes.shape[0], x.shape[0], codes.shape[1] // 16
    if n == 1:
        for g in prange((n_out + ROWS - 1) // ROWS):
            o = g * ROWS
            acc = np.zeros(16 * ROWS, np.float32)
            if o + ROWS <= n_out:
                rows4(codes, o, x, 0, 0, nb, cb16, acc)
                for r in range(ROWS):
                    out[0, o + r] = reduce16(acc[16 * r:16 * r + 16])
            else:
                for r in range(n_out - o):
                    acc[:16] = 0
                    row1(codes, o + r, x, 0, 0, nb, cb16, acc)
                    out[0, o + r] = reduce16(acc[:16])
        return
    row_blocks, sample_chunks = (n_out + ROW_BLOCK - 1) // ROW_BLOCK, (n + SAMPLE_CHUNK - 1) // SAMPLE_CHUNK
    for job in prange(row_blocks * sample_chunks):
        o0, i0 = (job % row_blocks) * ROW_BLOCK, (job // row_blocks) * SAMPLE_CHUNK
        rows, m = min(ROW_BLOCK, n_out - o0), min(SAMPLE_CHUNK, n - i0)
        acc = np.zeros(rows * m * 16, np.float32)
        for b0 in range(0, nb, KCHUNK):
            for r in range(rows):
                _samples(codes, o0 + r, x, i0, m, b0, min(KCHUNK, nb - b0), cb16, acc[r * m * 16:])
        for r in range(rows):
            for i in range(m):
                k = (r * m + i) * 16
                out[i0 + i, o0 + r] = reduce16(acc[k:k + 16])


codebook_matmul4_avx2, codebook_matmul4_avx2_parallel = both(_matmul4)
