"""Whole-model candidates for ``objective="size"``: Deep Compression's global allocations, built jointly.

A one-layer candidate (:mod:`.candidates`) is pruned and refit with every other layer dense; put
together, the layers' errors add up, and each layer was refit on inputs that the compressed layers
before it no longer produce. Deep Compression instead prunes with one magnitude threshold over all
layers (large layers harder, small ones less) and refits the survivors, then the shared centroids,
layer by layer on the compressed model's own activations (:func:`nncomp.deep_compression`). For
the size objective the planner therefore also builds these whole models: one
``deep_compression(model, sparsity=s, bits=b, calibration=...)`` per ``s`` in :data:`SPARSITIES`
and ``b`` in :data:`BITS` (codebooks on the CSR survivors, Huffman-coded at save), each refit on up
to :data:`FIT` samples of the fitting part, as independent jobs. Each is scored on the search part
and its saved file (``nc.save(..., huffman=True)``) measured; then, smallest file first, the first
allocation within the budget on the search part is verified on the held-out part, and the next one
tried while it fails (at most :data:`TRIES`). The planner returns the smaller verified file of this
and of the per-layer search.
"""
from dataclasses import dataclass, field

from .candidates import compose, describe_patch
from .jobs import run_jobs, score
from .report import LayerChoice

__all__ = ["SPARSITIES", "BITS", "FIT", "TRIES", "Allocation", "build_allocations", "choose_allocation",
           "layer_choices"]

SPARSITIES = (0.8, 0.85, 0.88, 0.9, 0.92, 0.94)   # global fraction of the weights removed
BITS = (4, 5)                                      # codebook bits on the CSR survivors
FIT = 2048        # refit samples (the per-layer candidates use jobs.MAX_FIT): more refit data, lower drops
TRIES = 6         # allocations verified on the held-out part before giving up


@dataclass(frozen=True)
class Allocation:
    """One whole-model candidate: ``deep_compression`` at global ``sparsity`` with ``bits``-bit codes."""

    sparsity: float
    bits: int
    file_bytes: int
    drop: float                     # points lost on the search part
    model: object = field(repr=False, compare=False)

    @property
    def label(self):
        return f"global{round(100 * self.sparsity)}+codebook{self.bits}"


def _build(model, names, sparsity, bits, x_fit, x_search, ref_search, base_search, seed):
    """One job: the allocation built, its file measured, scored."""
    from ..bench.sizes import saved_size
    from ..compress.pipeline import deep_compression
    from ..errors import CompressionParameterError
    try:
        out = deep_compression(model, sparsity=sparsity, bits=bits, calibration=x_fit, layers=names, seed=seed)
    except CompressionParameterError:
        return None      # e.g. a threshold that would empty a layer
    return Allocation(sparsity, bits, saved_size(out, huffman=True).file_bytes,
                      100.0 * (base_search - score(out, x_search, ref_search)), out)


def build_allocations(model, names, x_fit, x_search, ref_search, base_search, seed, n_jobs=None):
    """Every allocation of :data:`SPARSITIES` x :data:`BITS` that the methods accept, built and scored."""
    jobs = [(_build, (model, names, s, b, x_fit, x_search, ref_search, base_search, seed))
            for s in SPARSITIES for b in BITS]
    return [a for a in run_jobs(jobs, n_jobs) if a is not None]


def choose_allocation(allocations, budget, holds, below=None):
    """``(allocation or None, labels of those verified and refused)``: smallest file first, the first
    within ``budget`` on the search part (and smaller than ``below`` bytes) for which ``holds(model)``
    (the held-out check) is true; at most :data:`TRIES` verified."""
    refused = []
    for a in sorted(allocations, key=lambda a: (a.file_bytes, a.drop)):
        if a.drop > budget + 1e-9 or (below is not None and a.file_bytes >= below):
            continue
        if holds(a.model):
            return a, refused
        refused.append(a.label)
        if len(refused) == TRIES:
            break
    return None, refused


def layer_choices(model, alloc, names, x_search, ref_search, base_search, dense_bytes):
    """The ``LayerChoice`` of each layer of an allocation: its format as the joint build left it, and its
    effect alone (that layer's nodes in the original model: file bytes, points lost on the search part)."""
    from ..bench.sizes import saved_size
    out = []
    for n in names:
        patch = (alloc.model[n],)
        alone = compose(model, {n: patch})
        delta = saved_size(alone, huffman=True).file_bytes - dense_bytes
        w = patch[0].layer.weight
        kept = getattr(w, "nnz", None)
        label = (f"csr{round(100 * (1 - kept / (w.shape[0] * w.shape[1])))}+codebook{alloc.bits}" if kept is not None
                 else f"codebook{alloc.bits}")
        out.append(LayerChoice(layer=n, candidate=label, method="deep_compression",
                               settings={"sparsity": alloc.sparsity, "scope": "global", "bits": alloc.bits},
                               format=describe_patch(patch), delta_ms=0.0, delta_bytes=int(delta),
                               drop=float(100.0 * (base_search - score(alone, x_search, ref_search)))))
    return tuple(out)
