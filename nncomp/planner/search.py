"""Choosing one candidate per layer under an additive model of cost and accuracy loss.

Each layer ``l`` has options ``(cost, drop)``: cost is the measured change of the whole model's time
(or file bytes) when only that layer takes the option, drop the score lost on the search data. Option
0 is always the dense layer (cost 0, drop 0), so the empty choice is feasible. Two searches:

- :func:`greedy`, in the spirit of NetAdapt (Yang et al., 2018): from the dense model, take one layer
  change at a time, the one that saves the most cost per point of accuracy it adds, while the summed
  drop stays within the budget.
- :func:`exact`: the multiple-choice knapsack solved exactly as an integer program with
  ``scipy.optimize.milp`` (as HAWQ-V3 chooses bit widths): minimum summed cost, summed drop <= budget.

Both take ``exclusive`` pairs of layers that may not both leave dense (a channel group's filter
pruning and a layer whose shape it changes). The additive model misses interactions (two pruned
channel groups that share a layer lose more together), so :func:`settle` verifies the choice and,
while it fails, rules out the most harmful layer's option and searches again (another option of
that layer, or other layers, may spend the budget better than reverting it); after SETTLE_ROUNDS
refusals, :func:`repair` reverts layers to dense, most harmful first, until the check holds.
"""
import numpy as np

__all__ = ["SETTLE_ROUNDS", "options", "greedy", "exact", "repair", "settle", "solve", "total"]

SETTLE_ROUNDS = 6     # verifications that may each rule out one option before the repair loop

# Ratio denominator for moves that add no loss: such moves go first, largest saving first.
FREE = 1e-9


def total(options, choice, pairs=None):
    """``(summed cost, summed drop)`` of ``choice`` ``{layer: option index}``; ``pairs``
    ``{((layer, option), (layer, option)): cost}`` adds the cost of every pair both chosen."""
    cost = sum(options[l][i][0] for l, i in choice.items())
    cost += sum(c for ((a, i), (b, j)), c in (pairs or {}).items() if choice.get(a) == i and choice.get(b) == j)
    drop = sum(options[l][i][1] for l, i in choice.items())
    return float(cost), float(drop)


def _partners(exclusive):
    out = {}
    for a, b in exclusive:
        out.setdefault(a, set()).add(b)
        out.setdefault(b, set()).add(a)
    return out


def greedy(options, budget, exclusive=(), pairs=None):
    """NetAdapt-style greedy choice ``{layer: option index}`` (see the module notes).

    Parameters
    ----------
    options : dict {layer: list of (cost, drop)}
        Option 0 of every layer is the dense layer ``(0, 0)``.
    budget : float
        Summed drop allowed.
    exclusive : iterable of (layer, layer)
        Pairs that may not both take a non-dense option.
    pairs : dict {((layer, option), (layer, option)): cost}, optional
        Costs added when both options are chosen (measured interactions).
    """
    choice = {l: 0 for l in options}
    partners = _partners(exclusive)
    spent = 0.0
    while True:
        best = None
        now = total(options, choice, pairs)[0]
        for l, opts in options.items():
            if any(choice.get(o) for o in partners.get(l, ())):
                continue
            c0, d0 = now, opts[choice[l]][1]
            for i, (_, d) in enumerate(opts):
                c = total(options, {**choice, l: i}, pairs)[0] if i != choice[l] else c0
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


def exact(options, budget, exclusive=(), pairs=None):
    """The minimum-cost choice with summed drop <= ``budget``, by ``scipy.optimize.milp``, no two
    layers of an ``exclusive`` pair both non-dense, with the cost of ``pairs`` both chosen (as
    :func:`total`; one more variable per pair, linearized: y = x_a x_b).

    Returns ``{layer: option index}``, or None when the solver reports no solution (it always has
    one: all dense).
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    layers = list(options)
    flat = [(l, i, c, d) for l in layers for i, (c, d) in enumerate(options[l])]
    index = {(l, i): j for j, (l, i, _, _) in enumerate(flat)}
    terms = [(index[a], index[b], c) for (a, b), c in (pairs or {}).items() if a in index and b in index]
    n = len(flat) + len(terms)
    cost = np.array([c for _, _, c, _ in flat] + [c for _, _, c in terms], float)
    drop = np.zeros(n)
    drop[:len(flat)] = [d for _, _, _, d in flat]
    one = np.zeros((len(layers), n))
    for j, (l, *_rest) in enumerate(flat):
        one[layers.index(l), j] = 1.0
    constraints = [LinearConstraint(one, 1, 1), LinearConstraint(drop[None, :], -np.inf, budget + 1e-9)]
    apart = [(a, b) for a, b in exclusive if a in options and b in options]
    if apart:       # the non-dense options of both layers of a pair: at most one
        rows = np.array([[1.0 if l in pair and i else 0.0 for l, i, _, _ in flat] + [0.0] * len(terms)
                         for pair in apart])
        constraints.append(LinearConstraint(rows, -np.inf, 1))
    if terms:       # y = x_a x_b: y <= x_a, y <= x_b, y >= x_a + x_b - 1
        rows = np.zeros((3 * len(terms), n))
        for t, (a, b, _) in enumerate(terms):
            y = len(flat) + t
            rows[3 * t, [y, a]] = 1.0, -1.0
            rows[3 * t + 1, [y, b]] = 1.0, -1.0
            rows[3 * t + 2, [y, a, b]] = 1.0, -1.0, -1.0
        constraints.append(LinearConstraint(rows, np.tile([-np.inf, -np.inf, -1.0], len(terms)),
                                            np.tile([0.0, 0.0, np.inf], len(terms))))
    res = milp(cost, integrality=np.ones(n), bounds=Bounds(0, 1), constraints=constraints)
    if res.x is None:
        return None
    picked = np.round(res.x[:len(flat)]).astype(bool)
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


def solve(options, budget, exclusive=(), pairs=None):
    """``(choice, search used, notes)``: the exact choice, the greedy one if the solver fails."""
    choice, quick = exact(options, budget, exclusive, pairs), greedy(options, budget, exclusive, pairs)
    if choice is None:
        return quick, "greedy", []
    if quick != choice:
        return choice, "milp", [f"greedy chose otherwise: predicted cost {total(options, quick, pairs)[0]:.4g} "
                                f"against {total(options, choice, pairs)[0]:.4g} for the exact choice"]
    return choice, "milp (greedy agrees)", []


def settle(options, budget, exclusive, holds, harm, ruled, pairs=None):
    """``(choice, search used, notes, layers reverted by repair)``: :func:`solve`, verified by ``holds``; while it
    fails (at most SETTLE_ROUNDS times) the first layer of ``harm(choice)`` loses its chosen option
    (added to ``ruled``, a set of ``(layer, option index)`` kept by the caller) and the search runs
    again; then :func:`repair`. Ruled-out options are given an impossible drop."""
    def allowed():
        return {l: [(c, d) if (l, i) not in ruled else (0.0, budget + 1e9) for i, (c, d) in enumerate(opts)]
                for l, opts in options.items()}

    for _ in range(SETTLE_ROUNDS):
        choice, used, notes = solve(allowed(), budget, exclusive, pairs)
        if holds(choice):
            return choice, used, notes, []
        live = [l for l in harm(choice) if choice[l]]
        if not live:
            break
        ruled.add((live[0], choice[live[0]]))
    choice, used, notes = solve(allowed(), budget, exclusive, pairs)
    choice, reverted = repair(choice, holds, harm)
    return choice, used, notes, reverted


def options(table, costs, threshold, budget):
    """``{layer: [(cost, drop)]}`` for the search; options not worth an accuracy risk (a cost above
    ``threshold``: a measured saving under MIN_GAIN of the dense time, no smaller file or estimated
    energy; or not scored) get an impossible drop."""
    out = {}
    for n, entries in table.items():
        out[n] = [(0.0, 0.0)]
        for i, (_, _, drop) in enumerate(entries[1:], 1):
            cost = costs[n][i]
            worth = drop is not None and cost <= threshold
            out[n].append((float(cost), max(float(drop), 0.0)) if worth else (0.0, budget + 1e9))
    return out
