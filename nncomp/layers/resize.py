"""Image resizing with ONNX Resize semantics (opsets 11-21), nearest and bilinear, over NHWC.

The per-axis source coordinates are computed once per shape, in float32 and in the operation order
of ONNX Runtime's CPU kernel (``(x + 0.5) / scale - 0.5`` and so on; the scale is ``out / in`` when
sizes are given), so a coordinate that lands exactly between two pixels rounds as it does there;
two rules of that kernel beyond ONNX's formulas are kept too (an output the input's size is a copy;
nearest asymmetric/tf_half_pixel_for_nn from given sizes rounds the exact coordinate). The kernels
(nncomp/kernels/resize.py) then only gather through those tables.
"""
import math
from dataclasses import dataclass

import numpy as np

from ..errors import NncompError
from ..kernels import _jit
from ..kernels.resize import (resize_linear_nhwc, resize_linear_nhwc_parallel, resize_nearest_nhwc,
                              resize_nearest_nhwc_parallel)
from .base import Layer, image, register, set_fields
from .fused import absorb_epilogue

MODES = ("nearest", "linear")
COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners", "tf_half_pixel_for_nn")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
_F = np.float32


def source_coordinates(n_out, n_in, scale, coordinate_mode):
    """Float32 source coordinate of each of ``n_out`` output positions (ONNX's transform)."""
    xr, s = np.arange(n_out, dtype=_F), _F(scale)
    if coordinate_mode == "half_pixel":
        return (xr + _F(0.5)) / s - _F(0.5)
    if coordinate_mode == "pytorch_half_pixel":
        return (xr + _F(0.5)) / s - _F(0.5) if n_out > 1 else np.zeros(n_out, _F)
    if coordinate_mode == "asymmetric":
        return xr / s
    if coordinate_mode == "tf_half_pixel_for_nn":
        return (xr + _F(0.5)) / s
    if n_out == 1:                                            # align_corners
        return np.zeros(1, _F)
    return xr * _F(n_in - 1) / _F(n_out - 1)


def size_coordinates(n_out, n_in, coordinate_mode):
    """Float32 source coordinates for a *given output size* in nearest mode, asymmetric or
    tf_half_pixel_for_nn: the exact ``x * n_in / n_out`` (or ``(x + 0.5) * n_in / n_out``) rounded
    once to float32, as ONNX Runtime's nearest kernel picks pixels (measured on 1.32 over all sizes
    1-12 -> 1-29: a coordinate that is exactly a half rounds by ``nearest_mode``, where dividing by
    the float32 scale ``n_out / n_in`` would land one ulp off). Other modes keep
    :func:`source_coordinates`, which that kernel follows."""
    num = np.arange(n_out, dtype=np.float64) * n_in          # exact integers
    if coordinate_mode == "tf_half_pixel_for_nn":
        num = num + 0.5 * n_in
    return (num / n_out).astype(_F)


def nearest_indices(coords, n_in, nearest_mode):
    """Source pixel of each coordinate by ``nearest_mode``, clamped to ``[0, n_in)``."""
    x = coords.astype(np.float64)                             # exact: rounding is decided on float32 values
    if nearest_mode == "floor":
        idx = np.floor(x)
    elif nearest_mode == "ceil":
        idx = np.ceil(x)
    else:
        idx = np.sign(x) * np.floor(np.abs(x) + 0.5)          # C's round: halves away from zero
        if nearest_mode == "round_prefer_floor":
            idx = np.where(x == np.trunc(x) + 0.5, np.floor(x), idx)
    return np.clip(idx, 0, n_in - 1).astype(np.int64)


def linear_taps(coords, n_in):
    """``(i1, i2, d1, d2)``: the two taps of each coordinate (clamped into the image) and the
    float32 distances to them; a coordinate on the border reads one pixel with weights 0.5, 0.5."""
    x = np.clip(coords, _F(0), _F(n_in - 1))
    i1 = np.minimum(x.astype(np.int64), n_in - 1)
    i2 = np.minimum(i1 + 1, n_in - 1)
    d1, d2 = np.abs(x - i1.astype(_F)), np.abs(x - i2.astype(_F))
    same = i1 == i2
    d1[same], d2[same] = 0.5, 0.5
    return i1, i2, d1.astype(_F), d2.astype(_F)


def _positive_pair(v, name, kind):
    raw = tuple(v) if isinstance(v, (tuple, list, np.ndarray)) else (v, v)
    try:
        t = tuple(int(a) if kind is int else float(a) for a in raw)
    except (TypeError, ValueError, OverflowError):
        t = ()
    if len(t) != 2 or not all(math.isfinite(a) and a > 0 for a in t) or (kind is int and t != raw):
        raise NncompError(f"resize {name} must be two positive {'ints' if kind is int else 'finite floats'} "
                          f"(height, width), got {v!r}")
    return t


@register
@dataclass(frozen=True, eq=False)
class Resize(Layer):
    """Resize an image (h, w, c) to ``size`` (oh, ow), or by ``scale`` (sh, sw) to
    ``floor(h * sh) x floor(w * sw)``: exactly one of the two.

    ``mode`` "nearest" or "linear" (bilinear); ``coordinate_mode`` one of half_pixel,
    pytorch_half_pixel, asymmetric, align_corners, tf_half_pixel_for_nn; ``nearest_mode``
    round_prefer_floor, round_prefer_ceil, floor or ceil. PyTorch's ``F.interpolate`` exports nearest
    as asymmetric + floor, bilinear as pytorch_half_pixel or align_corners. ``cubic_coeff_a`` is
    kept for the "cubic" mode of ONNX, which is not supported yet.
    """

    size: tuple = None
    scale: tuple = None
    mode: str = "nearest"
    coordinate_mode: str = "half_pixel"
    nearest_mode: str = "round_prefer_floor"
    cubic_coeff_a: float = -0.75
    kind = "resize"

    def __post_init__(self):
        if (self.size is None) == (self.scale is None):
            raise NncompError(f"resize needs exactly one of size=(oh, ow) or scale=(sh, sw), got "
                              f"size={self.size!r}, scale={self.scale!r}")
        if self.size is not None:
            set_fields(self, size=_positive_pair(self.size, "size", int))
        else:
            set_fields(self, scale=_positive_pair(self.scale, "scale", float))
        for name, allowed in (("mode", MODES), ("coordinate_mode", COORDINATE_MODES),
                              ("nearest_mode", NEAREST_MODES)):
            if getattr(self, name) not in allowed:
                raise NncompError(f"resize {name} must be one of {list(allowed)}, got {getattr(self, name)!r}"
                                  + ("; cubic resizing is not supported yet" if name == "mode" else ""))
        set_fields(self, cubic_coeff_a=float(self.cubic_coeff_a))

    def _geometry(self, h, w):
        """``((oh, ow), (sh, sw))``: output size and the float32 scales the coordinates use."""
        if self.size is not None:
            oh, ow = self.size
            return (oh, ow), (_F(oh) / _F(h), _F(ow) / _F(w))
        sh, sw = _F(self.scale[0]), _F(self.scale[1])
        return (int(math.floor(_F(h) * sh)), int(math.floor(_F(w) * sw))), (sh, sw)

    def output_shape(self, shape):
        h, w, c = image(shape, self.kind)
        (oh, ow), _ = self._geometry(h, w)
        if min(h, w, oh, ow) < 1:
            raise NncompError(f"resize of a {h}x{w} image by {self.scale or self.size} gives {oh}x{ow}; "
                              "both sizes must be at least 1 pixel (use a larger input or scale)")
        return (oh, ow, c)

    def tables(self, h, w):
        """The kernel's per-axis arguments for an ``h x w`` input.

        An output the size of the input is the input itself, whatever the scales (ONNX Runtime
        copies it; a 2 x 2 map by scale 1.3 stays 2 x 2 and is not resampled): the nearest
        kernel's tables then gather every pixel in place, in either mode."""
        (oh, ow), (sh, sw) = self._geometry(h, w)
        if (oh, ow) == (h, w):
            return np.arange(h, dtype=np.int64), np.arange(w, dtype=np.int64)
        exact = self.mode == "nearest" and self.size is not None and \
            self.coordinate_mode in ("asymmetric", "tf_half_pixel_for_nn")

        def axis(n_out, n_in, s):
            if s == 1:
                coords = np.arange(n_out, dtype=_F)
            elif exact:
                coords = size_coordinates(n_out, n_in, self.coordinate_mode)
            else:
                coords = source_coordinates(n_out, n_in, s, self.coordinate_mode)
            if self.mode == "nearest":
                return (nearest_indices(coords, n_in, self.nearest_mode),)
            return linear_taps(coords, n_in)
        return axis(oh, h, sh) + axis(ow, w, sw)

    def prepare(self, n, shape):
        h, w, c = shape
        oh, ow, _ = self.shape_of(shape)
        args = self.tables(h, w)
        gather = self.mode == "nearest" or (oh, ow) == (h, w)
        kernels = ((resize_nearest_nhwc, resize_nearest_nhwc_parallel) if gather
                   else (resize_linear_nhwc, resize_linear_nhwc_parallel))
        kern = _jit.pick(kernels, n * oh * ow * c * (1 if gather else 4))

        def step(x):
            out = np.empty((x.shape[0], oh, ow, c), np.float32)
            kern(np.ascontiguousarray(x), *args, out)
            return out
        return step

    def fuse(self, successor, n, shape):
        return absorb_epilogue(self, successor, n, (shape,))

    def macs(self, shape):
        oh, ow, c = self.output_shape(shape)
        return oh * ow * c * (4 if self.mode == "linear" else 0)

    def describe(self):
        return f"{self.mode}, {self.coordinate_mode}"
