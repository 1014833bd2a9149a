"""Layers with PyTorch/Keras inference semantics over nncomp's internal layout.

Internal layout: images are NHWC float32 (channels last: im2col copies contiguous channel vectors
and the patch product lands directly in NHWC); vectors are ``(n_samples, features)``. Per-sample
shapes are ``(h, w, c)`` or ``(features,)``. A layer is a frozen dataclass: compression methods
build new layers with :func:`dataclasses.replace`, never mutate one.

Each layer provides ``forward(*xs)``, ``output_shape(*shapes)`` (which validates), ``macs(*shapes)``
(multiply-adds per sample), ``prepare(n, *shapes)`` (the step a model runs for a batch size),
``config()`` and ``tensors()`` (what the native file stores). The base class is in
nncomp/layer_base.py and the pooling layers in nncomp/pooling.py; all are importable from here.
"""
import math
from dataclasses import dataclass, field

import numpy as np

from . import convolution
from .errors import NncompError
from .layer_base import (LAYERS, Layer, _image, _pads, _pair, _register, _tensor, _vector,  # noqa: F401
                         _window_out)
from .matrices import DenseMatrix, Matrix, as_matrix
from .pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D  # noqa: F401


@_register
@dataclass(frozen=True, eq=False)
class Dense(Layer):
    """``y = x @ W.T + b`` with W a Matrix ``(n_out, n_in)`` in any format."""

    weight: Matrix = field(default=None, metadata={"tensor": True, "config": False})
    bias: np.ndarray = _tensor()
    kind = "dense"

    def __post_init__(self):
        object.__setattr__(self, "weight", as_matrix(self.weight))
        object.__setattr__(self, "bias", _vector(self.bias, self.weight.n_out, "dense bias"))

    def output_shape(self, shape):
        if len(shape) != 1 or shape[0] != self.weight.n_in:
            raise NncompError(f"dense layer expects ({self.weight.n_in},) features per sample, "
                              f"got {shape}")
        return (self.weight.n_out,)

    def macs(self, shape):
        return self.weight.macs_per_row

    def forward(self, x):
        y = self.weight.apply(x)
        if self.bias is not None:
            y += self.bias
        return y

    def prepare(self, n, shape):
        mul, bias = self.weight.prepare(n), self.bias
        if bias is None:
            return mul

        def step(x):
            y = mul(x)
            y += bias
            return y
        return step

    def describe(self):
        return self.weight.describe()


@_register
@dataclass(frozen=True, eq=False)
class Conv2D(Layer):
    """2-D convolution (cross-correlation, as in PyTorch and Keras) over NHWC images.

    ``weight`` is a Matrix ``(c_out, kh*kw*c_in/groups)`` with patch columns ordered (kh, kw, c);
    ``padding`` is (top, bottom, left, right). How it computes (im2col, shifted GEMM, direct,
    depthwise) is chosen per shape by nncomp/convolution.py. Depthwise convolutions
    (``groups == in_channels``, one input channel per group) run a direct kernel; other grouped
    convolutions need dense weights.
    """

    weight: Matrix = field(default=None, metadata={"tensor": True, "config": False})
    bias: np.ndarray = _tensor()
    in_channels: int = 1
    kernel_size: tuple = (1, 1)
    stride: tuple = (1, 1)
    padding: tuple = (0, 0, 0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    _wt: np.ndarray = field(default=None, init=False, repr=False, metadata={"config": False})
    _algorithms: tuple = field(default=None, init=False, repr=False, metadata={"config": False})
    kind = "conv2d"

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("weight", as_matrix(self.weight))
        set_("kernel_size", _pair(self.kernel_size, "kernel_size"))
        set_("stride", _pair(self.stride, "stride"))
        set_("dilation", _pair(self.dilation, "dilation"))
        set_("padding", _pads(self.padding))
        kh, kw = self.kernel_size
        g, cin = int(self.groups), int(self.in_channels)
        set_("groups", g)
        set_("in_channels", cin)
        c_out = self.weight.n_out
        if g < 1 or cin % g or c_out % g:
            raise NncompError(f"conv groups={g} must divide in_channels={cin} and out_channels={c_out}")
        if self.weight.n_in != kh * kw * (cin // g):
            raise NncompError(f"conv weight has {self.weight.n_in} columns; kernel {kh}x{kw} over "
                              f"{cin // g} channels per group needs {kh * kw * (cin // g)}")
        set_("bias", _vector(self.bias, c_out, "conv bias"))
        if g > 1 and not isinstance(self.weight, DenseMatrix):
            raise NncompError(f"a grouped convolution (groups={g}) needs dense weights, got "
                                  f"{self.weight.format}; leave grouped layers out of compression")
        if self.depthwise or convolution.direct_eligible(self):
            set_("_wt", np.ascontiguousarray(self.weight.w.T))
        set_("_algorithms", convolution.algorithms_for(self))

    @property
    def out_channels(self):
        return self.weight.n_out

    @property
    def depthwise(self):
        return self.groups > 1 and self.groups == self.in_channels

    def output_shape(self, shape):
        h, w, c = _image(shape, "conv2d")
        if c != self.in_channels:
            raise NncompError(f"conv2d expects {self.in_channels} input channels, got {c}")
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        t, b, l, r = self.padding
        oh = _window_out(h, kh, sh, t, b, dh, False)
        ow = _window_out(w, kw, sw, l, r, dw, False)
        if oh < 1 or ow < 1:
            raise NncompError(f"conv2d with kernel {self.kernel_size} does not fit input {h}x{w}")
        return (oh, ow, self.out_channels)

    def macs(self, shape):
        oh, ow, _ = self.output_shape(shape)
        return oh * ow * self.weight.macs_per_row

    def forward(self, x):
        return convolution.forward(self, x)

    def prepare(self, n, shape):
        return convolution.prepare(self, shape, n)

    def describe(self):
        return self.weight.describe()


@_register
@dataclass(frozen=True, eq=False)
class BatchNorm(Layer):
    """Inference batch normalisation over the last (channel) axis: ``(x - mean) / sqrt(var + eps) * gamma + beta``."""

    gamma: np.ndarray = _tensor()
    beta: np.ndarray = _tensor()
    mean: np.ndarray = _tensor()
    var: np.ndarray = _tensor()
    eps: float = 1e-5
    kind = "batchnorm"

    def __post_init__(self):
        n = np.shape(self.mean)[0] if self.mean is not None and np.ndim(self.mean) == 1 else -1
        if n < 1:
            raise NncompError(f"batchnorm needs a 1-D running mean, got shape {np.shape(self.mean)}")
        for k in ("gamma", "beta", "mean", "var"):
            object.__setattr__(self, k, _vector(getattr(self, k), n, f"batchnorm {k}"))
        if not (self.eps >= 0) or np.any(self.var < 0):
            raise NncompError("batchnorm needs eps >= 0 and variances >= 0")
        object.__setattr__(self, "eps", float(self.eps))

    @property
    def scale_shift(self):
        """The per-channel affine map this layer computes, as float32 (scale, shift)."""
        scale = self.gamma.astype(np.float64) / np.sqrt(self.var.astype(np.float64) + self.eps)
        shift = self.beta.astype(np.float64) - self.mean * scale
        return scale.astype(np.float32), shift.astype(np.float32)

    def output_shape(self, shape):
        if shape[-1] != self.mean.shape[0]:
            raise NncompError(f"batchnorm over {self.mean.shape[0]} channels got per-sample shape {shape}")
        return shape

    def macs(self, shape):
        return int(np.prod(shape))

    def forward(self, x):
        scale, shift = self.scale_shift
        return x * scale + shift

    def prepare(self, n, shape):
        scale, shift = self.scale_shift
        return lambda x: x * scale + shift


@_register
@dataclass(frozen=True, eq=False)
class ReLU(Layer):
    """``max(x, 0)``, capped at ``max_value`` when given (ReLU6: ``max_value=6``)."""

    max_value: float = None
    kind = "relu"

    def forward(self, x):
        if self.max_value is None:
            return np.maximum(x, np.float32(0))
        return np.clip(x, np.float32(0), np.float32(self.max_value))


@_register
@dataclass(frozen=True, eq=False)
class Flatten(Layer):
    """Flatten to features in the source framework's order: ``"chw"`` (PyTorch) or ``"hwc"`` (Keras)."""

    order: str = "chw"
    kind = "flatten"

    def __post_init__(self):
        if self.order not in ("chw", "hwc"):
            raise NncompError(f"flatten order must be 'chw' or 'hwc', got {self.order!r}")

    def output_shape(self, shape):
        return (int(np.prod(shape)),)

    def forward(self, x):
        if x.ndim == 4 and self.order == "chw":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x).reshape(x.shape[0], math.prod(x.shape[1:]))


@_register
@dataclass(frozen=True, eq=False)
class ZeroPad2D(Layer):
    """Zero padding (top, bottom, left, right) of an image."""

    padding: tuple = (1, 1, 1, 1)
    kind = "zeropad2d"

    def __post_init__(self):
        object.__setattr__(self, "padding", _pads(self.padding))

    def output_shape(self, shape):
        h, w, c = _image(shape, self.kind)
        t, b, l, r = self.padding
        return (h + t + b, w + l + r, c)

    def forward(self, x):
        t, b, l, r = self.padding
        return np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))


@_register
@dataclass(frozen=True, eq=False)
class Add(Layer):
    """Element-wise sum of its inputs (residual connections)."""

    kind = "add"
    n_inputs = 2

    def output_shape(self, *shapes):
        if len(set(shapes)) != 1:
            raise NncompError(f"add needs inputs of one shape, got {shapes}")
        return shapes[0]

    def macs(self, *shapes):
        return 0

    def forward(self, *xs):
        y = xs[0] + xs[1]
        for x in xs[2:]:
            y += x
        return y


@_register
@dataclass(frozen=True, eq=False)
class Softmax(Layer):
    """Softmax over the last axis, with max subtraction (no NaN for finite inputs)."""

    kind = "softmax"

    def forward(self, x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)


@_register
@dataclass(frozen=True, eq=False)
class Dropout(Layer):
    """Identity at inference."""

    kind = "dropout"

    def forward(self, x):
        return x
