"""int8 dense layers (int8 activations) on one sample as one compiled call (the single-sample product of
nncomp/matrices/int8.py, as nncomp/kernels/dense_small.py and sparse_small.py are for float32 and CSR).

A sample at batch 1 went through the int8 convolution kernel as a one-pixel image (or the
quantize / product / dequantize / bias-epilogue kernels): 4.8-7.8 us per LeNet-300-100 layer on a
2.6 GHz Xeon, most of it calls and buffers, against 1.8-11 us for the float32 mat-vec, so int8
weights never paid at batch 1. Here one call quantizes the (gathered) input into a zero-point-padded
code vector, runs the int8 block over the weight panels (kernels/int8_vnni: VNNI, or AVX2; one row, 16-64 channels
a block; the units of 64 channels are the parallel tasks), dequantizes with the bias 16 channels at a
time (kernels/int8_conv.dequant16) and applies the epilogue (sparse_small.finish_row).

The arithmetic is the batch paths', in their order: codes ``clip(rint(x / sx) + z, 0, 255)``
(kernels/int8.quantize_run), exact int32 sums, ``float32(acc - z * colsum[o]) * (sx * scale[o])``,
``+ bias``, then the epilogue: a sample's output has the same bits at every batch size (tests).

Contract (NumPy twin: tests/reference_int8.py ``int8_gemv_epilogue``):
``out[0, o] = act(clip((float32(sum_k xu[k] * w[o, k] - z * colsum[o]) * (sx * wscale[o]) + bias[o])
* scale[o] + shift[o] + res[0, o], lo, hi))`` with ``xu`` the codes of ``x[perm]`` of scale ``sx``
and zero point ``z`` (calibrated, or from the sample's range); returns the number of NaN or infinite
inputs (then ``out`` is unspecified: the caller raises).
"""
import numpy as np
from numba import prange

from ._jit import both, jit
from .int8 import quantize_run
from .int8_conv import dequant16
from .int8_vnni import CODE, int8_block
from .sparse_small import finish_row, gathered


# Activation quantization of a call: the calibrated (sx, z), or taken from the sample's range as
# matrices/int8.activation_params does (float64 arithmetic, the same roundings).
STATIC, DYNAMIC_UINT8, DYNAMIC_INT8 = 0, 1, 2
TINY = np.float32(np.finfo(np.float32).tiny)


@jit(inline="always")
def _params(xs, mode, sx, z):
    """``(scale, zero)`` of this call's activation codes (see :data:`STATIC`)."""
    if mode == STATIC:
        return np.float32(sx), np.int64(z)
    lo, hi = 0.0, 0.0
    for v in xs:                # NaN compares false: quantize_run counts it
        f = np.float64(v)
        if f < lo:
            lo = f
        if f > hi:
            hi = f
    if mode == DYNAMIC_INT8:
        s = np.float32(max(-lo, hi) / 127.0)
        return (s if s >= TINY else np.float32(1.0)), np.int64(128)
    s = np.float32((hi - lo) / 255.0)
    if not s >= TINY:
        return np.float32(1.0), np.int64(0)
    return s, np.int64(min(max(np.rint(-lo / np.float64(s)), 0.0), 255.0))


def _gemv(wp, colsum, wscale, sx, z, mode, x, perm, bias, scale, shift, res, lo, hi, act, alpha, beta, out):
    """One sample through int8 weights with int8 activations (module doc).

    IN  wp (n_panels, kp // 4, 64) int8 panels of 16 channels (matrices/int8.pack_panels), kp <= 65536;
        colsum (>= co,) int64 the codes' row sums; wscale (co,) float32 the weight scales; mode
        STATIC (activation scale sx float32 > 0 and zero point z 0..255), DYNAMIC_UINT8 or
        DYNAMIC_INT8 (from the sample's range; sx, z unused); x (k0,) float32; perm (k,) int64
        indices into x, or (0,) (then k = k0); k <= kp; bias (co,) float32; scale, shift (co,) or
        (0,); res (1, co) or (0, co); lo, hi float32; act, alpha, beta an activation of
        kernels/epilogue.py.
    OUT out (1, co) float32 C-contiguous.
    """
    xs = gathered(x, perm)
    n_p, n_g, _ = wp.shape
    kp = 4 * n_g
    k = xs.shape[0]
    s, zero = _params(xs, mode, sx, z)
    xu = np.empty(kp, CODE)         # the codes as the block reads them (int16 for AVX2): no widening copy
    bad = quantize_run(xs, xu[:k], s, np.float32(zero), np.float32(0.0), np.float32(255.0))
    if bad:
        return bad
    xu[k:] = np.uint8(zero)
    co = out.shape[1]
    acc = np.zeros(16 * n_p, np.int32)
    for u in prange((n_p + 3) // 4):
        int8_block(1, min(4, n_p - 4 * u), xu, 0, kp, 0, wp, 4 * u * n_g * 64, 64, n_g * 64, 0, n_g, 1, acc,
                   64 * u, 0)
    zc = np.empty(co, np.int32)       # |z * colsum| <= 255 * 127 * 65536 < 2**31
    mul = np.empty(co, np.float32)
    for o in range(co):
        zc[o] = np.int32(zero * colsum[o])
        mul[o] = s * wscale[o]
    flat = out.reshape(co)
    vec = co // 16
    dequant16(acc, 0, zc, mul, bias, flat, 0, vec)
    for o in range(16 * vec, co):
        flat[o] = np.float32(acc[o] - zc[o]) * mul[o] + bias[o]
    finish_row(out, scale, shift, res, lo, hi, act, alpha, beta)
    return 0


int8_gemv_epilogue, int8_gemv_epilogue_parallel = both(_gemv, error_model="numpy")
