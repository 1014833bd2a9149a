"""Choosing one candidate per layer under an additive model of cost and accuracy loss.

Each layer ``l`` has options ``(cost, drop)``: cost is the measured change of the whole model's time
(or file bytes) when only that layer takes the option, drop the score lost on the search data. Option
0 is always the dense layer (cost 0, drop 0), so the empty choice is feasible. Two searches:

- :func:`greedy`, in the spirit of NetAdapt (Yang et al., 2018): from the dense model, take one layer
  change at a time, the one that saves the most cost per point of accuracy it adds, while the summed
  drop stays within the budget.
- :func:`exact`: the multiple-choice knapsack solved exactly as an integer program with
  ``scipy.optimize.milp`` (as HAWQ-V3 chooses bit widths): minimum summed cost, summed drop <= budget.

:func:`repair` then reverts layers to dense, most harmful first, until a measured check holds.
"""
import numpy as np

__all__ = ["greedy", "exact", "repair", "total"]

# Ratio denominator for moves that add no loss: such moves go first, largest saving first.
FREE = 1e-9


def total(options, choice):
    """``(summed cost, summed drop)`` of ``choice`` ``{layer: option index}``."""
    cost = sum(options[l][i][0] for l, i in choice.items())
    drop = sum(options[l][i][1] for l, i in choice.items())
    return float(cost), float(drop)


def greedy(options, budget):
    """NetAdapt-style greedy choice ``{layer: option index}`` (see the module notes).

    Parameters
    ----------
    options : dict {layer: list of (cost, drop)}
        Option 0 of every layer is the dense layer ``(0, 0)``.
    budget : float
        Summed drop allowed.
    """
    choice = {l: 0 for l in options}
    spent = 0.0
    while True:
        best = None
        for l, opts in options.items():
            c0, d0 = opts[choice[l]]
            for i, (c, d) in enumerate(opts):
                if c >= c0 or spent - d0 + d > budget + 1e-12:
                    continue
                ratio = (c0 - c) / max(d - d0, FREE)
                key = (ratio, c0 - c)
                if best is None or key > best[0]:
                    best = (key, l, i)
        if best is None:
            return choice
        _, l, i = best
        spent += options[l][i][1] - options[l][choice[l]][1]
        choice[l] = i


def exact(options, budget):
    """The minimum-cost choice with summed drop <= ``budget``, by ``scipy.optimize.milp``.

    Returns ``{layer: option index}``, or None when the solver reports no solution (it always has
    one: all dense).
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    layers = list(options)
    flat = [(l, i, c, d) for l in layers for i, (c, d) in enumerate(options[l])]
    cost = np.array([c for _, _, c, _ in flat], float)
    drop = np.array([d for _, _, _, d in flat], float)
    one = np.zeros((len(layers), len(flat)))
    for j, (l, *_rest) in enumerate(flat):
        one[layers.index(l), j] = 1.0
    res = milp(cost, integrality=np.ones(len(flat)), bounds=Bounds(0, 1),
               constraints=[LinearConstraint(one, 1, 1), LinearConstraint(drop[None, :], -np.inf, budget + 1e-9)])
    if res.x is None:
        return None
    picked = np.round(res.x).astype(bool)
    return {l: i for (l, i, _, _), on in zip(flat, picked) if on}


def repair(choice, holds, harm):
    """Revert layers to dense until ``holds(choice)`` is true.

    Parameters
    ----------
    choice : dict {layer: option index}
    holds : callable ``choice -> bool``
        The verification (the budget on held-out data).
    harm : callable ``choice -> list of layers``
        The non-dense layers of ``choice``, most harmful first.

    Returns
    -------
    (choice, reverted layers in order)
    """
    choice = dict(choice)
    reverted = []
    while not holds(choice):
        order = [l for l in harm(choice) if choice[l] != 0]
        if not order:
            break
        choice[order[0]] = 0
        reverted.append(order[0])
    return choice, reverted
