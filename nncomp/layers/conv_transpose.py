"""Transposed 2-D convolution (ONNX ConvTranspose, PyTorch ConvTranspose2d) over NHWC images.

Computed as one matrix product through the weight Matrix, ``cols = x(n*h*w, c_in) @ W.T`` (for dense
weights a 1 x 1 convolution to ``kh*kw*c_out`` channels), then a col2im gather-sum
(nncomp/kernels/conv_transpose.py). The weight is a Matrix ``(kh*kw*c_out,
c_in)`` (per group: ``(groups*kh*kw*c_out/groups, c_in/groups)``, rows ordered (group, kh, kw,
c_out)), so each row is one output tap of one output channel and the compression methods treat it
as any weight matrix: its "input rows" are the input pixels.
"""
from dataclasses import dataclass, field

import numpy as np

from ..errors import NncompError
from ..kernels import _jit
from ..kernels.conv_transpose import (col2im_nhwc, col2im_nhwc_parallel, col2im_tiles_epilogue_nhwc,
                                      col2im_tiles_epilogue_nhwc_parallel)
from ..kernels.epilogue import activation_rows, activation_rows_parallel
from ..matrices import DenseMatrix, Matrix, as_matrix
from .base import Layer, image, pads, pair, plan_field, register, set_fields, tensor_field, vector
from .conv import Conv2D
from .gemv import NO_EPILOGUE, epilogue_vectors
from .fused import absorb_epilogue

_NO_BIAS = np.zeros(0, np.float32)


def _extra(v):
    t = tuple(int(a) for a in (v if isinstance(v, (tuple, list)) else (v, v)))
    if len(t) != 2 or min(t) < 0:
        raise NncompError(f"output_padding must be an int >= 0 or a pair of them, got {v!r}")
    return t


def onnx_weight_matrix(w, groups=1):
    """The Matrix rows ``(groups*kh*kw*c_out/groups, c_in/groups)`` of an ONNX/PyTorch weight
    ``(c_in, c_out/groups, kh, kw)``."""
    w = np.asarray(w, np.float32)
    if w.ndim != 4 or groups < 1 or w.shape[0] % groups:
        raise NncompError(f"a transposed convolution weight must be (c_in, c_out/groups, kh, kw) with c_in "
                          f"divisible by groups={groups}, got shape {w.shape}")
    cin_g = w.shape[0] // groups
    parts = [w[g * cin_g:(g + 1) * cin_g].transpose(2, 3, 1, 0).reshape(-1, cin_g) for g in range(groups)]
    return np.ascontiguousarray(np.concatenate(parts))


@register
@dataclass(frozen=True, eq=False)
class ConvTranspose2D(Layer):
    """Transposed convolution: output ``(h-1)*stride - (top + bottom) + dilation*(k-1) + output_padding + 1``.

    ``weight``: a Matrix ``(kh*kw*c_out/groups*groups, c_in/groups)`` with ``kernel_size`` and
    ``out_channels`` given, or an ONNX/PyTorch weight array ``(c_in, c_out/groups, kh, kw)``
    (see :meth:`from_onnx_weight`). ``padding`` (top, bottom, left, right) crops the full output.
    Grouped transposed convolutions need dense weights.
    """

    weight: Matrix = field(default=None, metadata={"tensor": True, "config": False})
    bias: np.ndarray = tensor_field()
    stride: tuple = (1, 1)
    padding: tuple = (0, 0, 0, 0)
    output_padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    kernel_size: tuple = None
    out_channels: int = None
    group_weights: np.ndarray = plan_field()       # (groups, kh*kw*cg, c_in/groups), grouped only
    kind = "conv_transpose2d"

    def __post_init__(self):
        g = int(self.groups)
        if g < 1:
            raise NncompError(f"conv_transpose2d groups must be >= 1, got {self.groups}")
        w = self.weight
        if isinstance(w, np.ndarray) and w.ndim == 4:
            shape = w.shape
            for name, want in (("kernel_size", shape[2:]), ("out_channels", shape[1] * g)):
                got = getattr(self, name)
                if got is not None and tuple(np.atleast_1d(got)) != tuple(np.atleast_1d(want)):
                    raise NncompError(f"conv_transpose2d {name}={got!r} does not match the weight of shape {shape}")
            set_fields(self, weight=onnx_weight_matrix(w, g), kernel_size=shape[2:], out_channels=shape[1] * g)
        if self.kernel_size is None or self.out_channels is None:
            raise NncompError("conv_transpose2d with a Matrix weight needs kernel_size=(kh, kw) and out_channels; "
                              "or pass the ONNX weight array (c_in, c_out/groups, kh, kw)")
        set_fields(self, weight=as_matrix(self.weight), groups=g, out_channels=int(self.out_channels),
                   kernel_size=pair(self.kernel_size, "kernel_size"), stride=pair(self.stride, "stride"),
                   dilation=pair(self.dilation, "dilation"), padding=pads(self.padding),
                   output_padding=_extra(self.output_padding))
        (kh, kw), c_out = self.kernel_size, self.out_channels
        if any(e >= max(s, d) for e, s, d in zip(self.output_padding, self.stride, self.dilation)):
            raise NncompError(f"conv_transpose2d output_padding {self.output_padding} must be smaller than the "
                              f"stride {self.stride} or the dilation {self.dilation} (PyTorch's rule; ONNX Runtime "
                              "wants it below the stride); pass the output size's remainder instead")
        if c_out < 1 or c_out % g or self.weight.n_out != kh * kw * c_out:
            raise NncompError(f"conv_transpose2d weight has {self.weight.n_out} rows; kernel {kh}x{kw} over "
                              f"{c_out} output channels needs {kh * kw * c_out} (and groups={g} must divide them)")
        set_fields(self, bias=vector(self.bias, c_out, "conv_transpose2d bias"))
        if g > 1:
            if not isinstance(self.weight, DenseMatrix):
                raise NncompError(f"a grouped transposed convolution (groups={g}) needs dense weights, got "
                                  f"{self.weight.format}; leave grouped layers out of compression")
            set_fields(self, group_weights=np.ascontiguousarray(
                self.weight.w.reshape(g, -1, self.weight.n_in).transpose(0, 2, 1)))

    @classmethod
    def from_onnx_weight(cls, w, bias=None, **kwargs):
        """The layer from an ONNX/PyTorch weight ``(c_in, c_out/groups, kh, kw)`` (other arguments
        as the constructor's)."""
        groups = int(kwargs.pop("groups", 1))
        w = np.asarray(w, np.float32)
        if w.ndim != 4:
            raise NncompError(f"ConvTranspose weight must be (c_in, c_out/groups, kh, kw), got shape {w.shape}")
        return cls(onnx_weight_matrix(w, groups), bias, groups=groups, kernel_size=w.shape[2:],
                   out_channels=w.shape[1] * groups, **kwargs)

    @property
    def in_channels(self):
        return self.weight.n_in * self.groups

    def output_shape(self, shape):
        h, w, c = image(shape, self.kind)
        if c != self.in_channels:
            raise NncompError(f"conv_transpose2d expects {self.in_channels} input channels, got {c}")
        size = []
        for n, k, s, d, p0, p1, e in zip((h, w), self.kernel_size, self.stride, self.dilation,
                                         self.padding[::2], self.padding[1::2], self.output_padding):
            size.append((n - 1) * s - p0 - p1 + d * (k - 1) + e + 1)
        if h < 1 or w < 1 or min(size) < 1:
            raise NncompError(f"conv_transpose2d over a {h}x{w} input gives {size[0]}x{size[1]} with padding "
                              f"{self.padding}; use less padding or a larger input")
        return (size[0], size[1], self.out_channels)

    def macs(self, shape):
        return shape[0] * shape[1] * self.weight.macs_per_row

    def _product(self, n, shape):
        """``x -> cols`` ``(groups, n*h*w, kh*kw*c_out/groups)``: the matrix product through the weight."""
        h, w, c = shape
        rows, g = n * h * w, self.groups
        if g == 1 and isinstance(self.weight, DenseMatrix):
            # a 1 x 1 convolution to kh*kw*c_out channels: the convolutions' own kernels, chosen per
            # shape by measurement (one thread, AMD EPYC Zen 3, 160 x 160 x 24 -> 96: 2.0 ms against
            # BLAS's 3.3-4.2, whose narrow products run far from its peak)
            inner = Conv2D(self.weight, None, in_channels=c, kernel_size=1).prepare(n, shape)
            return lambda x: inner(x).reshape(1, rows, -1)
        if g == 1:
            mul = self.weight.prepare(rows)
            return lambda x: mul(x.reshape(rows, c)).reshape(1, rows, -1)
        gw = self.group_weights
        return lambda x: np.ascontiguousarray(np.matmul(x.reshape(rows, g, -1).transpose(1, 0, 2), gw))

    def prepare(self, n, shape):
        if self.tiles_output(shape):       # each output value from one tap: a block copy
            return self.prepare_epilogue(n, shape, epilogue=NO_EPILOGUE)
        h, w, _ = shape
        oh, ow, c_out = self.shape_of(shape)
        product = self._product(n, shape)
        bias = _NO_BIAS if self.bias is None else self.bias
        kern = _jit.pick((col2im_nhwc, col2im_nhwc_parallel), n * oh * ow * c_out)
        args = (n, h, w, *self.kernel_size, *self.stride, self.padding[0], self.padding[2], *self.dilation, bias)

        def step(x):
            cols = np.ascontiguousarray(product(np.ascontiguousarray(x)))
            out = np.empty((n, oh, ow, c_out), np.float32)
            kern(cols, *args, out)
            return out
        return step

    def prepare_epilogue(self, n, shape, *, epilogue):
        """Taps that tile the output: the block copy applies the affine map, residual add and clip as
        it stores (one pass over the output instead of two); an activation after it runs the
        activation kernel. None otherwise (the plan runs the epilogue kernel after)."""
        if not self.tiles_output(shape):
            return None
        h, w, _ = shape
        oh, ow, c_out = self.shape_of(shape)
        scale, shift, lo, hi, code, alpha, beta = epilogue_vectors(epilogue, c_out)
        product = self._product(n, shape)
        size = n * oh * ow * c_out
        kern = _jit.pick((col2im_tiles_epilogue_nhwc, col2im_tiles_epilogue_nhwc_parallel), size)
        act = _jit.pick((activation_rows, activation_rows_parallel), size) if code else None
        bias = _NO_BIAS if self.bias is None else self.bias
        no_res = np.zeros((0, 1, 1, c_out), np.float32)

        def step(x, res=None):
            cols = np.ascontiguousarray(product(np.ascontiguousarray(x)))
            out = np.empty((n, oh, ow, c_out), np.float32)
            kern(cols, h, w, bias, scale, shift, no_res if res is None else np.ascontiguousarray(res), lo, hi, out)
            if act is not None:
                act(out.reshape(-1, c_out), code, alpha, beta)
            return out
        return step

    def tiles_output(self, shape):
        """Whether the taps tile the output (kernel = stride, no padding, output padding or
        dilation, one group): then every output value is one tap's product plus the bias."""
        return (self.groups == 1 and self.kernel_size == self.stride and self.dilation == (1, 1)
                and not any(self.padding) and self.shape_of(shape)[:2] == (shape[0] * self.stride[0],
                                                                           shape[1] * self.stride[1]))

    def forward(self, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.prepare(x.shape[0], x.shape[1:])(x)

    def fuse(self, successor, n, shape):
        return absorb_epilogue(self, successor, n, (shape,))

    def describe(self):
        return self.weight.describe()
