"""CSR (compressed sparse row) kernels: ``y = x @ W.T`` with W stored as rows of (column, value).

Storage (nncomp/matrices/csr.py): ``data`` float32 values, ``indices`` uint16 column indices when
``n_in <= 65536`` (zero-extended to 32 bits: 16-lane gathers) else int32, ``indptr`` int32 (int64
beyond 2**31 - 1 nonzeros); column indices sorted within rows. Nothing here validates anything.

- batch 1 (``csr_matvec``): one gathered dot product per output row, rows spread over threads; on
  CPUs without AVX-512, one loop per row (``csr_matvec_rows``: measured faster there, below). Inner
  loops run over slices so they start at 0 (a loop from a non-zero ``lo`` defeats LLVM's vectorizer)
  and the reduction is compiled with ``fastmath`` (float sums vectorize only then). Memory-bound: it
  reads each nonzero's 4 + 2 bytes once, a row in chunks of CHUNK_NNZ nonzeros that each prefetch
  the lines read AHEAD_NNZ nonzeros later (nncomp/kernels/_ir.py ``prefetch_chunk``; fc7 at 90%
  from DRAM: 0.66-0.68 -> 0.61-0.63 ms, Xeon with AMX, 2 threads).
- batch > 1 (``csr_matmul``): one pass over the sparse matrix for all samples. The input is
  transposed (zero-padded to a multiple of 16 samples) so that a nonzero ``(o, c, v)`` adds
  ``v * xt[c, s0:s0 + 16k]`` to k vector accumulators: a row's whole dot product for 16-64 samples
  stays in registers. LLVM does not keep array accumulators in registers across a loop with a
  runtime trip count (a plain-loop version went through memory on every nonzero and ran 2-4x slower),
  so the tile is written in LLVM IR (``_tile``) with target-independent ``<16 x float>`` vectors and
  ``llvm.fma``: LLVM lowers them to zmm, ymm or xmm instructions on any x86-64, no feature check needed.
  Small batches (<= 64 samples) spread output rows over threads; large ones (convolution patches)
  spread blocks of 64 samples, each transposed into a thread-local buffer that stays in L2.
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

LANES = 16           # floats per vector register (zmm)
TILE = 4             # vectors per tile: 64 samples
PANEL_CHUNKS = 32    # row chunks (parallel units) of a column-panel product


def _make_tile(nvec, add=False):
    """Intrinsic ``tile(data, indices, xt, lo, hi, s0, acc, o)``: one output row for 16*nvec samples.

    ``acc[o, s0 + i] = sum_{lo <= j < hi} data[j] * xt[indices[j], s0 + i]`` for ``i < 16*nvec``
    (``add``: ``+=``, for a row summed over column panels),
    with two interleaved sets of accumulators (even and odd j) to hide the FMA latency. ``data`` is
    the float32 values, or a tuple ``(codes, cb)`` of uint8 codes into a float32 codebook (the value
    of entry j is ``cb[codes[j]]``: one more scalar load per nonzero).
    """

    @intrinsic
    def tile(typingctx, data, indices, xt, lo, hi, s0, acc, o):
        sig = types.void(data, indices, xt, lo, hi, s0, acc, o)
        signed = indices.dtype.signed
        coded = isinstance(data, types.BaseTuple)

        def codegen(context, builder, signature, args):
            if coded:
                c_ty, cb_ty = signature.args[0].types
                c_arr = context.make_array(c_ty)(context, builder, builder.extract_value(args[0], 0))
                cb_arr = context.make_array(cb_ty)(context, builder, builder.extract_value(args[0], 1))
            else:
                d_arr = context.make_array(signature.args[0])(context, builder, args[0])
            i_arr = context.make_array(signature.args[1])(context, builder, args[1])
            x_arr = context.make_array(signature.args[2])(context, builder, args[2])
            a_arr = context.make_array(signature.args[6])(context, builder, args[6])
            intp = context.get_value_type(types.intp)
            lo_, hi_, s0_, o_ = (context.cast(builder, args[k], signature.args[k], types.intp)
                                 for k in (3, 4, 5, 7))
            x_cols = cgutils.unpack_tuple(builder, x_arr.shape, 2)[1]
            a_cols = cgutils.unpack_tuple(builder, a_arr.shape, 2)[1]
            f32 = ir.FloatType()
            vty = ir.VectorType(f32, LANES)
            fma = builder.module.globals.get("llvm.fma.v16f32") or ir.Function(
                builder.module, ir.FunctionType(vty, [vty, vty, vty]), "llvm.fma.v16f32")
            mask0 = ir.Constant(ir.VectorType(ir.IntType(32), LANES), None)

            def step(j, accs):
                c = builder.load(builder.gep(i_arr.data, [j]))
                c = builder.sext(c, intp) if signed else builder.zext(c, intp)
                if coded:
                    code = builder.zext(builder.load(builder.gep(c_arr.data, [j])), intp)
                    v = builder.load(builder.gep(cb_arr.data, [code]))
                else:
                    v = builder.load(builder.gep(d_arr.data, [j]))
                vb = builder.shuffle_vector(builder.insert_element(ir.Constant(vty, ir.Undefined), v,
                                                                  ir.IntType(32)(0)), ir.Constant(vty, ir.Undefined), mask0)
                base = builder.gep(x_arr.data, [builder.add(builder.mul(c, x_cols), s0_)])
                out = []
                for k, a in enumerate(accs):
                    p = builder.bitcast(builder.gep(base, [intp(LANES * k)]), vty.as_pointer())
                    out.append(builder.call(fma, [vb, builder.load(p, align=4), a]))
                return out

            merged = paired_sum(builder, intp, vty, lo_, hi_, nvec, step, builder.fadd)
            dst = builder.gep(a_arr.data, [builder.add(builder.mul(o_, a_cols), s0_)])
            for k in range(nvec):
                p = builder.bitcast(builder.gep(dst, [intp(LANES * k)]), vty.as_pointer())
                v = builder.fadd(builder.load(p, align=4), merged[k]) if add else merged[k]
                builder.store(v, p, align=4)
            return context.get_dummy_value()

        return sig, codegen

    tile.__name__ = f"_tile{nvec}{'_add' if add else ''}"
    return tile


def _plain_tile(nvec, add=False):
    """The tile as plain Python, for NUMBA_DISABLE_JIT runs (an intrinsic needs the compiler)."""
    def tile(data, indices, xt, lo, hi, s0, acc, o):
        cols = indices[lo:hi].astype(np.int64)
        values = data[1][data[0][lo:hi]] if isinstance(data, tuple) else data[lo:hi]
        part = values @ xt[cols, s0:s0 + LANES * nvec]
        acc[o, s0:s0 + LANES * nvec] = acc[o, s0:s0 + LANES * nvec] + part if add else part
    return tile


_make = _plain_tile if numba.config.DISABLE_JIT else _make_tile
_tile1, _tile2, _tile3, _tile4 = (_make(k) for k in (1, 2, 3, 4))
_add1, _add2, _add3, _add4 = (_make(k, True) for k in (1, 2, 3, 4))


def _matvec(data, indices, indptr, x, out):
    """One sample: ``out[o] = sum_j data[j] * x[indices[j]]`` over row o's nonzeros.

    IN  data (nnz,) float32; indices (nnz,) uint16 or int32, each < len(x); indptr (n_out + 1,)
        int32/int64 non-decreasing from 0 to nnz; x (n_in,) float32.
    OUT out (n_out,) float32; an empty row gives 0.
    """
    for o in prange(indptr.shape[0] - 1):
        lo = indptr[o]
        hi = indptr[o + 1]
        s = np.float32(0.0)
        for j0 in range(lo, hi, CHUNK_NNZ):
            j1 = min(j0 + CHUNK_NNZ, hi)
            _ir.prefetch_chunk(data, indices, j0)
            d = data[j0:j1]
            ix = indices[j0:j1]
            for j in range(j1 - j0):
                s += d[j] * x[ix[j]]
        out[o] = s


def _matvec_rows(data, indices, indptr, x, out):
    """:func:`_matvec` with each row's sum one loop over all its nonzeros (no chunks, no prefetch)."""
    for o in prange(indptr.shape[0] - 1):
        lo = indptr[o]
        hi = indptr[o + 1]
        d = data[lo:hi]
        ix = indices[lo:hi]
        s = np.float32(0.0)
        for j in range(hi - lo):
            s += d[j] * x[ix[j]]
        out[o] = s


csr_matvec_chunked, csr_matvec_chunked_parallel = both(_matvec, fastmath=True)
csr_matvec_rows, csr_matvec_rows_parallel = both(_matvec_rows, fastmath=True)
# Prefetching chunks paid on a Xeon (AVX-512; fc7 from DRAM 0.66 -> 0.62 ms). Without AVX-512 the
# vectorised loop emulates its gathers with scalar loads, and a chunk's horizontal sum, loop tail and
# prefetches cost more than they save: on a Zen 3 guest (2 threads, alternating medians, random rows)
# one loop per row ran 0.33-0.49 ns a nonzero against 0.61-1.16 in chunks for 8-409 nonzeros a row,
# fc7 0.26 against 0.59 warm and 0.43 against 0.68 flushed, fc6 flushed 0.32 against 0.38 (per nonzero).
csr_matvec, csr_matvec_parallel = ((csr_matvec_chunked, csr_matvec_chunked_parallel) if isa.HAVE_AVX512
                                   else (csr_matvec_rows, csr_matvec_rows_parallel))


@jit
def _row_tiles(data, indices, indptr, xt, o, s0, nvec, acc):
    """Row o for vectors s0/16 .. s0/16 + nvec of xt's samples, in tiles of at most TILE vectors."""
    lo = indptr[o]
    hi = indptr[o + 1]
    while nvec > 0:
        if nvec >= 4:
            _tile4(data, indices, xt, lo, hi, s0, acc, o)
        elif nvec == 3:
            _tile3(data, indices, xt, lo, hi, s0, acc, o)
        elif nvec == 2:
            _tile2(data, indices, xt, lo, hi, s0, acc, o)
        else:
            _tile1(data, indices, xt, lo, hi, s0, acc, o)
        s0 += 64
        nvec -= 4


@jit
def _lower_bound(indices, lo, hi, c):
    """The first j in [lo, hi) with indices[j] >= c (hi if none): indices sorted within [lo, hi)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if indices[mid] < c:
            lo = mid + 1
        else:
            hi = mid
    return lo


@jit
def _row_part(data, indices, xt, lo, hi, nvec, acc, o):
    """Adds nonzeros [lo, hi) of row o into acc[o, :16 nvec] (nvec <= TILE)."""
    if nvec == 4:
        _add4(data, indices, xt, lo, hi, 0, acc, o)
    elif nvec == 3:
        _add3(data, indices, xt, lo, hi, 0, acc, o)
    elif nvec == 2:
        _add2(data, indices, xt, lo, hi, 0, acc, o)
    else:
        _add1(data, indices, xt, lo, hi, 0, acc, o)


def _matmul(data, indices, indptr, x, out, panel):
    """Many samples in one pass over the matrix: ``out = x @ W.T``.

    IN  data, indices, indptr as in csr_matvec, or data a tuple ``(codes, cb)``: uint8 codes (nnz,)
        into the float32 codebook cb (the stored values ``cb[codes]``); x (n, n_in) float32
        C-contiguous; panel: input columns per pass for up to 64 samples (0: all in one pass).
    OUT out (n, n_out) float32.
    """
    n, n_in = x.shape
    n_out = indptr.shape[0] - 1
    w = TILE * LANES
    if n <= w:                              # one sample tile: spread output rows over threads
        nvec = (n + LANES - 1) // LANES
        xt = np.zeros((n_in, nvec * LANES), np.float32)
        for c in prange(n_in):
            for i in range(n):
                xt[c, i] = x[i, c]
        if 0 < panel < n_in and n > 0:      # column panels: each thread sweeps its rows panel by panel,
            acc = np.zeros((n_out, nvec * LANES), np.float32)   # so the gathered xt rows stay in L2
            chunks = min(n_out, PANEL_CHUNKS)
            for t in prange(chunks):
                r0 = t * n_out // chunks
                r1 = (t + 1) * n_out // chunks
                pos = indptr[r0:r1 + 1].astype(np.int64)
                for c1 in range(panel, n_in + panel, panel):
                    for o in range(r0, r1):
                        lo = pos[o - r0]
                        end = np.int64(indptr[o + 1])
                        hi = _lower_bound(indices, lo, end, c1) if c1 < n_in else end
                        _row_part(data, indices, xt, lo, hi, nvec, acc, o)
                        pos[o - r0] = hi
        else:
            acc = np.empty((n_out, nvec * LANES), np.float32)
            for o in prange(n_out):
                _row_tiles(data, indices, indptr, xt, o, 0, nvec, acc)
        for i in prange(n):
            for o in range(n_out):
                out[i, o] = acc[o, i]
        return
    for b in prange((n + w - 1) // w):      # blocks of 64 samples, transposed in a local buffer
        b0 = b * w
        m = min(w, n - b0)
        nvec = (m + LANES - 1) // LANES
        xt = np.zeros((n_in, w), np.float32)
        for i in range(m):
            row = x[b0 + i]
            for c in range(n_in):
                xt[c, i] = row[c]
        acc = np.empty((n_out, w), np.float32)
        for o in range(n_out):
            _row_tiles(data, indices, indptr, xt, o, 0, nvec, acc)
        for i in range(m):
            dst = out[b0 + i]
            for o in range(n_out):
                dst[o] = acc[o, i]


csr_matmul, csr_matmul_parallel = both(_matmul, fastmath=True)

L2_SHARE = 0.5      # of the L2: the transposed inputs of one column panel


def column_panel(n_in, n, l2=None):
    """Input columns per pass of :func:`csr_matmul` for ``n`` samples (0: one pass): the widest panel
    whose transposed inputs (16-64 floats a column) fill half of the L2. fc6 (25088 inputs) at 32
    samples: 3.2 MB of inputs, gathered from L3 on a Xeon with a 2 MB L2, took twice fc7's time per
    nonzero (fc7's 0.5 MB stay in L2)."""
    if n > TILE * LANES:
        return 0
    width = 4 * LANES * ((n + LANES - 1) // LANES)     # bytes per column of xt
    cols = int(L2_SHARE * (isa.l2_bytes() if l2 is None else l2)) // width
    return 0 if n_in <= cols else max(cols, 256)
