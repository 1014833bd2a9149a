"""Timing protocol shared by every benchmark (see bench/README.md).

Contenders are timed in the same process, alternating (A B C A B C ...), after a warm-up that
compiles every kernel; results are medians and p90s of whole calls. Every result carries the
machine, versions and threads it was measured with.
"""
import os
import platform
import sys
import time

import numpy as np

OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
# Untimed pause that outlasts OpenBLAS's threads spinning (~0.1 s) after a NumPy product: whatever
# is timed inside that window runs slower (nncomp's kernels up to 2.2-3x), so a contender timed
# after a NumPy one waits this long first.
BLAS_SPIN_S = 0.15


def reexec_without_openblas_overrides():
    """Restart this process once without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE.

    This workplace sets them for old OpenBLAS builds; they make a current NumPy pick a slower kernel
    (a 256x512x512 sgemm: 0.40 ms without, 0.54 ms with). Benchmarks only, never tests.
    """
    if any(k in os.environ for k in OPENBLAS_OVERRIDES) and not os.environ.get("NNCOMP_KEEP_OPENBLAS_ENV"):
        env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_OVERRIDES}
        env["NNCOMP_OPENBLAS_ENV_REMOVED"] = ",".join(k for k in OPENBLAS_OVERRIDES if k in os.environ)
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)


def set_threads(n):
    """Give every pool the same thread count: Numba, BLAS (threadpoolctl), torch if loaded."""
    import numba
    from threadpoolctl import threadpool_limits

    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    threadpool_limits(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    return n


def _cpu():
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and model in ("unknown", ""):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return model, flags


def machine_info():
    """Machine, CPU flags, versions and threads: recorded with every result."""
    import numba
    import scipy
    import h5py
    from threadpoolctl import threadpool_info

    model, flags = _cpu()
    versions = {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
                "scipy": scipy.__version__, "h5py": h5py.__version__}
    for mod in ("torch", "onnxruntime"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - peers are optional
            versions[mod] = "not installed"
    blas = [{k: d.get(k) for k in ("internal_api", "num_threads", "architecture", "filepath")}
            for d in threadpool_info()]
    return {
        "cpu": model, "cores": os.cpu_count(), "machine": platform.machine(),
        "cpu_flags": sorted(f for f in flags if f.startswith(("avx", "fma", "f16c", "amx"))),
        "versions": versions, "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": _threading_layer(), "blas": blas,
        "openblas_env_removed": os.environ.get("NNCOMP_OPENBLAS_ENV_REMOVED", ""),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _threading_layer():
    import numba
    try:
        return numba.threading_layer()
    except ValueError:
        return "not started"


_FLUSH = None


def flush_caches(nbytes=64 << 20):
    """Stream through a buffer larger than the L3 so the next call reads its weights from DRAM."""
    global _FLUSH
    if _FLUSH is None or _FLUSH.nbytes != nbytes:
        _FLUSH = np.ones(nbytes // 8)
    # Read, not write: a write would leave dirty lines whose write-back lands in the timed call.
    _FLUSH.sum()


def alternate(contenders, *, repeat=30, warmup=2, flush=False, settle=0.0, min_seconds=0.0, max_seconds=60.0):
    """Time callables in alternation; returns ``{name: {"median_ms", "p90_ms", "n"}}``.

    Parameters
    ----------
    contenders : dict of name -> zero-argument callable
    repeat : int
        Rounds; each round calls every contender once, in the same order.
    warmup : int
        Untimed rounds first (compiles kernels, warms caches and thread pools).
    flush : bool
        Flush the caches before each timed call (memory-bound rows then read from DRAM).
    settle : float
        Untimed pause (seconds) before each timed call: OpenBLAS threads keep spinning for a while
        after a call and slow down whatever runs next (a 2-thread int8 call: 39 ms right after a
        NumPy sgemm, 16 ms after a 0.2 s pause).
    min_seconds, max_seconds : float
        Keep going past ``repeat`` until ``min_seconds``; stop early after ``max_seconds``.
    """
    names = list(contenders)
    for _ in range(warmup):
        for n in names:
            contenders[n]()
    times = {n: [] for n in names}
    start = time.perf_counter()
    rounds = 0
    while True:
        for n in names:
            if flush:
                flush_caches()
            if settle:
                time.sleep(settle)
            t0 = time.perf_counter()
            contenders[n]()
            times[n].append(time.perf_counter() - t0)
        rounds += 1
        elapsed = time.perf_counter() - start
        if (rounds >= repeat and elapsed >= min_seconds) or elapsed >= max_seconds:
            break
    return {n: {"median_ms": float(np.median(t) * 1e3), "p90_ms": float(np.percentile(t, 90) * 1e3),
                "n": len(t)} for n, t in times.items()}
