"""The layer base class, the registry, window geometry and the argument helpers every layer shares.

A layer is a frozen dataclass over nncomp's internal layout (images NHWC float32, vectors
``(n_samples, features)``; per-sample shapes ``(h, w, c)`` or ``(features,)``). Compression methods
build new layers with :meth:`Layer.replace`, never mutate one. Each layer provides:

- ``output_shape(*shapes)``: the per-sample output shape, validating the inputs (NncompError naming
  the constraint); ``shape_of`` memoizes it;
- ``forward(*xs)``: one checked call; ``prepare(n, *shapes)``: the step ``(*xs) -> y`` a model's plan
  runs for batches of ``n`` samples, with per-shape decisions (kernel, algorithm, threads) made once;
- ``prepare_epilogue(n, *shapes, epilogue=)``: that step with an epilogue applied in its own kernel,
  or None;
- ``fuse(successor, n, *shapes)``: a plan-only layer computing ``successor(self(x))`` in one step
  (a convolution absorbing its max-pool, an activation written by the producing kernel's epilogue),
  or None. The model asks every producer whose only reader is one node; it never inspects kinds;
- ``macs(*shapes)``, ``nbytes``, ``config()`` and ``tensors()`` (what the native file stores).

A new layer kind is a registered dataclass in the family module it belongs to (dense, conv,
pooling, normalization, elementwise, shape), re-exported by ``nncomp/layers/__init__.py``.
"""
from dataclasses import dataclass, field, fields, replace

import numpy as np

from ..errors import NncompError

LAYERS = {}


def register(cls):
    """Class decorator: make a layer kind loadable from native files by its ``kind``."""
    LAYERS[cls.kind] = cls
    return cls


def pair(v, name):
    """A positive int or a pair of them, as a tuple ``(a, b)``."""
    t = tuple(int(a) for a in (v if isinstance(v, (tuple, list)) else (v, v)))
    if len(t) != 2 or min(t) < 1:
        raise NncompError(f"{name} must be a positive int or a pair of them, got {v!r}")
    return t


def pads(v):
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


def window_out(size, k, s, p0, p1, d, ceil_mode):
    """Output length of a sliding window, PyTorch's rule (ceil mode drops a window starting in padding)."""
    span = size + p0 + p1 - d * (k - 1) - 1
    if span < 0:
        return 0
    n = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (n - 1) * s >= size + p0:
        n -= 1
    return n


def same_pads(size, kernel, stride, dilation):
    """TensorFlow's "same" padding (top, bottom, left, right) for an input of ``size`` (h, w): the
    output has ``ceil(size / stride)`` pixels, and the odd padded pixel goes bottom/right."""
    out = []
    for n, k, s, d in zip(size, kernel, stride, dilation):
        total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        out += [total // 2, total - total // 2]
    return tuple(out)


@dataclass(frozen=True)
class Window:
    """The geometry of a sliding 2-D window: ``kernel (kh, kw)``, ``stride``, ``padding`` (top,
    bottom, left, right) and ``dilation``; one value for convolutions, pools and im2col."""

    kernel: tuple
    stride: tuple = (1, 1)
    padding: tuple = (0, 0, 0, 0)
    dilation: tuple = (1, 1)

    @property
    def args(self):
        """``(kh, kw, sh, sw, top, left, dh, dw)``: the argument order of the window kernels."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        return (kh, kw, sh, sw, self.padding[0], self.padding[2], dh, dw)

    def out_size(self, h, w, ceil_mode=False):
        """``(oh, ow)`` over an ``h x w`` input (either may be < 1: the window does not fit)."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        t, b, l, r = self.padding
        return (window_out(h, kh, sh, t, b, dh, ceil_mode), window_out(w, kw, sw, l, r, dw, ceil_mode))

    @property
    def pointwise(self):
        """Whether each output pixel reads exactly its own input pixel (1x1, stride 1, no padding)."""
        return self.args[:6] == (1, 1, 1, 1, 0, 0)

    @property
    def patch(self):
        """Taps per channel: ``kh * kw``."""
        return self.kernel[0] * self.kernel[1]


def image(shape, layer):
    """``shape`` if it is a per-sample image ``(h, w, c)``, else NncompError."""
    if len(shape) != 3:
        raise NncompError(f"{layer} expects an image (h, w, c), got per-sample shape {shape}")
    return shape


def fit(window, shape, layer, ceil_mode=False):
    """``(oh, ow)`` of ``window`` over the image ``shape``, or NncompError naming the smallest input."""
    h, w, _ = image(shape, layer)
    oh, ow = window.out_size(h, w, ceil_mode)
    if oh < 1 or ow < 1:
        raise NncompError(f"{layer} with kernel {window.kernel} (stride {window.stride}, dilation "
                          f"{window.dilation}, padding {window.padding}) does not fit input {h}x{w}; "
                          "it needs a larger image")
    return oh, ow


def tensor_field():
    """A dataclass field holding an array that the native file stores (not part of the config)."""
    return field(default=None, metadata={"tensor": True, "config": False})


def plan_field():
    """A dataclass field derived in ``__post_init__`` (neither config nor tensor)."""
    return field(default=None, init=False, repr=False, metadata={"config": False})


def vector(v, n, what):
    """None, or ``v`` as a read-only float32 vector of length ``n``."""
    if v is None:
        return None
    v = np.ascontiguousarray(v, dtype=np.float32)
    if v.shape != (n,):
        raise NncompError(f"{what} must have shape ({n},), got {v.shape}")
    v.setflags(write=False)
    return v


def set_fields(obj, **values):
    """Set fields of a frozen dataclass in its ``__post_init__``."""
    for k, v in values.items():
        object.__setattr__(obj, k, v)


class SamePadding:
    """For windowed layers with a ``same`` flag: the padding was TensorFlow's "same" for the size the
    model was loaded at, and is recomputed for other sizes (it depends on the size modulo the stride),
    so a Keras model gives Keras's numbers at every size it accepts."""

    def for_input(self, shape, *others):
        if not self.same or len(shape) != 3:
            return self
        found = same_pads(shape[:2], self.kernel_size, self.stride, self.dilation)
        if found == self.padding:
            return self
        return self.memo(("padding", found), lambda: self.replace(padding=found))


class Layer:
    kind = "layer"
    n_inputs = 1

    # whether the layer's function is non-decreasing elementwise (it then commutes with a max-pool)
    monotone = False
    # whether its inputs may be given in any order with the same result (bit for bit)
    commutative = False

    def forward(self, *xs):
        """One checked call on internal-layout inputs; by default the prepared step for their shapes."""
        if type(self).prepare is Layer.prepare:
            raise NotImplementedError(f"{type(self).__name__} defines neither forward nor prepare")
        return self.prepare(xs[0].shape[0], *(x.shape[1:] for x in xs))(*xs)

    def prepare(self, n, *shapes):
        """The step ``(*xs) -> y`` a model runs for batches of ``n`` samples of per-sample input
        ``shapes``, with per-shape decisions (kernel, algorithm, threads) made once."""
        if type(self).forward is Layer.forward:
            raise NotImplementedError(f"{type(self).__name__} defines neither forward nor prepare")
        return self.forward

    def prepare_epilogue(self, n, *shapes, epilogue):
        """The step ``(*xs[, res]) -> y`` computing this layer and the in-place ``epilogue``
        ``(scale, shift, add, lo, hi, act)`` (nncomp.layers.fused.epilogue_args) inside its own kernel,
        as it stores the output; None when its kernel cannot (the plan then runs the epilogue
        kernel after it). A layer whose :meth:`fuse` absorbs epilogues may offer it."""
        return None

    def fuse(self, successor, n, *shapes):
        """A plan-only layer computing ``successor`` applied to this layer's output in one step, for
        batches of ``n`` samples of per-sample input ``shapes``; None when it cannot. The fused layer
        reads this layer's inputs, then ``successor``'s other inputs (a residual add's shortcut)."""
        return None

    def epilogue(self, n, shape):
        """This layer as an in-place operation ``op(y, *others)`` on a producer's fresh output ``y``
        of per-sample ``shape`` (``others``: this layer's remaining inputs), or None. Producers that
        allocate their output (dense, convolutions) apply it before writing the next activation."""
        return None

    def output_shape(self, shape):
        return shape

    def for_input(self, *shapes):
        """This layer as it computes on per-sample inputs of ``shapes``: itself, except for a layer
        whose parameters depend on the input size (TensorFlow's "same" padding with a stride)."""
        return self

    def shape_of(self, *shapes):
        """:meth:`output_shape` remembered per input shape (forward passes ask on every call)."""
        memo = self.__dict__.setdefault("_shape_memo", {})
        out = memo.get(shapes)
        if out is None:
            out = memo[shapes] = tuple(self.output_shape(*shapes))
        return out

    def memo(self, key, make):
        """A value derived from this immutable layer, computed once (folded weights, fused kernels)."""
        memo = self.__dict__.setdefault("_derived", {})
        if key not in memo:
            memo[key] = make()
        return memo[key]

    def macs(self, *shapes):
        return 0

    @property
    def nbytes(self):
        return sum(t.nbytes for t in self.tensors().values() if t is not None)

    @property
    def weight(self):
        return None

    @property
    def batch_dependent(self):
        """Whether a sample's output depends on the other samples of the batch (see Matrix)."""
        return self.weight is not None and self.weight.batch_dependent

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

    def __getstate__(self):
        # memoized shapes and derived values (closures, kernels) are rebuilt after unpickling
        return {k: v for k, v in self.__dict__.items() if k not in ("_shape_memo", "_derived")}

    def __setstate__(self, state):
        self.__dict__.update(state)
