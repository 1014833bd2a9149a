"""The planner's jobs: the calibration split, scoring, and one layer's candidates built and scored.

Each layer's candidates are one job (:func:`evaluate`); :func:`run_jobs` runs the jobs through joblib
when ``n_jobs`` asks for it, so ``joblib.parallel_config(backend="dask")`` runs them on a Dask
cluster. Jobs only build and score (accuracy); latency is always measured in the calling process.
"""
import hashlib
import warnings

import numpy as np

from .candidates import build_patch, compose

__all__ = ["MAX_FIT", "split", "score", "evaluate", "run_jobs", "digest"]

MAX_FIT = 512          # calibration samples given to the methods' refits


def split(n, seed, max_fit=MAX_FIT):
    """Seeded ``(fit, search, held)`` index arrays: half (at most ``max_fit``), a quarter, a quarter."""
    order = np.random.default_rng(seed).permutation(n)
    q = n // 4
    held, found, fit = order[n - q:], order[n - 2 * q:n - q], order[:n - 2 * q]
    return np.sort(fit[:max_fit]), np.sort(found), np.sort(held)


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
