"""Dense (fully connected) layers: ``y = x @ W.T + b`` with the weight in any Matrix format."""
from dataclasses import dataclass, field

import numpy as np

from ..errors import NncompError
from ..matrices import Matrix, as_matrix
from .base import Layer, register, set_fields, tensor_field, vector
from .fused import absorb_epilogue


@register
@dataclass(frozen=True, eq=False)
class Dense(Layer):
    """``y = x @ W.T + b`` with W a Matrix ``(n_out, n_in)`` in any format."""

    weight: Matrix = field(default=None, metadata={"tensor": True, "config": False})
    bias: np.ndarray = tensor_field()
    kind = "dense"

    def __post_init__(self):
        set_fields(self, weight=as_matrix(self.weight))
        set_fields(self, bias=vector(self.bias, self.weight.n_out, "dense bias"))

    def output_shape(self, shape):
        if len(shape) != 1 or shape[0] != self.weight.n_in:
            raise NncompError(f"dense layer expects ({self.weight.n_in},) features per sample, "
                              f"got {shape}")
        return (self.weight.n_out,)

    def macs(self, shape):
        return self.weight.macs_per_row

    def prepare(self, n, shape):
        mul, bias = self.weight.prepare(n), self.bias
        if bias is None:
            return mul

        def step(x):
            y = mul(x)
            y += bias
            return y
        return step

    def fuse(self, successor, n, shape):
        return absorb_epilogue(self, successor, n, (shape,))

    def describe(self):
        return self.weight.describe()
