"""The error function over float32 values in vector registers (ONNX Erf), and GELU, which paddle2onnx
and torch.onnx write as five nodes (``x / sqrt(2)``, ``erf``, ``1 +``, ``x *``, ``0.5 *``) and the
ONNX importer joins into one activation (nncomp/io/onnx_patterns.py; the epilogue kernels' ACT_GELU).

SciPy's ``erf`` on float32 runs a scalar double-precision routine per value: 12 ns a value here, 1.1 ms for
one of PP-OCRv6's 184k-value maps (Intel Xeon), nine of them a third of the recognizer's pass. This
kernel evaluates ``erf(x) = x P(x^2) / Q(x^2)`` on ``x`` clamped to [-4, 4] (beyond, erf is +-1 in
float32), ``P`` of degree 6 and ``Q`` of degree 5 fitted here by iterated weighted least squares on
the relative error against float64 ``scipy.special.erf`` (tools/fit_erf.py), evaluated with fused
multiply-adds (below): at most 6 units in the last place of float32 from the float64 value over
[-6, 6] (4M points), 0.56 on average, 3.5e-7 at most in absolute terms (7, 0.8 and 4.1e-7 with
separate multiplies and adds); NaN stays NaN, +-inf gives +-1. Branch-free, so LLVM vectorizes it:
0.05 ms for the 184k values on two threads. Twins: tests/reference.py ``erf_values``, ``gelu_value``,
``gelu_values``.
"""
import numpy as np
from numba import njit, prange

from ._jit import both

P0, P1, P2, P3 = 1.128379225730896, 0.18505771458148956, 0.054097674787044525, 0.003817459335550666
P4, P5, P6 = 0.0003707555588334799, 4.45278510596836e-06, -1.1992845827535348e-08
Q1, Q2, Q3 = 0.4973365366458893, 0.11372123658657074, 0.015367159619927406
Q4, Q5 = 0.0012890849029645324, 6.090732495067641e-05


def _erf(v):
    f = np.float32
    c = min(max(v, f(-4.0)), f(4.0))
    t = c * c
    p = ((((((f(P6) * t + f(P5)) * t + f(P4)) * t + f(P3)) * t + f(P2)) * t + f(P1)) * t + f(P0))
    q = (((((f(Q5) * t + f(Q4)) * t + f(Q3)) * t + f(Q2)) * t + f(Q1)) * t + f(1.0))
    e = c * p / q
    e = f(1.0) if c >= f(4.0) else f(-1.0) if c <= f(-4.0) else e     # erf(4) rounds to 1 in float32
    return e if v == v else v


_erf_inline = njit(inline="always")(_erf)


def _erf_values(x, out):
    """``out[i] = erf(x[i])`` in float32 (module docstring: accuracy, NaN and infinities).

    IN  x (n,) float32.
    OUT out (n,) float32, overwritten (may be ``x``).
    """
    out[:] = x
    for i in prange(out.shape[0]):      # in place: LLVM vectorizes this loop, not out[i] = f(x[i])
        out[i] = _erf_inline(out[i])


def _gelu(v):
    """``0.5 v (1 + erf(v / sqrt(2)))`` in float32, erf as :func:`_erf_values` computes it:
    ``v * (0.5 + 0.5 erf(v * 0.70710677))`` (NaN stays NaN; +inf gives +inf, -inf NaN, as the five
    ONNX nodes give them: -inf * 0). The activation kernel's ACT_GELU (nncomp/kernels/epilogue.py)."""
    half = np.float32(0.5)
    return v * (half + half * _erf_inline(v * np.float32(0.70710677)))


gelu_value = njit(inline="always", cache=True)(_gelu)


def _gelu_values(y):
    """``y[i] = gelu(y[i])`` in float32, in place (:func:`_gelu`): the activation kernel's GELU
    (nncomp/kernels/epilogue.py), run over a chunk of a layer's output.

    IN  y (n,) float32.
    OUT y, overwritten.
    """
    for i in prange(y.shape[0]):
        y[i] = gelu_value(y[i])


# Compiled with contraction (each ``a * b + c`` of the polynomials one fused multiply-add: 15
# operations a vector fewer, and one rounding each instead of two) and NumPy's error model (no
# zero check per division): GELU over 184k values 93 -> 53 us on one thread (Intel Xeon, AVX-512).
# Both loops run in place: one that reads ``x`` and writes ``out`` stayed scalar (3.3 ns a value).
_FAST = dict(fastmath={"contract"}, error_model="numpy")
erf_values, erf_values_parallel = both(_erf_values, **_FAST)
gelu_values, gelu_values_parallel = both(_gelu_values, **_FAST)
