"""Pooling layers (max, average, global average) with PyTorch's window and divisor rules.

A max-pool that only reads a convolution may also run inside that convolution's fused kernel
(``Conv2D.fuse``).
"""
import math
from dataclasses import dataclass

import numpy as np

from ..errors import NncompError
from ..kernels import _jit
from ..kernels import conv_chain as K
from ..kernels.pool import (avgpool_nhwc, avgpool_nhwc_parallel, global_mean_nhwc, global_mean_nhwc_parallel,
                            maxpool_nhwc, maxpool_nhwc_parallel)
from .base import Layer, SamePadding, Window, fit, image, pads, pair, register, set_fields
from .conv_chain import squeeze_row


class _Window2D(SamePadding, Layer):
    """What the windowed pools share: validated geometry, the Window value, the output shape, and
    TensorFlow's "same" padding recomputed per input size when ``same``."""

    def __post_init__(self):
        _pool_init(self)

    @property
    def window(self):
        return Window(self.kernel_size, self.stride, self.padding, self.dilation)

    def output_shape(self, shape):
        oh, ow = fit(self.for_input(shape).window, shape, self.kind, self.ceil_mode)
        return (oh, ow, shape[2])

    def prepare(self, n, shape):
        layer = self.for_input(shape)
        return _pool_step(layer.KERNELS, (n,) + layer.shape_of(shape), layer.kernel_args())


@register
@dataclass(frozen=True, eq=False)
class MaxPool2D(_Window2D):
    """Max pooling; padding (top, bottom, left, right) never wins; ``ceil_mode`` as in PyTorch."""

    kernel_size: tuple = (2, 2)
    stride: tuple = None
    padding: tuple = (0, 0, 0, 0)
    dilation: tuple = (1, 1)
    ceil_mode: bool = False
    same: bool = False
    kind = "maxpool2d"
    KERNELS = (maxpool_nhwc, maxpool_nhwc_parallel)

    @property
    def plain(self):
        """Whether it is a p x p window with stride p, no padding and no dilation (p > 1)."""
        p = self.kernel_size[0]
        return (self.kernel_size == self.stride == (p, p) and p > 1 and self.padding == (0, 0, 0, 0)
                and self.dilation == (1, 1))

    def kernel_args(self):
        return self.window.args


@register
@dataclass(frozen=True, eq=False)
class AvgPool2D(_Window2D):
    """Average pooling with PyTorch's divisor rule (``count_include_pad``) and ``ceil_mode``."""

    kernel_size: tuple = (2, 2)
    stride: tuple = None
    padding: tuple = (0, 0, 0, 0)
    ceil_mode: bool = False
    count_include_pad: bool = True
    same: bool = False
    kind = "avgpool2d"
    KERNELS = (avgpool_nhwc, avgpool_nhwc_parallel)

    @property
    def dilation(self):
        return (1, 1)

    def kernel_args(self):
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        t, b, l, r = self.padding
        return (kh, kw, sh, sw, t, l, b, r, bool(self.count_include_pad))


def _pool_step(kernels, out_shape, args):
    """A pooling step: the serial or parallel kernel picked once for this output shape."""
    kern = _jit.pick(kernels, math.prod(out_shape) * args[0] * args[1])

    def step(x):
        out = np.empty(out_shape, np.float32)
        kern(x, *args, out)
        return out
    return step


def _pool_init(layer):
    kernel = pair(layer.kernel_size, "kernel_size")
    set_fields(layer, kernel_size=kernel, stride=kernel if layer.stride is None else pair(layer.stride, "stride"),
               padding=pads(layer.padding), ceil_mode=bool(layer.ceil_mode), same=bool(layer.same))
    if "dilation" in type(layer).__dataclass_fields__:
        set_fields(layer, dilation=pair(layer.dilation, "dilation"))
    (kh, kw), (t, b, l, r) = layer.kernel_size, layer.padding
    if max(t, b) > kh // 2 or max(l, r) > kw // 2:
        raise NncompError(f"{layer.kind}: padding {layer.padding} must be at most half the kernel {layer.kernel_size}")



class _Global2D(Layer):
    """What the global pools share: (h, w, c) -> (c,), or (1, 1, c) with ``keepdims``."""

    def output_shape(self, shape):
        h, w, c = image(shape, self.kind)
        if h < 1 or w < 1:
            raise NncompError(f"{self.kind} needs an image of at least 1x1 pixels, got {h}x{w}")
        return (1, 1, c) if self.keepdims else (c,)


@register
@dataclass(frozen=True, eq=False)
class GlobalAvgPool2D(_Global2D):
    """Mean over height and width: (h, w, c) -> (c,), or (1, 1, c) with ``keepdims``."""

    keepdims: bool = False
    kind = "global_avgpool2d"

    def forward(self, x):
        return self.prepare(x.shape[0], x.shape[1:])(x)

    def prepare(self, n, shape):
        h, w, c = shape
        kern = _jit.pick((global_mean_nhwc, global_mean_nhwc_parallel), n * h * w * c) if n > 1 else global_mean_nhwc
        out_shape = (n, 1, 1, c) if self.keepdims else (n, c)

        def step(x):
            out = np.empty((n, c), np.float32)
            kern(np.ascontiguousarray(x).reshape(n, h * w, c), out)
            return out.reshape(out_shape)
        step.blas = False
        if self.keepdims:       # an (n, 1, 1, c) value: a compiled run may take it
            step.chain = squeeze_row(K.MEAN, kern is global_mean_nhwc_parallel)
        return step


@register
@dataclass(frozen=True, eq=False)
class GlobalMaxPool2D(_Global2D):
    """Max over height and width (a NaN wins, as in PyTorch and MaxPool2D; ONNX Runtime skips
    NaN): (h, w, c) -> (c,), or (1, 1, c) with ``keepdims`` (ONNX GlobalMaxPool)."""

    keepdims: bool = False
    kind = "global_maxpool2d"
    monotone = True

    def forward(self, x):
        return x.max(axis=(1, 2), keepdims=self.keepdims)
