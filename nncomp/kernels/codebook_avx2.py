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
10.5 ms. Batches decode a job's rows into an L1 buffer once and run tiles of 2 rows x 3 samples over
it in the same lane order (fc7 at 32 samples, one thread: 14.8 GMAC/s decoding a row's block for
every 4 samples, 26 through the buffer; NumPy's sgemm 22-30). Models run it at every batch of a
4-bit dense layer (nncomp/layers/dense.py: a sample's bits may not depend on its batch).

Contract (NumPy twin: tests/reference_codebook.py): ``codebook_matmul4_avx2(codes, x, cb16, out)`` is
``codebook_matmul4`` for one sample. Compiles only for an AVX2 target (``HAVE``).
"""
import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import isa
from ._ir import declare, fma32
from ._jit import both, jit
from .codebook import reduce16

HAVE = isa.HAVE_AVX2 and not isa.HAVE_AVX512     # AVX-512 CPUs run the register path instead


# One sample: ROWS rows a call, their multiply-add chains interleaved, the x vectors loaded once.
# Batches: a job of ROW_BLOCK rows and SAMPLE_CHUNK samples decodes its rows' weights, KCHUNK blocks
# at a time, into a buffer (ROW_BLOCK x KCHUNK x 128 bytes: 16 KB, in L1), which tiles of 2 rows x
# 3 samples (12 accumulators) then read with the samples' x: the decode is paid once a job, not
# once a sample.
ROWS = 4
ROW_BLOCK, KCHUNK, SAMPLE_CHUNK = 8, 16, 64


def _lanes(builder, a, b, lo, width):
    """Per 128-bit lane ``vpunpckl*`` (``lo``) or ``vpunpckh*`` of ``a`` and ``b``, ``width``
    elements a vector, as a shufflevector (LLVM emits the one instruction)."""
    per = width // 2
    start = 0 if lo else per // 2
    mask = [i for lane in range(2) for k in range(start, start + per // 2)
            for i in (lane * per + k, width + lane * per + k)]
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), width), mask))


def _load(builder, ptr, at, ty):
    """The ``ty`` vector at element ``at`` of ``ptr`` (unaligned)."""
    return builder.load(builder.bitcast(builder.gep(ptr, [at]), ty.as_pointer()), align=1)


def _decoder(builder, cb_arr):
    """``weights(ptr, at)``: the 32 float32 weights of the block of 16 code bytes at ``ptr[at:]``, as
    four <8 x float> in column order (0-7, 8-15, 16-23, 24-31; the module doc), with ``cb_arr`` the
    codebook."""
    i64, i32, i16, i8 = ir.IntType(64), ir.IntType(32), ir.IntType(16), ir.IntType(8)
    v8f, v32b, v16s = ir.VectorType(ir.FloatType(), 8), ir.VectorType(i8, 32), ir.VectorType(i16, 16)
    pshufb = declare(builder.module, "llvm.x86.avx2.pshuf.b", ir.FunctionType(v32b, [v32b, v32b]))

    def const32(values):
        return ir.Constant(v32b, [i8(v) for v in values])
    # the codebook's bytes as four 16-entry tables (byte j of each value), in both 128-bit lanes
    cb_bytes = _load(builder, cb_arr.data, i64(0), ir.VectorType(i8, 64))
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
        raw = _load(builder, ptr, at, ir.VectorType(i8, 16))
        t = builder.call(pshufb, [builder.shuffle_vector(raw, raw, both_lanes), spread])
        hi = builder.bitcast(builder.lshr(builder.bitcast(t, v16s), four), v32b)
        idx = builder.or_(builder.and_(t, low), builder.and_(hi, high))
        p = [builder.call(pshufb, [plane, idx]) for plane in planes]
        lo01, hi01 = (_lanes(builder, p[0], p[1], lo, 32) for lo in (True, False))
        lo23, hi23 = (_lanes(builder, p[2], p[3], lo, 32) for lo in (True, False))
        lo01, hi01, lo23, hi23 = (builder.bitcast(v, v16s) for v in (lo01, hi01, lo23, hi23))
        w0, w16, w8, w24 = (builder.bitcast(_lanes(builder, a, b, lo, 16), v8f)
                            for a, b in ((lo01, lo23), (hi01, hi23)) for lo in (True, False))
        return [w0, w8, w16, w24]
    return weights


def _fma_block(builder, fma, xs, ws, lo, hi):
    """One block's step of a (row, sample) pair's two accumulators, in the contract's order: lanes
    0-7 add columns 0-7's products, then 16-23's; lanes 8-15 columns 8-15's, then 24-31's (``xs``,
    ``ws``: the block's four x and weight vectors in column order)."""
    return (builder.call(fma, [xs[2], ws[2], builder.call(fma, [xs[0], ws[0], lo])]),
            builder.call(fma, [xs[3], ws[3], builder.call(fma, [xs[1], ws[1], hi])]))


def _accumulate(builder, acc_ptr, at, count, body):
    """The <8 x float> accumulators at ``acc_ptr[at[k]]``, carried through ``count`` iterations of
    ``body(b, accs) -> accs`` (b from 0; none when count <= 0) and stored back. A loop tested at its
    top: the bottom-tested form of _ir.loop_phis / loop_latch (behind a count > 0 guard) ran the
    one-sample product 13.3-15.2 against 11.7-12.0 ms (fc6, one thread, Zen 3)."""
    i64 = ir.IntType(64)
    starts = [builder.load(builder.gep(acc_ptr, [a]), align=4) for a in at]
    pre = builder.block
    head, loop, done = (builder.append_basic_block(f"cb4.{s}") for s in ("head", "loop", "done"))
    builder.branch(head)
    builder.position_at_end(head)
    b = builder.phi(i64)
    accs = [builder.phi(v.type) for v in starts]
    b.add_incoming(i64(0), pre)
    for a, v in zip(accs, starts):
        a.add_incoming(v, pre)
    builder.cbranch(builder.icmp_signed("<", b, count), loop, done)
    builder.position_at_end(loop)
    new = body(b, accs)
    b.add_incoming(builder.add(b, i64(1)), builder.block)
    for a, v in zip(accs, new):
        a.add_incoming(v, builder.block)
    builder.branch(head)
    builder.position_at_end(done)
    for a, v in zip(at, accs):
        builder.store(v, builder.gep(acc_ptr, [a]), align=4)


def _rows_ir(R):
    """Intrinsic ``rows(codes, o, x, cb16, acc)``: the contract's lane sums of rows ``o .. o+R-1``
    for one sample ``x`` (nb*32,), over all column blocks, added to ``acc[16r:][:16]``."""
    def rows_ir(typingctx, codes, o, x, cb16, acc):
        sig = types.void(codes, o, x, cb16, acc)

        def codegen(context, builder, signature, args):
            c_arr, x_arr, cb_arr, a_arr = (context.make_array(signature.args[k])(context, builder, args[k])
                                           for k in (0, 2, 3, 4))
            i64, v8f = ir.IntType(64), ir.VectorType(ir.FloatType(), 8)
            fma = declare(builder.module, "llvm.fma.v8f32", ir.FunctionType(v8f, [v8f, v8f, v8f]))
            row = context.cast(builder, args[1], signature.args[1], types.int64)
            c_stride = builder.extract_value(c_arr.strides, 0)             # bytes: one per code byte
            bases = [builder.gep(c_arr.data, [builder.mul(builder.add(row, i64(r)), c_stride)]) for r in range(R)]
            nb = builder.sdiv(builder.extract_value(c_arr.shape, 1), i64(16))
            weights = _decoder(builder, cb_arr)

            def body(b, accs):
                xs = [_load(builder, x_arr.data, builder.add(builder.mul(b, i64(32)), i64(8 * k)), v8f)
                      for k in range(4)]
                new = []
                for r in range(R):       # rows side by side: 2 * R chains of multiply-adds
                    new += _fma_block(builder, fma, xs, weights(bases[r], builder.mul(b, i64(16))),
                                      accs[2 * r], accs[2 * r + 1])
                return new
            _accumulate(builder, builder.bitcast(a_arr.data, v8f.as_pointer()), [i64(k) for k in range(2 * R)],
                        nb, body)
            return context.get_dummy_value()
        return sig, codegen
    return rows_ir


def _decode_ir(typingctx, codes, o, b0, nb, cb16, w):
    """Intrinsic ``decode(codes, o, b0, nb, cb16, w)``: row ``o``'s weights of column blocks
    ``b0 .. b0+nb-1`` into ``w[:nb*32]`` (float32, in column order)."""
    sig = types.void(codes, o, b0, nb, cb16, w)

    def codegen(context, builder, signature, args):
        c_arr, cb_arr, w_arr = (context.make_array(signature.args[k])(context, builder, args[k]) for k in (0, 4, 5))
        i64, v8f = ir.IntType(64), ir.VectorType(ir.FloatType(), 8)
        row, first, count = (context.cast(builder, args[k], signature.args[k], types.int64) for k in (1, 2, 3))
        base = builder.gep(c_arr.data, [builder.mul(row, builder.extract_value(c_arr.strides, 0))])
        weights = _decoder(builder, cb_arr)
        with cgutils.for_range(builder, count) as loop:
            vs = weights(base, builder.mul(builder.add(first, loop.index), i64(16)))
            out = builder.gep(w_arr.data, [builder.mul(loop.index, i64(32))])
            for v, at in zip(vs, (0, 8, 16, 24)):
                builder.store(v, builder.bitcast(builder.gep(out, [i64(at)]), v8f.as_pointer()), align=4)
        return context.get_dummy_value()
    return sig, codegen


def _tile_ir(R, C):
    """Intrinsic ``tile(w, r0, x, i0, b0, nb, acc, stride)``: the contract's lane sums of decoded
    rows ``w[r0 .. r0+R-1]`` (their column block b is x's block ``b0 + b``) for samples ``i0 ..
    i0+C-1``, over ``nb`` blocks, continued from and stored back to ``acc[(r*stride + c)*16 :][:16]``."""
    def tile_ir(typingctx, w, r0, x, i0, b0, nb, acc, stride):
        sig = types.void(w, r0, x, i0, b0, nb, acc, stride)

        def codegen(context, builder, signature, args):
            w_arr, x_arr, a_arr = (context.make_array(signature.args[k])(context, builder, args[k]) for k in (0, 2, 6))
            i64, v8f = ir.IntType(64), ir.VectorType(ir.FloatType(), 8)
            fma = declare(builder.module, "llvm.fma.v8f32", ir.FunctionType(v8f, [v8f, v8f, v8f]))
            row, s0, first, count = (context.cast(builder, args[k], signature.args[k], types.int64) for k in (1, 3, 4, 5))

            def rows_of(arr, start, n):
                stride = builder.sdiv(builder.extract_value(arr.strides, 0), i64(4))      # floats
                return [builder.gep(arr.data, [builder.mul(builder.add(start, i64(k)), stride)]) for k in range(n)]
            wrows, xrows = rows_of(w_arr, row, R), rows_of(x_arr, s0, C)
            astride = context.cast(builder, args[7], signature.args[7], types.int64)
            at = [builder.add(builder.mul(i64(2 * r), astride), i64(2 * c + h))
                  for r in range(R) for c in range(C) for h in range(2)]

            def body(b, accs):
                wo, xo = builder.mul(b, i64(32)), builder.mul(builder.add(first, b), i64(32))
                ws = [[_load(builder, wrows[r], builder.add(wo, i64(8 * k)), v8f) for k in range(4)] for r in range(R)]
                new = list(accs)
                for c in range(C):
                    xs = [_load(builder, xrows[c], builder.add(xo, i64(8 * k)), v8f) for k in range(4)]
                    for r in range(R):
                        k = 2 * (r * C + c)
                        new[k], new[k + 1] = _fma_block(builder, fma, xs, ws[r], accs[k], accs[k + 1])
                return new
            _accumulate(builder, builder.bitcast(a_arr.data, v8f.as_pointer()), at, count, body)
            return context.get_dummy_value()
        return sig, codegen
    return tile_ir


def _portable_rows(R):
    def rows(codes, o, x, cb16, acc):
        for r in range(R):
            for b in range(codes.shape[1] // 16):
                for lane in range(16):
                    code = codes[o + r, b * 16 + lane]
                    k = r * 16 + lane
                    acc[k] = fma32(x[b * 32 + 16 + lane], cb16[code >> 4], fma32(x[b * 32 + lane], cb16[code & 15], acc[k]))
    return rows


def _portable_decode(codes, o, b0, nb, cb16, w):
    for b in range(nb):
        for lane in range(16):
            code = codes[o, (b0 + b) * 16 + lane]
            w[b * 32 + lane], w[b * 32 + 16 + lane] = cb16[code & 15], cb16[code >> 4]


def _portable_tile(R, C):
    def tile(w, r0, x, i0, b0, nb, acc, stride):
        for r in range(R):
            for c in range(C):
                k = (r * stride + c) * 16
                for b in range(nb):
                    for lane in range(16):
                        j, xj = b * 32 + lane, (b0 + b) * 32 + lane
                        acc[k + lane] = fma32(x[i0 + c, xj + 16], w[r0 + r, j + 16],
                                              fma32(x[i0 + c, xj], w[r0 + r, j], acc[k + lane]))
    return tile


_JIT = not numba.config.DISABLE_JIT
row1, rows4 = ((intrinsic(_rows_ir(R)) if _JIT else _portable_rows(R)) for R in (1, ROWS))
decode = intrinsic(_decode_ir) if _JIT else _portable_decode
tile23, tile21, tile13, tile11 = ((intrinsic(_tile_ir(*rc)) if _JIT else _portable_tile(*rc))
                                  for rc in ((2, 3), (2, 1), (1, 3), (1, 1)))


@jit(inline="always")
def _tiles(w, rows, x, i0, m, b0, nb, acc):
    """The lane sums of decoded rows ``w[:rows]`` for samples ``i0 .. i0+m-1`` (acc ``[(r*m + i)*16:]``)
    over x's blocks ``b0 .. b0+nb-1``: tiles of 2 rows x 3 samples, then the remainders."""
    r = 0
    while r < rows:
        two = r + 2 <= rows
        i = 0
        while i + 3 <= m:
            if two:
                tile23(w, r, x, i0 + i, b0, nb, acc[(r * m + i) * 16:], m)
            else:
                tile13(w, r, x, i0 + i, b0, nb, acc[(r * m + i) * 16:], m)
            i += 3
        while i < m:
            if two:
                tile21(w, r, x, i0 + i, b0, nb, acc[(r * m + i) * 16:], m)
            else:
                tile11(w, r, x, i0 + i, b0, nb, acc[(r * m + i) * 16:], m)
            i += 1
        r += 2 if two else 1


def _matmul4(codes, x, cb16, out):
    """``codebook_matmul4(codes, x, cb16, out)`` for ``x`` (n, nb*32), any n (nncomp/kernels/codebook.py)."""
    n_out, n, nb = codes.shape[0], x.shape[0], codes.shape[1] // 16
    if n == 1:
        for g in prange((n_out + ROWS - 1) // ROWS):
            o = g * ROWS
            acc = np.zeros(16 * ROWS, np.float32)
            if o + ROWS <= n_out:
                rows4(codes, o, x[0], cb16, acc)
                for r in range(ROWS):
                    out[0, o + r] = reduce16(acc[16 * r:16 * r + 16])
            else:
                for r in range(n_out - o):
                    acc[:16] = 0
                    row1(codes, o + r, x[0], cb16, acc)
                    out[0, o + r] = reduce16(acc[:16])
        return
    row_blocks, sample_chunks = (n_out + ROW_BLOCK - 1) // ROW_BLOCK, (n + SAMPLE_CHUNK - 1) // SAMPLE_CHUNK
    for job in prange(row_blocks * sample_chunks):
        o0, i0 = (job % row_blocks) * ROW_BLOCK, (job // row_blocks) * SAMPLE_CHUNK
        rows, m = min(ROW_BLOCK, n_out - o0), min(SAMPLE_CHUNK, n - i0)
        acc = np.zeros(rows * m * 16, np.float32)
        w = np.empty((ROW_BLOCK, KCHUNK * 32), np.float32)
        for b0 in range(0, nb, KCHUNK):
            kb = min(KCHUNK, nb - b0)
            for r in range(rows):
                decode(codes, o0 + r, b0, kb, cb16, w[r])
            _tiles(w, rows, x, i0, m, b0, kb, acc)
        for r in range(rows):
            for i in range(m):
                k = (r * m + i) * 16
                out[i0 + i, o0 + r] = reduce16(acc[k:k + 16])


codebook_matmul4_avx2, codebook_matmul4_avx2_parallel = both(_matmul4)
