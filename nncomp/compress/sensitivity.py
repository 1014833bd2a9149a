"""Per-layer pruning sensitivity (Han et al.'s plots, as a table) and accuracy budgets.

Each layer is pruned alone (magnitude, no calibration) to each sparsity and the model is scored on
held-out data: accuracy against labels, or, without labels, agreement of its top-1 predictions with
the dense model's.
"""
from dataclasses import dataclass

import numpy as np

from ..errors import CompressionParameterError
from .calibration import check_model, select_layers
from .pruning import fraction, prunable, prune

__all__ = ["Sensitivity", "sensitivity", "sparsities_for_budget"]

SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)


@dataclass(frozen=True)
class Sensitivity:
    """Scores of the model with one layer pruned at a time.

    Attributes
    ----------
    layers : tuple of str
    sparsities : tuple of float
    scores : ndarray (n_layers, n_sparsities) float64
        Accuracy (``metric="accuracy"``) or top-1 agreement with the dense model (``"agreement"``).
    baseline : float
        The dense model's score (agreement: 1.0).
    metric : str
    """

    layers: tuple
    sparsities: tuple
    scores: np.ndarray
    baseline: float
    metric: str

    def drop(self, layer, sparsity):
        """Score lost by pruning ``layer`` alone to ``sparsity`` (must be one of the table's)."""
        return self.baseline - self.scores[self.layers.index(layer), self.sparsities.index(sparsity)]

    def __repr__(self):
        head = ["layer"] + [f"{s:.0%}" for s in self.sparsities]
        rows = [[n] + [f"{v:.4f}" for v in r] for n, r in zip(self.layers, self.scores)]
        widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
        fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
        return "\n".join([f"Sensitivity ({self.metric}; dense {self.baseline:.4f}; one layer pruned at a time)",
                          fmt(head)] + [fmt(r) for r in rows])


def _setup(model, x, y, sparsities, layers, method):
    check_model(model, method)
    try:
        x = model.check_input(x)
    except Exception as e:  # InputError names the expected shape
        raise CompressionParameterError(f"{method}(): x: {e}") from None
    if x.shape[0] < 1:
        raise CompressionParameterError(f"{method}(): x is empty; pass held-out samples")
    if y is not None:
        y = np.asarray(y)
        if y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
            raise CompressionParameterError(f"{method}(): y must be {x.shape[0]} integer labels, got "
                                            f"{y.dtype} {y.shape}")
    if isinstance(sparsities, (str, bytes)) or not hasattr(sparsities, "__iter__"):
        raise CompressionParameterError(f"{method}(): sparsities must be a sequence of numbers in [0, 1]")
    grid = tuple(sorted({fraction(s, "sparsities", method) for s in sparsities}))
    if not grid:
        raise CompressionParameterError(f"{method}(): sparsities is empty")
    names = select_layers(model, layers, method, accept=prunable)
    return x, y, grid, names


def _scorer(model, x, y):
    out = model(x)
    if out.ndim != 2 or out.shape[1] < 2:
        raise CompressionParameterError(f"sensitivity(): top-1 needs a classifier (outputs (n, classes)); this "
                                        f"model gives {out.shape[1:]} per sample")
    ref = y if y is not None else out.argmax(axis=1)
    return lambda m: float(np.mean(m(x).argmax(axis=1) == ref))


def sensitivity(model, x, y=None, *, sparsities=SPARSITIES, layers=None):
    """Score the model with each layer pruned alone to each sparsity.

    Parameters
    ----------
    model : Model
        A classifier (top-1 of its output is the prediction).
    x : array (n_samples, *input_shape)
        Held-out inputs in the model's layout.
    y : array of int (n_samples,), optional
        Labels; without them the score is agreement with the dense model's predictions.
    sparsities : sequence of float in [0, 1]
    layers : list of str, optional
        Default: every prunable layer.

    Returns
    -------
    Sensitivity
    """
    x, y, grid, names = _setup(model, x, y, sparsities, layers, "sensitivity")
    score = _scorer(model, x, y)
    scores = np.array([[score(prune(model, {n: s}, storage="dense")) for s in grid] for n in names])
    return Sensitivity(tuple(names), grid, scores.reshape(len(names), len(grid)),
                       score(model), "accuracy" if y is not None else "agreement")


def sparsities_for_budget(model, x, y=None, *, max_drop=0.01, sparsities=(0.5, 0.7, 0.8, 0.9, 0.95, 0.97),
                          layers=None, table=None):
    """Per-layer sparsities whose combined score loss stays within ``max_drop``.

    Each layer starts at the largest sparsity it tolerates alone (from :func:`sensitivity`); while
    the model pruned with all of them loses more than ``max_drop``, the layer that loses most alone at
    its current level steps down one sparsity (to 0 below the grid).

    Parameters
    ----------
    model, x, y, layers : as in :func:`sensitivity`
    max_drop : float in [0, 1]
        Allowed score loss (0.01 = one point of accuracy).
    sparsities : sequence of float
        The grid searched.
    table : Sensitivity, optional
        A table already computed on the same data and grid.

    Returns
    -------
    dict {layer name: sparsity}
    """
    fraction(max_drop, "max_drop", "sparsities_for_budget")
    x, y, grid, names = _setup(model, x, y, sparsities, layers, "sparsities_for_budget")
    if table is None:
        table = sensitivity(model, x, y, sparsities=grid, layers=names)
    elif not isinstance(table, Sensitivity) or table.sparsities != grid or set(names) - set(table.layers):
        raise CompressionParameterError("sparsities_for_budget(): table must be a Sensitivity on the same "
                                        "sparsities and layers")
    levels = (0.0,) + grid
    at = {}
    for n in names:
        ok = [i for i, s in enumerate(grid) if table.drop(n, s) <= max_drop]
        at[n] = (max(ok) + 1) if ok else 0
    score = _scorer(model, x, y)
    base = score(model)
    while any(at.values()):
        chosen = {n: levels[i] for n, i in at.items()}
        if base - score(prune(model, chosen, storage="dense")) <= max_drop:
            return chosen
        worst = max((n for n in names if at[n]), key=lambda n: table.drop(n, levels[at[n]]))
        at[worst] -= 1
    return {n: 0.0 for n in names}
