"""The structural operators that move, drop or take axes (Transpose, Squeeze, Unsqueeze, Slice,
Split, Gather), and values whose batch axis a Transpose moved, followed until the batch axis is first again.

nncomp keeps the batch axis first in every activation. Attention blocks as exporters write them
(paddle2onnx's SVTR, many torch exports) reshape the fused query/key/value projection to
``(batch, n, 3, heads, d)``, transpose it by ``(2, 0, 3, 1, 4)`` so the "3" comes first, then take
the three parts apart with Slice + Squeeze or Gather on axis 0: the moved batch axis exists only
in between. The importer keeps such a value as a :class:`Moved` view (an activation and the
permutation that would give the ONNX value) and turns each Slice, Squeeze, Gather or Transpose of
it into the same operation on the activation's own axes; once the batch axis is first again the
view becomes a plain Transpose layer. Any other use of a moved value is refused with an error that
names it. A mixin of :class:`nncomp.io.onnx_ops.Importer`.
"""
import numpy as np

from .. import layers as L
from ..errors import NncompError
from .onnx_fold import has_dims, resolve
from .onnx_patterns import internal_axis


class _Output:
    """Node ``node`` as it names its output ``name`` (each output of a Split becomes a layer of its own)."""

    __slots__ = ("name", "op_type", "output")

    def __init__(self, node, name):
        self.name, self.op_type, self.output = node.name, node.op_type, [name]


class Moved:
    """ONNX value ``transpose(src, perm)`` of activation ``src`` (an ``Act``), ``perm[0] != 0``."""

    __slots__ = ("src", "perm")

    def __init__(self, src, perm):
        self.src, self.perm = src, tuple(int(p) for p in perm)

    @property
    def batch(self):
        """Where the batch axis is in the ONNX value."""
        return self.perm.index(0)

    def refusal(self, name):
        return (f"{name!r} has its batch axis at position {self.batch} (a Transpose by {list(self.perm)} "
                "moved it); nncomp follows such a value through Slice, Squeeze, Gather and Transpose only, "
                "until a Transpose brings the batch axis first again or an axis is taken out")


def _drop(perm, gone):
    """``perm`` without the entries at positions ``gone``, the remaining source axes renumbered."""
    src_gone = sorted(perm[a] for a in gone)
    return [p - sum(s < p for s in src_gone) for i, p in enumerate(perm) if i not in gone]


class AxisOps:
    """Handlers of the operators that move or take axes, of activations and of :class:`Moved` values."""

    def op_Transpose(self, node, attrs, ins):
        x = self.value(ins[0])
        rank = len(x.perm) if isinstance(x, Moved) else x.rank
        perm = attrs.ints("perm") or list(range(rank))[::-1]
        if sorted(perm) != list(range(rank)):
            raise NncompError(f"Transpose perm {perm} is not a permutation of {rank} axes")
        return self.moved_transpose(node, x, perm)

    def transpose(self, node, x, perm):
        """Activation ``x`` transposed by ONNX ``perm`` (``perm[0] == 0``)."""
        p = [a - 1 for a in perm[1:]]
        src_of = [1, 2, 0] if x.rank == 4 else list(range(len(p)))      # internal axis -> ONNX per-sample axis
        int_of = [src_of.index(i) for i in range(len(p))]
        q = tuple(int_of[p[src_of[j]]] for j in range(len(p)))
        if q == tuple(range(len(q))):
            return [x]
        return self.add(node, L.Transpose(q), [x])

    def op_Squeeze(self, node, attrs, ins):
        x = self.value(ins[0])
        axes = self._axes(attrs, ins)
        if isinstance(x, Moved):
            return self.moved_squeeze(node, x, axes)
        return self.squeeze(node, x, axes)

    def squeeze(self, node, x, axes):
        per = tuple(sorted((a % x.rank) - 1 for a in axes))
        if any(a < 0 for a in per):
            raise NncompError("Squeeze of the batch axis")
        return self.add(node, L.Squeeze(per), [x])

    def op_Unsqueeze(self, node, attrs, ins):
        x = self.act(ins[0])
        axes = self._axes(attrs, ins)
        rank = x.rank + len(axes)
        per = tuple(sorted((a % rank) - 1 for a in axes))
        if any(a < 0 for a in per):
            raise NncompError("Unsqueeze before the batch axis")
        return self.add(node, L.Unsqueeze(per), [x])

    def op_Slice(self, node, attrs, ins):
        x = self.value(ins[0])
        if self.opset >= 10 and len(ins) > 2:
            get = lambda i: None if self.const(ins, i) is None else self._resolved(self.const(ins, i))  # noqa: E731
            starts, ends, axes, steps = get(1), get(2), get(3), get(4)
        else:
            starts, ends, axes, steps = attrs.ints("starts"), attrs.ints("ends"), attrs.ints("axes"), None
        axes = list(range(len(starts))) if axes is None else axes
        steps = [1] * len(starts) if steps is None else steps
        rank = len(x.perm) if isinstance(x, Moved) else x.rank
        keep = [(s, e, a % rank, k) for s, e, a, k in zip(starts, ends, axes, steps)]
        if isinstance(x, Moved):
            return self.moved_slice(node, x, keep)
        return self.slice(node, x, keep)

    def slice(self, node, x, keep):
        """Activation ``x`` sliced by ``keep``: (start, end, ONNX axis, step) tuples."""
        if any(a == 0 and (s != 0 or k != 1 or e < 1 << 30) for s, e, a, k in keep):
            raise NncompError("Slice of the batch axis")
        keep = [(s, e, internal_axis(a, x.rank), k) for s, e, a, k in keep if a != 0]
        if not keep:
            return [x]
        s, e, a, k = zip(*keep)
        return self.add(node, L.Slice(s, e, a, k), [x])

    def op_Split(self, node, attrs, ins):
        """One Slice layer per output (a detector head's class scores and box offsets, PP-PicoDet's),
        sizes from the ``split`` input (opset 13+) or attribute, else equal parts (the last one
        smaller where they do not divide, as opset 18's ``num_outputs`` says)."""
        x = self.value(ins[0])
        rank = len(x.perm) if isinstance(x, Moved) else x.rank
        axis = attrs.int("axis", 0) % rank
        given = self.const(ins, 1) if self.opset >= 13 else attrs.ints("split")
        sizes = None if given is None else self._resolved(given)
        outs = list(node.output)
        src, a = (x.src, x.perm[axis]) if isinstance(x, Moved) else (x, axis)
        if a == 0:
            raise NncompError("Split of the batch axis")
        total = self.shape(src)[internal_axis(a, src.rank)]
        if sizes is None:
            step = -(-total // len(outs))
            sizes = [max(0, min(step, total - i * step)) for i in range(len(outs))]
        if len(sizes) != len(outs) or any(v < 0 for v in sizes) or sum(sizes) != total:
            raise NncompError(f"Split of an axis of {total} into {len(outs)} outputs with sizes {sizes}: the sizes "
                              "must be one per output, not negative, and add up to the axis")
        found, start = [], 0
        for name, size in zip(outs, sizes):
            keep = [(start, start + size, axis, 1)]
            part = _Output(node, name)
            found += self.moved_slice(part, x, keep) if isinstance(x, Moved) else self.slice(part, x, keep)
            start += size
        return found

    def _resolved(self, v):
        arr, dims = resolve(v)
        if dims:
            if any(d.axis == 0 for d in dims):
                raise NncompError("a parameter computed from the batch size")
            self.bind_size("a parameter computed from the input size")
        return [int(a) for a in np.asarray(arr).reshape(-1)]

    def op_Gather(self, node, attrs, ins):
        x, idx = self.value(ins[0]), self.const(ins[1])
        if has_dims(idx) or np.ndim(idx) > 1:
            raise NncompError("Gather with indices of rank > 1 is not supported")
        if isinstance(x, Moved):
            return self.moved_gather(node, x, attrs.int("axis", 0) % len(x.perm), idx)
        return self.gather(node, x, attrs.int("axis", 0) % x.rank, idx)

    def gather(self, node, x, axis, idx):
        """Activation ``x`` gathered at constant ``idx`` along ONNX ``axis``."""
        if axis == 0:
            raise NncompError("Gather along the batch axis")
        return self.add(node, L.Gather(axis - 1, tuple(int(i) for i in np.reshape(idx, -1)), np.ndim(idx) == 0), [x])

    # ------------------------------------------------------------------ moved batch axes

    def moved_transpose(self, node, x, perm):
        """``x`` (an ``Act`` or a ``Moved``) transposed by ONNX ``perm``."""
        if isinstance(x, Moved):
            x, perm = x.src, [x.perm[p] for p in perm]
        return self._settle(node, x, perm)

    def _settle(self, node, src, perm):
        if list(perm) == list(range(len(perm))):
            return [src]
        if perm[0] == 0:
            return self.transpose(node, src, perm)
        return [Moved(src, perm)]

    def _check_batch(self, x, axes, what):
        if x.batch in axes:
            raise NncompError(f"{what} of the batch axis (at position {x.batch} after a Transpose by {list(x.perm)})")

    def moved_slice(self, node, x, keep):
        """``keep``: (start, end, axis, step) with axes of the moved value."""
        cut = [(s, e, a, k) for s, e, a, k in keep if not (a == x.batch and s == 0 and k == 1 and e >= 1 << 30)]
        self._check_batch(x, {a for _, _, a, _ in cut}, "Slice")
        if not cut:
            return [x]
        out = self.slice(node, x.src, [(s, e, x.perm[a], k) for s, e, a, k in cut])[0]
        return [Moved(out, x.perm)]

    def moved_squeeze(self, node, x, axes):
        rank = len(x.perm)
        if not axes:
            raise NncompError("Squeeze without axes of a value whose batch axis a Transpose moved: give the axes")
        gone = {int(a) % rank for a in axes}
        self._check_batch(x, gone, "Squeeze")
        out = self.squeeze(node, x.src, [x.perm[a] for a in sorted(gone)])[0]
        return self._settle(node, out, _drop(x.perm, gone))

    def moved_gather(self, node, x, axis, idx):
        self._check_batch(x, {axis}, "Gather")
        out = self.gather(node, x.src, x.perm[axis], idx)[0]
        if np.ndim(idx) == 0:       # one index: the axis goes
            return self._settle(node, out, _drop(x.perm, {axis}))
        return [Moved(out, x.perm)]
