"""Rank selection for :func:`~nncomp.compress.lowrank.factorize`: the rank of each layer to factorize.

From one of: explicit ranks (int or per-layer dict), an energy fraction of each layer's spectrum, a
per-layer or uniform MAC speedup, or a whole-selection MAC budget allocated greedily where ranks
remove the most relative error per MAC. Works on ``lowrank._Plan`` objects: ``name``, ``max_rank``,
``orig`` (MACs of the original layer), ``unit`` (MACs per unit of rank), ``macs(rank)``, ``scheme``
and ``spectrum`` (the energy each rank captures, from ``lowrank_conv.plan_spectrum``).
"""
import heapq

import numpy as np

from ..checks import check_number
from ..errors import CompressionParameterError


def _check_rank(value, plan):
    return check_number(value, f"rank[{plan.name!r}]", integer=True, low=1, high=plan.max_rank, method="factorize",
                        fix=f"layer {plan.name!r} ({plan.scheme}) takes a rank in that range")


def check_speedup(value, where="speedup"):
    """A finite number > 1: the factor by which a factorization cuts multiply-adds."""
    return check_number(value, where, low=1, low_open=True, method="factorize",
                        fix="the factor by which MACs shrink")


def rel_tail(spectrum):
    """Relative error left by each rank: ``tail[r] = sum(spectrum[r:]) / sum(spectrum)``."""
    total = float(spectrum.sum())
    tail = np.concatenate([np.cumsum(spectrum[::-1])[::-1], [0.0]])
    return tail / total if total > 0 else np.zeros_like(tail)


def rank_for_speedup(plan, speedup):
    return int(min(plan.max_rank, max(1, plan.orig // (speedup * plan.unit))))


def allocate(plans, speedup):
    """Ranks for a whole-selection MAC budget: greedy on relative error removed per MAC.

    A layer whose best rank would cost as much as the layer itself stays unfactorized (rank None).
    """
    budget = sum(p.orig for p in plans) / speedup
    ranks = {p.name: 1 for p in plans}
    spent = sum(p.macs(1) for p in plans)
    if spent > budget:
        raise CompressionParameterError(
            f"factorize(): speedup={speedup:g} is out of reach: even rank 1 everywhere costs "
            f"{spent:,} MACs against a budget of {budget:,.0f}; ask for a smaller speedup")
    tails = {p.name: rel_tail(p.spectrum) for p in plans}
    heap = []

    def push(p):
        r = ranks[p.name]
        if r is None:
            return
        if r + 1 <= p.max_rank and p.macs(r + 1) < p.orig:
            gain, cost = tails[p.name][r] - tails[p.name][r + 1], p.unit
        else:
            gain, cost = tails[p.name][r], p.orig - p.macs(r)
        if gain <= 0:
            return
        heapq.heappush(heap, (-gain / max(cost, 1), p.name, cost))

    by_name = {p.name: p for p in plans}
    for p in plans:
        push(p)
    while heap:
        _, name, cost = heapq.heappop(heap)
        if spent + cost > budget:
            continue
        p, r = by_name[name], ranks[name]
        spent += cost
        ranks[name] = r + 1 if (r + 1 <= p.max_rank and p.macs(r + 1) < p.orig) else None
        push(p)
    return ranks


def ranks(plans, rank, energy, speedup, allocation):
    if rank is not None:
        return {p.name: _check_rank(rank[p.name] if isinstance(rank, dict) else rank, p) for p in plans}
    if energy is not None:
        out = {}
        for p in plans:
            kept = 1.0 - rel_tail(p.spectrum)[1:]
            out[p.name] = int(min(p.max_rank, np.searchsorted(kept, energy - 1e-12) + 1))
        return out
    if isinstance(speedup, dict):
        return {p.name: rank_for_speedup(p, check_speedup(speedup[p.name], f"speedup[{p.name!r}]"))
                for p in plans}
    if allocation == "uniform":
        return {p.name: rank_for_speedup(p, speedup) for p in plans}
    return allocate(plans, speedup)


def check_keys(value, names, what):
    if isinstance(value, dict):
        missing = [n for n in names if n not in value]
        extra = [n for n in value if n not in names]
        if missing or extra:
            raise CompressionParameterError(
                f"factorize(): {what} dict must name exactly the selected layers {names}; "
                f"missing {missing}, not selected {extra}")

