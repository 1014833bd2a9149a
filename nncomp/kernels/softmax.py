"""Softmax over the last axis of a batch's rows, one compiled call, with exp in vector registers.

NumPy's softmax is five calls (max, subtract, exp, sum, divide): ~20 us together on a handful of
values (PP-LCNet's 4 classes at batch 1: 24 us of a 1.8 ms pass, Intel Xeon), and on a text
recognizer's 40 x 18,710 class probabilities (PP-OCRv6) 2.5 ms in the pass against ONNX Runtime's
0.24. Numba's ``np.exp`` calls the scalar ``expf``; here ``exp(t)`` for ``t = x - max <= 0`` is
``2^k exp(r)``, ``k = round(t / ln 2)``, ``r = t - k ln 2`` (ln 2 in two parts, so ``r`` is exact to
float32), ``exp(r)`` its Taylor polynomial of degree 7 (``|r| <= ln 2 / 2``: truncation under 6e-9
relative), ``2^k`` built from its exponent bits: no branch, no call, so the loops vectorize; below
``t = -87`` (``exp`` under float32's smallest normal) the value is 0. The sums reassociate (vector
partial sums). Each row's maximum is taken over integer keys of the float bits (``b ^ ((b >> 31) &
0x7fffffff)`` orders float32 values as signed integers; a positive NaN sorts above +inf): LLVM does
not vectorize a float max reduction without fast-math NaN flags, and a scalar chain of ``maxss`` cost
0.72 ms of a 1.2 ms softmax over 40 x 18,710 values (Intel Xeon; the integer one 0.10 ms, L3-bound).
Rows run in parallel in the parallel build. Twin: tests/reference.py ``softmax_rows``.
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from ._jit import both

LOG2E = 1.4426950408889634
LN2_HI, LN2_LO = 0.693145751953125, 1.4286068203094172e-06      # LN2_HI has 12 zero low bits: k * LN2_HI is exact
FLOOR = -87.0


@intrinsic
def _from_bits(typingctx, bits):
    """The float32 whose bits are the int32 ``bits``."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return sig, codegen


def _exp_nonpositive(t):
    """``exp(t)`` in float32 for ``t <= 0`` (module docstring); NaN stays NaN, below FLOOR 0."""
    f = np.float32
    c = max(t, f(FLOOR))
    k = np.floor(c * f(LOG2E) + f(0.5))
    r = (c - k * f(LN2_HI)) - k * f(LN2_LO)
    p = f(1.0) + r * (f(1.0) + r * (f(1 / 2) + r * (f(1 / 6) + r * (f(1 / 24) + r * (
        f(1 / 120) + r * (f(1 / 720) + r * f(1 / 5040)))))))
    e = p * _from_bits((np.int32(k) + np.int32(127)) << np.int32(23))
    e = f(0.0) if t < f(FLOOR) else e
    return e if t == t else t


_exp_inline = njit(inline="always")(_exp_nonpositive)


def _key(b):
    """The int32 that orders float32 bits ``b`` as their values (a positive NaN above +inf, a
    negative one lowest); its own inverse: ``_key(_key(b)) == b``."""
    return b ^ ((b >> np.int32(31)) & np.int32(0x7fffffff))


_key_inline = njit(inline="always")(_key)


def _row_max(bits):
    """The largest of a row's float32 values given as their int32 ``bits`` (a view), as int32
    bits: +inf if any is +inf, a NaN if any is a positive NaN (a negative NaN sorts lowest; its
    row's exps, sum and outputs are NaN all the same)."""
    top = np.int32(-2147483648)
    for j in range(bits.shape[0]):
        top = max(top, _key_inline(bits[j]))
    return _key_inline(top)


_row_max_inline = njit(inline="always")(_row_max)


def _softmax_rows(x, out):
    """``out[i] = exp(x[i] - max x[i]) / sum_j exp(x[i, j] - max x[i])``, in float32: a row holding
    a NaN, or a +inf, or only -infs gives NaNs, as NumPy's formula does.

    IN  x (m, k) float32 C-contiguous, k >= 1.
    OUT out (m, k) float32 C-contiguous, overwritten.
    """
    m, k = x.shape
    bits = x.view(np.int32)
    for i in prange(m):
        row, dst = x[i], out[i]
        top = _from_bits(_row_max_inline(bits[i]))     # a NaN (or inf - inf) spreads through the sum below
        s = np.float32(0.0)
        for j in range(k):
            e = _exp_inline(row[j] - top)
            dst[j] = e
            s += e
        r = np.float32(1.0) / s
        for j in range(k):
            dst[j] = dst[j] * r


# Sums reassociated (vector partial sums) and contracted (each ``a * b + c`` of exp's polynomial one
# fused multiply-add); each row scaled by the sum's reciprocal: 40 x 18,710 values on two threads
# 0.30-0.32 -> 0.25-0.27 ms, one thread 0.57-0.64 -> 0.46-0.50 (Intel Xeon, AVX-512).
_FAST = dict(fastmath={"reassoc", "contract"}, error_model="numpy")
softmax_rows, softmax_rows_parallel = both(_softmax_rows, **_FAST)


def _softmax_mid(x, out, top):
    """Softmax over the middle axis of ``x`` (o, k, i): ``out[a, :, b]`` the softmax of ``x[a, :, b]``
    (an axis other than the last: attention scores laid out (queries, keys, heads)), each step along
    ``k`` a vector operation over the ``i`` contiguous values; NaNs as :func:`_softmax_rows`.

    IN  x (o, k, i) float32 C-contiguous, k >= 1; top (o, i) int32, scratch.
    OUT out (o, k, i) float32 C-contiguous, overwritten.
    """
    o, k, n = x.shape
    bits = x.view(np.int32)
    for a in prange(o):
        t = top[a]
        for b in range(n):
            t[b] = np.int32(-2147483648)
        for j in range(k):
            row = bits[a, j]
            for b in range(n):
                t[b] = max(t[b], _key_inline(row[b]))
        for b in range(n):
            t[b] = _key_inline(t[b])
        tf = t.view(np.float32)
        dst = out[a]
        for j in range(k):
            for b in range(n):
                dst[j, b] = _exp_inline(x[a, j, b] - tf[b])
        for b in range(n):
            s = np.float32(0.0)
            for j in range(k):
                s += dst[j, b]
            tf[b] = np.float32(1.0) / s
        for j in range(k):
            for b in range(n):
                dst[j, b] = dst[j, b] * tf[b]


softmax_mid, softmax_mid_parallel = both(_softmax_mid, **_FAST)
