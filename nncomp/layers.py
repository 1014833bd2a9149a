"""Layers with PyTorch/Keras inference semantics over nncomp's internal layout.

Internal layout: images are NHWC float32 (channels last: im2col copies contiguous channel vectors
and the patch product lands directly in NHWC); vectors are ``(n_samples, features)``. Per-sample
shapes are ``(h, w, c)`` or ``(features,)``. A layer is a frozen dataclass: compression methods
build new layers with :func:`dataclasses.replace`, never mutate one.

Each layer provides ``forward(*xs)``, ``output_shape(*shapes)`` (which validates), ``macs(*shapes)``
(multiply-adds per sample), ``config()`` and ``tensors()`` (what the native file stores).
"""
import math
from dataclasses import dataclass, field, fields, replace

import numpy as np

from .errors import NncompError
from .kernels import _jit
from .kernels.pool import avgpool_nhwc, avgpool_nhwc_parallel, maxpool_nhwc, maxpool_nhwc_parallel
from . import convolution
from .matrices import DenseMatrix, Matrix, as_matrix

LAYERS = {}


def _register(cls):
    LAYERS[cls.kind] = cls
    return cls


def _pair(v, name):
    t = tuple(int(a) for a in (v if isinstance(v, (tuple, list)) else (v, v)))
    if len(t) != 2 or min(t) < 1:
        raise NncompError(f"{name} must be a positive int or a pair of them, got {v!r}")
    return t


def _pads(v):
    """Padding as (top, bottom, left, right) from an int, a (h, w) pair or a 4-tuple."""
    if isinstance(v, (int, np.integer)):
        t = (int(v),) * 4
    elif len(v) == 2:
        t = (int(v[0]), int(v[0]), int(v[1]), int(v[1]))
    elif len(v) == 4:
        t = tuple(int(a) for a in v)
    else:
        t = ()
    if len(t) != 4 or min(t) < 0:
        raise NncompError(f"padding must be an int >= 0, (h, w) or (top, bottom, left, right), got {v!r}")
    return t


def _window_out(size, k, s, p0, p1, d, ceil_mode):
    """Output length of a sliding window, PyTorch's rule (ceil mode drops a window starting in padding)."""
    span = size + p0 + p1 - d * (k - 1) - 1
    if span < 0:
        return 0
    n = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (n - 1) * s >= size + p0:
        n -= 1
    return n


def _image(shape, layer):
    if len(shape) != 3:
        raise NncompError(f"{layer} expects an image (h, w, c), got per-sample shape {shape}")
    return shape


class Layer:
    kind = "layer"
    n_inputs = 1

    def forward(self, x):
        raise NotImplementedError

    def prepare(self, n, *shapes):
        """The step ``(*xs) -> y`` a model runs for batches of ``n`` samples of per-sample input
        ``shapes``, with per-shape decisions (kernel, algorithm, threads) made once; layers without
        any return :meth:`forward`."""
        return self.forward

    def output_shape(self, shape):
        return shape

    def shape_of(self, shape):
        """:meth:`output_shape` remembered per input shape (forward passes ask on every call)."""
        memo = self.__dict__.setdefault("_shape_memo", {})
        out = memo.get(shape)
        if out is None:
            out = memo[shape] = tuple(self.output_shape(shape))
        return out

    def macs(self, *shapes):
        return 0

    @property
    def nbytes(self):
        return sum(t.nbytes for t in self.tensors().values() if t is not None)

    @property
    def weight(self):
        return None

    def config(self):
        out = {}
        for f in fields(self):
            if f.name.startswith("_") or not f.metadata.get("config", True):
                continue
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def tensors(self):
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("tensor")}

    @classmethod
    def from_config(cls, config, tensors):
        return cls(**config, **tensors)

    def replace(self, **changes):
        return replace(self, **changes)

    def describe(self):
        return "-"


def _tensor():
    return field(default=None, metadata={"tensor": True, "config": False})


def _vector(v, n, what):
    if v is None:
        return None
    v = np.ascontiguousarray(v, dtype=np.float32)
    if v.shape != (n,):
        raise NncompError(f"{what} must have shape ({n},), got {v.shape}")
    v.setflags(write=False)
    return v


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
class MaxPool2D(Layer):
    """Max pooling; padding (top, bottom, left, right) never wins; ``ceil_mode`` as in PyTorch."""

    kernel_size: tuple = (2, 2)
    stride: tuple = None
    padding: tuple = (0, 0, 0, 0)
    dilation: tuple = (1, 1)
    ceil_mode: bool = False
    kind = "maxpool2d"

    def __post_init__(self):
        _pool_init(self)

    def output_shape(self, shape):
        return _pool_shape(self, shape)

    def forward(self, x):
        return self.prepare(x.shape[0], x.shape[1:])(x)

    def prepare(self, n, shape):
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        args = (kh, kw, sh, sw, self.padding[0], self.padding[2], dh, dw)
        return _pool_step((maxpool_nhwc, maxpool_nhwc_parallel), (n,) + self.shape_of(shape), args)


@_register
@dataclass(frozen=True, eq=False)
class AvgPool2D(Layer):
    """Average pooling with PyTorch's divisor rule (``count_include_pad``) and ``ceil_mode``."""

    kernel_size: tuple = (2, 2)
    stride: tuple = None
    padding: tuple = (0, 0, 0, 0)
    ceil_mode: bool = False
    count_include_pad: bool = True
    kind = "avgpool2d"

    def __post_init__(self):
        _pool_init(self)

    @property
    def dilation(self):
        return (1, 1)

    def output_shape(self, shape):
        return _pool_shape(self, shape)

    def forward(self, x):
        return self.prepare(x.shape[0], x.shape[1:])(x)

    def prepare(self, n, shape):
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        t, b, l, r = self.padding
        args = (kh, kw, sh, sw, t, l, b, r, bool(self.count_include_pad))
        return _pool_step((avgpool_nhwc, avgpool_nhwc_parallel), (n,) + self.shape_of(shape), args)


def _pool_step(kernels, out_shape, args):
    """A pooling step: the serial or parallel kernel picked once for this output shape."""
    kern = _jit.pick(kernels, math.prod(out_shape) * args[0] * args[1])

    def step(x):
        out = np.empty(out_shape, np.float32)
        kern(x, *args, out)
        return out
    return step


def _pool_init(layer):
    set_ = lambda k, v: object.__setattr__(layer, k, v)  # noqa: E731
    set_("kernel_size", _pair(layer.kernel_size, "kernel_size"))
    set_("stride", layer.kernel_size if layer.stride is None else _pair(layer.stride, "stride"))
    set_("padding", _pads(layer.padding))
    if hasattr(type(layer), "__dataclass_fields__") and "dilation" in type(layer).__dataclass_fields__:
        set_("dilation", _pair(layer.dilation, "dilation"))
    set_("ceil_mode", bool(layer.ceil_mode))


def _pool_shape(layer, shape):
    h, w, c = _image(shape, layer.kind)
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    t, b, l, r = layer.padding
    if max(t, b) > kh // 2 or max(l, r) > kw // 2:
        raise NncompError(f"{layer.kind}: padding {layer.padding} must be at most half the kernel {layer.kernel_size}")
    oh = _window_out(h, kh, sh, t, b, dh, layer.ceil_mode)
    ow = _window_out(w, kw, sw, l, r, dw, layer.ceil_mode)
    if oh < 1 or ow < 1:
        raise NncompError(f"{layer.kind} with kernel {layer.kernel_size} does not fit input {h}x{w}")
    return (oh, ow, c)


@_register
@dataclass(frozen=True, eq=False)
class GlobalAvgPool2D(Layer):
    """Mean over height and width: (h, w, c) -> (c,), or (1, 1, c) with ``keepdims``."""

    keepdims: bool = False
    kind = "global_avgpool2d"

    def output_shape(self, shape):
        h, w, c = _image(shape, self.kind)
        return (1, 1, c) if self.keepdims else (c,)

    def forward(self, x):
        return x.mean(axis=(1, 2), keepdims=self.keepdims, dtype=np.float32)


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
