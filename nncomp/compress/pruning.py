"""Pruning without retraining: unstructured magnitude pruning into sparse kernels, and structured
filter pruning into a smaller dense model (the channel-space graph analysis and the layer surgery
are in :mod:`pruning_channels`); optional layer-wise least-squares calibration.

Policies (tested in tests/test_pruning.py):

- **Exact counts.** ``sparsity=s`` removes exactly ``round(s * n)`` weights of a layer (of all
  selected layers with ``scope="global"``): the smallest magnitudes, chosen with ``argpartition``, so
  ties at the threshold are split to hit the count. Weights that are already zero count among the
  smallest. Biases and BatchNorm parameters are never pruned.
- **Default scope**: one float ``sparsity`` is one global magnitude threshold (docs/defaults_study.md:
  it lost least on every model measured); a per-layer dict and ``quality=`` stay per layer.
- **Pruning a layer to nothing** happens only on request: ``sparsity=1.0`` for that layer (the layer
  then outputs its bias). A global sparsity or a quality threshold that would empty a layer raises
  CompressionParameterError instead.
- **Storage** (``storage="auto"``): a pruned layer becomes a CSRMatrix when its density is at most
  ``DENSE_ABOVE_DENSITY`` (30%, the batch-1 crossover measured in bench/sparse.py); denser layers stay
  dense (PrunedDenseMatrix, and the model summary says so), because CSR would be slower there.
- **Calibration** replaces retraining: each pruned layer, in order, is refit on the pruned model's own
  activations to reproduce the original layer's outputs: per output row, ridge least squares over the
  surviving weights plus the bias; a row keeps its old values if the solution would not lower its
  reconstruction error on the calibration data (so calibration never increases it).
"""
import warnings

import numpy as np
from threadpoolctl import threadpool_limits

from ..checks import check_choice, check_number, check_seed
from ..errors import CompressionParameterError
from ..matrices import DenseMatrix
from ..matrices.csr import DENSE_ABOVE_DENSITY, CSRMatrix, PrunedDenseMatrix
from ..layers import ConvTranspose2D
from .calibration import check_calibration, check_model, has_row_bias, layerwise, row_bias, select_layers
from .pruning_channels import prunable, channel_groups, remove_channels

__all__ = ["prune", "prune_filters"]

RIDGE = 1e-6           # relative ridge (times the mean diagonal of the Gram matrix) in refits
MAX_REFIT_INPUTS = 8192  # the Gram matrix of wider layers (fc6: 25088 inputs, 5 GB) is not formed
STEPS = (0.5, 0.75, 0.9, 1.0)  # shares of the removed weights taken per refit round (calibration)


def fraction(v, name, method, top_open=False):
    """A number in [0, 1] ([0, 1) with ``top_open``): a share of weights or filters."""
    return check_number(v, name, low=0, high=1, high_open=top_open, method=method)


def _per_layer(value, layers, name, method, check):
    """``(names_or_None, {name: value} or float)`` from a float or a ``{layer: value}`` dict."""
    if isinstance(value, dict):
        if layers is not None:
            raise CompressionParameterError(f"{method}(): pass either layers= or a per-layer {name} dict, not both")
        return list(value), {k: check(v, f"{name}[{k!r}]") for k, v in value.items()}
    return layers, check(value, name)


def prune(model, sparsity=None, *, quality=None, scope=None, layers=None, calibration=None,
          storage="auto", seed=0):
    """Remove the smallest-magnitude weights of Dense, Conv2D and ConvTranspose2D layers (no retraining).

    Parameters
    ----------
    model : Model
    sparsity : float in [0, 1] or dict {layer name: float}
        Fraction of each selected layer's weights to remove (with ``scope="global"``: of all selected
        layers' weights together, by one magnitude threshold). 1.0 removes a whole layer (it then
        outputs its bias).
    quality : float >= 0 or dict, optional
        Instead of ``sparsity``: Han et al.'s rule, remove ``|w| < quality * std(w)`` per layer.
    scope : {"global", "layer"}, optional
        ``"global"``: one magnitude threshold over all selected layers, so small or sensitive
        layers (a classifier's last layer) keep more weights. ``"layer"``: the same fraction of every
        layer. Default: ``"global"`` for one float ``sparsity`` (it lost least with calibration on
        every model of docs/defaults_study.md: at 92%, 0.3 points on LeNet-300-100 where ``"layer"``
        lost 8.9); per layer for a dict or ``quality=``.
    layers : list of str, optional
        Layers to prune (default: every Dense and non-grouped Conv2D or ConvTranspose2D).
    calibration : array (n_samples, *input_shape), optional
        Inputs in the model's layout (a few hundred suffice): refit the surviving weights and biases
        layer by layer by least squares so the outputs match the dense model's.
    storage : {"auto", "csr", "dense"}
        Weight format of pruned layers; "auto" keeps dense storage above ``DENSE_ABOVE_DENSITY``.
    seed : int
        Seeds the choice of calibration rows when there are more than the refit uses.

    Returns
    -------
    Model
        A new model; ``model`` is not changed.
    """
    method = "prune"
    check_model(model, method)
    if (sparsity is None) == (quality is None):
        raise CompressionParameterError("prune() needs exactly one of sparsity= (fraction removed) "
                                        "or quality= (threshold = quality x std of the weights)")
    if scope is None:
        scope = "global" if sparsity is not None and not isinstance(sparsity, dict) else "layer"
    check_choice(scope, "scope", ("layer", "global"), method=method)
    check_choice(storage, "storage", ("auto", "csr", "dense"), method=method)
    check_seed(seed, method="prune")

    def nonneg(v, name):
        return check_number(v, name, low=0, method="prune")

    if sparsity is not None:
        layers, amount = _per_layer(sparsity, layers, "sparsity", method,
                                    lambda v, n: fraction(v, n, method))
    else:
        layers, amount = _per_layer(quality, layers, "quality", method, nonneg)
    if scope == "global" and (isinstance(amount, dict) or quality is not None):
        raise CompressionParameterError("prune(scope='global') takes one float sparsity for all selected layers")
    names = select_layers(model, layers, method, accept=weighted)
    x = check_calibration(calibration, model, method)
    weights = {n: model[n].layer.weight.to_dense() for n in names}
    masks = _masks(weights, amount, quality is not None, scope)
    pruned = model.replace_layers({n: model[n].layer.replace(weight=DenseMatrix(np.where(masks[n], weights[n], 0)))
                                   for n in names})
    if x is not None:
        wide = [n for n in names if weights[n].shape[1] + 1 > MAX_REFIT_INPUTS]
        if wide:
            warnings.warn(f"prune(): layers {wide} have more than {MAX_REFIT_INPUTS} inputs; they are "
                          "pruned but not refit", stacklevel=2)
        fit = [n for n in names if n not in wide]

        def refit(n, layer, xr, yr):   # re-choose which weights go, then refit the survivors
            layer = layer.replace(weight=DenseMatrix(weights[n]))
            target = int(masks[n].size - np.count_nonzero(masks[n]))
            keep = np.ones(masks[n].shape, bool)
            gram = gram_of(xr, yr)
            for frac in STEPS:           # gradual: prune a share, refit, prune more (Han's iterative
                k = int(round(target * frac))   # pruning, with least squares instead of retraining)
                keep = _activation_mask(layer.weight.to_dense(), keep, xr, k)
                layer = refit_rows(layer, keep, gram, row_bias(model[n].layer),
                                    intercept=has_row_bias(model[n].layer))
            masks[n] = keep
            return layer

        pruned = layerwise(model, x, fit, refit, seed=int(seed),
                           start=pruned.replace_layers({n: model[n].layer for n in fit}))
    return pruned.replace_layers({n: _store(pruned[n].layer, masks[n], storage) for n in names})


def _masks(weights, amount, by_quality, scope):
    """``{name: bool mask of kept weights}`` (rules in the module docstring)."""
    get = (lambda n: amount[n]) if isinstance(amount, dict) else (lambda n: amount)
    masks = {}
    if scope == "global":
        mags = np.concatenate([np.abs(w).ravel() for w in weights.values()])
        drop = np.zeros(mags.size, bool)
        k = int(np.floor(amount * mags.size + 0.5))
        if k:
            drop[np.argpartition(mags, k - 1)[:k]] = True
        at = 0
        for n, w in weights.items():
            masks[n] = ~drop[at:at + w.size].reshape(w.shape)
            at += w.size
    else:
        for n, w in weights.items():
            mag = np.abs(w).ravel()
            if by_quality:
                masks[n] = (mag >= get(n) * float(np.std(w, dtype=np.float64))).reshape(w.shape)
                continue
            keep = np.ones(mag.size, bool)
            k = int(np.floor(get(n) * mag.size + 0.5))
            if k:
                keep[np.argpartition(mag, k - 1)[:k]] = False
            masks[n] = keep.reshape(w.shape)
    for n, m in masks.items():
        if not m.any() and (scope == "global" or by_quality or get(n) != 1.0):
            raise CompressionParameterError(
                f"prune() would remove every weight of layer {n!r}; lower the sparsity/quality, or ask "
                f"for it explicitly with sparsity={{{n!r}: 1.0}} (the layer then outputs its bias)")
    return masks


def _activation_mask(w, mask, x_rows, n_drop):
    """The same number of kept weights, chosen by ``|w_oj| * ||x_j||`` (Wanda, Sun et al. 2023).

    A weight on an input that never varies in the calibration data (a border pixel) costs nothing to
    remove; plain magnitude would keep it. Ties go to the lower index (stable order).
    """
    score = (np.abs(w.astype(np.float64)) * np.sqrt((x_rows.astype(np.float64) ** 2).sum(axis=0))).ravel()
    score[~mask.ravel()] = -1.0          # weights already gone stay gone
    keep = np.ones(score.size, bool)
    if n_drop:
        keep[np.argsort(score, kind="stable")[:n_drop]] = False
    return keep.reshape(w.shape)


def _store(layer, mask, storage):
    w = np.where(mask, layer.weight.to_dense(), np.float32(0))
    density = np.count_nonzero(w) / w.size
    if storage == "csr" or (storage == "auto" and density <= DENSE_ABOVE_DENSITY):
        return layer.replace(weight=CSRMatrix.from_dense(w))
    return layer.replace(weight=PrunedDenseMatrix(w))


def gram_of(x_rows, y_rows):
    """float64 ``G = Xa^T Xa``, ``B = Xa^T Y``, ``yy = sum Y**2`` per column, with ``Xa = [X, 1]``."""
    xa = np.empty((x_rows.shape[0], x_rows.shape[1] + 1))
    xa[:, :-1] = x_rows
    xa[:, -1] = 1.0
    y = y_rows.astype(np.float64)
    return xa.T @ xa, xa.T @ y, (y * y).sum(axis=0)


def weighted(layer):
    """A layer whose weights unstructured pruning prunes: Dense, or an ungrouped (transposed) convolution."""
    return prunable(layer) or (isinstance(layer, ConvTranspose2D) and layer.groups == 1)


def _solve_rows(g, b, yy, w_old, support, intercept=True):
    """Per row o: ridge least squares on ``support[o]`` (+ the bias column with ``intercept``); keep
    the better of old/new.

    ``w_old`` (n_out, k + 1) holds the current weights and bias offset (0). Returns the new array.
    """
    w_new = w_old.copy()
    k = g.shape[0] - 1
    with threadpool_limits(1):   # many small solves: BLAS threads only add wake-up latency
        _solve_each(g, b, yy, w_old, w_new, support, k, intercept)
    return w_new


def _solve_each(g, b, yy, w_old, w_new, support, k, intercept):
    for o in range(w_old.shape[0]):
        s = np.append(np.flatnonzero(support[o]), k) if intercept else np.flatnonzero(support[o])
        if s.size == 0:
            continue
        gs = g[np.ix_(s, s)]
        lam = RIDGE * max(float(np.trace(gs)) / len(s), 1e-30)
        try:
            sol = np.linalg.solve(gs + lam * np.eye(len(s)), b[s, o])
        except np.linalg.LinAlgError:
            continue
        old = w_old[o, s]
        err_new = sol @ gs @ sol - 2 * sol @ b[s, o] + yy[o]
        err_old = old @ gs @ old - 2 * old @ b[s, o] + yy[o]
        if np.isfinite(err_new) and err_new < err_old:
            w_new[o, s] = sol


def refit_rows(layer, mask, gram, bias_ref, intercept=True):
    """A layer whose kept weights and bias best reproduce ``y_rows + bias_ref`` from ``x_rows``.

    ``gram = gram_of(x_rows, y_rows)``: ``y_rows`` are the original layer's outputs without bias,
    ``bias_ref`` its bias (or None). Without ``intercept`` the bias is not fit (it stays ``bias_ref``).
    """
    g, b, yy = gram
    w = np.where(mask, layer.weight.to_dense(), 0).astype(np.float64)
    b_ref = np.zeros(w.shape[0]) if bias_ref is None else bias_ref.astype(np.float64)
    b_cur = np.zeros(w.shape[0]) if layer.bias is None else layer.bias.astype(np.float64)
    w_old = np.concatenate([w, (b_cur - b_ref)[:, None]], axis=1)
    w_new = _solve_rows(g, b, yy, w_old, mask, intercept)
    return layer.replace(weight=DenseMatrix(np.where(mask, w_new[:, :-1], 0).astype(np.float32)),
                         bias=(b_ref + w_new[:, -1]).astype(np.float32))


def prune_filters(model, ratio=None, *, criterion="l1", layers=None, calibration=None, seed=0):
    """Remove whole filters (Conv2D) or neurons (Dense) and everything that reads only them.

    The smallest filters by L1 or L2 norm go; the layers that follow them lose the matching
    channels: BatchNorm parameters, depthwise convolutions, and the input columns of the Dense/Conv2D
    layers that consume them (through flattening as well). Channels joined by an Add are scored by the
    sum of the norms of all the filters that feed it and pruned together; spaces that reach the model
    input or output, or a layer that cannot follow a channel subset, are left alone. The result is a
    smaller dense model.

    Parameters
    ----------
    model : Model
    ratio : float in [0, 1) or dict {layer name: float}
        Fraction of each selected layer's filters to remove (rounded; at least one filter stays).
    criterion : {"l1", "l2"}
    layers : list of str, optional
        Producers to prune (default: every one that can be). Naming a layer whose channels are tied
        by an Add prunes its whole group; naming a frozen one is an error.
    calibration : array (n_samples, *input_shape), optional
        Refit every consumer of pruned channels (all its weights and its bias) by least squares so
        that its outputs match the original model's.
    seed : int
        Seeds the choice of calibration rows.

    Returns
    -------
    Model
    """
    method = "prune_filters"
    check_model(model, method)
    if ratio is None:
        raise CompressionParameterError("prune_filters() needs ratio= (fraction of filters to remove)")
    check_choice(criterion, "criterion", ("l1", "l2"), method=method)
    check_seed(seed, method="prune_filters")
    layers, amount = _per_layer(ratio, layers, "ratio", method, lambda v, n: fraction(v, n, method, True))
    groups, flat = channel_groups(model)
    owner = {p: r for r, g in groups.items() for p in g["producers"]}
    explicit = layers is not None
    names = select_layers(model, layers, method, accept=prunable)
    x = check_calibration(calibration, model, method)
    chosen = {}
    for n in names:
        g = groups.get(owner.get(n))
        if g is None or g["frozen"]:
            if explicit:
                why = g["frozen"] if g else "it is not a prunable channel space"
                raise CompressionParameterError(f"prune_filters(): cannot prune {n!r}: {why}")
            continue
        r = amount[n] if isinstance(amount, dict) else amount
        if chosen.setdefault(owner[n], r) != r:
            raise CompressionParameterError(f"prune_filters(): layers {g['producers']} are tied by an Add "
                                            "and need one ratio")
    kept = {}
    for root, r in chosen.items():
        g = groups[root]
        c = model[g["producers"][0]].layer.weight.n_out
        drop = int(np.floor(r * c + 0.5))
        if drop == 0:
            continue
        if drop >= c:
            raise CompressionParameterError(f"prune_filters(): ratio {r} would remove all {c} filters of "
                                            f"{g['producers']}; at least one must stay")
        score = np.zeros(c)
        for p in g["producers"]:
            w = model[p].layer.weight.w.astype(np.float64)
            score += np.abs(w).sum(axis=1) if criterion == "l1" else np.sqrt((w * w).sum(axis=1))
        kept[root] = np.sort(np.argsort(score, kind="stable")[drop:])
    new, keep_rows, keep_cols = remove_channels(model, groups, kept, flat)
    pruned = model.replace_layers(new)
    if x is not None and keep_cols:
        order = [nd.name for nd in model.nodes if nd.name in keep_cols]
        def full(n, layer, xr, yr):   # a consumer that is also pruned keeps only its kept outputs
            yr = yr[:, keep_rows[n]] if n in keep_rows else yr
            ref_bias = model[n].layer.bias
            ref_bias = ref_bias[keep_rows[n]] if n in keep_rows and ref_bias is not None else ref_bias
            return refit_rows(layer, np.ones(layer.weight.shape, bool), gram_of(xr, yr), ref_bias)

        pruned = layerwise(model, x, order, full, seed=int(seed), start=pruned)
    return pruned
