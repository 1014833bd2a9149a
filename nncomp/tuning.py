"""Kernel choices measured on this CPU: a short probe at first use, kept per CPU model and versions.

Where two kernels compute the same layer and which is faster depends on the CPU (its caches, its
BLAS, its vector units), a constant tuned on one machine is wrong on the next: the weight-streaming
dense product beat OpenBLAS 1.3-2x up to 128 samples on a Xeon with AMX and lost 1.7-2x at 256,
and where the line falls on another CPU is a guess. :func:`choose` times the candidates on the
layer's own shape (alternating, the median of a few samples each, after a warm-up call; a sample a
block of calls where calls are short; OpenBLAS at one thread, as in a model's pass), keeps the
winner for the process, and writes it to a JSON file per CPU: the model name, family, model and
flags from /proc/cpuinfo, the numpy, numba and nncomp versions and a digest of the engine's source
name the file, so another CPU, an upgrade or a changed kernel probes again. The first plan for a
shape pays the probe (fc6 at 128 samples: about 1 s); later processes read the file.

``NNCOMP_TUNING=off`` turns probing off (every decision takes its default, the choice of the
built-in rule: reproducible plans, no timing at first use; the test suite runs so). The files live in
:func:`cache_dir` (``NNCOMP_CACHE_DIR``, as the planner's latency cache). The files are
read as untrusted: anything but a mapping of decision keys to candidate names is ignored (and
replaced at the next write), and a name that is not a candidate of the decision is never used. A
file is written whole and renamed into place, so a crash or two processes writing at once leave
either version, never a torn file.
"""
import functools
import hashlib
import json
import os
import platform
import threading
import time
from pathlib import Path

from .errors import NncompError

__all__ = ["ENV", "CACHE_ENV", "enabled", "cpuinfo", "cache_dir", "engine_digest", "cache_file", "choose", "forget"]

ENV = "NNCOMP_TUNING"          # "off": the built-in rules, no probes
CACHE_ENV = "NNCOMP_CACHE_DIR"  # the folder of the files (shared with the planner's latency cache)
CALLS = 3           # timed calls per candidate at least (after one untimed warm-up call each) ...
MAX_CALLS = 11      # ... and up to this many while a round of calls takes under ROUND_SECONDS: 3 calls
ROUND_SECONDS = 0.5  # of VGG-16's conv3_2 at batch 1 (7-14 ms) chose F(2x2, 3x3), 1.6x slower, in a
#                      development conv_algos run on a noisy Zen 3 guest
MARGIN = 0.95       # a candidate replaces the default only when its median is at least 5% lower
SAMPLE_SECONDS = 0.005  # a timed sample is a block of calls of about this long (at most MAX_BLOCK): single
MAX_BLOCK = 16          # calls of 1-2 ms chose the blocked kernel for ResNet-small's 28x28 16 -> 16 layers at
#                         64 images, 17% slower than F(4x4, 3x3) in conv_algos (Zen 3 guest, 2026-12-07)
_MEMO = {}
_LOCK = threading.Lock()


def enabled():
    """Whether decisions are measured (``NNCOMP_TUNING`` is not ``off``)."""
    return os.environ.get(ENV, "").strip().lower() not in ("off", "0", "no", "false")


def cpuinfo():
    """The first processor's fields of /proc/cpuinfo (``{}`` where there is none)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def _cpu_text():
    fields = cpuinfo()
    keep = [fields.get(k, "") for k in ("vendor_id", "model name", "cpu family", "model", "flags")]
    return "|".join(keep) if any(keep) else platform.processor() or platform.machine()


def cache_dir():
    """nncomp's cache folder (measured choices, the planner's latency table): ``$NNCOMP_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/nncomp``, else ``~/.cache/nncomp``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nncomp"


@functools.lru_cache(maxsize=None)
def engine_digest():
    """SHA-256 (16 hex digits) of the source of the modules a forward pass runs: kernels, layers,
    matrices, the plan and the model, and of this probe (a development checkout changes kernels
    without changing its version: what was measured on the old ones is measured again)."""
    from .kernels._jit import source_digest
    root = Path(__file__).resolve().parent
    return source_digest(sorted([*root.glob("kernels/*.py"), *root.glob("layers/*.py"), *root.glob("matrices/*.py"),
                                 root / "plan.py", root / "model.py", root / "tuning.py"]))


def cache_file():
    """This CPU's file of measured choices in :func:`cache_dir`, its name a hash of the CPU, the
    library versions and :func:`engine_digest`."""
    import numba
    import numpy as np

    from . import __version__
    key = "|".join([_cpu_text(), np.__version__, numba.__version__, __version__, engine_digest()])
    return cache_dir() / f"tuning-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _read(path):
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def _write(path, key, name):
    """Add ``key: name`` to the file at ``path`` (read, merged, written to a temporary file, renamed);
    a folder that cannot be written leaves the choice in memory only."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read(path)
        data[key] = name
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass


def choose(decision, shape, names, default, make, *, clock=time.perf_counter):
    """The fastest of the candidates ``names`` for ``decision`` (a string) on ``shape`` (a tuple of
    ints naming the case), measured once per CPU (module doc): ``make()`` returns ``{name:
    zero-argument call}``, called only when the choice is measured; ``default`` (one of ``names``)
    when probing is off or no candidate beats it by :data:`MARGIN`."""
    names = tuple(names)
    if default not in names:
        raise NncompError(f"tuning.choose: default {default!r} is not a candidate of {sorted(names)}; pass one of them")
    if not enabled() or len(names) < 2:
        return default
    key = f"{decision}:{','.join(str(int(s)) for s in shape)}"
    with _LOCK:
        found = _MEMO.get(key)
    if found in names:
        return found
    path = cache_file()
    found = _read(path).get(key)
    if found not in names:
        candidates = make()
        if set(candidates) != set(names):
            raise NncompError(f"{decision}: make() gave candidates {sorted(candidates)}, expected {sorted(names)}")
        found = _measure(candidates, default, clock)
        _write(path, key, found)
    with _LOCK:
        _MEMO[key] = found
    return found


def _measure(candidates, default, clock):
    """The winner of the candidates' calls, each run as a model's pass runs its steps: inside the
    one-OpenBLAS-thread scope (nncomp/kernels/blas.py). A BLAS candidate at OpenBLAS's own thread
    count left its threads spinning after each call, slowing the candidate timed next: fc6 at 32
    samples chose BLAS (45 ms a pass) over the streamed product (23 ms)."""
    from .kernels import blas
    with blas.ONE_THREAD:
        return _alternating(candidates, default, clock)


def _alternating(candidates, default, clock):
    names = list(candidates)
    for name in names:
        candidates[name]()                      # compiles, fills caches: not timed
    times = {name: [] for name in names}
    rounds, done, block = CALLS, 0, 1
    while done < rounds:                        # alternating: a slow moment hits every candidate
        for name in names:
            t0 = clock()
            for _ in range(block):
                candidates[name]()
            times[name].append((clock() - t0) / block)
        done += 1
        if done == 1:
            block = max(1, min(MAX_BLOCK, int(SAMPLE_SECONDS / max(min(t[0] for t in times.values()), 1e-9))))
            spent = block * sum(t[0] for t in times.values())
            rounds = max(CALLS, min(MAX_CALLS, int(ROUND_SECONDS / max(spent, 1e-9))))
    med = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    best = min(names, key=lambda k: med[k])
    return best if med[best] < MARGIN * med[default] else default


def forget():
    """Drop the choices this process keeps (the files stay)."""
    with _LOCK:
        _MEMO.clear()
