"""The layer base class and the helpers every layer module shares (registry, argument parsing).

See nncomp/layers.py for the layers themselves and their conventions.
"""
from dataclasses import field, fields, replace

import numpy as np

from .errors import NncompError

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
