"""Constant folding for ONNX graphs: operators whose inputs are all constants, and shape computations.

A ``Shape`` of an activation gives an object array of :class:`Dim` (the activation, the axis, its size
at the nominal input): structural operators (Gather, Slice, Concat, Unsqueeze, Squeeze, Reshape, Cast)
carry them through, so a ``Reshape`` target built from its input's own shape stays valid at every
input size. Arithmetic on dims resolves them to their nominal sizes (the importer then binds the
model to its nominal input size, see :class:`~nncomp.layers.FixedShape`). Attributes are read with
their declared types checked (:class:`Attrs`).
"""
import numpy as np

from ..errors import CorruptModelFileError, NncompError
from ..layers.tensor import onnx_slices

__all__ = ["Attrs", "Dim", "DIM_CARRIERS", "FOLDABLE", "fold", "has_dims", "resolve"]

# Operators that move dims without computing with them (a Cast to an integer type keeps them too)
DIM_CARRIERS = {"Identity", "Cast", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Reshape", "Flatten",
                "Transpose", "Expand"}


class Dim:
    """The size of axis ``axis`` (ONNX order, 0 = batch) of the activation of node ``node``."""

    __slots__ = ("node", "axis", "value")

    def __init__(self, node, axis, value):
        self.node, self.axis, self.value = node, int(axis), int(value)

    def __repr__(self):
        return f"Dim({self.node!r}, {self.axis})"


def has_dims(v):
    return isinstance(v, np.ndarray) and v.dtype == object


def resolve(v):
    """``(int64 array, dims used)``: ``v`` with every Dim replaced by its nominal size."""
    if not has_dims(v):
        return v, []
    used = [d for d in v.reshape(-1) if isinstance(d, Dim)]
    return np.array([d.value if isinstance(d, Dim) else int(d) for d in v.reshape(-1)], np.int64).reshape(v.shape), used


_TYPES = {1: "f", 2: "i", 3: "s", 4: "t", 6: "floats", 7: "ints", 8: "strings"}


class Attrs:
    """A node's attributes by name, each read with its declared type checked."""

    def __init__(self, node):
        self.node = node
        self.by_name = {a.name: a for a in node.attribute}

    def _get(self, name, want):
        a = self.by_name.get(name)
        if a is None:
            return None
        if _TYPES.get(a.type) != want:
            raise CorruptModelFileError(None, self.node.name or self.node.op_type, f"attribute {name!r} has type "
                                        f"{_TYPES.get(a.type, a.type)}; expected {want}")
        return getattr(a, want)

    def int(self, name, default=None):
        v = self._get(name, "i")
        return default if v is None else int(v)

    def float(self, name, default=None):
        v = self._get(name, "f")
        return default if v is None else float(v)

    def str(self, name, default=None):
        v = self._get(name, "s")
        return default if v is None else v.decode("utf-8", "replace")

    def ints(self, name, default=None):
        v = self._get(name, "ints")
        return default if v is None else [int(x) for x in v]

    def floats(self, name, default=None):
        v = self._get(name, "floats")
        return default if v is None else [float(x) for x in v]

    def tensor(self, name):
        return self._get(name, "t")

    def names(self):
        return set(self.by_name)


def _ints(v):
    arr, _ = resolve(v)
    return [int(a) for a in np.asarray(arr).reshape(-1)]


def _num(v):
    """A numeric array (dims resolved) for arithmetic."""
    return resolve(v)[0] if has_dims(v) else v


def _slice(data, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    return data[onnx_slices(data.shape, starts, ends, axes, steps)]


def _cast(x, to):
    if to in (1, 10, 11):
        return np.asarray(_num(x), np.float32)
    if to in (2, 3, 5, 6, 7, 12, 13):
        return x if has_dims(x) else np.trunc(np.asarray(x, np.float64)).astype(np.int64)
    if to == 9:
        return (np.asarray(_num(x)) != 0).astype(np.int64)
    raise NncompError(f"Cast to element type {to} is not supported")


def _axes(attrs, ins, pos=1):
    if len(ins) > pos and ins[pos] is not None:
        return _ints(ins[pos])
    return attrs.ints("axes")


def _unsqueeze(x, axes):
    rank = x.ndim + len(axes)
    for a in sorted(a % rank for a in axes):
        x = np.expand_dims(x, a)
    return x


def _binary(f):
    return lambda attrs, ins: f(_num(ins[0]), _num(ins[1]))


def _div(a, b):
    if np.asarray(a).dtype.kind in "iu" and np.asarray(b).dtype.kind in "iu":
        return np.trunc(np.asarray(a, np.float64) / b).astype(np.int64)   # C semantics, as ONNX Runtime
    return np.asarray(a, np.float32) / np.asarray(b, np.float32)


def _reshape(attrs, ins):
    x, shape = ins[0], _ints(ins[1])
    shape = [x.shape[i] if d == 0 and not attrs.int("allowzero", 0) else d for i, d in enumerate(shape)]
    return x.reshape(shape)


def _squeeze(attrs, ins):
    axes = _axes(attrs, ins)
    return np.squeeze(ins[0], axis=tuple(a % ins[0].ndim for a in axes)) if axes else np.squeeze(ins[0])


# Folded constants are shapes and small tables: a fold producing more elements than this is refused.
MAX_FOLD = 1 << 24


def _capped(shape):
    if np.prod(shape, dtype=np.float64) > MAX_FOLD:
        raise NncompError(f"folding a constant of shape {tuple(shape)}: more than {MAX_FOLD} elements")
    return shape


def _range(attrs, ins):
    start, limit, delta = (np.asarray(_num(v)).reshape(()) for v in ins[:3])
    n = max(int(np.ceil((limit - start) / delta)), 0)
    _capped((n,))
    return (start + np.arange(n) * delta).astype(np.result_type(start, limit, delta))


def _constant_of_shape(attrs, ins):
    shape = _capped(_ints(ins[0]))
    t = attrs.tensor("value")
    fill = 0.0 if t is None else float(np.frombuffer(t.raw_data, np.float32)[0]) if t.raw_data else (
        list(t.float_data) or list(t.int64_data) or [0])[0]
    return np.full(shape, fill, np.float32 if t is None or t.data_type == 1 else np.int64)


def _gather(attrs, ins):
    idx = np.asarray(_num(ins[1]), np.int64)
    return np.take(ins[0], idx, axis=attrs.int("axis", 0))


FOLDABLE = {
    "Identity": lambda attrs, ins: ins[0],
    "Cast": lambda attrs, ins: _cast(ins[0], attrs.int("to", 1)),
    "Gather": _gather,
    "Slice": lambda attrs, ins: _slice(ins[0], *ins[1:5]) if len(ins) > 1 else _slice(
        ins[0], attrs.ints("starts"), attrs.ints("ends"), attrs.ints("axes")),
    "Concat": lambda attrs, ins: np.concatenate([np.asarray(v).reshape(-1) if np.ndim(v) == 0 else v for v in ins],
                                                axis=attrs.int("axis", 0)),
    "Unsqueeze": lambda attrs, ins: _unsqueeze(ins[0], _axes(attrs, ins)),
    "Squeeze": _squeeze,
    "Reshape": _reshape,
    "Flatten": lambda attrs, ins: ins[0].reshape(int(np.prod(ins[0].shape[:attrs.int("axis", 1)])), -1),
    "Transpose": lambda attrs, ins: np.transpose(ins[0], attrs.ints("perm")),
    "Add": _binary(np.add), "Sub": _binary(np.subtract), "Mul": _binary(np.multiply), "Div": _binary(_div),
    "Pow": _binary(np.power), "Min": _binary(np.minimum), "Max": _binary(np.maximum),
    "Equal": _binary(lambda a, b: (np.asarray(a) == np.asarray(b)).astype(np.int64)),
    "Neg": lambda attrs, ins: -_num(ins[0]),
    "Sqrt": lambda attrs, ins: np.sqrt(_num(ins[0])),
    "Floor": lambda attrs, ins: np.floor(_num(ins[0])),
    "Ceil": lambda attrs, ins: np.ceil(_num(ins[0])),
    "Relu": lambda attrs, ins: np.maximum(_num(ins[0]), 0),
    "Where": lambda attrs, ins: np.where(np.asarray(_num(ins[0])) != 0, _num(ins[1]), _num(ins[2])),
    "Expand": lambda attrs, ins: np.broadcast_to(ins[0], _capped(np.broadcast_shapes(np.shape(ins[0]),
                                                                                      tuple(_ints(ins[1]))))).copy(),
    "Range": _range,
    "ConstantOfShape": _constant_of_shape,
    "Shape": lambda attrs, ins: np.array(np.shape(ins[0])[attrs.int("start", 0):attrs.int("end", None)], np.int64),
    "ReduceProd": lambda attrs, ins: np.prod(_num(ins[0]), keepdims=bool(attrs.int("keepdims", 1))),
}


def fold(op, attrs, ins):
    """The outputs of ``op`` on constant inputs ``ins`` (arrays, maybe holding Dims), as a list."""
    out = FOLDABLE[op](attrs, ins)
    out = np.asarray(out)
    if out.dtype == object and not any(isinstance(d, Dim) for d in out.reshape(-1)):
        out = out.astype(np.int64)
    if out.dtype.kind == "f":
        out = out.astype(np.float32)
    elif out.dtype.kind in "iub":
        out = out.astype(np.int64)
    return [out]
