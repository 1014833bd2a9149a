"""A second pass of the latency planner: int8 on the layers the first pass reshaped.

The first pass keeps a channel group's filter pruning and the other formats of the layers it
reshapes apart (their effects are not additive), and a low-rank pair replaces a layer by two new
ones that no candidate covered. So a layer pruned to half its filters stayed float32 even where
int8 would have made it faster again (LeNet-300-100 at batch 1: fc1 to half its units, then its
three layers int8). When the first pass changed a layer's structure (filters, low rank), the
planner runs once more on the model it returned, with the int8 candidates only and what is left
of the budget: the same steps (timed in the whole model, scored, verified on the same held-out
quarter; never slower than its input), then the result's loss against the original model checked
there too (its upper bound within the whole budget, :class:`.jobs.HeldOut`) and a last measurement
of the result against the original model. The plan then holds both passes' choices.
"""
import dataclasses

import numpy as np

from .energy import energy
from .jobs import CONFIDENCE, HeldOut, references, split

__all__ = ["STRUCTURAL", "second_pass"]

STRUCTURAL = ("prune_filters", "factorize")     # first-pass methods that make new layers to quantize
METHODS = ("quantize",)
EFFORT = 3          # the final measurement of the original against the result: this many times the calls


def second_pass(planner, model, first, x, labels, budget, batch, methods, n_jobs, seed, metric=None,
                confidence=CONFIDENCE):
    """``first`` (the first pass's model, carrying its plan) with int8 added by a second pass where
    it measures faster within the rest of the budget; ``first`` itself otherwise."""
    plan = first.plan
    left = budget - plan.heldout_drop
    todo = tuple(m for m in METHODS if m in methods)
    if not todo or left < 0 or not any(c.method in STRUCTURAL for c in plan.layers):
        return first
    # without labels the budget is agreement with the original model: its predictions (its outputs,
    # for a metric) are the labels
    ref = labels if labels is not None else model(x) if metric is not None else model(x).argmax(axis=1)
    shown = planner.progress        # the second pass's steps say so (the command line prints them)
    planner.progress = lambda step, message: shown(step, f"second pass, int8 on the reshaped layers: {message}")
    try:
        second = planner.run_once(first, x, labels=ref, budget=left, batch=batch, objective="latency",
                                  methods=list(todo), n_jobs=n_jobs, seed=seed, metric=metric,
                                  confidence=confidence)
    finally:
        planner.progress = shown
    again = second.plan
    if not any(c.candidate != "dense" for c in again.layers):
        return first
    held = split(x.shape[0], seed)[2]       # the held-out quarter both passes verified on, against ref
    _, bound = HeldOut(model, x[held], references(model, x, ref, (held,), metric)[0], confidence, seed).drop(second)
    if bound > budget + 1e-9:
        return first        # the two passes' losses together are not surely within the budget
    ms = planner.timer.measure({"dense": model, "chosen": second}, np.ascontiguousarray(x[np.arange(batch) % len(x)]),
                               effort=EFFORT)
    if ms["chosen"] >= ms["dense"] * plan.measured_ms / plan.dense_ms:
        return first        # the second pass's gain did not survive against the original
    added = {c.layer: c for c in again.layers if c.candidate != "dense"}
    layers = tuple(added.pop(c.layer, c) for c in plan.layers) + tuple(added.values())
    ratio = lambda p: p.predicted_ms / p.dense_ms if p.predicted_ms else float("nan")  # noqa: E731
    second.plan = dataclasses.replace(
        plan, layers=layers, dense_ms=ms["dense"], measured_ms=ms["chosen"],
        predicted_ms=ms["dense"] * ratio(plan) * ratio(again), bytes=again.bytes,
        energy_pj=energy(second, batch)["total_pj"],
        heldout_score=again.heldout_score,     # the same held-out quarter, scored against the same labels
        heldout_bound=bound,
        search=f"{plan.search}; then int8 on the result ({again.search})",
        reverted=plan.reverted + again.reverted, planning_s=plan.planning_s + again.planning_s,
        notes=plan.notes + tuple(f"second pass: {n}" for n in again.notes),
        table=plan.table + tuple((f"{r[0]} (2nd pass)", *r[1:]) for r in again.table))
    return second
