"""``nc.optimize``: the fastest (or smallest) model within an accuracy budget, measured on this machine.

The steps (each in its own module):

1. The calibration data is split, seeded: a *fitting* half for the methods' refits (at most
   ``MAX_FIT`` samples; filter pruning, which refits whole layers on fewer channels, gets the whole
   half: on VGG-small four groups pruned by half and refit on 512 digits lost 0.2-0.9 point on the
   test digits, on 2,000 none), a *search* quarter that scores each candidate, and a *held-out*
   quarter that only the verification sees; the budget is checked there (:mod:`.jobs`).
2. Costs: for ``objective="latency"`` every candidate's formats are built without refits and timed
   first (:mod:`.table`: whole-model times with one layer changed at the target batch, in the dense
   model's run mode (:mod:`.modes`), cached per CPU and versions (:mod:`.latency`); a large model's
   layers timed alone first, :mod:`.screen`); only candidates at least MIN_GAIN faster than dense go on. For ``"size"``: Deep Compression's global allocations,
   whole models built jointly (:mod:`.allocation`), the sparsest first, the smallest file within the
   budget verified on the held-out part; it bounds the per-layer candidates worth building, whose
   bytes (counted in memory) come from their formats without refits (:mod:`.sizing`).
3. Those candidates per weighted layer (:mod:`.candidates`), each built by a public method on that
   one layer with its calibration refit and scored, as independent jobs (``n_jobs`` through joblib
   if installed; a Dask cluster through joblib's dask backend).
4. Search under an additive model: exact (``scipy.optimize.milp``) and greedy (:mod:`.search`),
   a filter-pruned channel group and the layers it reshapes kept apart; verification on the
   held-out part: an option it refuses is ruled out and the search run again (a few times), then a
   repair loop reverts the most harmful layers. Several pruned groups are built in one
   ``prune_filters`` call. For
   ``"size"`` the smaller verified file of this choice and of the global allocation is kept.
5. A final measurement against the dense model decides: the result is never slower (or, for
   ``"size"``, larger) than the dense model, which is always a candidate.
"""
import dataclasses
import time

import numpy as np

from ..errors import CompressionParameterError
from ..io.native import file_bytes
from . import allocation, interactions, screen, search, sizing
from .arguments import OBJECTIVES, check_arguments, check_confidence, metric_name
from .candidates import (candidates_for, compose, exclusive, group_candidates, layer_choice, size_delta,
                         structured, weighted_layers)
from .energy import energy
from .jobs import CONFIDENCE, HeldOut, digest, evaluate, references, run_jobs, score, split
from .latency import LatencyCache, Timer, cpu_name
from .modes import run_mode
from .report import OptimizationPlan
from .stacking import second_pass
from .table import MIN_GAIN, LatencyTable

__all__ = ["optimize", "Planner", "OBJECTIVES"]

# Chosen entries are measured again with this many times the calls, and the search rerun, at most
# CONFIRM_ROUNDS times (until the choice holds only confirmed entries).
CONFIRM_EFFORT = 3
CONFIRM_ROUNDS = 3


def optimize(model, calibration, *, labels=None, budget=0.5, batch=1, objective="latency", methods=None,
             n_jobs=None, seed=0, metric=None, confidence=CONFIDENCE):
    """The fastest (or smallest) version of ``model`` whose accuracy loss stays within ``budget``.

    Per Dense/Conv2D layer the planner tries dense, CSR at several sparsities, CSR + int8, int8
    (weight-only, dynamic, static), k-means codebooks alone and on CSR, and low-rank pairs, and per
    channel group filter pruning (``prune_filters``: fewer filters, and fewer input channels in the
    layers that read them), each built by nncomp's own method with its calibration refit; times
    each at ``batch`` inside the whole model's forward pass on this machine; picks the combination
    with an exact integer program (``scipy.optimize.milp``) and a NetAdapt-style greedy search;
    verifies it on held-out data (an option refused there is ruled out and the search run again,
    then the most harmful layers are reverted until the budget holds); and returns the dense model
    unless the chosen one measures faster (smaller). See :mod:`nncomp.planner`.

    Parameters
    ----------
    model : Model
        A classifier (top-1 of its output is the prediction), or any model with a ``metric``.
    calibration : array (n_samples, *input_shape)
        Inputs in the model's layout, at least 12 (a few thousand give the budget a resolution of a
        fraction of a point): half fits the refits, a quarter scores the search, a quarter is held out.
    labels : array of int (n_samples,), optional
        Labels of ``calibration``: the budget is then in points of top-1 accuracy; without them, of
        top-1 agreement with ``model``.
    budget : float >= 0
        Points allowed to be lost on the held-out quarter (0.5 = half a point): the loss's upper
        bound at ``confidence`` must be within it.
    batch : int >= 1
        The batch size the model will serve; every time is measured at it.
    objective : {"latency", "size", "energy"}
        Minimise the measured time per call, the bytes of the file ``nc.save(..., huffman=True)`` writes,
        or the *estimated* energy per inference (:mod:`nncomp.planner.energy`: a documented model, not
        a measurement; this machine has no energy counters).
    methods : list of str, optional
        Candidate families, from ``"prune"``, ``"prune_int8"``, ``"quantize"``, ``"share"``,
        ``"prune_share"``, ``"factorize"``, ``"prune_filters"`` (default: all). Dense is always a
        candidate. ``"prune_filters"`` is chosen per channel group (a producer's filters and the input
        channels of every layer that reads them, refit), keyed ``"filters:<producer>"`` in the plan.
    n_jobs : int, optional
        Build and score candidates as this many joblib jobs (joblib is optional; without it they run in
        turn, with a warning). Latency is always measured in this process.
    seed : int
        Seeds the split of the calibration data and every method's randomness.
    metric : callable ``(outputs, reference) -> float``, optional
        The score instead of top-1 (a detector's map IoU), higher is better, ``budget`` in points of 100
        x it; ``reference``: the part's ``labels`` (a row per sample) or the original model's outputs.
    confidence : float in [0.5, 1)
        The held-out check accepts a model when the one-sided upper confidence bound of its loss at
        this level is within ``budget`` (:class:`~nncomp.planner.jobs.HeldOut`: paired, normal for
        top-1, bootstrap for a metric); 0.5 accepts the measured loss itself. The default 0.8 keeps
        a plan within the budget on data it never saw far more often than the measured loss does
        (a thousand held-out samples measure a loss to about half a point).

    Returns
    -------
    Model
        A new model; ``result.plan`` (:class:`~nncomp.planner.OptimizationPlan`) says what was chosen,
        measured and predicted, and ``nc.save`` stores it with the model.
    """
    return Planner().run(model, calibration, labels=labels, budget=budget, batch=batch, objective=objective,
                         methods=methods, n_jobs=n_jobs, seed=seed, metric=metric,
                         confidence=confidence)


class Planner:
    """The planner behind :func:`optimize`, with its sources of time and its cache replaceable.

    Parameters
    ----------
    timer : object with ``measure({name: callable}, x, effort=1) -> {name: ms}``, optional
        Default :class:`~nncomp.planner.latency.Timer` (whole calls, alternating, medians).
    cache : LatencyCache or None or False
        Default: the cache file in :func:`~nncomp.planner.latency.cache_dir`; False: no cache.
    progress : callable ``(step, message)``, optional
        Called as each of the STEPS steps starts (the command line prints them).

    One planner keeps the candidates it built (with their refits and search scores) per model,
    calibration data and seed: planning the same model for another batch size or objective builds
    nothing again.
    """

    STEPS = 4

    def __init__(self, *, timer=None, cache=None, progress=None):
        self.timer = timer or Timer()
        self.progress = progress or (lambda step, message: None)
        self.cache = None if cache is False else (cache or LatencyCache())
        self.measured = 0      # candidate models timed for the table (cache misses)
        self.reconfirmed = 0   # chosen entries timed again (the winner's curse), besides the final check
        self.built = {}        # {(id(model), data digest, seed): (model, {candidate: (patch, search score)})}

    def run(self, model, calibration, *, labels=None, budget=0.5, batch=1, objective="latency", methods=None,
            n_jobs=None, seed=0, metric=None, confidence=CONFIDENCE):
        out = self.run_once(model, calibration, labels=labels, budget=budget, batch=batch, objective=objective,
                            methods=methods, n_jobs=n_jobs, seed=seed, metric=metric, confidence=confidence)
        if objective != "latency":
            return out
        x, y, budget, batch, methods = check_arguments(model, calibration, labels, budget, batch, objective, methods,
                                                       n_jobs, seed, metric)
        return second_pass(self, model, out, x, y, budget, batch, methods, n_jobs, seed, metric, confidence)

    def run_once(self, model, calibration, *, labels=None, budget=0.5, batch=1, objective="latency", methods=None,
                 n_jobs=None, seed=0, metric=None, confidence=CONFIDENCE):
        """One pass of the planner (:meth:`run` adds the second, :mod:`.stacking`)."""
        start = time.perf_counter()
        self.allocations = ()    # objective "size": the whole-model candidates of this run (.allocation)
        x, y, budget, batch, methods = check_arguments(model, calibration, labels, budget, batch, objective, methods,
                                                       n_jobs, seed, metric)
        confidence = check_confidence(confidence)       # before the first forward pass
        names = weighted_layers(model)
        if not names:
            raise CompressionParameterError("optimize(): the model has no Dense or ungrouped Conv2D layer with dense "
                                            "weights; expected an uncompressed model (optimize the original)")
        fit, found, held = split(x.shape[0], seed)
        x_fit, x_search, x_held = x[fit], x[found], x[held]
        x_wide = x[split(x.shape[0], seed, x.shape[0])[0]]   # the whole fitting half: filter pruning's refit
        ref_search, ref_held = references(model, x, y, (found, held), metric)
        judge = HeldOut(model, x_held, ref_held, confidence, seed)
        base_search, base_held = score(model, x_search, ref_search), judge.score
        cands = {n: candidates_for(n, methods) for n in names}
        cands.update(group_candidates(model, methods))     # filter pruning, per channel group
        xb = x[np.arange(batch) % x.shape[0]]
        notes, lat, proxies, wanted, won, dense_bytes = [], None, {}, None, None, None
        if objective == "latency":
            lat = LatencyTable(model, xb, self.timer, self.cache)
            groups = f" and {len(cands) - len(names)} channel groups" if len(cands) > len(names) else ""
            self.progress(1, f"timing {sum(len(c) - 1 for c in cands.values())} candidates of {len(names)} layers"
                             f"{groups} at batch {batch} (the model runs {lat.mode})")
            proxies, wanted = screen.timed(model, cands, x_fit, seed, lat, notes)
        elif objective == "size":     # the best global allocation first: it bounds what a layer's candidate can do
            dense_bytes = file_bytes(model, huffman=True)
            won = self._allocate(model, names, x, seed, (x_search, ref_search, base_search),
                                 judge, budget, n_jobs, dense_bytes, notes)
            proxies, wanted = sizing.screen(model, cands, x_fit, seed, dense_bytes,
                                            won.file_bytes if won else dense_bytes, notes)
        self.progress(2, f"building {'all' if wanted is None else len(wanted)} candidates with their refits "
                         f"({len(fit)} samples) and scoring them ({len(found)} samples)")
        built = self._build(model, cands, wanted, (x, y, seed), {n: x_fit if n in names else x_wide for n in cands},
                            x_search, ref_search, n_jobs)
        table = {}     # {layer or group: [(candidate, patch, drop or None: not scored)]}, dense first
        for n in cands:
            table[n] = [(cands[n][0], None, 0.0)]
            for j, c in enumerate(cands[n][1:], 1):
                patch, s = built.get(c, (proxies.get((n, j)), None))
                if patch is not None:
                    table[n].append((c, patch, None if s is None else 100.0 * (base_search - s)))
        sizes = sizing.sizes(model, table, dense_bytes) if objective == "size" else None
        energies = sizing.energies(model, table, batch) if objective == "energy" else None
        deltas, keys = self._deltas(table, lat) if lat is not None else (None, {})

        joint = {}      # filter pruning of several channel groups, built in one call (its refit sees all)

        def build(ch):
            picked = tuple(sorted((table[n][i][0] for n, i in ch.items() if i and n not in names),
                                  key=lambda c: c.layer))
            patches = {n: table[n][i][1] for n, i in ch.items() if i and (n in names or len(picked) == 1)}
            if len(picked) < 2:
                return compose(model, patches)
            if picked not in joint:
                joint[picked] = structured(model, picked, x_wide, seed)
            return compose(joint[picked], patches)

        def holds(ch):
            return judge.holds(build(ch), budget)

        def harm(ch):
            live = [n for n, i in ch.items() if i]
            back = {n: score(build({**ch, n: 0}), x_search, ref_search) for n in live}
            return sorted(live, key=lambda n: (-back[n], -options[n][ch[n]][1]))

        dense_ms = lat.dense_reference() if lat is not None else None
        apart = exclusive(model, table)
        self.progress(3, f"searching, verifying on the {len(held)} held-out samples")
        again, ruled, joints, pairs = 0, set(), None, None
        for attempt in range(CONFIRM_ROUNDS + 1):
            options = search.options(table, lat.costs(deltas, keys) if lat else sizes or energies,
                                    -MIN_GAIN * dense_ms if lat else -1e-9, budget)
            if lat is not None:      # filter-pruned groups sharing a layer: their joint time, measured
                if joints is None:
                    joints = interactions.measure(lat, model, table, options, names, seed)
                pairs = interactions.costs(lat, joints, deltas)
            choice, used, more, reverted = search.settle(options, budget, apart, holds, harm, ruled, pairs)
            if objective != "latency":
                break
            # the winner's curse: the chosen deltas are the luckiest draws of a noisy table; measure
            # them again, longer, and search again until the choice rests on confirmed entries only
            todo = {keys[n, i]: (n, table[n][i][1]) for n, i in choice.items() if i and keys[n, i] not in lat.confirmed}
            if not todo or attempt == CONFIRM_ROUNDS:
                break
            lat.measure(todo, effort=CONFIRM_EFFORT, screen=False)
            again += len(todo)
            deltas = {n: [0.0] + [lat.delta(keys[n, i]) for i in range(1, len(table[n]))] for n in table}
        notes += more
        if ruled:
            refused = ", ".join(f"{n} as {table[n][i][0].label}" for n, i in sorted(ruled))
            notes.append(f"the held-out check refused {refused}; searched again without")
        if won is not None and any(choice.values()) and file_bytes(build(choice), huffman=True) < won.file_bytes:
            won = None        # the per-layer search's verified choice makes the smaller file
        self.reconfirmed += again
        if again:
            notes.append(f"{again} chosen table entries measured again ({CONFIRM_EFFORT}x the calls) "
                         "before the final choice")
        self.progress(4, "measuring the choice against the dense model")
        if objective == "latency":
            self.measured += lat.measured
            searched, checks = dict(choice), []
            choice, final = self._final(model, choice, build, xb, notes, reverted, checks)
            if choice != searched and any(choice.values()) and not holds(choice):   # a layer set back changes
                fast = checks[0]["chosen"] <= (1 - MIN_GAIN) * checks[0]["dense"]  # what the others' refits fit
                notes.append("the final measurement's choice failed the held-out check: returning the "
                             + ("verified choice" if fast else "dense model"))
                reverted[:] = [n for n in reverted if not searched.get(n)] + [n for n in searched if searched[n] and not fast]
                choice, final = (dict(searched) if fast else dict.fromkeys(choice, 0)), {
                    "dense": checks[0]["dense"], "chosen": checks[0]["chosen" if fast else "dense"]}
        else:
            final = self.timer.measure({"dense": model, "chosen": won.model if won else build(choice)}, xb)
        chosen = won.model if won else build(choice)
        out_bytes = file_bytes(chosen, huffman=True) if any(choice.values()) and not won else None
        if won:     # the per-layer search's choice, if any, made a larger file
            choice, used = {n: 0 for n in table}, f"global allocation {won.label} (per-layer search: {used})"
            out_bytes = won.file_bytes
        if dense_bytes is None:
            dense_bytes = file_bytes(model, huffman=True)
        dense_pj, out_pj = energy(model, batch)["total_pj"], energy(chosen, batch)["total_pj"]
        if any(choice.values()) and (objective == "size" and out_bytes >= dense_bytes
                                     or objective == "energy" and out_pj >= dense_pj):
            notes.append(f"the chosen model's {'file' if objective == 'size' else 'estimated energy'} is not "
                         "smaller than dense: returning the dense model")
            reverted += [n for n, i in choice.items() if i]
            choice = {n: 0 for n in table}
        if not any(choice.values()) and not won:
            chosen, out_bytes, final["chosen"] = model.with_nodes(model.nodes), dense_bytes, final["dense"]
            out_pj = dense_pj
        elif lat is not None and run_mode(chosen, batch) != lat.mode:
            notes.append(f"the chosen model runs in mode {run_mode(chosen, batch)!r}, its table entries were "
                         f"timed in the dense model's {lat.mode!r}: the prediction is less exact")
        result = chosen if chosen is not model else model.with_nodes(model.nodes)
        predicted = check = None   # the table's sum, scaled to the final dense time (a neighbour's load moves both)
        if deltas is not None:
            lag = {n: [(d, 0.0) for d in ds] for n, ds in deltas.items()}
            predicted = final["dense"] * (1.0 + search.total(lag, choice, pairs)[0] / dense_ms)
            if checks:      # the search's own choice, before the final measurement set layers back
                check = (checks[0]["dense"] * (1.0 + search.total(lag, searched, pairs)[0] / dense_ms),
                         checks[0]["chosen"])
        if sizes is None:      # the file bytes of the chosen layers alone (the size table was not built)
            sizes = {n: {i: size_delta(model, {n: table[n][i][1]}, dense_bytes)} if i else {0: 0}
                     for n, i in choice.items()}
            size_table = None
        else:
            size_table = sizes

        def ms(n, i):
            return None if deltas is None or not np.isfinite(deltas[n][i]) else float(deltas[n][i])

        layers = tuple(layer_choice(n, table[n][i], ms(n, i) or 0.0, sizes[n][i], n not in names)
                       for n, i in choice.items())
        if won:
            layers = allocation.layer_choices(model, won, names, x_search, ref_search, base_search, dense_bytes)
        lost, bound = judge.drop(result)
        result.plan = OptimizationPlan(
            objective=objective, budget=budget, metric=metric_name(metric, y), batch=batch,
            layers=layers, dense_ms=final["dense"], predicted_ms=predicted, measured_ms=final["chosen"],
            dense_bytes=int(dense_bytes), bytes=int(out_bytes), dense_energy_pj=dense_pj, energy_pj=out_pj,
            search_check=check,
            baseline_score=base_held, heldout_score=base_held - lost / 100.0, heldout_bound=bound,
            confidence=judge.confidence, search=used, reverted=tuple(reverted),
            cpu=cpu_name(), planning_s=time.perf_counter() - start, notes=tuple(notes),
            table=tuple((n, c.label, ms(n, i), None if size_table is None else int(size_table[n][i]),
                         None if drop is None else float(drop))
                        for n in table for i, (c, _, drop) in enumerate(table[n]))
            + tuple(("*", a.label, None, a.file_bytes - int(dense_bytes), a.drop) for a in self.allocations))
        return result

    def _allocate(self, model, names, x, seed, searched, held, budget, n_jobs, dense_bytes, notes):
        """Deep Compression's global allocations (:mod:`.allocation`), from the sparsest: the smallest
        file within the budget, verified on the held-out part (None: none of them)."""
        self.progress(1, f"building global allocations ({len(allocation.SPARSITIES)} sparsities x "
                         f"{len(allocation.BITS)} code widths, the largest layers also one bit lower, the sparsest "
                         "first), verifying the smallest within the budget")
        x_fit = x[split(x.shape[0], seed, allocation.FIT)[0]]
        won, built, refused = allocation.search(
            model, names, x_fit, searched, seed, n_jobs, budget,
            lambda m: held.holds(m, budget), dense_bytes)
        if refused:
            notes.append(f"global allocations over the budget on the held-out part: {', '.join(refused)}")
        self.allocations = [dataclasses.replace(a, model=None) for a in built]   # keep the figures
        return won

    def _build(self, model, cands, wanted, data, fits, x_search, ref_search, n_jobs):
        """``{candidate: (patch or None, search score)}`` of the candidates in ``wanted`` (None: all),
        with their full refits; kept per model, data and seed for the planner's later runs."""
        key = (id(model), digest(*data[:2]), data[2])
        if key not in self.built or self.built[key][0] is not model:
            self.built[key] = (model, {})
        done = self.built[key][1]
        todo = {n: [c for c in cs[1:] if (wanted is None or c in wanted) and c not in done] for n, cs in cands.items()}
        todo = {n: cs for n, cs in todo.items() if cs}
        jobs = [(evaluate, (model, cs, fits[n], x_search, ref_search, data[2])) for n, cs in todo.items()]
        for cs, rows in zip(todo.values(), run_jobs(jobs, n_jobs)):
            done.update(zip(cs, rows))
        return {c: done[c] for cs in cands.values() for c in cs[1:] if c in done and (wanted is None or c in wanted)}

    def _deltas(self, table, lat):
        """``({layer: [delta ms per option]}, {(layer, option): key})``; entries not timed yet (a full
        build whose formats differ from its proxy's) are timed now, if they run in the dense mode."""
        keys = {(n, i): lat.key(n, c.label, patch) for n, entries in table.items()
                for i, (c, patch, _) in enumerate(entries[1:], 1)}
        new = {keys[n, i]: (n, table[n][i][1]) for (n, i) in keys if keys[n, i] not in lat.rel
               and table[n][i][2] is not None and lat.eligible(n, table[n][i][1])}
        if new:
            lat.measure(new)
        return {n: [0.0] + [lat.delta(keys[n, i]) for i in range(1, len(table[n]))] for n in table}, keys

    def _final(self, model, choice, build, xb, notes, reverted, checks):
        """The final measurement decides: the chosen model, dense, and the chosen model with each one
        layer set back to dense, timed together; while one of the latter is fastest, it becomes the
        choice (with every other layer whose setting back alone also measured MIN_GAIN faster than
        the chosen model: a choice of dozens of layers then takes a few rounds, not one per layer),
        and unless one is MIN_GAIN faster than dense, dense is returned (a table's additive
        prediction misses interactions: a pass that changes its run mode, a fusion one format breaks).
        Returns ``(choice, {"dense", "chosen"} ms)``; each round's times are appended to ``checks``."""
        choice = dict(choice)
        while True:
            live = [n for n, i in choice.items() if i]
            if not live:
                ms = self.timer.measure({"dense": model}, xb)
                return choice, {"dense": ms["dense"], "chosen": ms["dense"]}
            variants = {"dense": model, "chosen": build(choice)}
            if len(live) > 1:
                variants.update({f"-{n}": build({**choice, n: 0}) for n in live})
            ms = self.timer.measure(variants, xb, effort=CONFIRM_EFFORT)
            checks.append(ms)
            best = min(ms, key=ms.get)
            if ms[best] > (1 - MIN_GAIN) * ms["dense"]:
                best = "dense"       # not measurably faster: no accuracy is spent for nothing
            if best == "chosen":
                return choice, ms
            drop = live if best == "dense" else [best[1:]] + [
                n for n in live if f"-{n}" != best and ms[f"-{n}"] <= (1 - MIN_GAIN) * ms["chosen"]]
            notes.append(f"final measurement: {ms['chosen']:.4f} ms chosen, {ms['dense']:.4f} ms dense, "
                         f"{ms[best]:.4f} ms with {', '.join(drop)} set back to dense"
                         + (": returning the dense model" if best == "dense" else ""))
            reverted += drop
            choice.update({n: 0 for n in drop})
