"""Pooling layers (max, average, global average) with PyTorch's window and divisor rules.

Re-exported by nncomp/layers.py; a max-pool that only reads a convolution may also run inside that
convolution's fused kernel (see ``Model``).
"""
import math
from dataclasses import dataclass

import numpy as np

from .kernels import _jit
from .kernels.pool import avgpool_nhwc, avgpool_nhwc_parallel, maxpool_nhwc, maxpool_nhwc_parallel
from .layer_base import Layer, _image, _pads, _pair, _register, _window_out


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
