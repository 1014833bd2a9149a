"""Whole-model candidates for ``objective="size"``: Deep Compression's global allocations, built jointly.

A one-layer candidate (:mod:`.candidates`) is pruned and refit with every other layer dense; put
together, the layers' errors add up, and each layer was refit on inputs that the compressed layers
before it no longer produce. Deep Compression instead prunes with one magnitude threshold over all
layers (large layers harder, small ones less) and refits the survivors, then the shared centroids,
layer by layer on the compressed model's own activations (:func:`nncomp.deep_compression`). For
the size objective the planner therefore also builds these whole models: one
``deep_compression(model, sparsity=s, bits=b, calibration=...)`` per ``s`` in :data:`SPARSITIES`
and ``b`` in :data:`BITS` (codebooks on the CSR survivors, Huffman-coded at save), and the same with
the layers that hold most of the kept weights (:func:`big_layers`) one bit lower, since their codes
are most of the file (LeNet-300-100 at 90%: fc1 holds 79% of the survivors; with the rounding errors
spread over the other weights, :func:`nncomp.compress.codes.assign_codes`, fc1 at 2 bits and the
others at 4 made a 42x file at 0.964 test accuracy, 3 bits everywhere 40x at 0.965); each refit on
up to :data:`FIT` samples of the fitting part; one pruning (the costly refit) serves every code width
of its ``s``. Each is scored on the search part and its file's bytes counted (in memory,
:func:`nncomp.io.native.file_bytes`).

:func:`search` goes from the highest sparsity down, one sparsity (one job) at a time, or all at once
as parallel jobs when ``n_jobs`` asks for them: within what is built, smallest file first, the first
allocation within the budget on the search part is verified on the held-out part, the next one of
another sparsity tried while it fails (at most :data:`TRIES`; :func:`choose_allocation`). It stops at
the first verified one, or when a sparsity's files
are all no smaller than ``below``: a lower sparsity keeps more weights, and its file is larger (in
every allocation table measured, each step of the grid down added bytes at either code width, and a
5-bit file at one step was smaller than the 4-bit file one step down).
"""
from dataclasses import dataclass, field

from .candidates import compose, describe_patch, size_delta
from .jobs import run_jobs, score
from .report import LayerChoice

__all__ = ["SPARSITIES", "BITS", "BIG", "FIT", "TRIES", "Allocation", "big_layers", "build_level", "search",
           "choose_allocation", "layer_choices"]

SPARSITIES = (0.8, 0.85, 0.88, 0.9, 0.92, 0.94)   # global fraction of the weights removed
BITS = (3, 4, 5)                                   # codebook bits on the CSR survivors
BIG = 0.5         # big_layers: the largest layers that together hold at least this share of the kept weights
FIT = 2048        # refit samples (the per-layer candidates use jobs.MAX_FIT): more refit data, lower drops
TRIES = 6         # allocations verified on the held-out part before giving up


@dataclass(frozen=True)
class Allocation:
    """One whole-model candidate: ``deep_compression`` at global ``sparsity`` with ``bits``-bit codes
    (the layers ``lower``: ``bits - 1``)."""

    sparsity: float
    bits: int
    file_bytes: int
    drop: float                     # points lost on the search part
    model: object = field(repr=False, compare=False)
    lower: tuple = ()

    @property
    def label(self):
        low = f" ({', '.join(self.lower)} at {self.bits - 1})" if self.lower else ""
        return f"global{round(100 * self.sparsity)}+codebook{self.bits}{low}"

    def bits_of(self, name):
        return self.bits - 1 if name in self.lower else self.bits


def big_layers(pruned, names):
    """The fewest layers, largest first, that hold at least :data:`BIG` of the weights kept in ``pruned``."""
    kept = sorted(((int(pruned[n].layer.weight.nnz), n) for n in names), reverse=True)
    total, out, at = sum(k for k, _ in kept), [], 0
    for k, n in kept:
        if at >= BIG * total:
            break
        out.append(n)
        at += k
    return tuple(sorted(out, key=names.index))


def build_level(model, names, sparsity, x_fit, searched, seed):
    """One job: the allocations of one ``sparsity``, one per code width of :data:`BITS`, from one
    pruning; each is what ``deep_compression(model, sparsity=sparsity, bits=b, calibration=x_fit,
    layers=names, seed=seed)`` returns, its file bytes counted and scored on ``searched`` =
    ``(x, reference labels, base score)``. A setting the methods refuse is left out."""
    from ..compress.pipeline import share_pruned
    from ..compress.pruning import prune
    from ..errors import CompressionParameterError
    from ..io.native import file_bytes
    x_search, ref_search, base_search = searched
    try:
        pruned = prune(model, sparsity=sparsity, scope="global", layers=names, calibration=x_fit, storage="csr",
                       seed=int(seed))
    except CompressionParameterError:
        return []        # e.g. a threshold that would empty a layer
    out = []
    big = big_layers(pruned, names)
    for b in BITS:
        for lower in ((), big) if b > 2 and len(big) < len(names) else ((),):
            try:
                m = share_pruned(model, pruned, {n: b - (n in lower) for n in names}, names, calibration=x_fit,
                                 seed=seed)
            except CompressionParameterError:
                continue
            out.append(Allocation(sparsity, b, file_bytes(m, huffman=True),
                                  100.0 * (base_search - score(m, x_search, ref_search)), m, lower))
    return out


def search(model, names, x_fit, searched, seed, n_jobs, budget, holds, below):
    """``(allocation or None, every allocation built, labels of those verified and refused)``: see
    the module notes. ``holds(model)`` is the held-out check; only files under ``below`` bytes count."""
    levels = sorted(SPARSITIES, reverse=True)
    step = 1 if n_jobs in (None, 1) else len(levels)
    built, refused = [], []
    for k in range(0, len(levels), step):
        jobs = [(build_level, (model, names, s, x_fit, searched, seed)) for s in levels[k:k + step]]
        new = [a for level in run_jobs(jobs, n_jobs) for a in level]
        built += new
        won, more = choose_allocation(new, budget, holds, below, TRIES - len(refused))
        refused += more
        if won is not None or len(refused) >= TRIES or new and min(a.file_bytes for a in new) >= below:
            return won, built, refused
    return None, built, refused


def choose_allocation(allocations, budget, holds, below=None, tries=TRIES):
    """``(allocation or None, labels of those verified and refused)``: smallest file first, the first
    within ``budget`` on the search part (and smaller than ``below`` bytes) for which ``holds(model)``
    (the held-out check) is true; at most ``tries`` verified, and one per sparsity: the allocations of
    one sparsity share its pruning, and their drops differ little, so verifying another after one
    failed would mostly draw the held-out part's noise again until one passes by chance (LeNet-300-100,
    one split: the third allocation verified at 92% passed with 0.5 points held out and lost 1.2 on the
    test digits)."""
    refused, failed = [], set()
    for a in sorted(allocations, key=lambda a: (a.file_bytes, a.drop)):
        if len(refused) >= tries:
            break
        if a.drop > budget + 1e-9 or (below is not None and a.file_bytes >= below) or a.sparsity in failed:
            continue
        if holds(a.model):
            return a, refused
        refused.append(a.label)
        failed.add(a.sparsity)
    return None, refused


def layer_choices(model, alloc, names, x_search, ref_search, base_search, dense_bytes):
    """The ``LayerChoice`` of each layer of an allocation: its format as the joint build left it, and its
    effect alone (that layer's nodes in the original model: file bytes, points lost on the search part)."""
    out = []
    for n in names:
        patch = (alloc.model[n],)
        alone = compose(model, {n: patch})
        w = patch[0].layer.weight
        kept = getattr(w, "nnz", None)
        b = alloc.bits_of(n)
        label = (f"csr{round(100 * (1 - kept / (w.shape[0] * w.shape[1])))}+codebook{b}" if kept is not None
                 else f"codebook{b}")
        out.append(LayerChoice(layer=n, candidate=label, method="deep_compression",
                               settings={"sparsity": alloc.sparsity, "scope": "global", "bits": b},
                               format=describe_patch(patch), delta_ms=0.0,
                               delta_bytes=size_delta(model, {n: patch}, dense_bytes),
                               drop=float(100.0 * (base_search - score(alone, x_search, ref_search)))))
    return tuple(out)
