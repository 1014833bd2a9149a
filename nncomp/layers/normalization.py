"""Normalization layers at inference: batch norm as a per-channel affine map."""
from dataclasses import dataclass

import numpy as np

from ..errors import NncompError
from .base import Layer, register, set_fields, tensor_field, vector


@register
@dataclass(frozen=True, eq=False)
class BatchNorm(Layer):
    """Inference batch normalisation over the last (channel) axis: ``(x - mean) / sqrt(var + eps) * gamma + beta``."""

    gamma: np.ndarray = tensor_field()
    beta: np.ndarray = tensor_field()
    mean: np.ndarray = tensor_field()
    var: np.ndarray = tensor_field()
    eps: float = 1e-5
    kind = "batchnorm"

    def __post_init__(self):
        n = np.shape(self.mean)[0] if self.mean is not None and np.ndim(self.mean) == 1 else -1
        if n < 1:
            raise NncompError(f"batchnorm needs a 1-D running mean, got shape {np.shape(self.mean)}")
        for k in ("gamma", "beta", "mean", "var"):
            set_fields(self, **{k: vector(getattr(self, k), n, f"batchnorm {k}")})
        if not (self.eps >= 0) or np.any(self.var < 0):
            raise NncompError("batchnorm needs eps >= 0 and variances >= 0")
        set_fields(self, eps=float(self.eps))

    @property
    def scale_shift(self):
        """The per-channel affine map this layer computes, as float32 (scale, shift)."""
        return self.memo("scale_shift", self._scale_shift)

    def _scale_shift(self):
        scale = self.gamma.astype(np.float64) / np.sqrt(self.var.astype(np.float64) + self.eps)
        shift = self.beta.astype(np.float64) - self.mean * scale
        return scale.astype(np.float32), shift.astype(np.float32)

    @property
    def monotone(self):
        """Non-decreasing when every channel's scale is >= 0 (gamma >= 0, as trained models almost
        always have): then it commutes with a max-pool bit for bit (rounding is monotone too)."""
        return self.memo("monotone", lambda: bool(np.all(self.scale_shift[0] >= 0)))

    def output_shape(self, shape):
        if shape[-1] != self.mean.shape[0]:
            raise NncompError(f"batchnorm over {self.mean.shape[0]} channels got per-sample shape {shape}")
        return shape

    def macs(self, shape):
        return int(np.prod(shape))

    def prepare(self, n, shape):
        scale, shift = self.scale_shift
        return lambda x: x * scale + shift

    def epilogue(self, n, shape):
        scale, shift = self.scale_shift

        def affine(y):
            y *= scale
            y += shift
        affine.spec = ("affine", scale, shift)
        return affine
