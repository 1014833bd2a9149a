"""Sparse int8 kernels: ``y = x @ W.T`` with W stored as CSR rows of (column, int8 code).

Storage (nncomp/matrices/csr_int8.py): ``codes`` int8 in ``-127..127``, ``indices`` uint16 column
indices when ``n_in <= 65536`` (else int32), ``indptr`` int32/int64, one float32 scale per output row
(or one per tensor): ``W[o, indices[j]] = codes[j] * scale[o]``. A nonzero costs 1 + 2 bytes instead
of CSR float32's 4 + 2. Nothing here validates anything.

Two arithmetics, each at batch 1 and batch > 1, serial and parallel (``both``):

- **weight-only** (``*_float``): ``out[i, o] = scale[o] * sum_j x[i, c_j] * float32(codes[j])`` in
  float32 (``fastmath``: the caller refuses non-finite inputs first).
- **integer** (``*_u8s8``): activation codes (uint8, with the zero point handled by the caller:
  nncomp/kernels/int8.py's ``int8_dequantize``) times weight codes, summed exactly:
  ``acc[i, o] = sum_j xu[i, c_j] * codes[j]`` in int32 over blocks of at most ``KBLOCK`` nonzeros
  (255 * 127 * 65536 < 2**31), the blocks added in int64.

Batch 1 is one gathered dot product per output row (inner loops over slices that start at 0, so LLVM
vectorizes them with 16-lane gathers; the integer kernel gathers the activation
codes from int32 words, packed four to a word for wide layers so that the table stays in L1). Batch > 1 makes one pass over the matrix per block of up to
64 samples: the block is transposed (``xt[c, s]``, zero-padded to a multiple of 16 samples) and each
nonzero adds ``code * xt[c, s0:s0 + 16k]`` to k vector accumulators kept in registers by an LLVM IR
tile (``_make_tile``; target-independent ``<16 x float>`` / ``<16 x i32>`` vectors that LLVM lowers to
zmm, ymm or xmm code on any x86-64). The integer tile reads the transposed codes as bytes
(``vpmovzxbd``), so a 64-sample block of a 25088-input layer is 1.6 MB.
"""
import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import _ir, isa
from ._ir import CHUNK_NNZ, paired_sum
from ._jit import both, jit

LANES = 16          # 32-bit lanes per vector register (zmm)
BLOCK = 64          # samples per pass over the matrix (4 vectors)
KBLOCK = 65536      # nonzeros per exact int32 partial sum


def _make_tile(nvec, integer):
    """Intrinsic ``tile(codes, indices, xt, lo, hi, acc, o)``: one output row for 16*nvec samples.

    ``acc[o, i] = sum_{lo <= j < hi} codes[j] * xt[indices[j], i]`` for ``i < 16*nvec``: int32 sums of
    ``int32(codes) * int32(xt)`` (xt uint8) if ``integer``, else float32 FMAs (xt float32).
    """

    @intrinsic
    def tile(typingctx, codes, indices, xt, lo, hi, acc, o):
        sig = types.void(codes, indices, xt, lo, hi, acc, o)
        signed = indices.dtype.signed

        def codegen(context, builder, signature, args):
            c_arr, i_arr, x_arr, a_arr = (context.make_array(signature.args[k])(context, builder, args[k])
                                          for k in (0, 1, 2, 5))
            intp = context.get_value_type(types.intp)
            lo_, hi_, o_ = (context.cast(builder, args[k], signature.args[k], types.intp) for k in (3, 4, 6))
            x_cols = cgutils.unpack_tuple(builder, x_arr.shape, 2)[1]
            a_cols = cgutils.unpack_tuple(builder, a_arr.shape, 2)[1]
            elem = ir.IntType(32) if integer else ir.FloatType()
            vty = ir.VectorType(elem, LANES)
            xty = ir.VectorType(ir.IntType(8), LANES) if integer else vty
            if not integer:
                fma = builder.module.globals.get("llvm.fma.v16f32") or ir.Function(
                    builder.module, ir.FunctionType(vty, [vty, vty, vty]), "llvm.fma.v16f32")
            mask0 = ir.Constant(ir.VectorType(ir.IntType(32), LANES), None)

            def step(j, accs):
                c = builder.load(builder.gep(i_arr.data, [j]))
                c = builder.sext(c, intp) if signed else builder.zext(c, intp)
                q = builder.load(builder.gep(c_arr.data, [j]))
                v = builder.sext(q, elem) if integer else builder.sitofp(q, elem)
                vb = builder.shuffle_vector(builder.insert_element(ir.Constant(vty, ir.Undefined), v,
                                                                  ir.IntType(32)(0)), ir.Constant(vty, ir.Undefined), mask0)
                base = builder.gep(x_arr.data, [builder.mul(c, x_cols)])
                out = []
                for k, a in enumerate(accs):
                    p = builder.bitcast(builder.gep(base, [intp(LANES * k)]), xty.as_pointer())
                    xv = builder.load(p, align=1)
                    out.append(builder.add(a, builder.mul(vb, builder.zext(xv, vty))) if integer
                               else builder.call(fma, [vb, xv, a]))
                return out

            merged = paired_sum(builder, intp, vty, lo_, hi_, nvec, step,
                                builder.add if integer else builder.fadd)
            dst = builder.gep(a_arr.data, [builder.mul(o_, a_cols)])
            for k, f in enumerate(merged):
                builder.store(f, builder.bitcast(builder.gep(dst, [intp(LANES * k)]), vty.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen

    tile.__name__ = f"_tile{nvec}{'i' if integer else 'f'}"
    return tile


def _plain_tile(nvec, integer):
    """The tile as plain Python, for NUMBA_DISABLE_JIT runs (an intrinsic needs the compiler)."""
    def tile(codes, indices, xt, lo, hi, acc, o):
        cols = indices[lo:hi].astype(np.int64)
        w = LANES * nvec
        if integer:
            acc[o, :w] = codes[lo:hi].astype(np.int64) @ xt[cols, :w].astype(np.int64)
        else:
            acc[o, :w] = codes[lo:hi].astype(np.float32) @ xt[cols, :w]
    return tile


_make = _plain_tile if numba.config.DISABLE_JIT else _make_tile
_ti1, _ti2, _ti3, _ti4 = (_make(k, True) for k in (1, 2, 3, 4))
_tf1, _tf2, _tf3, _tf4 = (_make(k, False) for k in (1, 2, 3, 4))


@jit
def _tiles_i(codes, indices, xt, lo, hi, acc, o, nvec):
    """Integer tile for nvec (1..4) vectors of samples: row o over nonzeros lo..hi."""
    if nvec == 4:
        _ti4(codes, indices, xt, lo, hi, acc, o)
    elif nvec == 3:
        _ti3(codes, indices, xt, lo, hi, acc, o)
    elif nvec == 2:
        _ti2(codes, indices, xt, lo, hi, acc, o)
    else:
        _ti1(codes, indices, xt, lo, hi, acc, o)


@jit
def _tiles_f(codes, indices, xt, lo, hi, acc, o, nvec):
    """Float tile for nvec (1..4) vectors of samples: row o over nonzeros lo..hi."""
    if nvec == 4:
        _tf4(codes, indices, xt, lo, hi, acc, o)
    elif nvec == 3:
        _tf3(codes, indices, xt, lo, hi, acc, o)
    elif nvec == 2:
        _tf2(codes, indices, xt, lo, hi, acc, o)
    else:
        _tf1(codes, indices, xt, lo, hi, acc, o)


def _matvec_float(codes, indices, indptr, scale, x, out):
    """Weight-only, one sample: ``out[o] = scale[o] * sum_j float32(codes[j]) * x[indices[j]]``.

    IN  codes (nnz,) int8; indices (nnz,) uint16 or int32, each < len(x); indptr (n_out + 1,) int32/int64
        non-decreasing from 0 to nnz; scale (n_out,) or (1,) float32; x (n_in,) float32, finite.
    OUT out (n_out,) float32; an empty row gives 0.
    """
    step = 0 if scale.shape[0] == 1 else 1
    for o in prange(indptr.shape[0] - 1):
        lo = indptr[o]
        hi = indptr[o + 1]
        s = np.float32(0.0)
        for j0 in range(lo, hi, CHUNK_NNZ):        # chunks prefetching ahead, as csr_matvec's
            j1 = min(j0 + CHUNK_NNZ, hi)
            _ir.prefetch_chunk(codes, indices, j0)
            d = codes[j0:j1]
            ix = indices[j0:j1]
            for j in range(j1 - j0):
                s += np.float32(d[j]) * x[ix[j]]
        out[o] = s * scale[o * step]


def _matvec_float_rows(codes, indices, indptr, scale, x, out):
    """:func:`_matvec_float` with each row's sum one loop (no chunks, no prefetch): as
    nncomp/kernels/csr.py's ``csr_matvec_rows``, for CPUs without AVX-512."""
    step = 0 if scale.shape[0] == 1 else 1
    for o in prange(indptr.shape[0] - 1):
        lo = indptr[o]
        hi = indptr[o + 1]
        d = codes[lo:hi]
        ix = indices[lo:hi]
        s = np.float32(0.0)
        for j in range(hi - lo):
            s += np.float32(d[j]) * x[ix[j]]
        out[o] = s * scale[o * step]


csr_int8_matvec_float_chunked, csr_int8_matvec_float_chunked_parallel = both(_matvec_float, fastmath=True)
csr_int8_matvec_float_rows, csr_int8_matvec_float_rows_parallel = both(_matvec_float_rows, fastmath=True)
csr_int8_matvec_float, csr_int8_matvec_float_parallel = (
    (csr_int8_matvec_float_chunked, csr_int8_matvec_float_chunked_parallel) if isa.HAVE_AVX512
    else (csr_int8_matvec_float_rows, csr_int8_matvec_float_rows_parallel))


def _matvec_u8s8(codes, indices, indptr, xw, packed, out):
    """Integer, one sample: ``out[o] = sum_j int32(codes[j]) * xu[indices[j]]``, exact.

    IN  codes, indices, indptr as in csr_int8_matvec_float; xw int32: the uint8 activation codes
        ``xu``, one per word (``packed`` False, ``(n_in,)``) or four per word, little-endian
        (``packed`` True, ``(ceil(n_in / 4),)``: ``xu.view(np.int32)`` of a copy padded to a multiple
        of 4). AVX-512 has no byte gather: packed, a dword gather plus a shift and a mask extracts each
        code, from a table a quarter the size that stays in L1 for wide layers.
    OUT out (n_out,) int64; int32 partial sums over at most KBLOCK nonzeros, added in int64.
    """
    for o in prange(indptr.shape[0] - 1):
        lo = indptr[o]
        hi = indptr[o + 1]
        total = np.int64(0)
        for b0 in range(lo, hi, KBLOCK):
            b1 = min(b0 + KBLOCK, hi)
            d = codes[b0:b1]
            ix = indices[b0:b1]
            s = np.int32(0)
            if packed:
                for j in range(b1 - b0):
                    c = np.int32(ix[j])
                    s += np.int32(np.int32(d[j]) * ((xw[c >> 2] >> ((c & 3) << 3)) & 255))
            else:
                for j in range(b1 - b0):
                    s += np.int32(np.int32(d[j]) * xw[ix[j]])
            total += s
        out[o] = total


csr_int8_matvec_u8s8, csr_int8_matvec_u8s8_parallel = both(_matvec_u8s8)


def _matmul_float(codes, indices, indptr, scale, x, out):
    """Weight-only, many samples, one pass over the matrix per 64 samples: ``out = x @ W.T``.

    IN  codes, indices, indptr, scale as in csr_int8_matvec_float; x (n, n_in) float32, finite.
    OUT out (n, n_out) float32.
    """
    n, n_in = x.shape
    n_out = indptr.shape[0] - 1
    step = 0 if scale.shape[0] == 1 else 1
    xt = np.zeros((n_in, (min(n, BLOCK) + LANES - 1) // LANES * LANES), np.float32)
    acc = np.empty((n_out, xt.shape[1]), np.float32)
    for b0 in range(0, n, BLOCK):
        m = min(BLOCK, n - b0)
        nvec = (m + LANES - 1) // LANES
        for c in prange(n_in):
            for i in range(m):
                xt[c, i] = x[b0 + i, c]
            for i in range(m, nvec * LANES):
                xt[c, i] = 0.0
        for o in prange(n_out):
            _tiles_f(codes, indices, xt, indptr[o], indptr[o + 1], acc, o, nvec)
            f = scale[o * step]
            for i in range(m):
                out[b0 + i, o] = acc[o, i] * f


csr_int8_matmul_float, csr_int8_matmul_float_parallel = both(_matmul_float, fastmath=True)


def _matmul_u8s8(codes, indices, indptr, xu, out):
    """Integer, many samples, one pass over the matrix per 64 samples: ``out = xu @ codes.T``, exact.

    IN  codes, indices, indptr as in csr_int8_matvec_float; xu (n, n_in) uint8 activation codes.
    OUT out (n, n_out) int64; int32 partial sums over at most KBLOCK nonzeros, added in int64.
    """
    n, n_in = xu.shape
    n_out = indptr.shape[0] - 1
    xt = np.zeros((n_in, (min(n, BLOCK) + LANES - 1) // LANES * LANES), np.uint8)
    acc = np.empty((n_out, xt.shape[1]), np.int32)
    for b0 in range(0, n, BLOCK):
        m = min(BLOCK, n - b0)
        nvec = (m + LANES - 1) // LANES
        for c in prange(n_in):
            for i in range(m):
                xt[c, i] = xu[b0 + i, c]
            for i in range(m, nvec * LANES):
                xt[c, i] = 0
        for o in prange(n_out):
            lo = indptr[o]
            hi = indptr[o + 1]
            for i in range(m):
                out[b0 + i, o] = 0
            k0 = lo
            while True:
                k1 = min(k0 + KBLOCK, hi)
                _tiles_i(codes, indices, xt, k0, k1, acc, o, nvec)
                for i in range(m):
                    out[b0 + i, o] += acc[o, i]
                k0 = k1
                if k0 >= hi:
                    break


csr_int8_matmul_u8s8, csr_int8_matmul_u8s8_parallel = both(_matmul_u8s8)
