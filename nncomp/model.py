"""Model: a small graph of named nodes run in topological order."""
import math
from dataclasses import dataclass

import numpy as np

from .checks import check_number
from .errors import InputError, NncompError
from .kernels import _jit, layout
from .layers import Layer
from .plan import (CHOOSE_BELOW_MACS, INPUT, SERIAL_BELOW_MACS, MeasuredChoice, Plan, batch_parts, run_parallel,
                   run_parts, run_serial, serial_single)

__all__ = ["Model", "Node", "INPUT"]

# Per-sample rank of each input layout; "N*" (ONNX models whose input is neither an image nor a
# vector) takes any rank but 3 and keeps the source's axis order, except that 4-D values are images.
LAYOUTS = {"NCHW": 3, "NHWC": 3, "NC": 1, "N*": None}

# Activations of one call are kept under this many bytes by splitting a large batch.
MAX_ACTIVATION_BYTES = 2 << 30
# Forward plans (one prepared step per node; building one took 22 us for LeNet-5, 116 us for
# ResNet-small) are kept for this many (input shape, batch size, threads, kept nodes) keys, and
# the shapes of this many input sizes.
PLANS_KEPT = 32
_F32 = np.dtype(np.float32)


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
    (``"NCHW"`` for PyTorch and ONNX images, ``"NHWC"`` for Keras images, ``"NC"`` for vectors,
    ``"N*"`` for other ranks of ONNX tensors) and returns float32 outputs in the same convention, so
    its numbers match the source framework's. Internally images are NHWC. A Model is immutable: methods return new models.

    Parameters
    ----------
    nodes : sequence of Node
        Topologically ordered; each node reads ``"input"`` or earlier nodes.
    input_shape : tuple of int
        Per-sample input shape in ``input_layout`` (``(c, h, w)``, ``(h, w, c)`` or ``(features,)``).
    input_layout : {"NCHW", "NHWC", "NC", "N*"}
    outputs : sequence of str, optional
        Output node names (default: the last node).
    name : str

    Attributes
    ----------
    plan : nncomp.planner.OptimizationPlan or None
        Set on the models :func:`nncomp.optimize` returns (``print(model.plan)``); saved and reloaded
        with the model. Models derived with ``with_nodes`` or a compression method have none.
    """

    def __init__(self, nodes, *, input_shape, input_layout, outputs=None, name="model"):
        self.nodes = tuple(nodes)
        self.name = str(name)
        if input_layout not in LAYOUTS:
            raise NncompError(f"input_layout must be one of {sorted(LAYOUTS)}, got {input_layout!r}")
        self.input_layout = input_layout
        self.input_shape = tuple(int(d) for d in input_shape)
        rank = LAYOUTS[input_layout]
        if (len(self.input_shape) != rank if rank else len(self.input_shape) in (0, 3)) or min(
                self.input_shape, default=0) < 1:
            raise NncompError(f"input_shape {input_shape} does not fit layout {input_layout}")
        if not self.nodes:
            raise NncompError("a model needs at least one node")
        self.outputs = tuple(outputs) if outputs else (self.nodes[-1].name,)
        self._check_graph()
        self._shapes, self._plans, self._cost_memo, self._runners = {}, {}, {}, {}
        # what nc.optimize chose (an OptimizationPlan), saved with the model; a new model has none
        self.plan = None
        self.shapes = self.shapes_for(self.internal_input_shape)
        weights = sum(n.layer.weight.n_out * n.layer.weight.n_in for n in self.nodes if n.layer.weight is not None)
        # a model whose results depend on how the batch is cut (dynamic int8 activations) runs whole
        dependent = any(n.layer.batch_dependent for n in self.nodes)
        self._macs_per_weight = 0 if dependent else self.macs / max(1, weights)

    # ----------------------------------------------------------------- structure
    @property
    def internal_input_shape(self):
        """The per-sample input shape the model was loaded with, in the internal layout."""
        return self.to_internal(self.input_shape)

    def _check_graph(self):
        seen = {INPUT}
        for node in self.nodes:
            if not isinstance(node.layer, Layer):
                raise NncompError(f"node {node.name!r} holds {type(node.layer).__name__}, not a Layer")
            if node.name in seen:
                raise NncompError(f"node name {node.name!r} is used twice (or is the reserved 'input')")
            missing = [s for s in node.inputs if s not in seen]
            if missing:
                raise NncompError(f"node {node.name!r} reads {missing}, which are not earlier nodes; "
                                  "nodes must be in topological order")
            if len(node.inputs) < node.layer.n_inputs or (node.layer.n_inputs == 1 and len(node.inputs) != 1):
                raise NncompError(f"node {node.name!r} ({node.layer.kind}) got {len(node.inputs)} inputs")
            seen.add(node.name)
        for o in self.outputs:
            if o not in seen or o == INPUT:
                raise NncompError(f"output {o!r} is not a node of the model")

    def _infer_shapes(self, shape):
        shapes = {INPUT: shape}
        for node in self.nodes:
            try:
                shapes[node.name] = node.layer.shape_of(*(shapes[s] for s in node.inputs))
            except NncompError as e:
                raise type(e)(f"node {node.name!r} ({node.layer.kind}): {e}") from None
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
        return self._costs(self.internal_input_shape)[1]

    # ----------------------------------------------------------------- forward
    def shapes_for(self, shape):
        """Every node's per-sample output shape (internal layout) for per-sample internal input
        ``shape``; NncompError naming the first node that cannot take it. Remembered per shape."""
        shape = tuple(int(d) for d in shape)
        found = self._shapes.get(shape)
        if found is None:
            found = self._infer_shapes(shape)
            if len(self._shapes) >= PLANS_KEPT:
                self._shapes.pop(next(iter(self._shapes), None), None)
            self._shapes[shape] = found
        return found

    def to_internal(self, shape):
        """A per-sample input shape in the model's layout, in the internal layout (NHWC)."""
        if self.input_layout == "NCHW":
            c, h, w = shape
            return (h, w, c)
        return tuple(shape)

    def check_input(self, x):
        """``x`` as a C-contiguous float32 batch in the model's input layout, or InputError saying
        what shape, rank or dtype was expected and what came.

        Any per-sample size is accepted for which every node's shape rule holds (a convolutional
        network ending in a global pool takes any image large enough; a dense layer after a flatten
        fixes the size), as in the source framework."""
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
        want = f"(batch, {', '.join(map(str, self.input_shape))}) in {self.input_layout} layout"
        if arr.ndim != len(self.input_shape) + 1:
            hint = " (add a batch axis: x[None])" if arr.shape == self.input_shape else ""
            raise InputError(f"expected input of shape {want}, got {arr.shape}{hint}")
        if arr.shape[1:] != self.input_shape:
            if min(arr.shape[1:]) < 1:
                raise InputError(f"expected input of shape {want}, got {arr.shape}: every per-sample "
                                 "dimension must be at least 1")
            try:
                self.shapes_for(self.to_internal(arr.shape[1:]))
            except NncompError as e:
                raise InputError(f"expected input of shape {want} (or another size every layer fits), "
                                 f"got {arr.shape}: {e}") from None
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
            In the model's ``input_layout``; float32 (other real dtypes are converted). Other
            per-sample sizes work where every layer fits them (see :meth:`check_input`).
        check_finite : bool
            Refuse NaN/Inf inputs with InputError. Otherwise they propagate as IEEE arithmetic does.

        Returns
        -------
        ndarray (float32), or a tuple of them for a model with several outputs.
        """
        if type(x) is np.ndarray and not check_finite and x.dtype == _F32 and x.flags.c_contiguous:
            found = self._runners.get(x.shape)      # a shape seen before: checked then
            if found is not None and found[0] == _jit.num_threads():
                return found[1](x)
        x = self.check_input(x)
        if check_finite and not np.isfinite(x).all():
            raise InputError("input holds NaN or Inf values (check_finite=True)")
        return self._caller(x.shape)(x)

    def _caller(self, shape):
        """The call for checked model-layout batches of ``shape``: how it runs (whole, serial or in
        batch parts) decided and its plan built once, then kept per shape and thread count, so a
        call at a known shape costs a dictionary lookup on top of its steps."""
        threads = _jit.num_threads()
        run = self._run_function(shape, self.outputs, self._batch_step(shape), threads)
        to_source = self._to_source_layout

        def call(x):
            outs = run(x)
            return to_source(outs[0]) if len(outs) == 1 else tuple(to_source(y) for y in outs)
        runners = self._runners
        if len(runners) >= PLANS_KEPT:
            runners.pop(next(iter(runners), None), None)
        runners[shape] = (threads, call)
        return call

    def activations(self, x, names, *, batch_size=None):
        """The outputs of nodes ``names`` (``"input"`` allowed) on batch ``x``, from one planned pass.

        Parameters
        ----------
        x : array_like, shape (n_samples, *input_shape)
            In the model's ``input_layout`` (checked as for a call).
        names : sequence of str
            Node names; their values are kept (never fused away or freed) during the pass.
        batch_size : int, optional
            Run the batch in parts of this many samples (bounded memory); default: as a call does.

        Returns
        -------
        dict ``{name: ndarray}`` in the internal layout (images NHWC), float32.
        """
        names = tuple(dict.fromkeys([names] if isinstance(names, str) else names))
        known = {INPUT, *(n.name for n in self.nodes)}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise NncompError(f"activations(): unknown node names {unknown}; nodes: {sorted(known - {INPUT})}")
        if batch_size is not None:
            batch_size = check_number(batch_size, "batch_size", integer=True, low=1, method="activations",
                                      error=InputError)
        x = self.check_input(x)
        run = self._run_function(x.shape, names, batch_size or self._batch_step(x.shape), _jit.num_threads())
        return dict(zip(names, run(x)))

    def _costs(self, shape):
        """``(activation bytes, multiply-adds)`` per sample of internal per-sample input ``shape``."""
        found = self._cost_memo.get(shape)
        if found is None:
            shapes = self.shapes_for(shape)
            macs = sum(n.layer.macs(*(shapes[s] for s in n.inputs)) for n in self.nodes)
            found = self._cost_memo[shape] = (max(1, 4 * sum(math.prod(s) for s in shapes.values())), macs)
        return found

    def _batch_step(self, shape):
        """Samples per part of model-layout ``shape`` batches: activations under MAX_ACTIVATION_BYTES."""
        return max(1, MAX_ACTIVATION_BYTES // self._costs(self.to_internal(shape[1:]))[0])

    def _run_function(self, shape, keep, step, threads):
        """``x -> values of nodes keep`` (internal layout) for checked model-layout batches of
        ``shape``, ``step`` samples a pass, on ``threads`` threads, in the run mode of :meth:`run_mode`
        (nncomp/plan.py)."""
        n, inner = shape[0], self.to_internal(shape[1:])
        if n == 0 or n > step:
            return lambda x: self._forward_parts(x, keep, step)
        mode = self._mode(n, inner, threads)
        if threads < 2:
            plan = self._plan(inner, n, keep)
            return lambda x: plan.run(self._internal(x))
        bounds = batch_parts(n, threads, self._macs_per_weight, self._costs(inner)[1])
        if mode == "measured" and bounds is not None:      # batch parts against parallel kernels
            first = lambda x: run_parts(lambda part: self._forward(part, keep), x, bounds, threads)  # noqa: E731
        elif mode in ("serial", "measured"):               # serial kernels against parallel ones
            one = run_serial(lambda: self._plan(inner, n, keep))
            first = lambda x: run_serial(lambda: one.run(self._internal(x)))  # noqa: E731
            if mode == "serial":
                return first
        plan = self._plan(inner, n, keep)
        parallel = lambda x: run_parallel(plan, self._internal(x))  # noqa: E731
        return MeasuredChoice(first, parallel) if mode == "measured" else parallel

    def run_mode(self, batch, threads=None):
        """How ``batch`` samples run on ``threads`` Numba threads (default: the current count):
        ``"serial"`` (calling thread), ``"parallel"`` or ``"measured"``: serial kernels or batch
        parts (a serial pass each) against parallel kernels, as its last calls ran (nncomp/plan.py)."""
        batch = check_number(batch, "batch", integer=True, low=1, method="run_mode", error=InputError)
        threads = _jit.num_threads() if threads is None else check_number(
            threads, "threads", integer=True, low=1, method="run_mode", error=InputError)
        return self._mode(batch, self.internal_input_shape, threads)

    def _mode(self, n, inner, threads):
        if threads < 2:
            return "serial"
        macs = self._costs(inner)[1]
        if batch_parts(n, threads, self._macs_per_weight, macs) is not None:
            return "measured"
        if n * macs < CHOOSE_BELOW_MACS:
            return "serial" if n * macs < SERIAL_BELOW_MACS or serial_single(n, self.nbytes) else "measured"
        return "parallel"

    def _forward_parts(self, x, keep, step):
        if x.shape[0] == 0:
            shapes = self.shapes_for(self.to_internal(x.shape[1:]))
            return [np.zeros((0,) + shapes[k], np.float32) for k in keep]
        parts = [self._forward(x[i:i + step], keep) for i in range(0, x.shape[0], step)]
        return [np.concatenate(p) for p in zip(*parts)]

    def _internal(self, x):
        """Model-layout batch ``x`` in the internal layout (images NHWC), C-contiguous."""
        return layout.nhwc(x) if self.input_layout == "NCHW" else x

    def _forward(self, x, keep):
        return self._plan(self.to_internal(x.shape[1:]), x.shape[0], keep).run(self._internal(x))

    def _plan(self, shape, n, keep):
        """The :class:`~nncomp.plan.Plan` for batches of ``n`` samples of internal per-sample
        ``shape``, keeping nodes ``keep``; kept per (shape, batch size, thread count, keep)."""
        key = (shape, n, _jit.num_threads(), keep)
        plans = self._plans
        plan = plans.get(key)
        if plan is None:
            plan = Plan(self.nodes, self.shapes_for(shape), n, keep)
            if len(plans) >= PLANS_KEPT:
                plans.pop(next(iter(plans), None), None)    # another thread may have dropped it
            plans[key] = plan
        return plan

    def __getstate__(self):
        # plans hold closures over kernels and are rebuilt on the first call: not pickled
        return {k: v for k, v in self.__dict__.items() if k not in ("_plans", "_runners")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._plans, self._runners = {}, {}

    def _to_source_layout(self, y):
        if y.ndim == 4 and self.input_layout in ("NCHW", "N*"):
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
