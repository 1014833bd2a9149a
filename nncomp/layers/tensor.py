"""Layers that move values of any rank without arithmetic (the structural operators of ONNX).

Per-sample values of rank 3 are images, stored (h, w, c); every other rank keeps the source's axis
order. Layers that keep the rank (Concat, Transpose, Slice, Pad) take axes in this internal
per-sample order (the importer translates ONNX axes). Layers that may change the rank (Reshape,
Squeeze, Unsqueeze, Gather, MatMul) are defined in the source's element order: an image input is read
as (c, h, w) and an image result stored back as (h, w, c), so the numbers are those of ONNX.
"""
import math
from dataclasses import dataclass

import numpy as np

from ..errors import NncompError
from ..kernels import _jit, rows
from .base import Layer, register, set_fields


def source_shape(shape):
    """A per-sample internal shape in the source's axis order (an image (h, w, c) as (c, h, w))."""
    shape = tuple(shape)
    return (shape[2], shape[0], shape[1]) if len(shape) == 3 else shape


def internal_shape(shape):
    """A per-sample shape in the source's axis order as stored internally (inverse of source_shape)."""
    shape = tuple(shape)
    return (shape[1], shape[2], shape[0]) if len(shape) == 3 else shape


def to_source(x):
    """A batch in the source's axis order (images NCHW)."""
    return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x


def from_source(y):
    """A batch in the source's axis order, stored internally (images NHWC), C-contiguous."""
    return np.ascontiguousarray(y.transpose(0, 2, 3, 1) if y.ndim == 4 else y, dtype=np.float32)


def _axis(a, rank, what):
    a = int(a)
    if not -rank <= a < rank:
        raise NncompError(f"{what}: axis {a} is out of range for per-sample rank {rank}")
    return a % rank


def _ints(v):
    return tuple(int(a) for a in v)


def onnx_slices(shape, starts, ends, axes, steps):
    """The Python slices (one per axis of ``shape``) of ONNX's Slice: negative starts and ends count
    from the end, then both are clamped to the axis (to [-1, n-1] for a negative step)."""
    out = [slice(None)] * len(shape)
    for s, e, a, k in zip(starts, ends, axes, steps):
        a = _axis(a, len(shape), "slice")
        n = shape[a]
        s, e = s + n if s < 0 else s, e + n if e < 0 else e
        if k > 0:
            s, e = min(max(s, 0), n), min(max(e, 0), n)
        else:
            s, e = min(max(s, 0), n - 1), min(max(e, -1), n - 1)
        out[a] = slice(s, None if e < 0 else e, k)
    return tuple(out)


@register
@dataclass(frozen=True, eq=False)
class Concat(Layer):
    """Concatenation of its inputs along per-sample ``axis`` (internal order)."""

    axis: int = -1
    kind = "concat"
    n_inputs = 2

    def output_shape(self, *shapes):
        rank = len(shapes[0])
        a = _axis(self.axis, rank, "concat")
        rest = {s[:a] + s[a + 1:] for s in shapes}
        if len(rest) != 1 or any(len(s) != rank for s in shapes):
            raise NncompError(f"concat along axis {self.axis} needs inputs equal in every other axis, got {shapes}")
        return shapes[0][:a] + (sum(s[a] for s in shapes),) + shapes[0][a + 1:]

    def forward(self, *xs):
        return np.concatenate(xs, axis=_axis(self.axis, xs[0].ndim - 1, "concat") + 1)

    def prepare(self, n, *shapes):
        """Along the last axis (an NHWC map's channels) one compiled copy per input into its columns
        (nncomp/kernels/rows.py); along another axis NumPy's concatenate (blocks of rows)."""
        out_shape = (n, *self.output_shape(*shapes))
        if _axis(self.axis, len(shapes[0]), "concat") != len(shapes[0]) - 1 or not math.prod(out_shape):
            return self.forward
        width, size = out_shape[-1], math.prod(out_shape)
        kern = _jit.pick((rows.concat_columns, rows.concat_columns_parallel), size)
        starts = np.cumsum([0] + [s[-1] for s in shapes[:-1]])

        def step(*xs):
            if any(x.dtype != np.float32 for x in xs):
                return self.forward(*xs)
            out = np.empty(out_shape, np.float32)
            flat = out.reshape(size // width, width)
            for x, at in zip(xs, starts):
                kern(np.ascontiguousarray(x, np.float32).reshape(size // width, x.shape[-1]), flat, int(at))
            return out
        step.blas = False
        return step


@register
@dataclass(frozen=True, eq=False)
class Transpose(Layer):
    """Permutation ``perm`` of the per-sample axes (internal order)."""

    perm: tuple = ()
    kind = "transpose"

    def __post_init__(self):
        set_fields(self, perm=_ints(self.perm))
        if sorted(self.perm) != list(range(len(self.perm))):
            raise NncompError(f"transpose perm must be a permutation of 0..n-1, got {self.perm}")

    def output_shape(self, shape):
        if len(shape) != len(self.perm):
            raise NncompError(f"transpose perm {self.perm} needs per-sample rank {len(self.perm)}, got {shape}")
        return tuple(shape[p] for p in self.perm)

    def forward(self, x):
        return np.ascontiguousarray(x.transpose(0, *(p + 1 for p in self.perm)))


@register
@dataclass(frozen=True, eq=False)
class Reshape(Layer):
    """Reshape of each sample in the source's element order to ``shape`` (per-sample, source order).

    Entries: a size >= 1; ``-1`` (at most one: inferred); ``0`` (ONNX: this position's input size);
    or ``"dK"``: the input's per-sample size along source axis K (a shape computed from the input).
    """

    shape: tuple = ()
    kind = "reshape"

    def __post_init__(self):
        out = []
        for d in self.shape:
            if isinstance(d, str):
                if not (d[:1] == "d" and d[1:].isdigit()):
                    raise NncompError(f"reshape entry {d!r}: expected an int or 'dK' (input axis K)")
                out.append(d)
            elif int(d) < -1:
                raise NncompError(f"reshape entry {d} must be >= -1")
            else:
                out.append(int(d))
        if out.count(-1) > 1:
            raise NncompError(f"reshape {tuple(out)} has more than one -1")
        set_fields(self, shape=tuple(out))

    def target(self, shape):
        src = source_shape(shape)
        dims = []
        for i, d in enumerate(self.shape):
            if isinstance(d, str):
                k = int(d[1:])
                if k >= len(src):
                    raise NncompError(f"reshape entry {d!r}: the input has per-sample shape {src}")
                d = src[k]
            elif d == 0:
                if i >= len(src):
                    raise NncompError(f"reshape entry 0 at position {i}: the input has per-sample shape {src}")
                d = src[i]
            dims.append(d)
        total, known = math.prod(src), math.prod(d for d in dims if d != -1)
        if -1 in dims:
            if known == 0 or total % known:
                raise NncompError(f"cannot reshape per-sample {src} ({total} values) to {tuple(dims)}")
            dims[dims.index(-1)] = total // known
        if math.prod(dims) != total:
            raise NncompError(f"cannot reshape per-sample {src} ({total} values) to {tuple(dims)}")
        return tuple(dims)

    def output_shape(self, shape):
        return internal_shape(self.target(shape))

    def forward(self, x):
        y = np.ascontiguousarray(to_source(x)).reshape((x.shape[0],) + self.target(x.shape[1:]))
        return from_source(y)


class _Reaxis(Layer):
    """Squeeze and Unsqueeze: ``axes`` in the source's order, a reshape to ``target(source shape)``."""

    def __post_init__(self):
        set_fields(self, axes=_ints(self.axes))

    def output_shape(self, shape):
        return internal_shape(self.target(source_shape(shape)))

    def forward(self, x):
        src = to_source(x)
        return from_source(src.reshape((x.shape[0],) + self.target(src.shape[1:])))


@register
@dataclass(frozen=True, eq=False)
class Squeeze(_Reaxis):
    """Removal of the size-1 per-sample ``axes`` (source order; none given: every size-1 axis)."""

    axes: tuple = ()
    kind = "squeeze"

    def target(self, src):
        axes = {_axis(a, len(src), "squeeze") for a in self.axes} if self.axes else {
            i for i, d in enumerate(src) if d == 1}
        if any(src[a] != 1 for a in axes):
            raise NncompError(f"squeeze axes {self.axes} of per-sample shape {src}: a squeezed axis has size != 1")
        return tuple(d for i, d in enumerate(src) if i not in axes)


@register
@dataclass(frozen=True, eq=False)
class Unsqueeze(_Reaxis):
    """Insertion of size-1 per-sample ``axes`` (source order, axes of the output)."""

    axes: tuple = ()
    kind = "unsqueeze"

    def target(self, src):
        rank = len(src) + len(self.axes)
        axes = {_axis(a, rank, "unsqueeze") for a in self.axes}
        if len(axes) != len(self.axes):
            raise NncompError(f"unsqueeze axes {self.axes} repeat an axis")
        it = iter(src)
        return tuple(1 if i in axes else next(it) for i in range(rank))


@register
@dataclass(frozen=True, eq=False)
class Gather(Layer):
    """``np.take`` of constant integer ``indices`` along per-sample ``axis`` (source order)."""

    axis: int = 0
    indices: tuple = ()
    scalar: bool = False       # one index that removes the axis (an ONNX rank-0 indices tensor)
    kind = "gather"

    def __post_init__(self):
        set_fields(self, indices=_ints(self.indices), axis=int(self.axis), scalar=bool(self.scalar))
        if self.scalar and len(self.indices) != 1:
            raise NncompError("gather with a scalar index needs exactly one index")

    def _take(self, src):
        a = _axis(self.axis, len(src), "gather")
        n = src[a]
        idx = [i + n if i < 0 else i for i in self.indices]
        if any(not 0 <= i < n for i in idx):
            raise NncompError(f"gather indices {self.indices} out of range for axis {self.axis} of size {n}")
        return a, (idx[0] if self.scalar else idx)

    def output_shape(self, shape):
        src = source_shape(shape)
        a, idx = self._take(src)
        mid = () if self.scalar else (len(idx),)
        return internal_shape(src[:a] + mid + src[a + 1:])

    def forward(self, x):
        src = to_source(x)
        a, idx = self._take(src.shape[1:])
        return from_source(np.take(src, idx, axis=a + 1))


@register
@dataclass(frozen=True, eq=False)
class Slice(Layer):
    """``x[start:end:step]`` along per-sample ``axes`` (internal order), with ONNX's clamping rules."""

    starts: tuple = ()
    ends: tuple = ()
    axes: tuple = ()
    steps: tuple = ()
    kind = "slice"

    def __post_init__(self):
        steps = self.steps or (1,) * len(self.starts)
        set_fields(self, starts=_ints(self.starts), ends=_ints(self.ends), axes=_ints(self.axes), steps=_ints(steps))
        if not len(self.starts) == len(self.ends) == len(self.axes) == len(self.steps) or 0 in self.steps:
            raise NncompError("slice needs starts, ends, axes and non-zero steps of one length")

    def slices(self, shape):
        return onnx_slices(shape, self.starts, self.ends, self.axes, self.steps)

    def output_shape(self, shape):
        out = tuple(len(range(*sl.indices(n))) for sl, n in zip(self.slices(shape), shape))
        if min(out, default=1) < 1:
            raise NncompError(f"slice of per-sample shape {shape} is empty")
        return out

    def forward(self, x):
        return np.ascontiguousarray(x[(slice(None),) + self.slices(x.shape[1:])])

    def prepare(self, n, shape):
        """A slice of the last axis only, step 1 (a Split's part of an NHWC map's channels): one
        compiled copy (nncomp/kernels/rows.py take_columns); any other: NumPy's."""
        sl = self.slices(shape)
        last = sl[-1].indices(shape[-1])
        if any(s != slice(None) for s in sl[:-1]) or last[2] != 1 or not n * math.prod(shape):
            return self.forward
        at, k = last[0], last[1] - last[0]
        rows_n = n * math.prod(shape[:-1])
        kern = _jit.pick((rows.take_columns, rows.take_columns_parallel), rows_n * k)

        def step(x):
            if x.dtype != np.float32:
                return self.forward(x)
            out = np.empty((n, *shape[:-1], k), np.float32)
            kern(np.ascontiguousarray(x).reshape(rows_n, shape[-1]), at, out.reshape(rows_n, k))
            return out
        step.blas = False
        return step


@register
@dataclass(frozen=True, eq=False)
class Pad(Layer):
    """Padding of per-sample axes (internal order): ``pads`` (begin_0, ..., begin_k, end_0, ..., end_k)
    with ``mode`` "constant" (``value``), "reflect" or "edge"."""

    pads: tuple = ()
    mode: str = "constant"
    value: float = 0.0
    kind = "pad"

    def __post_init__(self):
        set_fields(self, pads=_ints(self.pads), value=float(self.value))
        if self.mode not in ("constant", "reflect", "edge") or len(self.pads) % 2 or min(self.pads, default=0) < 0:
            raise NncompError(f"pad needs mode constant/reflect/edge and pads >= 0, got {self.mode!r} {self.pads}")

    def output_shape(self, shape):
        k = len(self.pads) // 2
        if k != len(shape):
            raise NncompError(f"pad {self.pads} needs per-sample rank {k}, got {shape}")
        if self.mode == "reflect" and any(max(self.pads[i], self.pads[k + i]) >= n for i, n in enumerate(shape)):
            raise NncompError(f"reflect padding {self.pads} needs each axis longer than its padding, got {shape}")
        return tuple(n + self.pads[i] + self.pads[k + i] for i, n in enumerate(shape))

    def forward(self, x):
        k = len(self.pads) // 2
        width = [(0, 0)] + [(self.pads[i], self.pads[k + i]) for i in range(k)]
        if self.mode == "constant":
            return np.pad(x, width, constant_values=np.float32(self.value))
        return np.pad(x, width, mode=self.mode)


@register
@dataclass(frozen=True, eq=False)
class Cast(Layer):
    """A cast of float values: ``"int"`` truncates toward zero (a cast to an integer type and back)."""

    to: str = "int"
    kind = "cast"

    def __post_init__(self):
        if self.to not in ("int", "float"):
            raise NncompError(f"cast to {self.to!r}: expected 'int' or 'float'")

    def forward(self, x):
        return np.trunc(x) if self.to == "int" else x


@register
@dataclass(frozen=True, eq=False)
class FixedShape(Layer):
    """The identity, for per-sample inputs of ``shape`` only: where imported parameters hold for one
    size (a folded shape computation, dense weights permuted for one image size), other sizes are
    refused instead of computing wrong numbers."""

    shape: tuple = ()
    kind = "fixed_shape"

    def __post_init__(self):
        set_fields(self, shape=_ints(self.shape))

    def output_shape(self, shape):
        if tuple(shape) != self.shape:
            raise NncompError(f"parameters computed at import hold for per-sample shape {self.shape} "
                              f"(internal layout) only, got {tuple(shape)}; load the model again with "
                              "input_shape= for another input size")
        return shape

    def forward(self, x):
        return x
