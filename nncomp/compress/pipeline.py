"""The Deep Compression pipeline (Han et al., 2016): prune, share, Huffman-code, in one call.

Recipe (what :func:`deep_compression` runs, step by step, so that each stage can be inspected)::

    import nncomp as nc
    from nncomp.compress.sharing import refit_model
    model = nc.load(nc.data.model_path("lenet300"))
    calib, _ = nc.data.mnist("train", layout="NC")      # training digits only
    names = ["fc1", "fc2", "fc3"]
    pruned = nc.prune(model, sparsity=0.92, scope="global", layers=names, calibration=calib, storage="csr")
    shared = nc.share(pruned, {"conv": 8, "dense": 5}, layers=names, sparse=True)   # survivors only
    small = refit_model(model, shared, calib, names)    # centroids + biases -> the dense outputs
    # small is nc.deep_compression(model, sparsity=0.92, calibration=calib)
    print(nc.size_report(small))                        # bytes per stage and layer (40x here)
    nc.save(small, "lenet300-dc.h5", huffman=True)      # Huffman-coded codes and relative indices
    nc.load("lenet300-dc.h5")                           # decoded at load, identical logits

Deep Compression retrains after pruning and fine-tunes the shared centroids; nncomp is
forward-only and replaces both by least-squares refits on calibration data: pruning refits the
surviving weights (nncomp.compress.pruning), sharing refits the centroids and biases so that each
layer reproduces the *dense* model's layer outputs (nncomp.compress.sharing).
"""

from ..checks import check_seed
from ..errors import CompressionParameterError
from .calibration import check_calibration, check_model, select_layers
from .sharing import INITS, shareable, bits_for, refit_model, share

DEFAULT_BITS = {"conv": 8, "dense": 5}


def deep_compression(model, *, sparsity=0.92, scope="global", bits=None, calibration=None, init="linear",
                     layers=None, seed=0):
    """Prune, then share the surviving weights through per-layer k-means codebooks.

    Save the result with ``nc.save(result, path, huffman=True)`` to Huffman-code the codes and
    relative indices; :func:`nncomp.size_report` shows the bytes after each stage.

    Parameters
    ----------
    model : Model
    sparsity : float or dict {layer: float}
        Fraction of weights removed (``nc.prune``); a dict gives per-layer values (Deep Compression
        pruned LeNet-300-100 to 8% / 9% / 26% of the weights of its three layers).
    scope : {"global", "layer"}
        With a float ``sparsity``: one magnitude threshold over all selected layers (default; it
        prunes large layers harder and small ones less, close to Deep Compression's per-layer
        choices: LeNet-5 at 92% keeps 77% / 17% / 7% / 20% of its four layers' weights) or the same
        fraction in every layer.
    bits : int or dict, optional
        Code width per layer, 1..8 (``nc.share``); default ``{"conv": 8, "dense": 5}`` as in the paper.
    calibration : ndarray, optional
        Inputs in the model's layout (training data): refits the pruned weights and then the
        centroids and biases, layer by layer, to the dense model's outputs.
    init : {"linear", "density", "random"}
        k-means initialisation.
    layers : list of str, optional
        Layers to compress (default: every Dense and non-grouped Conv2D). Ignored for pruning when
        ``sparsity`` is a dict (its keys choose the layers).
    seed : int

    Returns
    -------
    Model
        Pruned layers become CSR codebook matrices (``CSRCodebookMatrix``), unpruned ones dense codebooks.
    """
    from .pruning import prune

    check_model(model, "deep_compression")
    if init not in INITS:
        raise CompressionParameterError(f"deep_compression(): init must be one of {INITS}, got {init!r}")
    check_seed(seed, method="deep_compression")
    x = check_calibration(calibration, model, "deep_compression")
    names = list(sparsity) if isinstance(sparsity, dict) else select_layers(
        model, layers, "deep_compression", accept=shareable)
    per_layer = bits_for(DEFAULT_BITS if bits is None else bits, model, names, "deep_compression")
    pruned = prune(model, sparsity=sparsity, layers=None if isinstance(sparsity, dict) else names,
                   scope="layer" if isinstance(sparsity, dict) else scope, calibration=x, storage="csr",
                   seed=int(seed))
    return share_pruned(model, pruned, per_layer, names, calibration=x, init=init, seed=seed)


def share_pruned(model, pruned, bits, names, *, calibration=None, init="linear", seed=0):
    """Deep Compression's second stage: the layers ``names`` of ``pruned`` (``model`` pruned to CSR)
    shared through k-means codebooks of ``bits`` (as ``nc.share`` takes it) on their survivors; with
    ``calibration`` (checked inputs), the centroids and biases then refit layer by layer to ``model``'s
    outputs. :func:`deep_compression` is ``prune`` then this; the planner shares one pruned model
    between several code widths this way."""
    shared = share(pruned, bits, init=init, layers=names, seed=int(seed), sparse=True)
    return shared if calibration is None else refit_model(model, shared, calibration, names, seed=int(seed),
                                                         weights=pruned)
