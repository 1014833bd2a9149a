"""Layers that move values without arithmetic: flatten, zero padding."""
import math
from dataclasses import dataclass

import numpy as np

from ..errors import NncompError
from .base import Layer, image, pads, register, set_fields


@register
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

    def fuse(self, successor, n, shape):
        # a dense reader takes the image itself, its mat-vec gathering the features in this order
        flattened = getattr(successor, "flattened", None)
        return flattened(n, tuple(shape), self.order) if flattened is not None and len(shape) == 3 else None


@register
@dataclass(frozen=True, eq=False)
class ZeroPad2D(Layer):
    """Zero padding (top, bottom, left, right) of an image."""

    padding: tuple = (1, 1, 1, 1)
    kind = "zeropad2d"

    def __post_init__(self):
        set_fields(self, padding=pads(self.padding))

    def output_shape(self, shape):
        h, w, c = image(shape, self.kind)
        t, b, l, r = self.padding
        return (h + t + b, w + l + r, c)

    def forward(self, x):
        t, b, l, r = self.padding
        return np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
