"""Element-wise layers: activations, residual adds, softmax, and the identities of inference."""
import math
from dataclasses import dataclass

import numpy as np

from ..errors import NncompError
from ..kernels import _jit, softmax
from .base import Layer, register


@register
@dataclass(frozen=True, eq=False)
class ReLU(Layer):
    """``max(x, 0)``, capped at ``max_value`` when given (ReLU6: ``max_value=6``)."""

    max_value: float = None
    kind = "relu"
    monotone = True

    def forward(self, x):
        if self.max_value is None:
            return np.maximum(x, np.float32(0))
        return np.clip(x, np.float32(0), np.float32(self.max_value))

    def epilogue(self, n, shape):
        zero = np.float32(0)
        if self.max_value is None:
            op = lambda y: np.maximum(y, zero, out=y)  # noqa: E731
        else:
            top = np.float32(self.max_value)
            op = lambda y: np.clip(y, zero, top, out=y)  # noqa: E731
        op.spec = ("clip", 0.0, np.inf if self.max_value is None else float(self.max_value))
        return op


@register
@dataclass(frozen=True, eq=False)
class Add(Layer):
    """Element-wise sum of its inputs (residual connections)."""

    kind = "add"
    n_inputs = 2
    commutative = True      # a + b == b + a exactly; a sum of three or more is not fused

    def output_shape(self, *shapes):
        if len(set(shapes)) != 1:
            raise NncompError(f"add needs inputs of one shape, got {shapes}")
        return shapes[0]

    def forward(self, *xs):
        y = xs[0] + xs[1]
        for x in xs[2:]:
            y += x
        return y

    def epilogue(self, n, shape):
        op = lambda y, other: np.add(y, other, out=y)  # noqa: E731
        op.spec = ("add",)
        return op


@register
@dataclass(frozen=True, eq=False)
class Softmax(Layer):
    """Softmax over per-sample ``axis`` (default the last; negatives count from the end), with max
    subtraction (no NaN for finite inputs)."""

    axis: int = -1
    kind = "softmax"

    def __post_init__(self):
        object.__setattr__(self, "axis", int(self.axis))

    def output_shape(self, shape):
        if not -len(shape) <= self.axis < len(shape):
            raise NncompError(f"softmax axis {self.axis} is not a per-sample axis of shape {shape} "
                              f"(rank {len(shape)}, batch axis not counted); pass an axis in "
                              f"[-{len(shape)}, {len(shape) - 1}]")
        return shape

    def forward(self, x):
        return self.prepare(x.shape[0], x.shape[1:])(x)

    def _middle(self, n, shape):
        """Over another axis: one compiled call on the batch seen as (outer, axis, inner)
        (nncomp/kernels/softmax.py softmax_mid); NumPy's formula for an empty batch."""
        a = self.axis % len(shape) if -len(shape) <= self.axis < len(shape) else None
        if a is None or not n * math.prod(shape):
            return self._numpy
        o, k, i = n * math.prod(shape[:a]), shape[a], math.prod(shape[a + 1:])
        kern = _jit.pick((softmax.softmax_mid, softmax.softmax_mid_parallel), o * k * i)

        def step(x):
            out = np.empty(x.shape, np.float32)
            kern(np.ascontiguousarray(x, np.float32).reshape(o, k, i), out.reshape(o, k, i), np.empty((o, i), np.int32))
            return out
        step.blas = False
        return step

    def _numpy(self, x):
        axis = self.axis + 1 if self.axis >= 0 else self.axis
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)

    def prepare(self, n, shape):
        """Over the last axis: one compiled call (nncomp/kernels/softmax.py, parallel over rows from
        _jit.PARALLEL_MIN_WORK values); over another axis :meth:`_middle`."""
        k, size = shape[-1], n * math.prod(shape)
        if self.axis not in (-1, len(shape) - 1) or k < 1:
            return self._middle(n, shape)
        kern = _jit.pick((softmax.softmax_rows, softmax.softmax_rows_parallel), size)

        def step(x):
            out = np.empty(x.shape, np.float32)
            kern(np.ascontiguousarray(x, np.float32).reshape(size // k, k), out.reshape(size // k, k))
            return out
        step.blas = False
        return step


@register
@dataclass(frozen=True, eq=False)
class Dropout(Layer):
    """Identity at inference."""

    kind = "dropout"

    def forward(self, x):
        return x
