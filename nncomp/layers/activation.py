"""Activation functions beyond ReLU (ONNX semantics): sigmoid, hard sigmoid, hard swish, leaky ReLU,
clip, and the unary math functions.

The first five are parts of the compiled epilogue kernel (nncomp/kernels/epilogue.py): after a
convolution or dense layer they are applied in place by the producer's epilogue, and on their own
they run the same kernel over a copy of their input, so fused and unfused results agree bit for bit.
"""
import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from ..errors import NncompError
from ..kernels import _jit, erf
from ..kernels.epilogue import ACT_GELU, ACT_HARDSIGMOID, ACT_HARDSWISH, ACT_LEAKYRELU, ACT_SIGMOID, ACT_SILU
from .base import Layer, register, set_fields
from .fused import compiled_epilogue


def _finite(v, name, layer):
    v = float(v)
    if not math.isfinite(v):
        raise NncompError(f"{layer} {name} must be a finite number, got {v!r}; pass a float")
    return v


class EpilogueActivation(Layer):
    """An element-wise function that the epilogue kernel computes: ``spec`` names its part."""

    @property
    def spec(self):
        raise NotImplementedError

    def epilogue(self, n, shape):
        def op(y):
            if y.flags.c_contiguous:
                run(y)
            else:                           # a transposed product: compute on rows, write back
                t = np.ascontiguousarray(y)
                run(t)
                y[...] = t
        op.spec = self.spec
        run = compiled_epilogue(((op, 0, self),), n, tuple(shape) or (1,))
        return op

    def prepare(self, n, shape):
        op = self.epilogue(n, shape)

        def step(x):
            y = np.array(x, dtype=np.float32, order="C")
            op(y)
            return y
        return step

    def macs(self, shape):
        return math.prod(shape)


@register
@dataclass(frozen=True, eq=False)
class Sigmoid(EpilogueActivation):
    """``1 / (1 + exp(-x))`` in float32.

    Not ``monotone`` for the engine: its rational approximation (ONNX Runtime's) dips by up to 2
    ulps of 0.5 here and there (0.4% of neighbouring float32 pairs in [-20, 20]), so it does not
    commute with a max-pool bit for bit and runs before it."""

    kind = "sigmoid"
    monotone = False
    spec = ("act", ACT_SIGMOID, 0.0, 0.0)


@register
@dataclass(frozen=True, eq=False)
class SiLU(EpilogueActivation):
    """``x * sigmoid(x)`` in float32 (SiLU, swish: YOLOv5/v8, EfficientNet), :class:`Sigmoid`'s value
    times x in one multiply: the bits of the two layers one after the other, in one pass (or in the
    producing convolution's epilogue). ONNX exporters write it as Sigmoid and Mul; the importer
    joins them."""

    kind = "silu"
    monotone = False
    spec = ("act", ACT_SILU, 0.0, 0.0)


@register
@dataclass(frozen=True, eq=False)
class GELU(EpilogueActivation):
    """``x (1 + erf(x / sqrt(2))) / 2`` in float32, erf as nncomp/kernels/erf.py approximates it
    (at most 7 ulps): one pass, or the producing layer's epilogue. ONNX exporters write it as five
    nodes (Div, Erf, Add, Mul, Mul); the importer joins them."""

    kind = "gelu"
    monotone = False
    spec = ("act", ACT_GELU, 0.0, 0.0)


@register
@dataclass(frozen=True, eq=False)
class HardSigmoid(EpilogueActivation):
    """``clip(alpha * x + beta, 0, 1)`` (ONNX HardSigmoid; PyTorch's is alpha=1/6, beta=0.5)."""

    alpha: float = 0.2
    beta: float = 0.5
    kind = "hardsigmoid"

    def __post_init__(self):
        set_fields(self, alpha=_finite(self.alpha, "alpha", self.kind), beta=_finite(self.beta, "beta", self.kind))

    @property
    def monotone(self):
        return self.alpha >= 0

    @property
    def spec(self):
        return ("act", ACT_HARDSIGMOID, self.alpha, self.beta)


@register
@dataclass(frozen=True, eq=False)
class HardSwish(EpilogueActivation):
    """``x * clip(x / 6 + 1/2, 0, 1)`` (ONNX HardSwish, PyTorch's ``x * relu6(x + 3) / 6``); not
    monotone (it dips below zero for -3 < x < 0)."""

    kind = "hardswish"
    spec = ("act", ACT_HARDSWISH, 0.0, 0.0)


@register
@dataclass(frozen=True, eq=False)
class LeakyReLU(EpilogueActivation):
    """``x`` for ``x >= 0``, else ``alpha * x``."""

    alpha: float = 0.01
    kind = "leakyrelu"

    def __post_init__(self):
        set_fields(self, alpha=_finite(self.alpha, "alpha", self.kind))

    @property
    def monotone(self):
        return self.alpha >= 0

    @property
    def spec(self):
        return ("act", ACT_LEAKYRELU, self.alpha, 0.0)


@register
@dataclass(frozen=True, eq=False)
class Clip(EpilogueActivation):
    """``min(max(x, low), high)`` (ONNX Clip: where ``low > high`` every value becomes ``high``).

    An infinite bound (the defaults: no bound) clips at the largest finite float32, as ONNX's
    defaults ``numeric_limits<float>::lowest()`` and ``max()`` do: +-inf become +-3.4028235e38."""

    low: float = -math.inf
    high: float = math.inf
    kind = "clip"
    monotone = True

    def __post_init__(self):
        low, high = float(self.low), float(self.high)
        if math.isnan(low) or math.isnan(high):
            raise NncompError(f"clip bounds must be numbers (+-inf for none), got low={low}, high={high}")
        set_fields(self, low=low, high=high)

    @property
    def spec(self):
        top = float(np.finfo(np.float32).max)
        return ("clip", min(max(self.low, -top), top), min(max(self.high, -top), top))


UNARY = {"sqrt": np.sqrt, "exp": np.exp, "log": np.log, "neg": np.negative, "abs": np.abs,
         "reciprocal": np.reciprocal, "tanh": np.tanh, "erf": special.erf}
_MONOTONE = ("sqrt", "exp", "log", "tanh", "erf")


@register
@dataclass(frozen=True, eq=False)
class Unary(Layer):
    """One element-wise math function in float32: ``op`` in sqrt, exp, log, neg, abs, reciprocal,
    tanh, erf (NaN and inf as NumPy gives them: ``sqrt(-1)`` is NaN, ``log(0)`` is -inf). erf runs
    nncomp/kernels/erf.py's float32 kernel."""

    op: str = "sqrt"
    kind = "unary"

    def __post_init__(self):
        if self.op not in UNARY:
            raise NncompError(f"unary op must be one of {sorted(UNARY)}, got {self.op!r}; "
                              "an unsupported function has no layer yet")

    @property
    def monotone(self):
        return self.op in _MONOTONE

    def forward(self, x):
        if self.op == "erf":        # a vectorized float32 kernel (SciPy's: 12 ns a value, scalar)
            x = np.ascontiguousarray(x, np.float32)
            out = np.empty(x.shape, np.float32)
            _jit.pick((erf.erf_values, erf.erf_values_parallel), x.size)(x.reshape(-1), out.reshape(-1))
            return out
        with np.errstate(all="ignore"):
            return UNARY[self.op](x).astype(np.float32, copy=False)

    def macs(self, shape):
        return math.prod(shape)
