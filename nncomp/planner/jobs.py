"""The planner's jobs: the calibration split, scoring, and one layer's candidates built and scored.

Each layer's candidates are one job (:func:`evaluate`); :func:`run_jobs` runs the jobs through joblib
when ``n_jobs`` asks for it, so ``joblib.parallel_config(backend="dask")`` runs them on a Dask
cluster. Jobs only build and score (accuracy); latency is always measured in the calling process.
"""
import hashlib
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import CompressionParameterError
from .candidates import build_patch, compose

__all__ = ["MAX_FIT", "Target", "split", "references", "score", "evaluate", "run_jobs", "digest"]

MAX_FIT = 512          # calibration samples given to the methods' refits


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
    if isinstance(ref, Target):
        value = ref.metric(model(x), ref.values)
        if np.ndim(value) != 0 or not np.isfinite(value):
            raise CompressionParameterError(f"optimize(): metric {getattr(ref.metric, '__name__', ref.metric)!r} "
                                            f"must return one finite number (higher is better); got {value!r}. "
                                            "Return a float, e.g. a mean over the samples")
        return float(value)
    return float(np.mean(model(x).argmax(axis=1) == ref))


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
