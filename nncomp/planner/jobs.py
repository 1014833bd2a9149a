"""The planner's jobs: the calibration split, scoring, and one layer's candidates built and scored.

Each layer's candidates are one job (:func:`evaluate`); :func:`run_jobs` runs the jobs through joblib
when ``n_jobs`` asks for it, so ``joblib.parallel_config(backend="dask")`` runs them on a Dask
cluster. Jobs only build and score (accuracy); latency is always measured in the calling process.
"""
import hashlib
import warnings
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from ..errors import CompressionParameterError
from .candidates import build_patch, compose

__all__ = ["MAX_FIT", "CONFIDENCE", "Target", "HeldOut", "split", "references", "score", "evaluate", "run_jobs",
           "digest"]

MAX_FIT = 512          # calibration samples given to the methods' refits
# The held-out check accepts a model when the drop's one-sided upper confidence bound at this level
# is within the budget (0.5: the measured drop itself). With the measured drop alone, the planner's
# size plans lost 1.0 and 0.6 test points (1,000 shipped test digits) at held-out drops of 0.50 and
# 0.00 (1,000 held-out digits): the drop of one model on 1,000 samples is uncertain by about as
# much as the budget, and the search offers the check the luckiest of many candidates.
CONFIDENCE = 0.8
BOOTSTRAP = 200        # resamples of the held-out part for a metric's bound (top-1: a normal bound)


def split(n, seed, max_fit=MAX_FIT):
    """Seeded ``(fit, search, held)`` index arrays: half (at most ``max_fit``), a quarter, a quarter."""
    order = np.random.default_rng(seed).permutation(n)
    q = n // 4
    held, found, fit = order[n - q:], order[n - 2 * q:n - q], order[:n - 2 * q]
    return np.sort(fit[:max_fit]), np.sort(found), np.sort(held)


@dataclass(frozen=True, eq=False)
class Target:
    """What a user's ``metric`` compares outputs with: ``metric(outputs, values)`` (higher is better)."""

    values: np.ndarray
    metric: object


def references(model, x, labels, parts, metric=None):
    """What each of ``parts`` (index arrays) is scored against: its labels, else the original
    model's top-1 predictions; with a ``metric``, a :class:`Target` of the labels or of the
    original model's outputs."""
    out = []
    for part in parts:
        if metric is None:
            out.append(labels[part] if labels is not None else model(x[part]).argmax(axis=1))
        else:
            out.append(Target(labels[part] if labels is not None else model(x[part]), metric))
    return out


def score(model, x, ref):
    """Share of top-1 predictions of ``model`` on ``x`` equal to ``ref``; for a :class:`Target`, its
    metric of the outputs."""
    return score_outputs(model(x), ref)


def score_outputs(outputs, ref):
    """:func:`score` of a model's ``outputs``."""
    if isinstance(ref, Target):
        value = ref.metric(outputs, ref.values)
        if np.ndim(value) != 0 or not np.isfinite(value):
            raise CompressionParameterError(f"optimize(): metric {getattr(ref.metric, '__name__', ref.metric)!r} "
                                            f"must return one finite number (higher is better); got {value!r}. "
                                            "Return a float, e.g. a mean over the samples")
        return float(value)
    return float(np.mean(outputs.argmax(axis=1) == ref))


class HeldOut:
    """The budget's check on the held-out part ``x`` (scored against ``ref``, as :func:`score`): a
    model's drop from ``model``'s score, in points, and its one-sided upper bound at ``confidence``.

    The two models are scored on the same samples, so the bound is on the paired difference: for
    top-1, per sample ``d = right(original) - right(model)`` (1, 0 or -1), the bound ``100 (mean(d) +
    z sd(d) / sqrt(n))`` with ``z`` the normal quantile of ``confidence`` (only the samples on which
    the two disagree widen it); for a metric (which need not be a mean over samples: a pooled IoU),
    the ``confidence`` quantile of the drop over BOOTSTRAP resamples of the samples, the same
    resamples for every model (seeded), never below the drop itself.
    """

    def __init__(self, model, x, ref, confidence=CONFIDENCE, seed=0):
        self.x, self.ref, self.confidence = x, ref, float(confidence)
        out = model(x)
        if isinstance(ref, Target):     # the original's score on each resample, once
            n = len(x)
            self.resamples = np.random.default_rng(seed).integers(0, n, (BOOTSTRAP if confidence > 0.5 else 0, n))
            self.base_scores = [ref.metric(out[i], ref.values[i]) for i in self.resamples]
        else:
            self.base = out.argmax(axis=1) == ref
        self.score = score_outputs(out, ref)

    def drop(self, model):
        """``(drop, bound)``: the points ``model`` loses on the held-out part, and their upper bound."""
        out = model(self.x)
        drop = 100.0 * (self.score - score_outputs(out, self.ref))
        if self.confidence <= 0.5:
            return drop, drop
        if isinstance(self.ref, Target):
            metric, values = self.ref.metric, self.ref.values
            drops = [100.0 * (b - metric(out[i], values[i])) for b, i in zip(self.base_scores, self.resamples)]
            return drop, max(drop, float(np.quantile(drops, self.confidence)))
        d = self.base.astype(np.float64) - (out.argmax(axis=1) == self.ref)
        spread = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0
        return drop, drop + 100.0 * NormalDist().inv_cdf(self.confidence) * float(spread)

    def holds(self, model, budget):
        """Whether ``model``'s bound is within ``budget`` points."""
        return self.drop(model)[1] <= budget + 1e-9


def evaluate(model, cands, x_fit, x_search, ref_search, seed):
    """One job, one layer: ``[(patch nodes or None, search score)]`` of its candidates ``cands``."""
    memo, out = {}, []
    for cand in cands:
        patch = build_patch(model, cand, x_fit, seed, memo)
        out.append((None, float("nan")) if patch is None else
                   (patch, score(compose(model, {cand.layer: patch}), x_search, ref_search)))
    return out


def digest(*arrays):
    """A fingerprint of the calibration data (the built candidates are kept per model and data)."""
    h = hashlib.sha256()
    for a in arrays:
        if a is not None:
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


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
