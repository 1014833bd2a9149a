"""Model: a small graph of named nodes run in topological order."""
import math
from dataclasses import dataclass

import numba
import numpy as np

from . import convolution
from .errors import InputError, NncompError
from .kernels import blas
from .layers import Conv2D, Layer, MaxPool2D

__all__ = ["Model", "Node", "INPUT"]

INPUT = "input"
LAYOUTS = {"NCHW": 3, "NHWC": 3, "NC": 1}

# Activations of one call are kept under this many bytes by splitting a large batch.
MAX_ACTIVATION_BYTES = 2 << 30
# Forward plans (one prepared step per node; building one took 22 us for LeNet-5, 116 us for
# ResNet-small) are kept for this many (batch size, threads) pairs.
PLANS_KEPT = 32


def _passed_on(x):
    """The step of a max-pool already computed inside its convolution's step."""
    return x


@dataclass(frozen=True)
class Node:
    """A named layer and the names of the nodes (or ``"input"``) it reads."""

    name: str
    layer: Layer
    inputs: tuple = (INPUT,)

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))


class Model:
    """A trained network: nodes in topological order, an input in its source framework's layout.

    Call it on a batch: ``model(x)`` takes ``(n_samples, *input_shape)`` in ``input_layout``
    (``"NCHW"`` for PyTorch images, ``"NHWC"`` for Keras images, ``"NC"`` for vectors) and returns
    float32 outputs in the same convention, so its numbers match the source framework's.
    Internally images are NHWC. A Model is immutable: methods return new models.

    Parameters
    ----------
    nodes : sequence of Node
        Topologically ordered; each node reads ``"input"`` or earlier nodes.
    input_shape : tuple of int
        Per-sample input shape in ``input_layout`` (``(c, h, w)``, ``(h, w, c)`` or ``(features,)``).
    input_layout : {"NCHW", "NHWC", "NC"}
    outputs : sequence of str, optional
        Output node names (default: the last node).
    name : str
    """

    def __init__(self, nodes, *, input_shape, input_layout, outputs=None, name="model"):
        self.nodes = tuple(nodes)
        self.name = str(name)
        if input_layout not in LAYOUTS:
            raise NncompError(f"input_layout must be one of {sorted(LAYOUTS)}, got {input_layout!r}")
        self.input_layout = input_layout
        self.input_shape = tuple(int(d) for d in input_shape)
        if len(self.input_shape) != LAYOUTS[input_layout] or min(self.input_shape, default=0) < 1:
            raise NncompError(f"input_shape {input_shape} does not fit layout {input_layout}")
        if not self.nodes:
            raise NncompError("a model needs at least one node")
        self.outputs = tuple(outputs) if outputs else (self.nodes[-1].name,)
        self.shapes = self._infer_shapes()
        for o in self.outputs:
            if o not in self.shapes or o == INPUT:
                raise NncompError(f"output {o!r} is not a node of the model")
        self._activation_bytes = max(1, 4 * sum(math.prod(s) for s in self.shapes.values()))
        self._last_use = {}
        for i, node in enumerate(self.nodes):
            for src in node.inputs:
                self._last_use[src] = i
        self._plans = {}

    # ----------------------------------------------------------------- structure
    @property
    def internal_input_shape(self):
        if self.input_layout == "NCHW":
            c, h, w = self.input_shape
            return (h, w, c)
        return self.input_shape

    def _infer_shapes(self):
        shapes = {INPUT: self.internal_input_shape}
        for node in self.nodes:
            if not isinstance(node.layer, Layer):
                raise NncompError(f"node {node.name!r} holds {type(node.layer).__name__}, not a Layer")
            if node.name in shapes:
                raise NncompError(f"node name {node.name!r} is used twice (or is the reserved 'input')")
            missing = [s for s in node.inputs if s not in shapes]
            if missing:
                raise NncompError(f"node {node.name!r} reads {missing}, which are not earlier nodes; "
                                  "nodes must be in topological order")
            if len(node.inputs) < node.layer.n_inputs or (node.layer.n_inputs == 1 and len(node.inputs) != 1):
                raise NncompError(f"node {node.name!r} ({node.layer.kind}) got {len(node.inputs)} inputs")
            try:
                shapes[node.name] = tuple(node.layer.output_shape(*(shapes[s] for s in node.inputs)))
            except NncompError as e:
                raise type(e)(f"node {node.name!r}: {e}") from None
        return shapes

    def __getitem__(self, name):
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node named {name!r}; nodes: {[n.name for n in self.nodes]}")

    def consumers(self, name):
        """Names of the nodes that read node ``name``."""
        return [n.name for n in self.nodes if name in n.inputs]

    def with_nodes(self, nodes, **changes):
        """A new model with the same input and outputs (unless changed) and these nodes."""
        kw = dict(input_shape=self.input_shape, input_layout=self.input_layout,
                  outputs=self.outputs, name=self.name)
        kw.update(changes)
        return Model(nodes, **kw)

    def replace_layers(self, layers):
        """A new model with ``{node name: new layer}`` swapped in."""
        unknown = set(layers) - {n.name for n in self.nodes}
        if unknown:
            raise NncompError(f"unknown node names {sorted(unknown)}")
        return self.with_nodes([Node(n.name, layers.get(n.name, n.layer), n.inputs) for n in self.nodes])

    @property
    def nbytes(self):
        """Bytes of all weights and parameters as held in memory."""
        return sum(n.layer.nbytes for n in self.nodes)

    @property
    def macs(self):
        """Multiply-adds per sample."""
        return sum(n.layer.macs(*(self.shapes[s] for s in n.inputs)) for n in self.nodes)

    # ----------------------------------------------------------------- forward
    def check_input(self, x):
        """``x`` as a C-contiguous float32 batch in the model's input layout, or InputError saying
        what shape, rank or dtype was expected and what came."""
        if isinstance(x, np.ndarray):
            arr = x
        else:
            try:
                arr = np.asarray(x)
            except ValueError as e:
                raise InputError(f"input must be a rectangular array of numbers: {e}") from None
        if arr.dtype == object or arr.dtype.kind not in "fiu":
            raise InputError(f"input dtype {arr.dtype} is not supported; pass float32 "
                             "(other float and integer arrays are converted)")
        want = (None,) + self.input_shape
        if arr.ndim != len(want) or arr.shape[1:] != self.input_shape:
            hint = " (add a batch axis: x[None])" if arr.shape == self.input_shape else ""
            raise InputError(f"expected input of shape (batch, {', '.join(map(str, self.input_shape))}) "
                             f"in {self.input_layout} layout, got {arr.shape}{hint}")
        if arr.dtype.kind == "f" and arr.dtype.itemsize > 4 and arr.size:
            big = np.abs(arr[np.isfinite(arr)]).max(initial=0)
            if big > np.finfo(np.float32).max:
                raise InputError(f"input value {big:g} exceeds the float32 range")
        return np.ascontiguousarray(arr, dtype=np.float32)

    def __call__(self, x, *, check_finite=False):
        """Run the model on a batch.

        Parameters
        ----------
        x : array_like, shape (n_samples, *input_shape)
            In the model's ``input_layout``; float32 (other real dtypes are converted).
        check_finite : bool
            Refuse NaN/Inf inputs with InputError. Otherwise they propagate as IEEE arithmetic does.

        Returns
        -------
        ndarray (float32), or a tuple of them for a model with several outputs.
        """
        x = self.check_input(x)
        if check_finite and not np.isfinite(x).all():
            raise InputError("input holds NaN or Inf values (check_finite=True)")
        step = max(1, MAX_ACTIVATION_BYTES // self._activation_bytes)
        if x.shape[0] <= step:
            return self._forward(x)
        parts = [self._forward(x[i:i + step]) for i in range(0, x.shape[0], step)]
        if isinstance(parts[0], tuple):
            return tuple(np.concatenate(p) for p in zip(*parts))
        return np.concatenate(parts)

    def _forward(self, x):
        if x.shape[0] == 0:
            outs = tuple(self._to_source_layout(np.zeros((0,) + self.shapes[o], np.float32)) for o in self.outputs)
            return outs[0] if len(outs) == 1 else outs
        if self.input_layout == "NCHW":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        steps, outputs = self._plan(x.shape[0])
        values = [x]
        with blas.ONE_THREAD:
            for step, ins, frees in steps:
                values.append(step(*[values[i] for i in ins]))
                for i in frees:
                    values[i] = None
        outs = tuple(self._to_source_layout(values[i]) for i in outputs)
        return outs[0] if len(outs) == 1 else outs

    def _plan(self, n):
        """The forward pass for batches of ``n``: each node's prepared step (``Layer.prepare``: kernels,
        algorithms and thread splits chosen once, no per-call checks on the model's own activations),
        the slots it reads and the slots it frees. Kept per batch size and thread count."""
        key = (n, numba.get_num_threads())
        plans = self._plans
        plan = plans.get(key)
        if plan is None:
            # values hold the input, then each node's output in order: node i is slot i + 1
            slot = {INPUT: 0, **{node.name: i + 1 for i, node in enumerate(self.nodes)}}
            keep = set(self.outputs)
            prepared = self._fuse_pools(n, keep)
            steps = tuple((prepared.get(i) or node.layer.prepare(n, *(self.shapes[s] for s in node.inputs)),
                           tuple(slot[s] for s in node.inputs),
                           tuple(slot[s] for s in set(node.inputs) if self._last_use[s] == i and s not in keep))
                          for i, node in enumerate(self.nodes))
            if len(plans) >= PLANS_KEPT:
                plans.pop(next(iter(plans), None), None)    # another thread may have dropped it
            plan = plans[key] = (steps, tuple(slot[o] for o in self.outputs))
        return plan

    def __getstate__(self):
        # plans hold closures over kernels and are rebuilt on the first call: not pickled
        return {k: v for k, v in self.__dict__.items() if k != "_plans"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._plans = {}

    def _fuse_pools(self, n, keep):
        """``{node index: step}`` for each convolution whose only reader is a max-pool that can run
        inside its fused kernel (``convolution.prepare_pooled``): the conv's step then yields the
        pooled output and the pool's step passes it on."""
        found = {}
        index = {node.name: i for i, node in enumerate(self.nodes)}
        for i, node in enumerate(self.nodes):
            if not isinstance(node.layer, Conv2D) or node.name in keep:
                continue
            readers = [index[name] for name in self.consumers(node.name)]
            if len(readers) != 1 or not isinstance(self.nodes[readers[0]].layer, MaxPool2D):
                continue
            step = convolution.prepare_pooled(node.layer, self.shapes[node.inputs[0]], n,
                                              self.nodes[readers[0]].layer)
            if step is not None:
                found[i], found[readers[0]] = step, _passed_on
        return found

    def _to_source_layout(self, y):
        if y.ndim == 4 and self.input_layout == "NCHW":
            y = y.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(y, dtype=np.float32)

    # ----------------------------------------------------------------- summary
    def summary(self):
        """One line per node: name, kind, weight format, output shape, bytes, MACs per sample."""
        rows = [("node", "kind", "format", "inputs", "output", "bytes", "MACs")]
        for n in self.nodes:
            shapes = [self.shapes[s] for s in n.inputs]
            rows.append((n.name, n.layer.kind, n.layer.describe(), ",".join(n.inputs),
                         "x".join(map(str, self.shapes[n.name])), f"{n.layer.nbytes:,}",
                         f"{n.layer.macs(*shapes):,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"Model {self.name!r}: input {self.input_layout} "
                 f"{'x'.join(map(str, self.input_shape))}, outputs {list(self.outputs)}"]
        for r in rows:
            lines.append("  ".join(c.rjust(w) if i >= 5 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        lines.append(f"total: {self.nbytes:,} bytes of parameters, {self.macs:,} MACs per sample")
        return "\n".join(lines)

    def __str__(self):
        return self.summary()

    def __repr__(self):
        return (f"Model(name={self.name!r}, nodes={len(self.nodes)}, input={self.input_layout}"
                f"{list(self.input_shape)}, nbytes={self.nbytes})")
