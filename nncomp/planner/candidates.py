"""The planner's candidates: one weighted layer in one format, built by nncomp's own methods.

Every candidate is the result of a public method (``prune``, ``quantize``, ``share``, ``factorize``,
and for CSR + codebook the steps of ``deep_compression``: prune, share the survivors, refit the
centroids to the dense model with ``sharing.refit_model``) called on a one-layer selection
(``layers=[name]`` or a one-key dict) with the fitting part of the calibration data, so it carries
that method's calibration refit. What the model
with that one layer changed holds in place of the layer (one node, or two for a factorized layer) is
the candidate's *patch*; :func:`compose` puts the patches of several layers into one model.

Filter pruning (``prune_filters``) is the one candidate that changes more than its layer: removing
a producer's filters removes the matching input channels of every layer that reads them (and of the
BatchNorm and depthwise layers between), and channels joined by an Add go together. Its candidates
belong to a *channel group* (key ``"filters:<first producer>"``, :func:`group_candidates`), and its
patch is every node whose layer it changed. A weighted layer in that patch cannot also take one of
its own candidates (those were built on its original shape): :func:`exclusive` lists the pairs the
search keeps apart. Two groups may both be pruned: the planner then builds them in one
``prune_filters`` call (:func:`structured`), whose refit sees both.
"""
from dataclasses import dataclass, field

from ..errors import CompressionParameterError
from ..layers import Conv2D, Dense
from .report import LayerChoice

__all__ = ["METHODS", "GRID", "GROUP", "Candidate", "candidates_for", "group_candidates", "build_model",
           "build_patch", "build_proxy", "changed_nodes", "compose", "exclusive", "structured", "touched",
           "describe_patch", "layer_choice", "size_delta", "weighted_layers"]

# Method names ``optimize(methods=...)`` accepts, each with the settings tried (module constants: the
# benchmark uses them as they are, the tests patch in a smaller grid).
METHODS = ("prune", "prune_int8", "quantize", "share", "prune_share", "factorize", "prune_filters")
GROUP = "filters:"     # key prefix of a channel group's candidates
GRID = {
    "prune": (0.8, 0.9, 0.95),                 # sparsity, CSR storage
    "prune_int8": (0.8, 0.9, 0.95),            # sparsity, then int8 (dynamic activations) on the CSR
    "quantize": ("weights", "dynamic", "static"),
    "share": (4, 5, 8),                        # codebook bits
    "prune_share": ((0.9, 5), (0.95, 4), (0.95, 5)),  # (sparsity, bits): Deep Compression on one layer
    "factorize": (2.0, 4.0),                   # multiply-add reduction of the layer (SVD / Jaderberg)
    "prune_filters": (0.25, 0.5),              # fraction of a channel group's filters removed
}


@dataclass(frozen=True)
class Candidate:
    """One layer's candidate: the method that builds it and its keywords."""

    layer: str
    label: str
    method: str
    settings: dict = field(default_factory=dict, hash=False, compare=False)


def weighted_layers(model):
    """Names of the nodes the planner chooses formats for: Dense and ungrouped Conv2D, dense weights."""
    from ..matrices import DenseMatrix
    return [n.name for n in model.nodes if isinstance(n.layer, (Dense, Conv2D))
            and isinstance(n.layer.weight, DenseMatrix) and getattr(n.layer, "groups", 1) == 1]


def candidates_for(name, methods):
    """Candidates for layer ``name`` from the method names ``methods`` (dense first, always)."""
    out = [Candidate(name, "dense", "dense")]
    for m in methods:
        for s in GRID[m] if m != "prune_filters" else ():
            if m == "prune":
                out.append(Candidate(name, f"csr{round(100 * s)}", m, {"sparsity": s}))
            elif m == "prune_int8":
                out.append(Candidate(name, f"csr{round(100 * s)}+int8", m, {"sparsity": s}))
            elif m == "quantize":
                out.append(Candidate(name, f"int8-{s}", m, {"mode": s}))
            elif m == "share":
                out.append(Candidate(name, f"codebook{s}", m, {"bits": s}))
            elif m == "prune_share":
                out.append(Candidate(name, f"csr{round(100 * s[0])}+codebook{s[1]}", m,
                                     {"sparsity": s[0], "bits": s[1]}))
            else:
                out.append(Candidate(name, f"lowrank/{s:g}", m, {"speedup": s}))
    return out


def group_candidates(model, methods):
    """``{group key: [dense, filter-pruning candidates]}`` of the channel groups ``prune_filters`` can
    prune (none unless ``methods`` names it); the key is ``GROUP`` + the group's first producer."""
    from ..compress.pruning_channels import channel_groups
    if "prune_filters" not in methods:
        return {}
    groups, _ = channel_groups(model)
    names = {n.name for n in model.nodes}
    out = {}
    for g in groups.values():
        key = GROUP + g["producers"][0]
        if g["frozen"] or key in names:
            continue
        out[key] = [Candidate(key, "dense", "dense")] + [
            Candidate(key, f"filters{round(100 * r)}", "prune_filters", {"ratio": r, "layer": g["producers"][0]})
            for r in GRID["prune_filters"]]
    return out


def structured(model, cands, x_fit, seed=0):
    """``model`` with the filter pruning of every candidate in ``cands`` applied in one ``prune_filters``
    call (its refit on ``x_fit`` sees all of them)."""
    from ..compress.pruning import prune_filters
    return prune_filters(model, {c.settings["layer"]: c.settings["ratio"] for c in cands}, calibration=x_fit,
                         seed=seed)


def touched(entries):
    """Names of the nodes any option's patch changes; ``entries`` ``[(candidate, patch, ...)]``, dense first."""
    return {p.name for _, patch, *_ in entries[1:] if patch for p in patch}


def changed_nodes(model, changed):
    """The nodes of ``changed`` (a model derived from ``model``) whose layer is not ``model``'s own."""
    old = {n.name: n.layer for n in model.nodes}
    return tuple(n for n in changed.nodes if old.get(n.name) is not n.layer)


def exclusive(model, table):
    """Pairs ``(group key, layer)`` whose non-dense options cannot be combined: the layer is in one of
    the group's patches (its shape changes). ``table`` is ``{key: [(candidate, patch, ...)]}``; a key
    that names no node of ``model`` is a channel group's."""
    own = {n.name for n in model.nodes}
    out = []
    for key, entries in table.items():
        if key not in own:
            changed = touched(entries)
            out += [(key, n) for n in table if n in changed]
    return out


def build_model(model, cand, x_fit, seed=0, memo=None):
    """``model`` with only ``cand.layer`` changed, by the candidate's method (with refits on ``x_fit``;
    data-free if it is None).

    ``memo`` (a dict kept over one layer's candidates) shares the pruned models between the CSR,
    CSR + int8 and CSR + codebook candidates of the same sparsity.
    """
    from ..compress.lowrank import factorize
    from ..compress.pruning import prune
    from ..compress.quantization import quantize
    from ..compress.pipeline import share_pruned
    from ..compress.sharing import share
    name, s = cand.layer, cand.settings
    memo = {} if memo is None else memo

    def pruned():
        key = (name, s["sparsity"])
        if key not in memo:
            memo[key] = prune(model, {name: s["sparsity"]}, calibration=x_fit, storage="csr", seed=seed)
        return memo[key]

    if cand.method == "dense":
        return model
    if cand.method == "prune":
        return pruned()
    if cand.method == "prune_int8":
        return quantize(pruned(), layers=[name], activations="dynamic", calibration=x_fit, seed=seed)
    if cand.method == "quantize":
        mode = s["mode"]
        return quantize(model, layers=[name], weights_only=mode == "weights",
                        activations="static" if mode == "static" else "dynamic", calibration=x_fit, seed=seed)
    if cand.method == "share":
        return share(model, s["bits"], layers=[name], calibration=x_fit, seed=seed)
    if cand.method == "prune_share":    # nc.deep_compression on one layer, its pruning shared (pipeline.py)
        return share_pruned(model, pruned(), s["bits"], [name], calibration=x_fit, seed=seed)
    if cand.method == "factorize":
        return factorize(model, speedup={name: s["speedup"]}, calibration=x_fit, seed=seed)
    if cand.method == "prune_filters":
        return structured(model, [cand], x_fit, seed)
    raise CompressionParameterError(f"optimize(): unknown candidate method {cand.method!r}; "
                                    f"expected one of {METHODS}")


def build_proxy(model, cand, x_fit, seed=0, memo=None, samples=32):
    """The patch of ``cand`` in its formats, built without refits (data-free; static int8 takes its
    activation ranges from ``samples`` samples of ``x_fit``): what its latency is measured on."""
    static = cand.method == "quantize" and cand.settings["mode"] == "static"
    return build_patch(model, cand, x_fit[:samples] if static else None, seed, memo)


def build_patch(model, cand, x_fit, seed=0, memo=None):
    """The nodes that replace ``cand.layer`` (``None`` if the method refuses this layer); for a
    channel group, every node whose layer filter pruning changed."""
    try:
        changed = build_model(model, cand, x_fit, seed, memo)
    except CompressionParameterError:
        return None        # e.g. a rank that cannot shrink a 10-output layer, a 1-channel conv pair
    if cand.method == "prune_filters":
        return changed_nodes(model, changed) or None
    old = {n.name for n in model.nodes}
    return tuple(n for n in changed.nodes if n.name == cand.layer or n.name not in old)


def compose(model, patches):
    """``model`` with each ``{key: patch nodes}`` applied (``None``: unchanged). A key that names a
    node is replaced by its patch (one node, or two for a factorized layer); a channel group's patch
    replaces the nodes of the same names. Two patches may not change the same node."""
    nodes, named, own = [], {}, {n.name for n in model.nodes}
    for key, patch in patches.items():
        if patch is not None and key not in own:
            for p in patch:
                if p.name in named or p.name in patches and patches[p.name] is not None:
                    raise CompressionParameterError(f"optimize(): two candidates change node {p.name!r}; expected "
                                                    "at most one per node (build filter pruning jointly)")
                named[p.name] = p
    for node in model.nodes:
        patch = patches.get(node.name)
        nodes.extend(patch if patch is not None else (named.get(node.name, node),))
    return model.with_nodes(nodes)


def size_delta(model, patches, dense_bytes):
    """Bytes the file ``nc.save(..., huffman=True)`` writes gains (negative: loses) when ``model``
    takes ``patches`` (as :func:`compose`), against ``dense_bytes`` (``model``'s own file); counted in
    memory (:func:`nncomp.io.native.file_bytes`)."""
    from ..io.native import file_bytes
    return file_bytes(compose(model, patches), huffman=True) - int(dense_bytes)


def describe_patch(patch, group=False):
    """The weight format(s) of a patch's nodes, e.g. ``"csr(10.0%)"``, ``"dense -> dense"``; of a
    channel group's patch (``group``), the weighted layers' new shapes, e.g. ``"conv2 16x144, fc 10x16"``."""
    if group:
        return ", ".join(f"{n.name} {n.layer.weight.shape[0]}x{n.layer.weight.shape[1]}" for n in patch
                         if getattr(n.layer, "weight", None) is not None)
    return " -> ".join(n.layer.describe() for n in patch)


def layer_choice(name, entry, delta_ms, delta_bytes, group=False):
    """The plan's :class:`~nncomp.planner.report.LayerChoice` of a table ``entry`` (candidate, patch, drop)."""
    cand, patch, drop = entry
    return LayerChoice(layer=name, candidate=cand.label, method=cand.method, settings=dict(cand.settings),
                       format=describe_patch(patch, group) if patch else "dense", delta_ms=float(delta_ms),
                       delta_bytes=int(delta_bytes), drop=float(drop))
