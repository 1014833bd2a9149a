"""The ONNX graph -> nncomp Model translation (structural operators here and in onnx_axes.py, the
others in onnx_nn.py).

Each value of the graph is either an activation (:class:`Act`: a Model node's output, with its ONNX
rank; or a :class:`~nncomp.io.onnx_axes.Moved` view of one) or a constant (an initializer, a
``Constant``, a folded computation, or a shape holding :class:`~nncomp.io.onnx_fold.Dim`). Nodes whose inputs are all constants are folded; the others
become layers, built and shape-checked at the nominal input size as they come.
"""
import math
import os

import numpy as np

from .. import layers as L
from ..errors import NncompError, UnsafeModelFileError
from ..layers.tensor import internal_shape
from ..model import INPUT, Model, Node
from .onnx_axes import AxisOps, Moved
from .onnx_fold import DIM_CARRIERS, FOLDABLE, Attrs, Dim, fold, has_dims, resolve
from .onnx_nn import BINARY, REDUCE, UNARY, NeuralOps
from .onnx_patterns import internal_axis

__all__ = ["Importer", "SUPPORTED"]

# op type -> the handler method that imports it
OPS = {
    "Conv": "Conv", "ConvTranspose": "ConvTranspose", "Gemm": "Gemm",
    "MatMul": "MatMul", "BatchNormalization": "BatchNormalization",
    "LayerNormalization": "LayerNormalization", "Relu": "Relu", "Clip": "Clip",
    "LeakyRelu": "LeakyRelu", "Sigmoid": "Sigmoid",
    "HardSigmoid": "HardSigmoid", "HardSwish": "HardSwish",
    "MaxPool": "MaxPool", "AveragePool": "AveragePool", "GlobalAveragePool": "GlobalAveragePool",
    "GlobalMaxPool": "GlobalMaxPool", "Softmax": "Softmax",
    "Resize": "Resize", "Upsample": "Resize",
    "Concat": "Concat", "Reshape": "Reshape", "Flatten": "Flatten", "Transpose": "Transpose",
    "Squeeze": "Squeeze", "Unsqueeze": "Unsqueeze", "Slice": "Slice", "Split": "Split", "Gather": "Gather",
    "Pad": "Pad", "Identity": "Identity", "Dropout": "Identity", "Cast": "Cast",
    "Constant": "Constant", "Shape": "Shape",
    **{op: "Unary" for op in UNARY},
    **{op: "Binary" for op in BINARY},
    **{op: "Reduce" for op in REDUCE},
}
SUPPORTED = frozenset(OPS) | frozenset(FOLDABLE)
_FLOAT_TYPES = {1, 10, 11, 16}


class Act:
    """An activation: the output of Model node ``node`` (ONNX tensor ``tensor``), of ONNX rank ``rank``."""

    __slots__ = ("node", "rank", "tensor")

    def __init__(self, node, rank, tensor):
        self.node, self.rank, self.tensor = node, rank, tensor


class Importer(NeuralOps, AxisOps):
    def __init__(self, model, path, tensors, opset, input_shape):
        self.graph, self.path, self.tensors, self.opset = model.graph, path, tensors, opset
        self.input_shape = input_shape
        self.values, self.nodes, self.shapes, self.names = {}, [], {}, {INPUT}
        self.flattened, self.origin, self.bound, self.acts = {}, {}, [], {}
        self.readers = {}
        for node in self.graph.node:
            for name in node.input:
                self.readers[name] = self.readers.get(name, 0) + 1
        for out in self.graph.output:
            self.readers[out.name] = self.readers.get(out.name, 0) + 1

    # ------------------------------------------------------------------ values
    def is_act(self, name):
        return isinstance(self.values.get(name), (Act, Moved))

    def act(self, name):
        v = self.values.get(name)
        if isinstance(v, Moved):
            raise NncompError(v.refusal(name))
        if not isinstance(v, Act):
            raise NncompError(f"{name!r} is a constant where an activation was expected")
        return v

    def value(self, name):
        """Activation ``name``, or the :class:`Moved` view of one (a Transpose moved its batch axis)."""
        v = self.values.get(name)
        return v if isinstance(v, Moved) else self.act(name)

    def const(self, names, i=None):
        """The constant ``names`` (or ``names[i]``, None when absent or empty); reads initializers."""
        if i is not None:
            if len(names) <= i or not names[i]:
                return None
            names = names[i]
        v = self.values.get(names)
        if isinstance(v, (Act, Moved)):
            raise NncompError(f"{names!r} is computed from the input where a constant was expected")
        if v is None:
            raise NncompError(f"value {names!r} is not available (an unsupported optional output?)")
        if not isinstance(v, np.ndarray):          # an initializer, read on first use
            v = self.values[names] = self.tensors.array(v, names)
        return v

    def shape(self, act):
        return self.shapes[act.node]

    def bind_size(self, why):
        """Parameters computed from the nominal input size: the model will take that size only."""
        self.bound.append(why)

    def fix_shape(self, name, layer):
        """Node ``name`` computes with ``layer`` instead, for its input's nominal shape only (a guard
        node, FixedShape, refuses other shapes before it)."""
        i = next(k for k, n in enumerate(self.nodes) if n.name == name)
        old = self.nodes[i]
        src = old.inputs[0]
        guard = f"{old.name}/shape"
        self.names.add(guard)
        self.shapes[guard] = self.shapes[src]
        self.nodes[i:i + 1] = [Node(guard, L.FixedShape(self.shapes[src]), (src,)), Node(old.name, layer, (guard,))]

    def add(self, node, layer, inputs, suffix=None):
        """Append a Model node for ``layer`` reading activations ``inputs``; ``[Act]`` of its output."""
        tensor = node.output[0]
        name = tensor if suffix is None else f"{tensor}/{suffix}"
        base, k = name, 1
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        try:
            shape = layer.shape_of(*(self.shapes[a.node] for a in inputs))
        except NncompError as e:
            raise NncompError(f"node {node.name or tensor!r} ({node.op_type}): {e}") from None
        if math.prod(shape) * 4 > self.tensors.max_tensor:
            raise UnsafeModelFileError(self.path, node.name or tensor, f"its output per sample, shape {shape}, "
                                       f"needs more than max_tensor_bytes={self.tensors.max_tensor} bytes")
        self.nodes.append(Node(name, layer, tuple(a.node for a in inputs)))
        self.shapes[name] = shape
        rank = len(shape) + 1 if len(shape) != 3 else 4
        act = self.acts[name] = Act(name, rank, tensor)
        return [act]

    # ------------------------------------------------------------------ the walk
    def _input(self):
        inits = {t.name for t in self.graph.initializer}
        inputs = [i for i in self.graph.input if i.name not in inits]
        if len(inputs) != 1:
            raise NncompError(f"nncomp models take one input; this graph has {[i.name for i in inputs]}")
        inp = inputs[0]
        tt = inp.type.tensor_type
        if tt.elem_type not in _FLOAT_TYPES:
            raise NncompError(f"input {inp.name!r} has element type {tt.elem_type}; only float inputs are supported")
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
        if len(dims) < 2:
            raise NncompError(f"input {inp.name!r} has rank {len(dims)}; expected (batch, ...)")
        shape = self.input_shape
        if shape is None:
            if None in dims[1:]:
                raise NncompError(f"input {inp.name!r} leaves per-sample dims free ({dims[1:]}); pass "
                                  "input_shape= (per-sample, ONNX order, e.g. (3, 640, 640))")
            shape = tuple(dims[1:])
        if len(shape) != len(dims) - 1:
            raise NncompError(f"input_shape {shape} does not fit input {inp.name!r} of dims {dims}")
        return inp.name, tuple(int(d) for d in shape)

    def build(self):
        name, shape = self._input()
        rank = len(shape) + 1
        self.values[name] = self.acts[INPUT] = Act(INPUT, rank, name)
        self.shapes[INPUT] = internal_shape(shape) if rank == 4 else shape
        for t in self.graph.initializer:
            self.values[t.name] = t
        for node in self.graph.node:
            attrs = Attrs(node)
            ins = list(node.input)
            outs = self._node(node, attrs, ins)
            passed = set()
            for out_name, value in zip(node.output, outs):
                if out_name:
                    if isinstance(value, Act) and value.tensor != out_name:
                        # the same value under another name (Identity, a float Cast, a no-op Reshape):
                        # whatever reads that name reads the value (a Div by sqrt(2) after an Identity
                        # must not fold into the convolution that GELU's Mul also reads: PP-OCRv6)
                        drop = 0 if value.tensor in passed else 1
                        passed.add(value.tensor)
                        self.readers[value.tensor] = (self.readers.get(value.tensor, 0) - drop
                                                      + self.readers.get(out_name, 0))
                    self.values[out_name] = value
        return self._model(shape, rank)

    def _node(self, node, attrs, ins):
        op = node.op_type
        if op == "Constant":
            return [self._constant(node, attrs)]
        if op == "Shape" and self.is_act(ins[0]):
            x = self.act(ins[0])
            src = self.shape(x)
            src = (src[2], src[0], src[1]) if x.rank == 4 else src
            dims = np.array([Dim(x.node, i, v) for i, v in enumerate((1,) + tuple(src))], object)
            start, end = attrs.int("start", 0), attrs.int("end", None)
            return [dims[start:end]]
        given = [n for n in ins if n]
        if op in FOLDABLE and not any(self.is_act(n) for n in given):
            values = [self.const(n) if n else None for n in ins]
            dims = [d for v in values if has_dims(v) for d in resolve(v)[1]]
            if dims and (op not in DIM_CARRIERS or op == "Cast" and attrs.int("to", 1) in _FLOAT_TYPES):
                if any(d.axis == 0 for d in dims):
                    raise NncompError(f"node {node.name or op!r} ({op}) computes with the batch size")
                self.bind_size(f"{op} of sizes computed from the input")
            try:
                return fold(op, attrs, values)
            except (ValueError, IndexError, TypeError, OverflowError) as e:
                raise NncompError(f"node {node.name or op!r} ({op}) on constants: {e}") from None
        handler = OPS[op]
        return getattr(self, "op_" + handler)(node, attrs, ins)

    def _constant(self, node, attrs):
        names = attrs.names()
        if "value" in names:
            return self.tensors.array(attrs.tensor("value"), node.output[0])
        for key, dtype, many in (("value_float", np.float32, False), ("value_floats", np.float32, True),
                                 ("value_int", np.int64, False), ("value_ints", np.int64, True)):
            if key in names:
                v = (attrs.floats if many and dtype == np.float32 else attrs.ints if many else
                     attrs.float if dtype == np.float32 else attrs.int)(key)
                arr = np.array(v, dtype)
                if arr.dtype.kind == "f" and not np.isfinite(arr).all() and not self.tensors.allow_nonfinite:
                    raise NncompError(f"Constant {node.output[0]!r} holds non-finite values")
                return arr
        raise NncompError(f"Constant {node.output[0]!r}: only value, value_float(s) and value_int(s) are supported")

    def _model(self, shape, rank):
        outputs = []
        for out in self.graph.output:
            v = self.values.get(out.name)
            if isinstance(v, Moved):
                raise NncompError(v.refusal(out.name))
            if not isinstance(v, Act) or v.node == INPUT:
                raise NncompError(f"output {out.name!r} is a constant or the input itself, not a computed value")
            outputs.append(v.node)
        needed = set(outputs)
        for n in reversed(self.nodes):
            if n.name in needed:
                needed.update(n.inputs)
        nodes = [n for n in self.nodes if n.name in needed]
        if self.bound:
            guard = "input_size"
            while guard in self.names:
                guard += "_"
            nodes = [Node(guard, L.FixedShape(self.shapes[INPUT]))] + [
                Node(n.name, n.layer, tuple(guard if s == INPUT else s for s in n.inputs)) for n in nodes]
        layout = "NCHW" if rank == 4 else "NC" if rank == 2 and all(len(self.shapes[o]) != 3 for o in outputs) else "N*"
        name = os.path.splitext(os.path.basename(self.path))[0]       # graph names are exporters' ("main_graph")
        return Model(nodes, input_shape=shape, input_layout=layout, outputs=outputs, name=name)

    # ------------------------------------------------------------------ structural operators
    def op_Identity(self, node, attrs, ins):
        return [self.act(ins[0])]

    def op_Cast(self, node, attrs, ins):
        x, to = self.act(ins[0]), attrs.int("to", 1)
        if to in _FLOAT_TYPES:
            return [x]
        if to in (2, 3, 5, 6, 7, 12, 13):
            return self.add(node, L.Cast("int"), [x])
        raise NncompError(f"Cast of an activation to element type {to} is not supported")

    def op_Flatten(self, node, attrs, ins):
        x = self.act(ins[0])
        if attrs.int("axis", 1) % x.rank != 1:
            raise NncompError(f"Flatten(axis={attrs.int('axis')}) merges the batch axis; only axis=1 is supported")
        if x.rank == 2:
            return [x]
        out = self.add(node, L.Flatten("chw"), [x])
        if x.rank == 4:
            self.flattened[out[0].node] = self.shape(x)
        return out

    def op_Reshape(self, node, attrs, ins):
        x, target = self.act(ins[0]), self.const(ins[1])
        target = list(np.asarray(target).reshape(-1))
        if attrs.int("allowzero", 0) and any(not isinstance(d, Dim) and d == 0 for d in target):
            raise NncompError("Reshape with allowzero=1 and a 0 in the shape is not supported")
        if not target:
            raise NncompError("Reshape to a scalar drops the batch axis")
        first = target[0]
        if isinstance(first, Dim) and first.axis != 0:
            raise NncompError("Reshape moves a non-batch size to the batch axis")
        out, foreign = [], []
        for d in target[1:]:
            if isinstance(d, Dim):
                if d.node == x.node and d.axis >= 1:
                    out.append(f"d{d.axis - 1}")
                    continue
                if d.axis == 0:
                    raise NncompError("Reshape uses the batch size inside a sample's shape")
                foreign.append(len(out))
                d = d.value
            out.append(int(d))
        batch_inferred = not isinstance(first, Dim) and int(first) == -1
        if len(foreign) == 1 and -1 not in out and not batch_inferred:
            # one size read from another value (an attention block's sequence length): whatever the
            # input size, it is the element count over the other sizes, which -1 infers
            out[foreign[0]] = -1
        elif foreign:
            self.bind_size("a Reshape to a shape computed from another value's size")
        if batch_inferred and -1 in out:
            raise NncompError(f"Reshape {target} infers two sizes (the batch axis and another)")
        if x.rank == 4 and len(out) == 1 and (out[0] == -1 or out[0] == int(np.prod(self.shape(x)))):
            return self.op_Flatten(node, Attrs(node), ins[:1])
        return self.add(node, L.Reshape(tuple(out)), [x])

    def _axes(self, attrs, ins, pos=1):
        if len(ins) > pos and ins[pos]:
            return [int(a) for a in resolve(self.const(ins[pos]))[0].reshape(-1)]
        return attrs.ints("axes") or []

    def op_Concat(self, node, attrs, ins):
        xs = [self.act(n) for n in ins if n]
        if len({x.rank for x in xs}) != 1:
            raise NncompError("Concat of activations of different ranks")
        axis = internal_axis(attrs.int("axis", 0), xs[0].rank, "Concat axis")
        if len(xs) == 1:
            return xs
        return self.add(node, L.Concat(axis), xs)

    def op_Pad(self, node, attrs, ins):
        x = self.act(ins[0])
        mode = attrs.str("mode", "constant")
        if mode not in ("constant", "reflect", "edge"):
            raise NncompError(f"Pad mode {mode!r} is not supported")
        pads = self._resolved(self.const(ins[1])) if len(ins) > 1 and ins[1] else attrs.ints("pads")
        value = self.const(ins, 2)
        value = attrs.float("value", 0.0) if value is None else float(np.asarray(value).reshape(-1)[0]) if np.size(value) else 0.0
        axes = self._axes(attrs, ins, 3) if len(ins) > 3 and ins[3] else list(range(x.rank))
        k = len(axes)
        if len(pads) != 2 * k or min(pads) < 0:
            raise NncompError(f"Pad pads {pads}: expected {2 * k} values >= 0 (negative pads crop: unsupported)")
        full = {a % x.rank: (pads[i], pads[k + i]) for i, a in enumerate(axes)}
        if full.get(0, (0, 0)) != (0, 0):
            raise NncompError("Pad of the batch axis")
        per = {internal_axis(a, x.rank): v for a, v in full.items() if a != 0}
        n = x.rank - 1
        begin, end = [per.get(i, (0, 0))[0] for i in range(n)], [per.get(i, (0, 0))[1] for i in range(n)]
        if x.rank == 4 and mode == "constant" and value == 0 and begin[2] == end[2] == 0:
            return self.add(node, L.ZeroPad2D((begin[0], end[0], begin[1], end[1])), [x])
        return self.add(node, L.Pad(tuple(begin + end), mode, value), [x])
