"""2-D convolution over NHWC images; how it computes is chosen per shape in conv_algorithms.py."""
from dataclasses import dataclass, field

import numpy as np

from ..errors import NncompError
from ..matrices import DenseMatrix, Matrix, as_matrix
from . import conv_algorithms as algos
from . import conv_blocked as blocked
from .base import Layer, SamePadding, Window, fit, pads, pair, plan_field, register, set_fields, tensor_field, vector
from .fused import Fused, absorb_epilogue
from .pooling import MaxPool2D


@register
@dataclass(frozen=True, eq=False)
class Conv2D(SamePadding, Layer):
    """2-D convolution (cross-correlation, as in PyTorch and Keras) over NHWC images.

    ``weight`` is a Matrix ``(c_out, kh*kw*c_in/groups)`` with patch columns ordered (kh, kw, c);
    ``padding`` is (top, bottom, left, right); with ``same`` it is TensorFlow's "same" padding,
    recomputed for each input size (Keras models with strided "same" convolutions). How it computes (im2col, shifted GEMM, direct,
    depthwise) is chosen per shape by nncomp/layers/conv_algorithms.py. Depthwise convolutions
    (``groups == in_channels``, one input channel per group) run a direct kernel; other grouped
    convolutions need dense weights.
    """

    weight: Matrix = field(default=None, metadata={"tensor": True, "config": False})
    bias: np.ndarray = tensor_field()
    in_channels: int = 1
    kernel_size: tuple = (1, 1)
    stride: tuple = (1, 1)
    padding: tuple = (0, 0, 0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    same: bool = False
    window: Window = plan_field()
    weight_t: np.ndarray = plan_field()       # (k, c_out): the direct and depthwise kernels' layout
    weight_b: tuple = plan_field()            # (w (k, cop), bias (cop,)): the blocked kernel's layout
    algorithms: tuple = plan_field()          # what can compute it, the default first
    kind = "conv2d"

    def __post_init__(self):
        set_fields(self, weight=as_matrix(self.weight), kernel_size=pair(self.kernel_size, "kernel_size"),
                   stride=pair(self.stride, "stride"), dilation=pair(self.dilation, "dilation"),
                   padding=pads(self.padding), groups=int(self.groups), in_channels=int(self.in_channels),
                   same=bool(self.same))
        set_fields(self, window=Window(self.kernel_size, self.stride, self.padding, self.dilation))
        g, cin, c_out = self.groups, self.in_channels, self.weight.n_out
        if g < 1 or cin % g or c_out % g:
            raise NncompError(f"conv groups={g} must divide in_channels={cin} and out_channels={c_out}")
        if self.weight.n_in != self.window.patch * (cin // g):
            kh, kw = self.kernel_size
            raise NncompError(f"conv weight has {self.weight.n_in} columns; kernel {kh}x{kw} over "
                              f"{cin // g} channels per group needs {kh * kw * (cin // g)}")
        set_fields(self, bias=vector(self.bias, c_out, "conv bias"))
        if g > 1 and not isinstance(self.weight, DenseMatrix):
            raise NncompError(f"a grouped convolution (groups={g}) needs dense weights, got "
                              f"{self.weight.format}; leave grouped layers out of compression")
        if self.depthwise or algos.direct_eligible(self):
            set_fields(self, weight_t=np.ascontiguousarray(self.weight.w.T))
        if blocked.blocked_eligible(self):
            set_fields(self, weight_b=blocked.blocked_weights(self))
        set_fields(self, algorithms=algos.algorithms_for(self))

    @property
    def out_channels(self):
        return self.weight.n_out

    @property
    def depthwise(self):
        return self.groups > 1 and self.groups == self.in_channels

    def output_shape(self, shape):
        if len(shape) == 3 and shape[2] != self.in_channels:
            raise NncompError(f"conv2d expects {self.in_channels} input channels, got {shape[2]}")
        oh, ow = fit(self.for_input(shape).window, shape, "conv2d")
        return (oh, ow, self.out_channels)

    def macs(self, shape):
        oh, ow, _ = self.output_shape(shape)
        return oh * ow * self.weight.macs_per_row

    def prepare(self, n, shape):
        return algos.prepare(self.for_input(shape), shape, n)

    def prepare_epilogue(self, n, shape, *, epilogue):
        return algos.prepare_epilogue(self.for_input(shape), shape, n, epilogue)

    def fuse(self, successor, n, shape):
        conv = self.for_input(shape)
        if isinstance(successor, MaxPool2D):
            pool = successor.for_input(conv.shape_of(shape))
            pooled = algos.prepare_pooled(conv, shape, n, pool)
            if pooled is not None:
                return Fused(conv, (shape,), pooled, pool.shape_of(conv.shape_of(shape)), pool=pool)
        return absorb_epilogue(conv, successor, n, (shape,))

    def describe(self):
        return self.weight.describe()
