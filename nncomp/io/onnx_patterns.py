"""Layout translation for ONNX values, and the fused patterns the importer recognises.

Layout: a 4-D ONNX tensor is an NHWC image inside nncomp; every other rank keeps ONNX's axis order;
the batch axis is never touched (:func:`internal_axis`, :func:`internal_constant`).

Patterns (:class:`Patterns`, a mixin of the importer): as layers are built, each records what it
computed in ``self.origin`` (node name -> a tuple naming the operation and its operands), so a later
node can see that it completes

- ``x * relu6(x + 3) / 6``, ``x * (relu6(x + 3) / 6)`` or ``x * HardSigmoid(x)`` (alpha 1/6): one HardSwish;
- ``(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps)`` over trailing axes: one LayerNorm (a constant
  scale and shift after it fold into its parameters);
- ``x * sigmoid(x)`` (SiLU, YOLOv8's activation): one SiLU, in its producer's epilogue;
- ``x * (erf(x / sqrt(2)) + 1) * 0.5`` (GELU as paddle2onnx and torch.onnx write it): one GELU, in
  its producer's epilogue, instead of five passes (PP-OCRv6);
- a constant scale or shift (one value or one per channel) after a convolution or dense layer that
  nothing else reads: folded into its weights.

The layers the pattern skips stay in the node list until the model is built, which drops every node
no output depends on.
"""
import numpy as np

from .. import layers as L
from ..errors import NncompError

# ONNX per-sample axis of an image (c, h, w) -> internal (h, w, c) axis
TO_INTERNAL = {0: 2, 1: 0, 2: 1}


def internal_axis(a, rank, what="axis"):
    """ONNX axis ``a`` of a rank-``rank`` activation as an internal per-sample axis (batch refused)."""
    a = int(a)
    if not -rank <= a < rank:
        raise NncompError(f"{what} {a} is out of range for a rank-{rank} tensor")
    a %= rank
    if a == 0:
        raise NncompError(f"{what} 0 is the batch axis; nncomp keeps the batch axis as it is")
    return TO_INTERNAL[a - 1] if rank == 4 else a - 1


def internal_constant(c, rank):
    """A constant operand broadcast against a rank-``rank`` activation, in the internal per-sample
    layout (batch axis dropped; an image's (c, h, w) moved to (h, w, c))."""
    c = np.asarray(c, np.float32)
    if c.ndim > rank or (c.ndim == rank and c.shape[0] != 1):
        raise NncompError(f"constant of shape {c.shape} broadcasts over the batch axis of a rank-{rank} tensor")
    if c.ndim == 0:
        return c
    if c.ndim == rank:
        c = c[0]
    if rank == 4:
        c = c.reshape((1,) * (3 - c.ndim) + c.shape).transpose(1, 2, 0)
    return np.ascontiguousarray(c)


SQRT2 = float(np.sqrt(2.0))


def _one(c):
    """The single value of constant ``c``, or None."""
    return float(c.reshape(-1)[0]) if c.size == 1 else None


class Patterns:
    """What the importer recognises across nodes (see the module docstring)."""

    def binary_of_activations(self, node, op, a, b):
        """``[Act]`` of a HardSwish, SiLU or LayerNorm that ``a op b`` completes, or None."""
        if op == "mul":
            for x, gate in ((a, b), (b, a)):
                if self.origin.get(gate.node) == ("hardsigmoid", x.node):
                    return self.add(node, L.HardSwish(), [x])
                if self.origin.get(gate.node) == ("sigmoid", x.node):
                    return self.add(node, L.SiLU(), [x])
        if op == "div":
            return self._layernorm(node, a, b)
        return None

    def _layernorm(self, node, d, sd):
        o = self.origin.get
        sqrt, diff = o(sd.node, ()), o(d.node, ())
        if sqrt[:1] != ("sqrt",) or diff[:1] != ("sub",):
            return None
        plus = o(sqrt[1], ())
        var = o(plus[1], ()) if plus[:1] == ("add",) else ()
        square = o(var[1], ()) if var[:1] == ("mean",) else ()
        mean = o(diff[2], ())
        if square != ("pow2", d.node) or mean[:2] != ("mean", diff[1]) or mean[2] != var[2]:
            return None
        x, axes = self.acts[diff[1]], var[2]
        rank = len(self.shape(x))
        if axes != tuple(range(rank - len(axes), rank)) or (rank == 3 and len(axes) != 3) or plus[2] is None:
            return None
        out = self.add(node, L.LayerNorm(axes[0], None, None, epsilon=plus[2]), [x])
        self.origin[out[0].node] = ("layernorm",)
        return out

    def binary_with_constant(self, node, op, x, c, first):
        """``[Act]`` when ``x op c`` folds into the layer computing ``x`` or completes a HardSwish."""
        folded = self.fold_affine(node, x, op, c, first)
        if folded is not None:
            return folded
        made = self.origin.get(x.node, (None,))
        if self.is_sixth(op, c, first) and made[0] == "mul":
            for u, r in ((made[1], made[2]), (made[2], made[1])):
                if self.origin.get(r.node) == ("relu6+3", u.node):
                    return self.add(node, L.HardSwish(), [u])
        if op == "mul" and _one(c) == 0.5 and made[0] == "mul":      # GELU: 0.5 * (x * (1 + erf(x / sqrt(2))))
            for u, r in ((made[1], made[2]), (made[2], made[1])):
                plus = self.origin.get(r.node, ())
                if plus[:1] == ("add",) and plus[2] == 1.0 and self.origin.get(plus[1]) == ("erf(x/sqrt2)", u.node):
                    return self.add(node, L.GELU(), [u])
        return None

    @staticmethod
    def is_sixth(op, c, first):
        v = _one(c)
        return not first and v is not None and (op == "div" and v == 6 or op == "mul" and abs(v - 1 / 6) < 1e-7)

    def note_binary(self, out, op, x, c=None, first=False):
        """Record what a Binary node computed (``c``: its constant, None for two activations)."""
        if c is None:
            if op == "mul":
                self.origin[out.node] = ("mul", *x)
            elif op == "sub":
                self.origin[out.node] = ("sub", x[0].node, x[1].node)
            return
        v, made = _one(c), self.origin.get(x.node, (None,))
        if v is not None and not first and (op == "div" and abs(v - SQRT2) < 1e-6 or op == "mul" and abs(v * SQRT2 - 1) < 1e-6):
            self.origin[out.node] = ("x/sqrt2", x.node)
        if op == "add" and not first:
            self.origin[out.node] = ("add", x.node, v)
        elif op == "pow" and v == 2 and not first:
            self.origin[out.node] = ("pow2", x.node)
        elif self.is_sixth(op, c, first) and made[0] == "relu6+3":
            self.origin[out.node] = ("hardsigmoid", made[1])

    def fold_affine(self, node, x, op, c, first):
        """``x op c`` folded into the convolution, dense or layer-norm layer that computes ``x`` (read
        by nothing else), when ``c`` is one value or one per output channel: ``[Act]``, or None."""
        if op not in ("add", "sub", "mul", "div") or (first and op in ("sub", "div")) or self.readers[x.tensor] != 1:
            return None
        i = next((k for k in range(len(self.nodes) - 1, -1, -1) if self.nodes[k].name == x.node), None)
        layer = None if i is None else self.nodes[i].layer
        try:
            k = np.broadcast_to(internal_constant(c, x.rank), self.shape(x)).astype(np.float64)
        except (NncompError, ValueError):
            return None
        if self.origin.get(x.node) == ("layernorm",):
            changed = _fold_layernorm(layer, k, op)
        elif isinstance(layer, (L.Conv2D, L.Dense)) and layer.weight.format == "dense" and not getattr(layer, "same", 0):
            changed = _fold_weights(layer, k, op)
        else:
            return None
        if changed is None:
            return None
        self.nodes[i] = self.nodes[i].__class__(x.node, changed, self.nodes[i].inputs)
        return [type(x)(x.node, x.rank, node.output[0])]


def _fold_weights(layer, k, op):
    n = layer.weight.n_out
    per = k.reshape(-1, n)
    if not (per == per[:1]).all():
        return None
    v = per[0]
    w = layer.weight.w.astype(np.float64)
    bias = np.zeros(n) if layer.bias is None else layer.bias.astype(np.float64)
    if op in ("mul", "div"):
        scale = v if op == "mul" else 1 / v
        w, bias = w * scale[:, None], bias * scale
    else:
        bias = bias + v if op == "add" else bias - v
    return layer.replace(weight=w.astype(np.float32), bias=bias.astype(np.float32))


def _fold_layernorm(layer, k, op):
    """A LayerNorm (normalizing axes ``layer.axis`` ..) with ``op k`` folded into scale / bias, when
    ``k`` is constant over the axes before them."""
    axis = layer.axis % k.ndim
    per = k.reshape((-1,) + k.shape[axis:])
    if not (per == per[:1]).all():
        return None
    v = per[0]
    scale = np.ones(v.shape) if layer.scale is None else np.broadcast_to(layer.scale, v.shape).astype(np.float64)
    bias = np.zeros(v.shape) if layer.bias is None else np.broadcast_to(layer.bias, v.shape).astype(np.float64)
    if op in ("mul", "div"):
        f = v if op == "mul" else 1 / v
        scale, bias = scale * f, bias * f
    else:
        bias = bias + v if op == "add" else bias - v
    return layer.replace(scale=scale.astype(np.float32), bias=bias.astype(np.float32))
