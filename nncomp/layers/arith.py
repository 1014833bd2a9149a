"""Arithmetic layers with ONNX semantics over per-sample tensors in the internal layout: element-wise
binary operators with NumPy broadcasting (two inputs, or one input and a constant), reductions,
layer normalization, and matrix products of inputs (MatMul).

Shapes are per sample (the batch axis excluded); a constant operand is already in the internal
layout and broadcasts right-aligned against the per-sample shape, so a per-channel constant of an
image is ``(c,)`` or ``(1, 1, c)`` and a squeeze-and-excitation scale is an input of shape (1, 1, c).
"""
import math
from dataclasses import dataclass

import numpy as np

from ..errors import NncompError
from ..kernels import _jit, rows
from ..kernels import conv_chain as K
from ..kernels.binary import CHANNEL_OPS, channel_binary_nhwc, channel_binary_nhwc_parallel
from .base import Layer, register, set_fields, tensor_field
from .conv_chain import squeeze_row
from .scaled import scaled_conv
from .fused import absorb_epilogue
from .tensor import from_source, internal_shape, source_shape, to_source

BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "pow": np.power,
          "max": np.maximum, "min": np.minimum}
REDUCE = {"mean": np.mean, "sum": np.sum, "max": np.max, "min": np.min}
_NEG_ZERO = np.float32(-0.0)


def broadcast(kind, *shapes):
    """The NumPy broadcast of per-sample ``shapes``, or NncompError saying which ones clash."""
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise NncompError(f"{kind}: per-sample shapes {' and '.join(map(str, shapes))} do not broadcast "
                          "(NumPy rules: right-aligned, each axis equal or 1); check the operands' "
                          "layout (images are (h, w, c))") from None


def lift(x, rank):
    """A batch ``x`` (n, *shape) viewed with ones inserted after the batch axis up to ``rank``
    per-sample axes, so that per-sample broadcasting right-aligns (no copy)."""
    extra = rank - (x.ndim - 1)
    return x.reshape(x.shape[:1] + (1,) * extra + x.shape[1:]) if extra > 0 else x


def axes_of(axes, rank, kind):
    """Per-sample axes (negatives allowed) as sorted non-negative ints, or NncompError."""
    out = sorted({int(a) + rank if int(a) < 0 else int(a) for a in axes})
    if any(a < 0 or a >= rank for a in out) or len(out) != len(axes):
        raise NncompError(f"{kind}: axes {list(axes)} must be distinct per-sample axes in "
                          f"[-{rank}, {rank - 1}] for per-sample shape of rank {rank} (the batch axis "
                          "is not counted)")
    return out


@register
@dataclass(frozen=True, eq=False)
class Binary(Layer):
    """``x op y`` element-wise with broadcasting: ``op`` in add, sub, mul, div, pow, max, min.

    With ``constant=None`` it reads two inputs; with a float32 ``constant`` it reads one and
    computes ``x op constant`` (``constant op x`` with ``constant_first``). A per-channel constant
    add, sub or mul after a convolution or dense layer runs in its epilogue (as an affine map
    ``y * scale + shift`` with exact results: ``y * 1``, ``y + -0.0`` and ``c + -y`` change no bit).
    """

    op: str = "add"
    constant: np.ndarray = tensor_field()
    constant_first: bool = False
    kind = "binary"

    def __post_init__(self):
        if self.op not in BINARY:
            raise NncompError(f"binary op must be one of {sorted(BINARY)}, got {self.op!r}")
        set_fields(self, constant_first=bool(self.constant_first))
        if self.constant is not None:
            c = np.array(self.constant, dtype=np.float32, order="C")
            c.setflags(write=False)
            set_fields(self, constant=c)
        elif self.constant_first:
            raise NncompError("binary: constant_first=True needs a constant; pass constant=array "
                              "or constant_first=False")

    @property
    def n_inputs(self):
        return 1 if self.constant is not None else 2

    @property
    def commutative(self):
        return self.constant is None and self.op in ("add", "mul")

    @property
    def monotone(self):
        if self.constant is None:
            return False
        if self.op in ("add", "max", "min") or (self.op == "sub" and not self.constant_first):
            return True
        return self.op == "mul" and bool(np.all(self.constant > 0))

    def output_shape(self, *shapes):
        if len(shapes) != self.n_inputs:
            raise NncompError(f"binary {self.op} expects {self.n_inputs} input(s), got {len(shapes)}")
        if self.constant is not None:
            shapes = shapes + (self.constant.shape,)
        return broadcast(f"binary {self.op}", *shapes)

    def prepare(self, n, *shapes):
        out = self.shape_of(*shapes)
        fn, rank = BINARY[self.op], len(out)
        fast = self._channel_step(n, shapes, out)
        if fast is not None:
            return fast
        if self.constant is None:
            return lambda a, b: fn(lift(a, rank), lift(b, rank))
        c = self.constant
        if self.constant_first:
            return lambda x: fn(c, lift(x, rank))
        return lambda x: fn(lift(x, rank), c)

    def fuse(self, successor, n, *shapes):
        """An SE block's ``x * s`` read only by a convolution: the convolution with its weight
        scaled per sample (nncomp/layers/scaled.py). A channel-kernel step (a fresh output) absorbs
        an in-place epilogue after it: an SE block's ``x * s`` then its residual ``+ x`` in one
        step, no second array."""
        folded = scaled_conv(self, successor, n, shapes)
        if folded is not None:
            return folded
        if self._channel_step(n, shapes, self.shape_of(*shapes)) is None:
            return None
        return absorb_epilogue(self, successor, n, shapes)

    def _channel_step(self, n, shapes, out):
        """The channel kernel's step when one operand has the output's shape and the other one
        value per channel (or one in all), as a constant or per sample; else None."""
        shapes = shapes + ((self.constant.shape,) if self.constant is not None else ())
        if self.op not in CHANNEL_OPS or not out or len(shapes) != 2:
            return None
        big = [k for k, s in enumerate(shapes) if tuple(s) == out]
        small = 1 - big[0] if big else None
        if (small is None or (self.constant is not None and small != 1) or math.prod(shapes[small][:-1]) != 1
                or (shapes[small] and shapes[small][-1] not in (1, out[-1]))):
            return None
        c, m = out[-1], math.prod(out[:-1])
        kern = _jit.pick((channel_binary_nhwc, channel_binary_nhwc_parallel), n * m * c)
        code, reverse = CHANNEL_OPS[self.op], small == 0
        if self.constant is not None:
            reverse = self.constant_first
            vec = np.ascontiguousarray(np.broadcast_to(self.constant.reshape(1, -1), (1, c)))
            operand = lambda xs: vec  # noqa: E731
        else:
            operand = lambda xs: np.ascontiguousarray(np.broadcast_to(xs[small].reshape(n, -1), (n, c)))  # noqa: E731

        def step(*xs):
            x = np.ascontiguousarray(xs[1 - small if self.constant is None else 0]).reshape(n, m, c)
            y = np.empty((n,) + out, np.float32)
            kern(x, operand(xs), code, reverse, y.reshape(n, m, c))
            return y
        step.blas = False
        if self.constant is None and len(out) == 3 and tuple(shapes[small]) == (1, 1, c):   # an SE block's scaling
            step.chain = squeeze_row(K.CHANNEL, kern is channel_binary_nhwc_parallel, code, reverse)
        return step

    def forward(self, *xs):
        with np.errstate(all="ignore"):
            return self.prepare(xs[0].shape[0], *(x.shape[1:] for x in xs))(*xs)

    def macs(self, *shapes):
        return math.prod(self.shape_of(*shapes))

    def epilogue(self, n, shape):
        """A per-channel constant add, sub or mul, as the epilogue's exact affine map."""
        c = self.constant
        if (c is None or self.op not in ("add", "sub", "mul") or not shape or c.ndim > len(shape)
                or math.prod(c.shape[:-1]) != 1 or (c.ndim and c.shape[-1] not in (1, shape[-1]))):
            return None
        v = np.broadcast_to(c.reshape(-1), (shape[-1],))
        one = np.ones(shape[-1], np.float32)
        if self.op == "mul":
            scale, shift = v, np.full(shape[-1], _NEG_ZERO)
        elif self.op == "add":
            scale, shift = one, v
        elif self.constant_first:           # c - x == -x + c
            scale, shift = -one, v
        else:                               # x - c == x + -c
            scale, shift = one, -v
        scale, shift = np.ascontiguousarray(scale), np.ascontiguousarray(shift)

        def affine(y):
            y *= scale
            y += shift
        affine.spec = ("affine", scale, shift)
        return affine


@register
@dataclass(frozen=True, eq=False)
class Reduce(Layer):
    """``op`` (mean, sum, max, min) over per-sample ``axes`` (None: all), in float32; with
    ``keepdims`` the reduced axes stay as length 1 (ONNX ReduceMean and its kin)."""

    op: str = "mean"
    axes: tuple = None
    keepdims: bool = True
    kind = "reduce"

    def __post_init__(self):
        if self.op not in REDUCE:
            raise NncompError(f"reduce op must be one of {sorted(REDUCE)}, got {self.op!r}")
        set_fields(self, keepdims=bool(self.keepdims),
                   axes=None if self.axes is None else tuple(int(a) for a in np.atleast_1d(self.axes)))

    def _axes(self, shape):
        return list(range(len(shape))) if self.axes is None else axes_of(self.axes, len(shape), self.kind)

    def output_shape(self, shape):
        axes = self._axes(shape)
        if any(shape[a] == 0 for a in axes) and self.op in ("max", "min"):
            raise NncompError(f"reduce {self.op} over an empty axis of shape {shape} has no value")
        return tuple(1 if a in axes else d for a, d in enumerate(shape) if self.keepdims or a not in axes)

    def forward(self, x):
        axes = tuple(a + 1 for a in self._axes(x.shape[1:]))
        kw = {"dtype": np.float32} if self.op in ("mean", "sum") else {}
        return np.asarray(REDUCE[self.op](x, axis=axes, keepdims=self.keepdims, **kw), np.float32)

    def macs(self, shape):
        return math.prod(shape)


@register
@dataclass(frozen=True, eq=False)
class LayerNorm(Layer):
    """``(x - mean) / sqrt(var + epsilon) * scale + bias`` with mean and (population) variance over
    per-sample axes ``axis`` .. last (ONNX LayerNormalization); ``scale`` and ``bias`` are None or
    float32 arrays that broadcast over those axes."""

    axis: int = -1
    scale: np.ndarray = tensor_field()
    bias: np.ndarray = tensor_field()
    epsilon: float = 1e-5
    kind = "layernorm"

    def __post_init__(self):
        set_fields(self, axis=int(self.axis), epsilon=float(self.epsilon))
        if not (self.epsilon >= 0):
            raise NncompError(f"layernorm epsilon must be >= 0, got {self.epsilon}")
        for k in ("scale", "bias"):
            v = getattr(self, k)
            if v is not None:
                v = np.array(v, dtype=np.float32, order="C")
                v.setflags(write=False)
                set_fields(self, **{k: v})

    def _axes(self, shape):
        a = axes_of((self.axis,), len(shape), self.kind)[0]
        return tuple(range(a, len(shape)))

    def output_shape(self, shape):
        inner = tuple(shape[a] for a in self._axes(shape))
        for k in ("scale", "bias"):
            v = getattr(self, k)
            if v is not None and broadcast(f"layernorm {k}", v.shape, inner) != inner:
                raise NncompError(f"layernorm {k} of shape {v.shape} must broadcast over the normalized "
                                  f"axes {inner}; pass an array of shape {inner}")
        return shape

    def forward(self, x):
        return self.prepare(x.shape[0], x.shape[1:])(x)

    def prepare(self, n, shape):
        """One compiled call over the rows of the normalized axes (nncomp/kernels/rows.py), parallel
        over rows from _jit.PARALLEL_MIN_WORK values; scale and bias broadcast to a row once."""
        inner = tuple(shape[a] for a in self._axes(shape))
        k, size = math.prod(inner), n * math.prod(shape)
        scale, bias = (np.zeros(0, np.float32) if v is None else
                       np.ascontiguousarray(np.broadcast_to(v, inner), np.float32).ravel()
                       for v in (self.scale, self.bias))
        kern = _jit.pick((rows.layernorm_rows, rows.layernorm_rows_parallel), size)
        eps = np.float32(self.epsilon)

        def step(x):
            out = np.empty(x.shape, np.float32)
            if size:
                kern(np.ascontiguousarray(x, np.float32).reshape(size // k, k), scale, bias, eps,
                     out.reshape(size // k, k))
            return out
        step.blas = False
        return step

    def macs(self, shape):
        return 4 * math.prod(shape)


@register
@dataclass(frozen=True, eq=False)
class MatMul(Layer):
    """``np.matmul`` in the source's order: of two inputs of one rank (batch axes broadcast), or of
    one input and a constant ``constant`` (k, m) on its last axis (a dense layer over any rank)."""

    constant: np.ndarray = tensor_field()
    kind = "matmul"

    def __post_init__(self):
        if self.constant is not None:
            w = np.ascontiguousarray(self.constant, dtype=np.float32)
            if w.ndim != 2:
                raise NncompError(f"matmul constant must be 2-D (k, m), got shape {w.shape}")
            w.setflags(write=False)
            set_fields(self, constant=w)

    @property
    def n_inputs(self):
        return 1 if self.constant is not None else 2

    def output_shape(self, a, b=None):
        a = source_shape(a)
        b = self.constant.shape if b is None else source_shape(b)
        if len(a) < (1 if self.constant is not None else 2) or a[-1] != b[-2] or (
                self.constant is None and len(a) != len(b)):
            raise NncompError(f"matmul needs inputs of one rank with a[-1] == b[-2], got {a} and {b}")
        try:
            lead = np.broadcast_shapes(a[:-2], b[:-2])
        except ValueError:
            raise NncompError(f"matmul batch axes {a[:-2]} and {b[:-2]} do not broadcast") from None
        return internal_shape(tuple(lead) + a[-2:-1] + (b[-1],))

    def macs(self, *shapes):
        return math.prod(source_shape(self.output_shape(*shapes))) * source_shape(shapes[0])[-1]

    def forward(self, a, b=None):
        return from_source(np.matmul(to_source(a), self.constant if b is None else to_source(b)))
