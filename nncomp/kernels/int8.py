"""Portable int8 kernels: activation quantization, u8 x s8 products, dequantization, weight-only.

Number formats (docs in nncomp/matrices/int8.py):

- weights: int8 codes ``w`` (symmetric, ``-127..127`` from nncomp's quantizer), one float32 scale per
  output row (or one for the tensor): ``W ~= w * scale[o]``;
- activations: uint8 codes ``xu`` with a zero point ``z``: ``x ~= (xu - z) * sx``. Signed int8
  activations ``q`` are stored as ``xu = q + 128`` with ``z = 128``, so one u8 x s8 product serves both
  (the trick that lets AVX-512 VNNI ``vpdpbusd``, which multiplies unsigned by signed bytes, run them);
- quantization rounds half to even and saturates: ``xu = clip(rint(x / sx) + z, qmin, qmax)``, with
  ``x / sx`` an IEEE float32 division;
- products accumulate exactly in int32: ``acc = sum(xu * w) - z * colsum(w)``; output
  ``y = float32(acc) * float32(sx * scale[o])``;
- the u8 x s8 kernels read weights packed in panels of ``width`` (16-64) output channels x 4 inputs:
  ``wp[p, g, 4 * c + j] = w[p * width + c, 4 * g + j]`` (see kernels/int8_vnni.py for why).

The plain loops here give results bit-identical to the VNNI kernel (kernels/int8_vnni.py).
"""
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from ._ir import declare, loop_latch, loop_phis
from ._jit import both, jit

_BIG = np.float32(3.4028235e38)


@intrinsic
def _quantize16(typingctx, src, soff, dst, doff, nvec, scale, zero, lo, hi):
    """``nvec`` vectors of 16: ``dst[doff + j] = clip(rint(src[soff + j] / scale) + zero, lo, hi)``
    (uint8 or int16 ``dst``, NaN to ``lo``), the arithmetic of :func:`quantize_run` lane by lane (IEEE division and
    rounding, the same compares); returns how many of the values are NaN or infinite. LLVM's
    vector types are portable (two ymm registers on AVX2); Numba's own loop vectorizer kept to 8
    lanes on an AVX-512 Xeon (its tuning prefers 256-bit vectors), 1.3x slower."""
    sig = types.int64(src, soff, dst, doff, nvec, scale, zero, lo, hi)

    def codegen(context, builder, signature, args):
        sdata, ddata = (context.make_array(signature.args[k])(context, builder, args[k]).data for k in (0, 2))
        intp = context.get_value_type(types.intp)
        soff_, doff_, n_ = (context.cast(builder, args[k], signature.args[k], types.intp) for k in (1, 3, 4))
        f32 = ir.FloatType()
        s_, z_, lo_, hi_ = (context.cast(builder, args[k], signature.args[k], types.float32) for k in (5, 6, 7, 8))
        code = context.get_data_type(signature.args[2].dtype)    # uint8, or int16 (kernels/int8_avx2.CODE)
        vf, vi, vb = ir.VectorType(f32, 16), ir.VectorType(ir.IntType(32), 16), ir.VectorType(code, 16)
        undef = ir.Constant(vf, ir.Undefined)
        mask = ir.Constant(ir.VectorType(ir.IntType(32), 16), [0] * 16)

        def splat(v):
            return builder.shuffle_vector(builder.insert_element(undef, v, ir.IntType(32)(0)), undef, mask)
        vs, vz, vlo, vhi = splat(s_), splat(z_), splat(lo_), splat(hi_)
        big = ir.Constant(vf, [float(_BIG)] * 16)
        rint = declare(builder.module, "llvm.rint.v16f32", ir.FunctionType(vf, [vf]))
        fabs = declare(builder.module, "llvm.fabs.v16f32", ir.FunctionType(vf, [vf]))
        pre = builder.block
        loop = builder.append_basic_block("q16_loop")
        done = builder.append_basic_block("q16_done")
        builder.cbranch(builder.icmp_signed(">", n_, intp(0)), loop, done)

        builder.position_at_end(loop)
        i, (cnt,) = loop_phis(builder, intp, vi, [ir.Constant(vi, None)], pre)
        off = builder.mul(i, intp(16))
        v = builder.load(builder.bitcast(builder.gep(sdata, [builder.add(soff_, off)]), vf.as_pointer()), align=4)
        q = builder.fadd(builder.call(rint, [builder.fdiv(v, vs)]), vz)
        q = builder.select(builder.fcmp_ordered(">=", q, vlo), q, vlo)       # NaN fails: lo
        q = builder.select(builder.fcmp_ordered(">", q, vhi), vhi, q)
        builder.store(builder.fptoui(q, vb), builder.bitcast(builder.gep(ddata, [builder.add(doff_, off)]),
                                                             vb.as_pointer()), align=1)
        bad = builder.fcmp_unordered(">", builder.call(fabs, [v]), big)     # NaN or beyond the largest float
        new = builder.add(cnt, builder.zext(bad, vi))
        loop_latch(builder, intp, i, [cnt], [new], n_, loop, done)

        builder.position_at_end(done)
        fin = builder.phi(vi)
        fin.add_incoming(ir.Constant(vi, None), pre)
        fin.add_incoming(new, loop)
        add = declare(builder.module, "llvm.vector.reduce.add.v16i32", ir.FunctionType(ir.IntType(32), [vi]))
        return builder.sext(builder.call(add, [fin]), ir.IntType(64))

    return sig, codegen


@jit(inline="always")
def quantize_value(v, s, z, lo, hi):
    """One code ``clip(rint(v / s) + z, lo, hi)`` as uint8 (NaN gives ``lo``)."""
    q = np.float32(np.rint(v / s)) + z
    if not (q >= lo):   # also NaN: a defined code, never a poison conversion
        q = lo
    elif q > hi:
        q = hi
    return np.uint8(q)


@jit(inline="always")
def quantize_run(src, dst, s, z, lo, hi):
    """``dst[k] = quantize_value(src[k], ...)`` over 1-D contiguous runs, 16 values at a time in
    :func:`_quantize16`; returns the number of NaN or infinite values."""
    n = src.shape[0]
    m = n // 16
    bad = _quantize16(src, 0, dst, 0, m, s, z, lo, hi) if m > 0 else 0
    for k in range(16 * m, n):
        v = src[k]
        bad += not (abs(v) <= _BIG)
        dst[k] = quantize_value(v, s, z, lo, hi)
    return bad


def _quantize(x, scale, zero, qmin, qmax, out):
    """Quantize float32 activations to uint8 codes; returns the number of non-finite inputs.

    IN  x (n, k) float32; scale float32 > 0; zero, qmin, qmax ints in 0..255 (qmin <= zero <= qmax).
    OUT out (n, kp) uint8, kp >= k: ``clip(rint(x / scale) + zero, qmin, qmax)``; columns k.. get
        ``zero``. Non-finite inputs are counted (the caller raises); their codes are meaningless.
    """
    n, k = x.shape
    kp = out.shape[1]
    s = np.float32(scale)
    z = np.float32(zero)
    lo = np.float32(qmin)
    hi = np.float32(qmax)
    bad = 0
    for i in prange(n):
        orow = out[i]
        bad += quantize_run(x[i], orow[:k], s, z, lo, hi)
        for j in range(k, kp):
            orow[j] = np.uint8(zero)
    return bad


int8_quantize, int8_quantize_parallel = both(_quantize)


def _matmul_u8s8(xu, wp, k0, k1, out):
    """u8 x s8 product over weight panels, exact in int32: ``out[i, o] += sum_{k0<=k<k1} xu[i, k] * w[o, k]``.

    IN  xu (n, kp) uint8; wp (n_panels, kp // 4, 4 * width) int8 panels with
        ``wp[p, g, 4 * c + j] = w[p * width + c, 4 * g + j]``; k0 % 4 == k1 % 4 == 0,
        0 <= k0 <= k1 <= kp, k1 - k0 <= 65536 (no int32 sum can overflow: 255 * 128 * 65536 < 2**31).
    OUT out (n, n_panels * width) int32, added to.
    """
    n = xu.shape[0]
    n_panels, _, pw4 = wp.shape
    width = pw4 // 4
    for t in prange(n_panels * n):
        p = t // n
        i = t - p * n
        xr = xu[i]
        acc = out[i, p * width:(p + 1) * width]
        for g in range(k0 // 4, k1 // 4):
            x0 = np.int32(xr[4 * g])
            x1 = np.int32(xr[4 * g + 1])
            x2 = np.int32(xr[4 * g + 2])
            x3 = np.int32(xr[4 * g + 3])
            wg = wp[p, g]
            for c in range(width):
                acc[c] += np.int32(np.int32(x0 * np.int32(wg[4 * c])) + np.int32(x1 * np.int32(wg[4 * c + 1]))
                                   + np.int32(x2 * np.int32(wg[4 * c + 2])) + np.int32(x3 * np.int32(wg[4 * c + 3])))


int8_matmul_u8s8, int8_matmul_u8s8_parallel = both(_matmul_u8s8)


def _dequantize(acc, zero, colsum, xscale, scale, out):
    """Integer accumulators to float32: ``out = float32(acc - zero * colsum[o]) * (xscale * scale[o])``.

    IN  acc (n, >= n_out) int32 or int64 (raw sums of xu * w; extra padded columns are ignored); zero
        int; colsum (>= n_out,) int64 (row sums of w); xscale float32; scale (n_out,) or (1,) float32.
    OUT out (n, n_out) float32. The factor ``xscale * scale[o]`` is one float32 product.
    """
    n, n_out = out.shape
    sx = np.float32(xscale)
    step = 0 if scale.shape[0] == 1 else 1   # per tensor: always scale[0]
    for i in prange(n):
        for o in range(n_out):
            m = sx * scale[o * step]
            a = acc[i, o] - np.int64(zero) * colsum[o]
            out[i, o] = np.float32(a) * m


int8_dequantize, int8_dequantize_parallel = both(_dequantize)


# Inputs per k-block of the weight-only kernel: 4 weight rows (16 KiB as int8) stay in L1 and a
# 4096-float slice of every activation row stays in L2 while the row blocks stream past.
KB_FLOAT = 4096


@jit(fastmath=True)
def _dot4(x0, x1, x2, x3, wr):
    """Four dot products of one row with four rows (a helper of _matmul_float; int8 -> float32)."""
    a0 = a1 = a2 = a3 = np.float32(0.0)
    for j in range(wr.shape[0]):
        wj = np.float32(wr[j])
        a0 += np.float32(x0[j]) * wj
        a1 += np.float32(x1[j]) * wj
        a2 += np.float32(x2[j]) * wj
        a3 += np.float32(x3[j]) * wj
    return a0, a1, a2, a3


@jit(fastmath=True)
def _tile44(x, i, w, o, k0, k1, out):
    """``out[i:i+4, o:o+4] += x[i:i+4, k0:k1] @ float32(w[o:o+4, k0:k1]).T`` (16 accumulators)."""
    x0, x1, x2, x3 = x[i, k0:k1], x[i + 1, k0:k1], x[i + 2, k0:k1], x[i + 3, k0:k1]
    w0, w1, w2, w3 = w[o, k0:k1], w[o + 1, k0:k1], w[o + 2, k0:k1], w[o + 3, k0:k1]
    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = np.float32(0.0)
    c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = np.float32(0.0)
    for j in range(k1 - k0):
        v0, v1, v2, v3 = np.float32(w0[j]), np.float32(w1[j]), np.float32(w2[j]), np.float32(w3[j])
        c00 += x0[j] * v0
        c01 += x0[j] * v1
        c02 += x0[j] * v2
        c03 += x0[j] * v3
        c10 += x1[j] * v0
        c11 += x1[j] * v1
        c12 += x1[j] * v2
        c13 += x1[j] * v3
        c20 += x2[j] * v0
        c21 += x2[j] * v1
        c22 += x2[j] * v2
        c23 += x2[j] * v3
        c30 += x3[j] * v0
        c31 += x3[j] * v1
        c32 += x3[j] * v2
        c33 += x3[j] * v3
    out[i, o] += c00
    out[i, o + 1] += c01
    out[i, o + 2] += c02
    out[i, o + 3] += c03
    out[i + 1, o] += c10
    out[i + 1, o + 1] += c11
    out[i + 1, o + 2] += c12
    out[i + 1, o + 3] += c13
    out[i + 2, o] += c20
    out[i + 2, o + 1] += c21
    out[i + 2, o + 2] += c22
    out[i + 2, o + 3] += c23
    out[i + 3, o] += c30
    out[i + 3, o + 1] += c31
    out[i + 3, o + 2] += c32
    out[i + 3, o + 3] += c33


@jit(fastmath=True)
def _dot1(xr, wr):
    """One dot product of a float32 row with an int8 row (a helper of _matmul_float)."""
    a = np.float32(0.0)
    for j in range(wr.shape[0]):
        a += xr[j] * np.float32(wr[j])
    return a


def _matmul_float(x, w, scale, out):
    """Weight-only int8: ``out[i, o] = scale[o] * sum_k x[i, k] * float32(w[o, k])``.

    IN  x (n, k) float32, all finite (the caller checks: this build is fastmath); w (n_out, k) int8;
        scale (n_out,) or (1,) float32.
    OUT out (n, n_out) float32.
    """
    n, k = x.shape
    n_out = w.shape[0]
    step = 0 if scale.shape[0] == 1 else 1   # per tensor: always scale[0]
    for b in prange((n_out + 3) // 4):
        o0 = 4 * b
        o1 = min(o0 + 4, n_out)
        if o1 - o0 == 4 and n == 1:      # batch 1: four weight rows share each load of x
            a0, a1, a2, a3 = _dot4(w[o0], w[o0 + 1], w[o0 + 2], w[o0 + 3], x[0])
            out[0, o0], out[0, o0 + 1], out[0, o0 + 2], out[0, o0 + 3] = a0, a1, a2, a3
        else:
            i4 = n - n % 4 if o1 - o0 == 4 else 0
            for i in range(n):
                for o in range(o0, o1):
                    out[i, o] = 0.0
            for k0 in range(0, k, KB_FLOAT):
                k1 = min(k, k0 + KB_FLOAT)
                for i in range(0, i4, 4):
                    _tile44(x, i, w, o0, k0, k1, out)
            for o in range(o0, o1):
                for i in range(i4, n):
                    out[i, o] = _dot1(x[i], w[o])
        for i in range(n):
            for o in range(o0, o1):
                out[i, o] *= scale[o * step]


int8_matmul_float, int8_matmul_float_parallel = both(_matmul_float, fastmath=True)
