"""AVX-512 VNNI fast path for u8 x s8 -> int32 matrix products (``vpdpbusd``).

LLVM never emits ``vpdpbusd`` (64 unsigned-byte x signed-byte multiply-adds per instruction) from
plain loops, so the micro-kernel here is written in LLVM IR through ``numba.extending.intrinsic``.
It works on weights packed in **panels** (the layout of ``quant.int8_matmul_u8s8``):

    wp (n_panels, n_groups, 4 * width) int8, wp[p, g, 4 * c + j] = w[p * width + c, 4 * g + j]

with ``width = 16 * nb`` output channels per panel (``nb`` in 1..4). One zmm register then holds 16
output channels x 4 consecutive inputs, and ``vpdpbusd(acc, broadcast(x[i, 4g:4g+4]), wp[p, g, ...])``
adds 64 products straight into the 16 output channels' int32 accumulators: no horizontal sums, and
only 4 activation bytes per 64 products cross the cache hierarchy. A block of ``mr`` activation rows
(up to 4 here, 8-12 in the convolution kernel) x ``nb`` registers of channels stays in up to 16 zmm
accumulators over a 1 KiB k-block (:func:`vnni_block`; its segments serve kernels/int8_conv.py).

Contract (shared with the portable kernel, which gives bit-identical results):
``out[i, o] += sum(int32(xu[i, k]) * int32(w[o, k]) for k in [k0, k1))``, exact in int32 because
``k1 - k0 <= 65536`` (255 * 128 * 65536 < 2**31). On a CPU without ``avx512_vnni`` the intrinsic
would not compile: :data:`int8_block` is then the AVX2 block (kernels/int8_avx2.py, int16 codes:
:func:`block_codes`), and callers check :data:`HAVE_BLOCK` (either). Signed activations use the zero-point trick
(``xu = x + 128``; the caller subtracts ``128 * rowsum(w)``).
"""
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from . import isa
from ._ir import declare, segment_loops
from ._jit import both, jit
from .int8_avx2 import CODE as CODE_AVX2, ROWS as ROWS_AVX2, avx2_block

HAVE_VNNI = isa.HAVE_VNNI
# Whether an int8 block runs here: VNNI's, else the AVX2 one (kernels/int8_avx2.py, the same
# sums). The matrices and layers check it (tests monkeypatch it to run the portable kernels).
HAVE_BLOCK = HAVE_VNNI or isa.HAVE_AVX2

MR = 4 if HAVE_VNNI else ROWS_AVX2   # activation rows per micro-kernel call (VNNI blocks: up to 4)
KB = 1024       # k-block (inputs) per call: a 64 KiB panel slice stays in L2 across the row blocks
ROWS = 16 * MR  # activation rows per parallel tile


def _make_block(mr, nb):
    """Intrinsic ``block(x, xoff, xstride, xseg, wp, woff, gstride, rstride, wseg, ngroups, nseg, out,
    ooff, ostride)``.

    Adds ``sum_{s < nseg} sum_{g < ngroups} x[row m, seg s, 4g:4g+4] . wp[seg s, group g]`` for ``mr``
    rows and ``16 * nb`` channels into ``out`` at flat ``ooff + m * ostride + channel``: row m of
    segment s starts at flat ``xoff + s * xseg + m * xstride`` into ``x``; channels ``16 r .. 16 r +
    15`` of group g of segment s are the 64 bytes at flat ``woff + s * wseg + g * gstride + r *
    rstride`` into ``wp``. The accumulators stay in registers across all segments (one load and
    store of ``out`` per call). A matrix product is one segment; a convolution's kernel rows are
    segments (kernels/int8_conv.py).
    """

    @intrinsic
    def block(typingctx, x, xoff, xstride, xseg, wp, woff, gstride, rstride, wseg, ngroups, nseg, out, ooff,
              ostride):
        sig = types.void(x, xoff, xstride, xseg, wp, woff, gstride, rstride, wseg, ngroups, nseg, out, ooff, ostride)

        def codegen(context, builder, signature, args):
            xdata, wdata, odata = (context.make_array(signature.args[k])(context, builder, args[k]).data
                                   for k in (0, 4, 11))
            intp = context.get_value_type(types.intp)
            xoff_, xs_, xseg_, woff_, gs_, rs_, wseg_, ng_, ns_, ooff_, os_ = (
                context.cast(builder, args[k], signature.args[k], types.intp)
                for k in (1, 2, 3, 5, 6, 7, 8, 9, 10, 12, 13))
            i32 = ir.IntType(32)
            v16 = ir.VectorType(i32, 16)
            vptr = v16.as_pointer()
            dpbusd = declare(builder.module, "llvm.x86.avx512.vpdpbusd.512", ir.FunctionType(v16, [v16, v16, v16]))
            undef = ir.Constant(v16, ir.Undefined)
            splat = ir.Constant(v16, [0] * 16)

            def group(ctx, g, accs):
                wbase, xrows = ctx
                wo = builder.mul(g, gs_)
                wv = [builder.load(builder.bitcast(builder.gep(wbase, [builder.add(wo, builder.mul(rs_, intp(r)))]),
                                                   vptr), align=1) for r in range(nb)]
                xo = builder.mul(g, intp(4))
                new = []
                for m in range(mr):
                    word = builder.load(builder.bitcast(builder.gep(xrows[m], [xo]), i32.as_pointer()), align=1)
                    xb = builder.shuffle_vector(builder.insert_element(undef, word, i32(0)), undef, splat)
                    new.extend(builder.call(dpbusd, [accs[m * nb + r], xb, wv[r]]) for r in range(nb))
                return new

            fins = segment_loops(builder, intp, v16, mr * nb, ns_, ng_, (xdata, xoff_, xseg_, xs_, mr),
                                 (wdata, woff_, wseg_), group)
            for k, fin in enumerate(fins):
                m, r = divmod(k, nb)
                pos = builder.add(ooff_, builder.add(builder.mul(os_, intp(m)), intp(16 * r)))
                ptr = builder.bitcast(builder.gep(odata, [pos]), vptr)
                builder.store(builder.add(builder.load(ptr, align=4), fin), ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return block


# Rows per full block by registers of channels: 12-16 accumulators hide vpdpbusd's latency (the
# convolution kernel's blocks; the matrix product keeps MR rows).
FULL_ROWS = (0, 12, 8, 4, 4)
_B = {(m, nb): _make_block(m, nb) for nb in range(1, 5) for m in (1, 2, 3, 4, FULL_ROWS[nb])}
_b11, _b21, _b31, _b41, _bc1 = (_B[m, 1] for m in (1, 2, 3, 4, 12))
_b12, _b22, _b32, _b42, _b82 = (_B[m, 2] for m in (1, 2, 3, 4, 8))
_b13, _b23, _b33, _b43 = (_B[m, 3] for m in range(1, 5))
_b14, _b24, _b34, _b44 = (_B[m, 4] for m in range(1, 5))


@jit
def vnni_block(mr, nb, *a):
    """The block intrinsic (:func:`_make_block`) of ``mr`` rows (1-4, or FULL_ROWS[nb]) x ``nb``
    16-channel registers, on its arguments ``a``."""
    if nb == 1:
        if mr == 12:
            _bc1(*a)
        elif mr == 4:
            _b41(*a)
        elif mr == 3:
            _b31(*a)
        elif mr == 2:
            _b21(*a)
        else:
            _b11(*a)
    elif nb == 2:
        if mr == 8:
            _b82(*a)
        elif mr == 4:
            _b42(*a)
        elif mr == 3:
            _b32(*a)
        elif mr == 2:
            _b22(*a)
        else:
            _b12(*a)
    elif nb == 3:
        if mr == 4:
            _b43(*a)
        elif mr == 3:
            _b33(*a)
        elif mr == 2:
            _b23(*a)
        else:
            _b13(*a)
    elif mr == 4:
        _b44(*a)
    elif mr == 3:
        _b34(*a)
    elif mr == 2:
        _b24(*a)
    else:
        _b14(*a)


int8_block = vnni_block if HAVE_VNNI else avx2_block
"""The int8 block of this CPU: :func:`vnni_block`, else the AVX2 one (only where :data:`HAVE_BLOCK`)."""
CODE = np.uint8 if HAVE_VNNI else CODE_AVX2
"""The type of the activation codes :data:`int8_block` reads (their values are the uint8 codes)."""


@jit
def _same(xu):
    return xu


@jit
def _widened(xu):
    return xu.astype(CODE_AVX2)


block_codes = _same if HAVE_VNNI else _widened
"""``block_codes(xu)``: the uint8 codes ``xu`` (C-contiguous) as :data:`int8_block` reads them
(itself with VNNI; an int16 copy for the AVX2 block, which then needs no widening in its loop)."""


def _matmul_vnni(xu, wp, k0, k1, out):
    """VNNI u8 x s8 product over panels: ``out[i, o] += sum_{k0 <= k < k1} xu[i, k] * w[o, k]`` (int32).

    IN  xu (n, kp) uint8 C-contiguous; wp (n_panels, kp // 4, 4 * width) int8 panels (module doc),
        width in (16, 32, 48, 64); k0 % 4 == k1 % 4 == 0, 0 <= k0 <= k1 <= kp, k1 - k0 <= 65536.
    OUT out (n, n_panels * width) int32 C-contiguous, added to.
    """
    n, kp = xu.shape
    n_panels, n_g, pw4 = wp.shape
    width = pw4 // 4
    n_cols = out.shape[1]
    xc = block_codes(xu)
    row_tiles = (n + ROWS - 1) // ROWS
    # A unit: 16-64 channels read as up to 4 registers per group: one panel of 32-64, or 4 panels of 16
    # (4 streams, each contiguous: the layout the AMX kernel wants).
    per = 4 if width == 16 else 1
    units = (n_panels + per - 1) // per
    gs = 64 if width == 16 else pw4
    rs = n_g * 64 if width == 16 else 64
    for t in prange(units * row_tiles):
        u = t // row_tiles
        r0 = (t - u * row_tiles) * ROWS
        r1 = min(n, r0 + ROWS)
        nb = min(4, n_panels - 4 * u) if width == 16 else width // 16
        col0 = 16 * per * u if width == 16 else u * width
        for kb in range(k0, k1, KB):
            ng = (min(kb + KB, k1) - kb) // 4
            woff = per * u * n_g * pw4 + kb // 4 * gs
            if HAVE_VNNI:           # the rows' codes broadcast once for the unit's nb registers
                for i in range(r0, r1, MR):
                    int8_block(min(MR, r1 - i), nb, xc, i * kp + kb, kp, 0, wp, woff, gs, rs, 0, ng, 1, out,
                               i * n_cols + col0, n_cols)
            else:                   # AVX2: one register of channels at a time, its weights kept in L1
                for r in range(nb):
                    for i in range(r0, r1, MR):
                        int8_block(min(MR, r1 - i), 1, xc, i * kp + kb, kp, 0, wp, woff + r * rs, gs, rs, 0, ng, 1,
                                   out, i * n_cols + col0 + 16 * r, n_cols)


int8_matmul_u8s8_vnni, int8_matmul_u8s8_vnni_parallel = both(_matmul_vnni)
