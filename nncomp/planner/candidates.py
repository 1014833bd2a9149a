"""The planner's candidates: one weighted layer in one format, built by nncomp's own methods.

Every candidate is the result of a public method (``prune``, ``quantize``, ``share``, ``factorize``,
and for CSR + codebook the steps of ``deep_compression``: prune, share the survivors, refit the
centroids to the dense model with ``sharing.refit_model``) called on a one-layer selection
(``layers=[name]`` or a one-key dict) with the fitting part of the calibration data, so it carries
that method's calibration refit. What the model
with that one layer changed holds in place of the layer (one node, or two for a factorized layer) is
the candidate's *patch*; :func:`compose` puts the patches of several layers into one model.
"""
from dataclasses import dataclass, field

from ..errors import CompressionParameterError
from ..layers import Conv2D, Dense

__all__ = ["METHODS", "GRID", "Candidate", "candidates_for", "build_model", "build_patch", "build_proxy", "compose",
           "describe_patch", "size_delta", "weighted_layers"]

# Method names ``optimize(methods=...)`` accepts, each with the settings tried (module constants: the
# benchmark uses them as they are, the tests patch in a smaller grid). Not in the grid yet: filter
# pruning (``prune_filters`` changes the next layer too, which the one-layer patches do not model).
METHODS = ("prune", "prune_int8", "quantize", "share", "prune_share", "factorize")
GRID = {
    "prune": (0.8, 0.9, 0.95),                 # sparsity, CSR storage
    "prune_int8": (0.8, 0.9, 0.95),            # sparsity, then int8 (dynamic activations) on the CSR
    "quantize": ("weights", "dynamic", "static"),
    "share": (4, 5, 8),                        # codebook bits
    "prune_share": ((0.9, 5), (0.95, 4), (0.95, 5)),  # (sparsity, bits): Deep Compression on one layer
    "factorize": (2.0, 4.0),                   # multiply-add reduction of the layer (SVD / Jaderberg)
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
        for s in GRID[m]:
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
    raise CompressionParameterError(f"optimize(): unknown candidate method {cand.method!r}; "
                                    f"expected one of {METHODS}")


def build_proxy(model, cand, x_fit, seed=0, memo=None, samples=32):
    """The patch of ``cand`` in its formats, built without refits (data-free; static int8 takes its
    activation ranges from ``samples`` samples of ``x_fit``): what its latency is measured on."""
    static = cand.method == "quantize" and cand.settings["mode"] == "static"
    return build_patch(model, cand, x_fit[:samples] if static else None, seed, memo)


def build_patch(model, cand, x_fit, seed=0, memo=None):
    """The nodes that replace ``cand.layer`` (``None`` if the method refuses this layer)."""
    try:
        changed = build_model(model, cand, x_fit, seed, memo)
    except CompressionParameterError:
        return None        # e.g. a rank that cannot shrink a 10-output layer, a 1-channel conv pair
    old = {n.name for n in model.nodes}
    return tuple(n for n in changed.nodes if n.name == cand.layer or n.name not in old)


def compose(model, patches):
    """``model`` with each ``{layer name: patch nodes}`` in place of that layer (``None``: unchanged)."""
    nodes = []
    for node in model.nodes:
        patch = patches.get(node.name)
        nodes.extend(patch if patch is not None else (node,))
    return model.with_nodes(nodes)


def size_delta(model, patches, dense_bytes):
    """Bytes the file ``nc.save(..., huffman=True)`` writes gains (negative: loses) when ``model``
    takes ``patches`` (as :func:`compose`), against ``dense_bytes`` (``model``'s own file); counted in
    memory (:func:`nncomp.io.native.file_bytes`)."""
    from ..io.native import file_bytes
    return file_bytes(compose(model, patches), huffman=True) - int(dense_bytes)


def describe_patch(patch):
    """The weight format(s) of a patch's nodes, e.g. ``"csr(10.0%)"``, ``"dense -> dense"``."""
    return " -> ".join(n.layer.describe() for n in patch)
