"""int8 convolution with static activations as an implicit GEMM: no patch matrix at all.

The input image is quantized once, in the same call, into a zero-point-padded copy ``xp`` (n, hp,
wp, cp) of uint8 codes (borders and the channels past ``c`` hold the zero point, the code of 0.0).
Output pixels ``p, p+1, ...`` of one output line read, for kernel row ``i``, ``kw * cp``
consecutive codes that start ``sw * cp`` bytes apart: exactly the rows a VNNI ``vpdpbusd`` block
reads, with ``xstride = sw * cp``. So each kernel row (each tap when dilated across columns) is one
segment of a block product over the weight panels' matching k-groups; the block
(kernels/int8_vnni.int8_block) loops over the segments with its accumulators in registers (12
pixels x 16 channels, 8 x 32, 4 x 48 or 64), into a per-line int32 buffer that stays in L1. The
line is then dequantized 16 channels at a time, the bias and the fused epilogue applied (or, with a
max-pool, the pool over blocks of lines), and stored once. The unfused path (conv_algorithms.int8_patch_product) writes and reads a patch matrix
kh*kw times the input's size, an int32 array and a float32 result, then runs the epilogue: five
passes over arrays that outgrow the caches at batch 64.

Number formats as in kernels/int8.py. Weights are packed over the patch layout ``(kh, kw, cp)``
(channels padded to a multiple of 4 with zero weights), or, for an undilated layer of fewer than 4
channels, ``(kh, kwb)``: a kernel row's ``kw * c`` codes unpadded (``cp == c``), rounded up to
``kwb``, a multiple of 4, with zero weights (a 3 x 3 layer over one channel reads one group of 4
codes a kernel row, where padding each pixel to 4 channels read three); the padded input then holds
enough columns of the zero point for the last pixel's ``kwb`` codes. The float32 operations are the unfused
path's, in its order (``float32(acc - z * colsum[o]) * (sx * scale[o])``, ``+ bias``, then
epilogue_rows and activation_rows, element by element over several lines at once, the pool
kernel's max): bit-identical to it. Callers check
``int8_vnni.HAVE_BLOCK`` (the VNNI block, or the AVX2 one of kernels/int8_avx2.py reading int16 codes).
"""
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from ._ir import loop_latch, loop_phis
from ._jit import both, jit
from .int8 import quantize_run, quantize_value
from .int8_vnni import FULL_ROWS, int8_block
from .pool import pool16
from .sparse_small import finish_row


@intrinsic
def dequant16(typingctx, acc, aoff, zc, mul, bias, dst, doff, nvec):
    """``dst[doff + j] = float32(acc[aoff + j] - zc[j]) * mul[j] + bias[j]`` for ``j < 16 * nvec``,
    16 lanes at a time (an int32 difference, exact here; a multiply, then an add: no fused
    multiply-add, the unfused path's float32 operations)."""
    sig = types.void(acc, aoff, zc, mul, bias, dst, doff, nvec)

    def codegen(context, builder, signature, args):
        adata, zdata, mdata, bdata, ddata = (context.make_array(signature.args[k])(context, builder, args[k]).data
                                             for k in (0, 2, 3, 4, 5))
        intp = context.get_value_type(types.intp)
        aoff_, doff_, n_ = (context.cast(builder, args[k], signature.args[k], types.intp) for k in (1, 6, 7))
        vi, vf = ir.VectorType(ir.IntType(32), 16), ir.VectorType(ir.FloatType(), 16)
        pre = builder.block
        loop = builder.append_basic_block("deq_loop")
        done = builder.append_basic_block("deq_done")
        builder.cbranch(builder.icmp_signed(">", n_, intp(0)), loop, done)
        builder.position_at_end(loop)
        i, _ = loop_phis(builder, intp, vi, [], pre)
        off = builder.mul(i, intp(16))

        def load(data, base, ty):
            return builder.load(builder.bitcast(builder.gep(data, [builder.add(base, off)]), ty.as_pointer()), align=4)
        a = builder.sub(load(adata, aoff_, vi), load(zdata, intp(0), vi))
        y = builder.fadd(builder.fmul(builder.sitofp(a, vf), load(mdata, intp(0), vf)), load(bdata, intp(0), vf))
        builder.store(y, builder.bitcast(builder.gep(ddata, [builder.add(doff_, off)]), vf.as_pointer()), align=4)
        loop_latch(builder, intp, i, [], [], n_, loop, done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return sig, codegen


@jit(inline="always")
def _pad_row(x, r, s, z, top, left, out):
    """Row ``r`` (of n * hp) of the zero-point-padded codes ``out`` (n, hp, wp, cp) of float32 NHWC
    ``x``: ``x[b, i, j, k]`` as ``clip(rint(x / s) + z, 0, 255)`` (kernels/int8.quantize_value) at
    ``[b, top + i, left + j, k]``, the zero point elsewhere; returns the number of NaN or infinite
    values read."""
    n, h, w, c = x.shape
    _, hp, wp, cp = out.shape
    lo, hi = np.float32(0.0), np.float32(255.0)
    fill = np.uint8(z)
    b = r // hp
    i = r - b * hp - top
    line = out[b, r - b * hp].reshape(wp * cp)
    if i < 0 or i >= h:
        line[:] = fill
        return 0
    line[:left * cp] = fill
    line[(left + w) * cp:] = fill
    if cp == c:             # one contiguous run of w * c values
        return quantize_run(x[b, i].reshape(w * c), line[left * cp:(left + w) * cp], s, z, lo, hi)
    bad = 0                 # few channels (a first layer): value by value
    src = x[b, i].reshape(w * c)
    for j in range(w):
        o = (left + j) * cp
        for k in range(c):
            v = src[j * c + k]
            bad += not (abs(v) <= np.float32(3.4028235e38))
            line[o + k] = quantize_value(v, s, z, lo, hi)
        for k in range(c, cp):
            line[o + k] = fill
    return bad


@jit(inline="always")
def _line(xp, b, oh, kh, kw, sh, sw, dh, dw, wp, zc, mul, bias, acc, ow_n, dst, off):
    """Output line ``oh`` of image ``b`` into ``dst[off:off + ow_n * co]`` (flat): the VNNI product
    into ``acc`` (>= ow_n, ncols), then dequantized with the bias."""
    _, hp, wpx, cp = xp.shape
    n_p, n_g, _ = wp.shape
    ncols = acc.shape[1]
    whole = dw == 1             # a kernel row's taps are kw * cp consecutive codes: one segment
    kwb = 4 * n_g // kh         # a kernel row's codes in the weight: kw * cp, or rounded up to 4 (packed rows)
    seg_g = kwb // 4 if whole else cp // 4
    acc[:] = 0
    for u in range((n_p + 3) // 4):
        nb = min(4, n_p - 4 * u)
        full = FULL_ROWS[nb]
        p0 = 0
        while p0 < ow_n:
            mr = full if ow_n - p0 >= full else min(4, ow_n - p0)
            woff = 4 * u * n_g * 64
            if whole:
                xoff = ((b * hp + oh * sh) * wpx + p0 * sw) * cp
                int8_block(mr, nb, xp, xoff, sw * cp, dh * wpx * cp, wp, woff, 64, n_g * 64, kwb * 16, seg_g,
                           kh, acc, p0 * ncols + 64 * u, ncols)
            else:
                for i in range(kh):
                    xoff = ((b * hp + oh * sh + i * dh) * wpx + p0 * sw) * cp
                    int8_block(mr, nb, xp, xoff, sw * cp, dw * cp, wp, woff + i * kw * cp * 16, 64, n_g * 64,
                               cp * 16, seg_g, kw, acc, p0 * ncols + 64 * u, ncols)
            p0 += mr
    dequant_line(acc, ow_n, zc, mul, bias, dst, off)


@jit(inline="always")
def dequant_line(acc, ow_n, zc, mul, bias, dst, off):
    """``dst[off + p * co + o] = float32(acc[p, o] - zc[o]) * mul[o] + bias[o]`` for the line's ``ow_n``
    pixels (:func:`dequant16` 16 channels at a time, the rest one by one)."""
    ncols = acc.shape[1]
    co = mul.shape[0]
    vec = co // 16
    for p in range(ow_n):
        dequant16(acc, p * ncols, zc, mul, bias, dst, off + p * co, vec)
        for o in range(16 * vec, co):
            dst[off + p * co + o] = np.float32(acc[p, o] - zc[o]) * mul[o] + bias[o]


# The epilogue (finish_row) runs over a task's consecutive output lines at once, up to this many
# values (256 KB, in L2 still): called per line, its slices and call cost ~100 ns a line even with
# nothing to do. 16 images, one thread, Xeon: 16->16 3x3 at 28x28 330 -> 267-291 us, 32->32 at
# 14x14 209 -> 168-191, at 7x7 63 -> 53-57, 16->64 at 28x28 749 -> 669-762 (noisy).
FINISH_VALUES = 1 << 16


def _conv(x, scale, zero, top, left, xp, kh, kw, sh, sw, dh, dw, oh_n, ow_n, wp, zc, mul, bias, escale, eshift,
          res, lo, hi, act, alpha, beta, pool, lines, out):
    """Static-int8 convolution of float32 NHWC ``x``: quantized into the padded codes ``xp``, then
    the implicit GEMM, ``lines`` output lines (or pooled lines) per task, and with ``pool`` >= 2 a
    ``pool`` x ``pool`` max-pool of stride ``pool`` (floor mode) over each block of lines; returns
    the number of NaN or infinite inputs (the caller raises: their codes are meaningless).

    IN  x (n, h, w, c) float32 C-contiguous; scale float32 > 0 and zero 0..255, its activation
        quantization; top, left the padding before the first row and column; kernel (kh, kw), stride
        (sh, sw), dilation (dh, dw) (output pixel (i, j) reads padded rows ``i * sh + a * dh``,
        columns ``j * sw + b * dw``); output size (oh_n, ow_n) before pooling; wp (n_panels, kh * kwb
        // 4, 64) int8 panels of 16 channels over patches laid out (kh, kwb), kwb = kw * cp (or, with
        cp == c < 4 and dw == 1, kw * c rounded up to a multiple of 4, zero weights past kw * c),
        kh * kwb <= 65536; zc (>= co,) int32 ``zero * rowsum(w)`` (exact: 255 * 128 * 65536 < 2**31, as is ``acc
        - zc``); mul (co,) float32 ``scale * wscale[o]``; bias (co,) float32; escale, eshift (co,) or
        (0,) (the epilogue's affine map, applied before the pool); res (n * oh_n * ow_n, co) float32 or
        (0, co) (none with a pool); lo, hi the clip; act, alpha, beta an activation code of
        kernels/epilogue.py (0: none); pool 0 or 1 (none) or >= 2; lines >= 1.
    OUT xp (n, hp, wp, cp) uint8 C-contiguous (int16 for the AVX2 block: int8_vnni.CODE), cp % 4 == 0 and
        cp >= c, or cp == c with the packed rows above; hp >= top + h, wp >= left + w and (packed rows)
        wp * cp >= ((ow_n - 1) * sw + kw - 1) * cp + kwb:
        the codes, the zero point in the padding; out (n * oh_q * ow_q, co) float32 C-contiguous, oh_q =
        oh_n // pool and ow_q = ow_n // pool with a pool (kernels/pool.maxpool_nhwc's max), else oh_n, ow_n.
    """
    s = np.float32(scale)
    z = np.float32(zero)
    bad = 0
    for r in prange(xp.shape[0] * xp.shape[1]):
        bad += _pad_row(x, r, s, z, top, left, xp)
    if bad:
        return bad
    n = xp.shape[0]
    co = out.shape[1]
    q = pool if pool > 1 else 1
    oh_q, ow_q = oh_n // q, ow_n // q
    total = n * oh_q
    flat = out.reshape(out.size)
    add = res.shape[0] > 0
    for t in prange((total + lines - 1) // lines):
        _task_start()
        acc = np.empty((_acc_rows(ow_n), 16 * wp.shape[0]), np.int32)
        buf = np.empty(q * ow_n * co if q > 1 else 0, np.float32)
        r1 = min(total, (t + 1) * lines)
        done = t * lines            # lines before this one have had their epilogue
        for r in range(t * lines, r1):
            b = r // oh_q
            if q == 1:
                _line(xp, b, r - b * oh_q, kh, kw, sh, sw, dh, dw, wp, zc, mul, bias, acc, ow_n, flat, r * ow_n * co)
                if (r + 1 - done) * ow_n * co >= FINISH_VALUES or r + 1 == r1:
                    finish_row(out[done * ow_n:(r + 1) * ow_n], escale, eshift,
                               res[done * ow_n:(r + 1) * ow_n] if add else res[0:0], lo, hi, act, alpha, beta)
                    done = r + 1
                continue
            for dr in range(q):
                _line(xp, b, (r - b * oh_q) * q + dr, kh, kw, sh, sw, dh, dw, wp, zc, mul, bias, acc, ow_n, buf,
                      dr * ow_n * co)
            _pool_lines(buf, q, ow_n, co, escale, eshift, res, lo, hi, act, alpha, beta, flat, r * ow_q * co)
        _task_end()
    return 0


# The product's hooks, replaced in kernels/int8_conv_amx.py's build of _conv: the rows of a task's
# int32 line buffer, and what a task does first and last (nothing here; the AMX tiles' configuration).
@jit(inline="always")
def _acc_rows(ow_n):
    return ow_n


@jit(inline="always")
def _task_start():
    pass


@jit(inline="always")
def _task_end():
    pass


@jit(inline="always")
def _pool_lines(buf, q, ow_n, co, escale, eshift, res, lo, hi, act, alpha, beta, flat, at0):
    """The epilogue of ``q`` output lines in ``buf`` (q * ow_n, co) flat, then their ``q`` x ``q``
    max-pool (kernels/pool.maxpool_nhwc's order and NaN rule) into ``flat[at0:at0 + (ow_n // q) * co]``."""
    finish_row(buf.reshape(q * ow_n, co), escale, eshift, res[0:0], lo, hi, act, alpha, beta)
    nv = co // 16
    for j in range(ow_n // q):
        at = at0 + j * co
        for v in range(nv):
            pool16(buf, j * q * co + 16 * v, co, ow_n * co, q, flat, at + 16 * v)
        if nv * 16 < co:
            flat[at + 16 * nv:at + co] = -np.inf
            for i in range(q):
                for jj in range(q):
                    src = (i * ow_n + j * q + jj) * co + 16 * nv
                    for k in range(co - 16 * nv):
                        val = buf[src + k]
                        if val > flat[at + 16 * nv + k] or val != val:
                            flat[at + 16 * nv + k] = val


int8_conv_nhwc, int8_conv_nhwc_parallel = both(_conv, error_model="numpy")
