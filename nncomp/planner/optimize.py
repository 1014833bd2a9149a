"""``nc.optimize``: the fastest (or smallest) model within an accuracy budget, measured on this machine.

The steps (each in its own module):

1. The calibration data is split, seeded: a *fitting* half for the methods' refits (at most
   ``MAX_FIT`` samples), a *search* quarter that scores each candidate, and a *held-out* quarter that
   only the verification sees; the budget is checked there.
2. Candidates per weighted layer (:mod:`.candidates`), each built by a public method on that one layer
   with its calibration refit, evaluated as independent jobs (``n_jobs`` through joblib if installed).
3. Costs: measured whole-model times with one layer changed at the target batch (:mod:`.latency`,
   cached per CPU and versions), or saved file bytes (``objective="size"``).
4. Search under an additive model: exact (``scipy.optimize.milp``) and greedy (:mod:`.search`);
   verification on the held-out part, and a repair loop reverting the most harmful layers.
5. A final measurement against the dense model decides: the result is never slower (or, for
   ``"size"``, larger) than the dense model, which is always a candidate.
"""
import time
import warnings

import numpy as np

from ..checks import check_choice, check_number, check_seed
from ..errors import CompressionParameterError
from . import search
from .candidates import METHODS, build_patch, candidates_for, compose, describe_patch, weighted_layers
from .latency import LatencyCache, Timer, cpu_name, entry_key, machine_key, structure_key
from .report import LayerChoice, OptimizationPlan

__all__ = ["optimize", "Planner", "OBJECTIVES"]

OBJECTIVES = ("latency", "size")
MAX_FIT = 512          # calibration samples given to the methods' refits
MIN_SAMPLES = 12       # a quarter for the search and a quarter held out need at least 3 each
# A candidate must save at least this share of the dense model's time (as measured) to be worth an
# accuracy risk; smaller measured savings are within the timing noise of a busy machine.
MIN_GAIN = 0.02
# Chosen entries are measured again with this many times the calls, and the search rerun, at most
# CONFIRM_ROUNDS times (until the choice holds only confirmed entries).
CONFIRM_EFFORT = 3
CONFIRM_ROUNDS = 3


def optimize(model, calibration, *, labels=None, budget=0.5, batch=1, objective="latency", methods=None,
             n_jobs=None, seed=0):
    """The fastest (or smallest) version of ``model`` whose accuracy loss stays within ``budget``.

    Per Dense/Conv2D layer the planner tries dense, CSR at several sparsities, CSR + int8, int8
    (weight-only, dynamic, static), k-means codebooks alone and on CSR, and low-rank pairs, each built
    by nncomp's own method with its calibration refit; times each at ``batch`` inside the whole
    model's forward pass on this machine; picks the combination with an exact integer program
    (``scipy.optimize.milp``) and a NetAdapt-style greedy search; verifies it on held-out data and
    reverts the most harmful layers until the budget holds; and returns the dense model unless the
    chosen one measures faster (smaller). See :mod:`nncomp.planner`.

    Parameters
    ----------
    model : Model
        A classifier (top-1 of its output is the prediction).
    calibration : array (n_samples, *input_shape)
        Inputs in the model's layout, at least 12 (a few thousand give the budget a resolution of a
        fraction of a point): half fits the refits, a quarter scores the search, a quarter is held out.
    labels : array of int (n_samples,), optional
        Labels of ``calibration``: the budget is then in points of top-1 accuracy; without them, of
        top-1 agreement with ``model``.
    budget : float >= 0
        Points allowed to be lost on the held-out quarter (0.5 = half a point).
    batch : int >= 1
        The batch size the model will serve; every time is measured at it.
    objective : {"latency", "size"}
        Minimise the measured time per call, or the bytes of the file ``nc.save(..., huffman=True)`` writes.
    methods : list of str, optional
        Candidate families, from ``"prune"``, ``"prune_int8"``, ``"quantize"``, ``"share"``,
        ``"prune_share"``, ``"factorize"`` (default: all). Dense is always a candidate.
    n_jobs : int, optional
        Build and score candidates as this many joblib jobs (joblib is optional; without it they run in
        turn, with a warning). Latency is always measured in this process.
    seed : int
        Seeds the split of the calibration data and every method's randomness.

    Returns
    -------
    Model
        A new model; ``result.plan`` (:class:`~nncomp.planner.OptimizationPlan`) says what was chosen,
        measured and predicted, and ``nc.save`` stores it with the model.
    """
    return Planner().run(model, calibration, labels=labels, budget=budget, batch=batch, objective=objective,
                         methods=methods, n_jobs=n_jobs, seed=seed)


def _check(model, calibration, labels, budget, batch, objective, methods, n_jobs, seed):
    from ..compress.calibration import check_calibration, check_model
    check_model(model, "optimize")
    budget = check_number(budget, "budget", low=0, method="optimize",
                          fix="budget is the points of accuracy you accept to lose, e.g. 0.5")
    batch = check_number(batch, "batch", integer=True, low=1, method="optimize")
    check_choice(objective, "objective", OBJECTIVES, method="optimize")
    check_seed(seed, method="optimize")
    if methods is None:
        methods = METHODS
    if isinstance(methods, str):
        methods = [methods]
    bad = [m for m in methods if not isinstance(m, str) or m not in METHODS]
    if bad or not list(methods):
        raise CompressionParameterError(f"optimize(): methods must be a non-empty list of names from "
                                        f"{list(METHODS)}; got {methods!r}. Drop {bad}, or pass methods=None "
                                        "for all")
    if n_jobs is not None:
        check_number(n_jobs, "n_jobs", integer=True, low=-64, method="optimize",
                     fix="None (in turn), a number of jobs, or -1 for one per core")
        if n_jobs == 0:
            raise CompressionParameterError("optimize(): n_jobs=0 runs nothing; pass None, a positive number or -1")
    if calibration is None:
        raise CompressionParameterError("optimize() needs calibration inputs (a few thousand training samples in "
                                        f"the model's layout, shape (n, {', '.join(map(str, model.input_shape))}))")
    x = check_calibration(calibration, model, "optimize")
    if x.shape[0] < MIN_SAMPLES:
        raise CompressionParameterError(f"optimize(): calibration has {x.shape[0]} samples; expected at least "
                                        f"{MIN_SAMPLES} (half fit, a quarter searched, a quarter held out); pass more")
    if labels is not None:
        y = np.asarray(labels)
        if y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
            raise CompressionParameterError(f"optimize(): labels must be {x.shape[0]} integer class indices, one per "
                                            f"calibration sample; got {y.dtype} {y.shape}. Pass labels=None to "
                                            "score agreement with the original model")
        labels = y
    return x, labels, float(budget), int(batch), tuple(dict.fromkeys(methods))


def split(n, seed):
    """Seeded ``(fit, search, held)`` index arrays: half (at most MAX_FIT), a quarter, a quarter."""
    order = np.random.default_rng(seed).permutation(n)
    q = n // 4
    held, found, fit = order[n - q:], order[n - 2 * q:n - q], order[:n - 2 * q]
    return np.sort(fit[:MAX_FIT]), np.sort(found), np.sort(held)


def score(model, x, ref):
    """Share of top-1 predictions of ``model`` on ``x`` equal to ``ref``."""
    return float(np.mean(model(x).argmax(axis=1) == ref))


def evaluate(model, cands, x_fit, x_search, ref_search, seed):
    """One job, one layer: ``[(patch nodes or None, search score)]`` of its candidates ``cands``."""
    memo, out = {}, []
    for cand in cands:
        patch = build_patch(model, cand, x_fit, seed, memo)
        out.append((None, float("nan")) if patch is None else
                   (patch, score(compose(model, {cand.layer: patch}), x_search, ref_search)))
    return out


def run_jobs(jobs, n_jobs):
    """``[fn(*args) for fn, args in jobs]``, through joblib when ``n_jobs`` asks for it and it is installed."""
    if n_jobs not in (None, 1):
        try:
            from joblib import Parallel, delayed
        except ImportError:
            warnings.warn("optimize(n_jobs=...): joblib is not installed; evaluating candidates in turn "
                          "(pip install joblib)", stacklevel=3)
        else:
            return Parallel(n_jobs=n_jobs)(delayed(fn)(*args) for fn, args in jobs)
    return [fn(*args) for fn, args in jobs]


class Planner:
    """The planner behind :func:`optimize`, with its sources of time and its cache replaceable.

    Parameters
    ----------
    timer : object with ``measure({name: Model}, x) -> {name: ms}``, optional
        Default :class:`~nncomp.planner.latency.Timer` (whole calls, alternating, medians).
    cache : LatencyCache or None or False
        Default: the cache file in :func:`~nncomp.planner.latency.cache_dir`; False: no cache.
    """

    def __init__(self, *, timer=None, cache=None):
        self.timer = timer or Timer()
        self.cache = None if cache is False else (cache or LatencyCache())
        self.measured = 0      # candidate models timed for the table (cache misses)
        self.reconfirmed = 0   # chosen entries timed again (the winner's curse), besides the final check

    def run(self, model, calibration, *, labels=None, budget=0.5, batch=1, objective="latency", methods=None,
            n_jobs=None, seed=0):
        start = time.perf_counter()
        x, y, budget, batch, methods = _check(model, calibration, labels, budget, batch, objective, methods,
                                              n_jobs, seed)
        names = weighted_layers(model)
        if not names:
            raise CompressionParameterError("optimize(): the model has no Dense or ungrouped Conv2D layer with dense "
                                            "weights; expected an uncompressed model (optimize the original)")
        fit, found, held = split(x.shape[0], seed)
        x_fit, x_search, x_held = x[fit], x[found], x[held]
        ref_search = y[found] if y is not None else model(x_search).argmax(axis=1)
        ref_held = y[held] if y is not None else model(x_held).argmax(axis=1)
        base_search, base_held = score(model, x_search, ref_search), score(model, x_held, ref_held)

        cands = {n: candidates_for(n, methods) for n in names}
        jobs = [(evaluate, (model, cands[n][1:], x_fit, x_search, ref_search, seed)) for n in names]
        results = iter([r for rows in run_jobs(jobs, n_jobs) for r in rows])
        table = {}     # {layer: [(candidate, patch, drop)]}, dense first
        for n in names:
            table[n] = [(cands[n][0], None, 0.0)]
            for c in cands[n][1:]:
                patch, s = next(results)
                if patch is not None:
                    table[n].append((c, patch, 100.0 * (base_search - s)))
        xb = x[np.arange(batch) % x.shape[0]]
        dense_bytes, sizes = self._sizes(model, table) if objective == "size" else (None, None)
        dense_ms, deltas, keys, confirmed = (self._latencies(model, table, xb, batch) if objective == "latency"
                                             else (None, None, {}, set()))

        def build(ch):
            return compose(model, {n: table[n][i][1] for n, i in ch.items() if i})

        def holds(ch):
            return 100.0 * (base_held - score(build(ch), x_held, ref_held)) <= budget + 1e-9

        def harm(ch):
            live = [n for n, i in ch.items() if i]
            back = {n: score(build({**ch, n: 0}), x_search, ref_search) for n in live}
            return sorted(live, key=lambda n: (-back[n], -options[n][ch[n]][1]))

        for attempt in range(CONFIRM_ROUNDS + 1):
            options = self._options(table, deltas, sizes, dense_ms, budget)
            choice, used, notes = self._solve(options, budget)
            choice, reverted = search.repair(choice, holds, harm)
            if objective != "latency":
                break
            # the winner's curse: the chosen deltas are the luckiest draws of a noisy table; measure
            # them again, longer, and search again until the choice rests on confirmed entries only
            todo = [(n, i) for n, i in choice.items() if i and (n, i) not in confirmed]
            if not todo or attempt == CONFIRM_ROUNDS:
                break
            self._confirm(model, table, todo, xb, keys, deltas, confirmed)
        if self.reconfirmed:
            notes.append(f"{self.reconfirmed} chosen table entries measured again ({CONFIRM_EFFORT}x the calls) "
                         "before the final choice")
        if objective == "latency":
            choice, final = self._final(model, choice, build, xb, notes, reverted)
        else:
            final = self.timer.measure({"dense": model, "chosen": build(choice)}, xb)
        chosen = build(choice)
        from ..bench.sizes import saved_size
        out_bytes = saved_size(chosen, huffman=True).file_bytes if any(choice.values()) else None
        if dense_bytes is None:
            dense_bytes = saved_size(model, huffman=True).file_bytes
        if objective == "size" and out_bytes is not None and out_bytes >= dense_bytes:
            notes.append("the chosen model's file is not smaller than dense: returning the dense model")
            reverted += [n for n, i in choice.items() if i]
            choice = {n: 0 for n in names}
        if not any(choice.values()):
            chosen, out_bytes, final["chosen"] = model.with_nodes(model.nodes), dense_bytes, final["dense"]
        result = chosen if chosen is not model else model.with_nodes(model.nodes)
        predicted = None if deltas is None else final["dense"] + sum(deltas[n][i] for n, i in choice.items())
        if sizes is None:      # the file bytes of the chosen layers alone (the size table was not built)
            sizes = {n: {i: saved_size(compose(model, {n: table[n][i][1]}), huffman=True).file_bytes - dense_bytes}
                     if i else {0: 0} for n, i in choice.items()}
            size_table = None
        else:
            size_table = sizes
        layers = tuple(self._choice(n, table[n][i], deltas[n][i] if deltas else 0.0, sizes[n][i])
                       for n, i in choice.items())
        result.plan = OptimizationPlan(
            objective=objective, budget=budget, metric="accuracy" if y is not None else "agreement", batch=batch,
            layers=layers, dense_ms=final["dense"], predicted_ms=predicted, measured_ms=final["chosen"],
            dense_bytes=int(dense_bytes), bytes=int(out_bytes), baseline_score=base_held,
            heldout_score=score(result, x_held, ref_held), search=used, reverted=tuple(reverted),
            cpu=cpu_name(), planning_s=time.perf_counter() - start, notes=tuple(notes),
            table=tuple((n, c.label, None if deltas is None else float(deltas[n][i]),
                         None if size_table is None else int(size_table[n][i]), float(drop))
                        for n in names for i, (c, _, drop) in enumerate(table[n])))
        return result

    @staticmethod
    def _options(table, deltas, sizes, dense_ms, budget):
        """``{layer: [(cost, drop)]}`` for the search; options not worth an accuracy risk (a measured
        saving under MIN_GAIN of the dense time, or no smaller file) get an impossible drop."""
        options = {}
        for n, entries in table.items():
            options[n] = [(0.0, 0.0)]
            for i, (_, _, drop) in enumerate(entries[1:], 1):
                cost = deltas[n][i] if deltas is not None else sizes[n][i]
                worth = cost <= -MIN_GAIN * dense_ms if deltas is not None else cost < 0
                options[n].append((float(cost), max(float(drop), 0.0)) if worth else (0.0, budget + 1e9))
        return options

    @staticmethod
    def _solve(options, budget):
        """``(choice, search used, notes)``: the exact choice, the greedy one if the solver fails."""
        choice, greedy = search.exact(options, budget), search.greedy(options, budget)
        if choice is None:
            return greedy, "greedy", []
        if greedy != choice:
            return choice, "milp", [f"greedy chose otherwise: predicted cost {search.total(options, greedy)[0]:.4g} "
                                    f"against {search.total(options, choice)[0]:.4g} for the exact choice"]
        return choice, "milp (greedy agrees)", []

    def _confirm(self, model, table, todo, xb, keys, deltas, confirmed):
        """Measure entries ``todo`` [(layer, option)] again with CONFIRM_EFFORT times the calls; the
        new deltas replace the table's and the cache's, marked confirmed."""
        models = {"dense": model, **{keys[n, i]: compose(model, {n: table[n][i][1]}) for n, i in todo}}
        ms = self.timer.measure(models, xb, effort=CONFIRM_EFFORT)
        self.reconfirmed += len(todo)
        for n, i in todo:
            deltas[n][i] = ms[keys[n, i]] - ms["dense"]
            confirmed.add((n, i))
            if self.cache is not None:
                self.cache.put(keys[n, i], {"ms": ms[keys[n, i]], "dense_ms": ms["dense"], "confirmed": True})
        if self.cache is not None:
            self.cache.save()

    def _final(self, model, choice, build, xb, notes, reverted):
        """The final measurement decides: the chosen model, dense, and the chosen model with each one
        layer set back to dense, timed together; while one of the latter is fastest, it becomes the
        choice, and unless one is MIN_GAIN faster than dense, dense is returned (a table's additive prediction misses interactions: a pass that drops below the
        serial-kernel threshold, a fusion one format breaks). Returns ``(choice, {"dense", "chosen"} ms)``."""
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
            best = min(ms, key=ms.get)
            if ms[best] > (1 - MIN_GAIN) * ms["dense"]:
                best = "dense"       # not measurably faster: no accuracy is spent for nothing
            if best == "chosen":
                return choice, ms
            drop = live if best == "dense" else [best[1:]]
            notes.append(f"final measurement: {ms['chosen']:.4f} ms chosen, {ms['dense']:.4f} ms dense, "
                         f"{ms[best]:.4f} ms with {', '.join(drop)} set back to dense"
                         + (": returning the dense model" if best == "dense" else ""))
            reverted += drop
            choice.update({n: 0 for n in drop})

    @staticmethod
    def _choice(name, entry, delta_ms, delta_bytes):
        cand, patch, drop = entry
        return LayerChoice(layer=name, candidate=cand.label, method=cand.method, settings=dict(cand.settings),
                           format=describe_patch(patch) if patch else "dense", delta_ms=float(delta_ms),
                           delta_bytes=int(delta_bytes), drop=float(drop))

    def _latencies(self, model, table, xb, batch):
        """Dense time and ``{layer: [delta ms per option]}``, from the cache or measured together."""
        machine, structure = machine_key(), structure_key(model)
        keys, todo = {}, {"dense": model}
        for n, entries in table.items():
            for i, (c, patch, _) in enumerate(entries[1:], 1):
                key = entry_key(machine, structure, batch, [n, c.label, [
                    (p.name, p.layer.describe(), int(p.layer.nbytes)) for p in patch]])
                keys[n, i] = key
                if self.cache is None or self.cache.get(key) is None:
                    todo[key] = compose(model, {n: patch})
        ms = self.timer.measure(todo, xb) if len(todo) > 1 else {}
        self.measured += max(0, len(ms) - 1)
        for key, m in ms.items():
            if key != "dense" and self.cache is not None:
                self.cache.put(key, {"ms": m, "dense_ms": ms["dense"]})
        if self.cache is not None:
            self.cache.save()
        deltas = {}
        for n, entries in table.items():
            deltas[n] = [0.0]
            for i in range(1, len(entries)):
                e = self.cache.get(keys[n, i]) if self.cache is not None else None
                e = e or {"ms": ms[keys[n, i]], "dense_ms": ms["dense"]}
                deltas[n].append(e["ms"] - e["dense_ms"])
        dense = ms.get("dense") or float(np.median([self.cache.get(k)["dense_ms"] for k in keys.values()]))
        confirmed = {k for k, key in keys.items() if self.cache is not None and (self.cache.get(key) or {}).get("confirmed")}
        return dense, deltas, keys, confirmed

    @staticmethod
    def _sizes(model, table):
        """Dense file bytes and ``{layer: [delta bytes per option]}`` (Huffman-coded native files)."""
        from ..bench.sizes import saved_size
        dense = saved_size(model, huffman=True).file_bytes
        return dense, {n: [0] + [saved_size(compose(model, {n: p}), huffman=True).file_bytes - dense
                                 for _, p, _ in entries[1:]] for n, entries in table.items()}
