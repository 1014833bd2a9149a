"""Forward plans: a model's graph prepared once for one input shape, batch size and thread count.

Building a plan (22-116 us for the shipped models) does what a run must not repeat: it infers every
node's shape for this input, lets each producer absorb its only reader where it can
(:meth:`nncomp.layers.Layer.fuse`: epilogues such as ReLU, batch norm or a residual add written by
the producing step, a max-pool computed inside its convolution's kernel), asks every remaining
layer for its prepared step (:meth:`~nncomp.layers.Layer.prepare`: algorithm, blocking, serial or
parallel kernels), and decides which values can be dropped as soon as their last reader ran.
A run then only calls the steps, inside one OpenBLAS-at-one-thread scope.
"""
from dataclasses import dataclass

from .kernels import blas

INPUT = "input"


@dataclass
class _Group:
    """One step of a plan: the node whose output it writes, its (possibly fused) layer, its inputs."""

    name: str
    layer: object
    inputs: tuple


def fuse_graph(nodes, shapes, n, keep):
    """The nodes as steps after fusion: each producer whose output only one node reads, and that is
    not a kept value, offers that reader to its layer's ``fuse``; a fused step takes the reader's
    place (so every input it reads has been computed) and reads the producer's inputs first.
    Nodes that no kept value depends on are left out."""
    needed = set(keep)
    for node in reversed(nodes):
        if node.name in needed:
            needed.update(node.inputs)
    nodes = [node for node in nodes if node.name in needed]
    readers = {}
    for node in nodes:
        for src in node.inputs:
            readers.setdefault(src, []).append(node.name)
    groups = {node.name: _Group(node.name, node.layer, tuple(node.inputs)) for node in nodes}
    order = [node.name for node in nodes]
    gone = set()
    for name in order:
        group = groups[name]
        while name not in keep and len(readers.get(name, ())) == 1:
            target = groups[readers[name][0]]
            layer = target.layer
            # the reader's inputs: exactly as many as its layer declares, this producer's once and
            # first (an epilogue reads the others in order) unless the layer is commutative
            if (len(target.inputs) != layer.n_inputs or list(target.inputs).count(name) != 1
                    or (target.inputs[0] != name and not layer.commutative)):
                break
            fused = group.layer.fuse(layer, n, *(shapes[s] for s in group.inputs))
            if fused is None:
                break
            others = tuple(s for s in target.inputs if s != name)
            groups[target.name] = _Group(target.name, fused, group.inputs + others)
            gone.add(name)
            break
    return [groups[name] for name in order if name not in gone]


class Plan:
    """Prepared steps for batches of ``n`` internal-layout inputs of per-sample ``shapes[INPUT]``.

    Parameters
    ----------
    nodes : sequence of Node
    shapes : dict
        Per-sample output shape of every node (and of ``"input"``) for this input.
    n : int
        Batch size.
    keep : sequence of str
        Nodes whose values the run returns, in this order (outputs, or requested activations).
    """

    def __init__(self, nodes, shapes, n, keep):
        keep = tuple(keep)
        groups = fuse_graph(nodes, shapes, n, set(keep))
        slot = {INPUT: 0}
        for i, g in enumerate(groups):
            slot[g.name] = i + 1
        last = {}
        for i, g in enumerate(groups):
            for src in g.inputs:
                last[src] = i
        kept = set(keep)
        self.steps = tuple(
            (g.layer.prepare(n, *(shapes[s] for s in g.inputs)), tuple(slot[s] for s in g.inputs),
             tuple(slot[s] for s in set(g.inputs) if last[s] == i and s not in kept))
            for i, g in enumerate(groups))
        self.kept = tuple(slot[k] for k in keep)
        self.layers = tuple((g.name, g.layer) for g in groups)

    def run(self, x):
        """The kept values for the internal-layout batch ``x``."""
        values = [x]
        with blas.ONE_THREAD:
            for step, ins, frees in self.steps:
                values.append(step(*[values[i] for i in ins]))
                for i in frees:
                    values[i] = None
        return [values[i] for i in self.kept]
