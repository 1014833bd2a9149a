"""Measured latency of candidates, and its on-disk cache per CPU model and library versions.

A candidate's cost is measured, never estimated from FLOPs: the whole model with only that layer
changed is called at the target batch through its own forward pass (fused, planned, threaded as a
user's call is), alternating with the dense model and every other candidate in rounds (as
:func:`nncomp.bench.timing.alternate` does); its table entry is the median over rounds of its
difference from the dense model in the same round. A
combination is predicted as the dense time plus its layers' differences and checked against a
measured run (:attr:`OptimizationPlan.prediction_error`).

Entries are cached in ``$NNCOMP_CACHE_DIR/latency.json`` (default ``~/.cache/nncomp``; the
directory is the one place the planner writes outside the caller's paths), keyed by the CPU model,
Numba's thread count, the versions of Python, NumPy, Numba and nncomp, a digest of the engine's
source, the batch, the model's structure and the candidate's formats: a second plan of the same
model on the same machine measures nothing new.
"""
import contextlib
import functools
import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from ..tuning import CACHE_ENV, cache_dir, cpuinfo, engine_digest  # noqa: F401 - shared with the measured choices

__all__ = ["LatencyCache", "Timer", "cache_dir", "machine_key", "structure_key"]

CACHE_FILE = "latency.json"
# Each contender gets about TARGET_S of timed calls (between MIN_CALLS and MAX_CALLS calls), in blocks
# of BLOCK back-to-back calls (warm caches, as a serving loop has them), all contenders alternating.
TARGET_S = 0.2
MIN_CALLS = 12
MAX_CALLS = 400
BLOCK = 4
SLOW_BLOCK_MS = 1.0    # calls slower than this run one per block
BLOCK_MS = 0.5         # faster calls run in blocks of at least BLOCK and about this long (at most 32 calls):
                       # warm caches, as in a serving loop, whatever ran in between


def cpu_name():
    """The CPU model string (``/proc/cpuinfo``'s model name, else the platform's)."""
    return cpuinfo().get("model name") or platform.processor() or platform.machine() or "unknown"


def machine_key():
    """What a latency depends on besides the model: CPU, threads, library versions, and the engine's
    own source (a development checkout changes kernels without changing its version)."""
    import numba

    from .. import __version__
    return {"cpu": cpu_name(), "threads": numba.get_num_threads(), "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__, "nncomp": __version__,
            "engine": engine_digest()}


@functools.cache
def structure_key(model):
    """The model's structure without its weights' values: nodes, kinds, configs, formats, shapes."""
    def config(layer):
        return json.dumps(layer.config(), sort_keys=True, default=str)
    return [model.input_layout, list(model.input_shape), list(model.outputs)] + [
        [n.name, n.layer.kind, list(n.inputs), config(n.layer), n.layer.describe(), int(n.layer.nbytes)]
        for n in model.nodes]


def entry_key(machine, structure, batch, patch_key):
    text = json.dumps([machine, structure, int(batch), patch_key], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class LatencyCache:
    """A JSON file of ``{key: {"ms": ..., "dense_ms": ...}}``; written whole, then renamed over."""

    def __init__(self, folder=None):
        self.path = Path(folder or cache_dir()) / CACHE_FILE
        self.entries = {}
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(self.path.read_text())
            if isinstance(loaded, dict):
                self.entries = {k: v for k, v in loaded.items() if isinstance(v, dict) and "ms" in v}
        self.added = 0

    def get(self, key):
        return self.entries.get(key)

    def put(self, key, value):
        self.entries[key] = value
        self.added += 1

    def save(self):
        """Write the cache (write-then-rename); a cache that cannot be written is skipped silently."""
        if not self.added:
            return
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".latency-", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump(self.entries, fh)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise


class Timer:
    """Times whole-model calls: ``measure({name: model}, x) -> {name: ms}``.

    Every model is warmed up (compiled, planned), then the models are called in rounds, each once
    per round in blocks of ``block`` back-to-back calls (1 for calls over ``SLOW_BLOCK_MS``); a
    model's time is the first model's median plus the median over rounds of its difference from
    the first model in the same round. Paired differences cancel the drift of a shared machine
    (another process starting, a core slowing) that independent medians of few rounds keep.
    The planner's only source of time; tests replace it by a table. ``calls`` counts models measured;
    ``spread`` holds, after each measurement, the standard error in ms of each model's difference
    from the first (the first's own: 0).
    """

    def __init__(self, target_s=None, min_calls=None, max_calls=None, block=None):
        self.target_s = TARGET_S if target_s is None else target_s
        self.min_calls = MIN_CALLS if min_calls is None else min_calls
        self.max_calls = MAX_CALLS if max_calls is None else max_calls
        self.block = BLOCK if block is None else block
        self.calls = 0

    def measure(self, models, x, effort=1):
        """``{name: ms}`` for ``{name: Model}`` called on ``x``; ``effort`` multiplies the calls."""
        names = list(models)
        fns = [(lambda m=models[n]: m(x)) for n in names]
        slowest = 0.0
        for fn in fns:                   # compile, plan, warm; the slowest call sets the repeat
            fn()
            t0 = time.perf_counter()
            fn()
            slowest = max(slowest, time.perf_counter() - t0)
        block = (int(np.clip(BLOCK_MS / max(slowest * 1e3, 1e-3), self.block, 32)) if slowest * 1e3 < SLOW_BLOCK_MS
                 else 1)
        calls = effort * np.clip(self.target_s / max(slowest, 1e-6), self.min_calls, self.max_calls)
        rounds = max(3, int(calls) // block)
        times = np.empty((rounds, len(fns)))
        for r in range(rounds):
            for j, fn in enumerate(fns):
                t0 = time.perf_counter()
                for _ in range(block):
                    fn()
                times[r, j] = (time.perf_counter() - t0) / block
        times *= 1e3
        first = float(np.median(times[:, 0]))
        self.calls += len(models)
        # the standard error of each paired median difference (from the MAD: robust to a slow round)
        diff = times - times[:, :1]
        mid = np.median(diff, axis=0)
        mad = np.median(np.abs(diff - mid), axis=0)
        self.spread = {n: float(1.253 * 1.4826 * mad[j] / np.sqrt(rounds)) for j, n in enumerate(names)}
        return {n: first + float(mid[j]) if j else first for j, n in enumerate(names)}
