"""AVX-512 fast path for codebook products: a 16-entry codebook lives in one zmm register.

A gather per weight (``cb[code]``) makes a codebook product slower than dense float32. Here the
padded codebook ``cb16`` is loaded once into a ``<16 x float>`` register, and every 16 packed bytes
(32 codes) become two weight vectors by zero-extension, a mask, a shift and two ``vpermps``
(``llvm.x86.avx512.permvar.sf.512``), written in LLVM IR through ``numba.extending.intrinsic``.
Codes of up to 5 bits stored one per byte use a 32-entry codebook in two registers and one
``vpermi2ps`` (``llvm.x86.avx512.vpermi2var.ps.512``) per 16 weights.
A block of ``R`` weight rows x ``C`` input rows keeps its ``R*C`` lane accumulators in registers.

The arithmetic is the contract of kernels/codebook.py (sixteen lane accumulators, one fused
multiply-add per product, the fixed lane tree), so ``codebook_matmul_vpermps`` gives results bit-identical to the
portable ``codebook_matmul4`` and ``codebook_matmul8``. Callers check :data:`HAVE_AVX512` first: on a CPU without AVX-512F
the intrinsic would not compile.
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import isa
from ._ir import declare, loop_phis, prefetch
from ._jit import both
from .codebook import reduce16
from .epilogue import activation_rows, epilogue_rows

# Register blocks: ROWS1 weight rows for one input row; ROWS weight rows x COLS input rows for batches.
ROWS1, ROWS, COLS = 8, 8, 3   # 8x3: the fastest block measured on fc6 at batch 48 (24 accumulators)
# Batches: SUPER weight rows run over one chunk of KCHUNK column blocks (of 32 columns) of every
# input row before moving on, so that the chunk (at most 8 KiB per input row) stays in L2.
SUPER, KCHUNK = 48, 64
# ... and NCHUNK input rows at a time (their accumulators: at most 48 rows x 96 inputs x 16 lanes,
# 295 KB), the (row block, input chunk) pairs spread over the threads: a convolution's patches
# (LeNet-5's first layer, 784 per sample, 6 outputs) ran one serial task holding accumulators for
# every patch (400 KB per sample).
NCHUNK = 96

# One input row, packed 4-bit codes: rows of at most this many bytes prefetch the next block's
# rows into L2 while they run (the `ahead` blocks). Eight rows of 2 KB read side by side (fc7) are
# too short for the hardware's stream prefetcher, which follows one stream per 4 KB page: fc7 from
# DRAM took 0.92 ms without, 0.63 with (Xeon, 2 threads; 0.29 from L3). Rows of fc6's 12.5 KB
# stream well alone, and the extra prefetches slowed them (2.5 -> 3.1 ms).
AHEAD_ROW_BYTES = 4096
HAVE_AVX512 = isa.HAVE_AVX512   # matrices check it (tests monkeypatch it to run the portable kernel)


def _make_block(R, C, stride, wide=False, ahead=False):
    """Intrinsic ``block(codes, x, cb, o0, i0, b0, nb, acc)``: run column blocks ``b0 .. b0+nb``.

    Packed 4-bit codes (blocks of 32 columns in 16 bytes, ``cb`` 16 floats, ``vpermps``), or with
    ``wide`` one code per byte (blocks of 16 columns, ``cb`` 32 floats in two registers, ``vpermi2ps``).
    Accumulator ``(r, c)`` (weight row ``o0 + r``, input row ``i0 + c``) is the 16 floats at
    ``acc[(r*stride + c)*16:]``: loaded, advanced over the blocks in order, stored back.
    With ``ahead`` (one input row, whole weight rows: ``b0 = 0``), every step also prefetches two
    lines of the next ``R`` rows' codes into L2, so that their ``R * nb * 16`` bytes have arrived
    when this block ends (see :data:`AHEAD_ROW_BYTES`).
    """
    cstep, xstep = (16, 16) if wide else (16, 32)

    @intrinsic
    def block(typingctx, codes, x, cb16, o0, i0, b0, nb, acc):
        sig = types.void(codes, x, cb16, o0, i0, b0, nb, acc)

        def codegen(context, builder, signature, args):
            ca = context.make_array(signature.args[0])(context, builder, args[0])
            xa = context.make_array(signature.args[1])(context, builder, args[1])
            cba = context.make_array(signature.args[2])(context, builder, args[2])
            aa = context.make_array(signature.args[7])(context, builder, args[7])
            intp = context.get_value_type(types.intp)
            o0_, i0_, b0_, nb_ = (context.cast(builder, v, t, types.intp)
                                  for v, t in zip(args[3:7], signature.args[3:7]))
            c_cols = cgutils.unpack_tuple(builder, ca.shape, 2)[1]
            x_cols = cgutils.unpack_tuple(builder, xa.shape, 2)[1]
            i8, i32, f32 = ir.IntType(8), ir.IntType(32), ir.FloatType()
            v16b, v16i, v16f = ir.VectorType(i8, 16), ir.VectorType(i32, 16), ir.VectorType(f32, 16)
            perm = declare(builder.module, "llvm.x86.avx512.permvar.sf.512",
                            ir.FunctionType(v16f, [v16f, v16i]))
            fma = declare(builder.module, "llvm.fma.v16f32", ir.FunctionType(v16f, [v16f, v16f, v16f]))
            perm2 = declare(builder.module, "llvm.x86.avx512.vpermi2var.ps.512",
                             ir.FunctionType(v16f, [v16f, v16i, v16f]))

            def vload(ptr, vty):
                return builder.load(builder.bitcast(ptr, vty.as_pointer()), align=1)

            table = vload(cba.data, v16f)
            table_hi = vload(builder.gep(cba.data, [intp(16)]), v16f) if wide else None
            nxt_rows = builder.gep(ca.data, [builder.mul(builder.add(o0_, intp(R)), c_cols)])
            crow = [builder.gep(ca.data, [builder.add(builder.mul(builder.add(o0_, intp(r)), c_cols),
                                                      builder.mul(b0_, intp(cstep)))]) for r in range(R)]
            xrow = [builder.gep(xa.data, [builder.add(builder.mul(builder.add(i0_, intp(c)), x_cols),
                                                      builder.mul(b0_, intp(xstep)))]) for c in range(C)]
            aptr = [builder.gep(aa.data, [intp(16 * (r * stride + c))]) for r in range(R) for c in range(C)]
            init = [vload(p, v16f) for p in aptr]
            mask = ir.Constant(v16i, [15] * 16)
            four = ir.Constant(v16i, [4] * 16)

            pre = builder.block
            loop = builder.append_basic_block("cb4_loop")
            done = builder.append_basic_block("cb4_done")
            builder.cbranch(builder.icmp_signed(">", nb_, intp(0)), loop, done)

            builder.position_at_end(loop)
            idx, accs = loop_phis(builder, intp, v16f, init, pre)
            coff, xoff = builder.mul(idx, intp(cstep)), builder.mul(idx, intp(xstep))
            if ahead:      # the next rows are contiguous: R * cstep bytes of them per step
                for line in range(0, R * cstep, 64):
                    prefetch(builder, builder.gep(nxt_rows, [builder.add(builder.mul(idx, intp(R * cstep)), intp(line))]))
            wlo, whi = [], []
            for r in range(R):
                b = builder.zext(vload(builder.gep(crow[r], [coff]), v16b), v16i)
                if wide:
                    wlo.append(builder.call(perm2, [table, b, table_hi]))
                else:
                    wlo.append(builder.call(perm, [table, builder.and_(b, mask)]))
                    whi.append(builder.call(perm, [table, builder.lshr(b, four)]))
            xlo = [vload(builder.gep(p, [xoff]), v16f) for p in xrow]
            xhi = [] if wide else [vload(builder.gep(p, [builder.add(xoff, intp(16))]), v16f) for p in xrow]
            new = []
            for r in range(R):
                for c in range(C):
                    a = builder.call(fma, [xlo[c], wlo[r], accs[r * C + c]])
                    new.append(a if wide else builder.call(fma, [xhi[c], whi[r], a]))
            nxt = builder.add(idx, intp(1))
            end = builder.block
            idx.add_incoming(nxt, end)
            for a, v in zip(accs, new):
                a.add_incoming(v, end)
            builder.cbranch(builder.icmp_signed("<", nxt, nb_), loop, done)

            builder.position_at_end(done)
            fins = []
            for v0, v1 in zip(init, new):
                fin = builder.phi(v16f)
                fin.add_incoming(v0, pre)
                fin.add_incoming(v1, end)
                fins.append(fin)
            for p, fin in zip(aptr, fins):
                builder.store(fin, builder.bitcast(p, v16f.as_pointer()), align=1)
            return context.get_dummy_value()

        return sig, codegen

    block.__name__ = f"_block{5 if wide else 4}_{R}x{C}_{stride}"
    return block


_B1 = {(r, w): _make_block(r, 1, 1, w) for r in (1, ROWS1) for w in (False, True)}
_p8_ahead = _make_block(ROWS1, 1, 1, ahead=True)
_B = {(r, c, w): _make_block(r, c, COLS, w) for r in (1, ROWS) for c in range(1, COLS + 1) for w in (False, True)}
_p8, _p1, _w8, _w1 = _B1[ROWS1, False], _B1[1, False], _B1[ROWS1, True], _B1[1, True]
_pR3, _pR2, _pR1 = (_B[ROWS, c, False] for c in (3, 2, 1))
_p13, _p12, _p11 = (_B[1, c, False] for c in (3, 2, 1))
_wR3, _wR2, _wR1 = (_B[ROWS, c, True] for c in (3, 2, 1))
_w13, _w12, _w11 = (_B[1, c, True] for c in (3, 2, 1))


@njit(cache=True, nogil=True)
def _block1(codes, x, cb, o0, nb, rows, wide, acc):
    """One input row: ROWS1 (or 1) weight rows over every column block."""
    if wide:
        if rows == ROWS1:
            _w8(codes, x, cb, o0, 0, 0, nb, acc)
        else:
            _w1(codes, x, cb, o0, 0, 0, nb, acc)
    elif rows == ROWS1:
        if codes.shape[1] <= AHEAD_ROW_BYTES:
            _p8_ahead(codes, x, cb, o0, 0, 0, nb, acc)
        else:
            _p8(codes, x, cb, o0, 0, 0, nb, acc)
    else:
        _p1(codes, x, cb, o0, 0, 0, nb, acc)


@njit(cache=True, nogil=True)
def _row_block1(codes, x, cb, o0, nb, wide, bias, out):
    """``out[0, o0:o0 + ROWS1]`` (fewer at the end) for the one input row x[0], plus ``bias`` unless
    it is empty."""
    n_out = codes.shape[0]
    acc = np.zeros(ROWS1 * 16, np.float32)
    if n_out - o0 >= ROWS1:
        _block1(codes, x, cb, o0, nb, ROWS1, wide, acc)
    else:
        for r in range(n_out - o0):
            _block1(codes, x, cb, o0 + r, nb, 1, wide, acc[r * 16:r * 16 + 16])
    for r in range(min(ROWS1, n_out - o0)):
        y = reduce16(acc[r * 16:r * 16 + 16])
        out[0, o0 + r] = y + bias[o0 + r] if bias.shape[0] > 0 else y


@njit(cache=True, nogil=True)
def _block(codes, x, cb, o0, i0, b0, m, rows, cols, wide, acc):
    """Dispatch one register block of ``rows`` (ROWS or 1) x ``cols`` (1..COLS) to its intrinsic."""
    if wide:
        if rows == ROWS:
            if cols == 3:
                _wR3(codes, x, cb, o0, i0, b0, m, acc)
            elif cols == 2:
                _wR2(codes, x, cb, o0, i0, b0, m, acc)
            else:
                _wR1(codes, x, cb, o0, i0, b0, m, acc)
        elif cols == 3:
            _w13(codes, x, cb, o0, i0, b0, m, acc)
        elif cols == 2:
            _w12(codes, x, cb, o0, i0, b0, m, acc)
        else:
            _w11(codes, x, cb, o0, i0, b0, m, acc)
    elif rows == ROWS:
        if cols == 3:
            _pR3(codes, x, cb, o0, i0, b0, m, acc)
        elif cols == 2:
            _pR2(codes, x, cb, o0, i0, b0, m, acc)
        else:
            _pR1(codes, x, cb, o0, i0, b0, m, acc)
    elif cols == 3:
        _p13(codes, x, cb, o0, i0, b0, m, acc)
    elif cols == 2:
        _p12(codes, x, cb, o0, i0, b0, m, acc)
    else:
        _p11(codes, x, cb, o0, i0, b0, m, acc)


def _matmul_vpermps(codes, x, cb, wide, out):
    """``codebook_matmul4`` (``wide=False``) or ``codebook_matmul8`` (``wide=True``, codebooks of at
    most 32 entries), same layouts, same bits, with the codebook held in registers.

    IN  codes (n_out, nb*16) uint8: packed 4-bit codes, or one code per byte; x (n, nb*32) or
        (n, nb*16) float32; cb (16,) float32 (packed) or (32,) float32 (wide), zero-padded.
    OUT out (n, n_out) float32, overwritten.
    """
    n = x.shape[0]
    n_out, width = codes.shape
    nb = width // 16
    if n == 1:   # one input row: ROWS1 weight rows per block, the whole row length in registers
        no_bias = np.zeros(0, np.float32)   # not a global: Numba freezes those read-only (a second build)
        for ob in prange((n_out + ROWS1 - 1) // ROWS1):
            _row_block1(codes, x, cb, ob * ROWS1, nb, wide, no_bias, out)
        return
    nsb = (n_out + SUPER - 1) // SUPER
    nchunk = (n + NCHUNK - 1) // NCHUNK
    for t in prange(nsb * nchunk):    # SUPER rows x NCHUNK samples share each chunk of the inputs
        sb = t // nchunk
        s0 = sb * SUPER
        i0 = (t - sb * nchunk) * NCHUNK
        nrow = min(SUPER, n_out - s0)
        m_i = min(NCHUNK, n - i0)
        nib = (m_i + COLS - 1) // COLS
        accs = np.zeros(((nrow + ROWS - 1) // ROWS, nib, ROWS * COLS * 16), np.float32)
        for b0 in range(0, nb, KCHUNK):
            m = min(KCHUNK, nb - b0)
            for j in range(accs.shape[0]):
                o0 = s0 + j * ROWS
                rows = min(ROWS, s0 + nrow - o0)
                for ii in range(nib):
                    cols = min(COLS, m_i - ii * COLS)
                    if rows == ROWS:
                        _block(codes, x, cb, o0, i0 + ii * COLS, b0, m, ROWS, cols, wide, accs[j, ii])
                    else:
                        for r in range(rows):
                            _block(codes, x, cb, o0 + r, i0 + ii * COLS, b0, m, 1, cols, wide,
                                   accs[j, ii, r * COLS * 16:])
        for j in range(accs.shape[0]):
            for r in range(min(ROWS, nrow - j * ROWS)):
                for ii in range(nib):
                    for c in range(min(COLS, m_i - ii * COLS)):
                        k = (r * COLS + c) * 16
                        out[i0 + ii * COLS + c, s0 + j * ROWS + r] = reduce16(accs[j, ii, k:k + 16])


codebook_matmul_vpermps, codebook_matmul_vpermps_parallel = both(_matmul_vpermps)


def _gemv(codes, cb, wide, x, perm, bias, scale, shift, res, lo, hi, act, alpha, beta, out):
    """One sample as one call: ``codebook_matmul_vpermps`` of ``x[perm]`` (zero-padded to the
    codes' width), plus ``bias``, then the epilogue and activation of nncomp/kernels/epilogue.py
    (the contract of nncomp/kernels/dense_small.py's mat-vec; the product's bits are the codebook
    contract's).

    IN  codes, cb, wide as in codebook_matmul_vpermps; x (k0,) float32; perm (k,) int64 indices into
        x or (0,) (x as it is, k = k0), k <= the codes' columns; bias (n_out,) float32; scale,
        shift (n_out,) or (0,); res (1, n_out) or (0, n_out); lo, hi float32; act an ACT_* code.
    OUT out (1, n_out) float32 C-contiguous, overwritten.
    """
    n_out, width = codes.shape
    nb = width // 16
    xs = np.zeros((1, width if wide else 2 * width), np.float32)
    if perm.shape[0] > 0:
        for i in range(perm.shape[0]):
            xs[0, i] = x[perm[i]]
    else:
        xs[0, :x.shape[0]] = x
    for ob in prange((n_out + ROWS1 - 1) // ROWS1):
        _row_block1(codes, xs, cb, ob * ROWS1, nb, wide, bias, out)
    if scale.shape[0] > 0 or res.shape[0] > 0 or lo > -np.inf or hi < np.inf:
        epilogue_rows(out, scale, shift, res, lo, hi)
    if act != 0:
        activation_rows(out, act, alpha, beta)


codebook_gemv_epilogue, codebook_gemv_epilogue_parallel = both(_gemv, error_model="numpy")
