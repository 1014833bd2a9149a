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

from .cpu import caches, cpu_record, cpuinfo, describe

OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
# The one untimed pause of every benchmark: it outlasts OpenBLAS's threads spinning (~0.1-0.13 s)
# after a threaded NumPy product (and torch's OpenMP workers after theirs). Whatever is timed inside
# that window runs slower (nncomp's kernels up to 2.2-5x), so a block of calls that follows a
# spinning contender waits this long first (``alternate(spinners=...)``).
SETTLE_S = 0.15
# Calls per block of a whole-model loop (in_loop): at batch <= 8, and above.
LOOP_BLOCK, LOOP_BLOCK_LARGE = 8, 4
# Untimed calls at the start of each block of a whole-model loop, after its pause. On this project's
# 2-vCPU KVM guests the first ~50 ms of calls after a pause that followed another burst of work ran
# slow for a runtime that wakes its workers per node: ORT float32 on ResNet-small at batch 64 took
# 8-10 ms a call for its first 3-6 calls, then 5.0-5.2 (ORT alone after one pause: 5.1-5.4 from the
# first call; a sleeping contender between the pauses did the same as nncomp or ORT itself). Waking a
# halted vCPU costs more after long idle spells (the host's adaptive halt polling, most likely).
LEAD_S = 0.05
SLOW_CALL_S = 0.1   # contenders slower than this per call (in the warm-up) run blocks of at most 2 calls


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


def set_threads(n, *, peers=False):
    """Give every pool the same thread count: Numba, BLAS (threadpoolctl), torch; returns the count.

    torch is set when it is loaded, or with ``peers=True`` when it can be imported (ONNX Runtime takes
    its threads per session: ``peers.ort_model(threads=...)``).
    """
    import numba
    from threadpoolctl import threadpool_limits

    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    threadpool_limits(n)
    if peers and "torch" not in sys.modules:
        try:
            import torch  # noqa: F401
        except Exception:  # noqa: BLE001 - torch is optional
            pass
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    return n


def machine_info():
    """Machine, CPU flags, versions and threads: recorded with every result."""
    import numba
    import scipy
    import h5py
    from threadpoolctl import threadpool_info

    info = cpuinfo()
    model, flags = info.get("model name") or platform.processor() or "unknown", set(info.get("flags", "").split())
    record = cpu_record(info)
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
        "cpu_record": record, "results_folder": record["results_folder"],
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


def l3_bytes():
    """The last-level cache size in bytes (sysfs or sysconf; 32 MiB when neither says)."""
    return caches().get("L3", 32 << 20)


def machine_text(machine):
    """The CPU of a recorded ``machine_info()`` as one line (its model name alone for older results)."""
    return describe(machine["cpu_record"]) if "cpu_record" in machine else machine["cpu"]


def header(title, result):
    """A suite's Markdown opening: ``title``, the machine (CPU as :func:`machine_text`, cores, date,
    versions) and the first paragraph of its protocol, each followed by a blank line."""
    m = result["machine"]
    return [title, "", f"Machine: {machine_text(m)}, {m.get('cores', '?')} cores, {m.get('date', '')}; "
            + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()), "",
            (result.get("protocol") or "").split("\n\n")[0], ""]


_FLUSH = None


def flush_caches(nbytes=None):
    """Stream through a buffer of twice the L3 (at least 64 MiB) so the next call reads its weights from DRAM."""
    global _FLUSH
    nbytes = nbytes or max(64 << 20, 2 * l3_bytes())
    if _FLUSH is None or _FLUSH.nbytes != nbytes // 8 * 8:
        _FLUSH = np.ones(nbytes // 8)
    # Read, not write: a write would leave dirty lines whose write-back lands in the timed call.
    _FLUSH.sum()


class Budget:
    """Seconds each measurement may take so that a run ends near its deadline on any CPU.

    ``take(weight, cap)`` gives the next measurement ``min(cap, weight * seconds left / weights left)``
    (at least ``floor * weight``): on a machine fast enough every measurement keeps its ``cap`` (the
    tables are unchanged); on a slower one, where compressing and timing eat more of the run, each
    measurement stops sooner (at the end of a round of calls, so every contender gets at least one block).
    """

    def __init__(self, seconds, weights, floor=0.2):
        self.deadline = time.perf_counter() + seconds
        self.left, self.floor = float(weights), floor

    def take(self, weight=1.0, cap=1.0):
        share = weight * max(0.0, self.deadline - time.perf_counter()) / max(self.left, weight)
        self.left = max(0.0, self.left - weight)
        return min(cap, max(self.floor * weight, share))


def _stats(t):
    return {"median_ms": float(np.median(t) * 1e3), "p90_ms": float(np.percentile(t, 90) * 1e3),
            "min_ms": float(np.min(t) * 1e3), "n": len(t)}


def warm(fn, seconds=0.5):
    """Untimed calls of ``fn`` for ``seconds`` (a served model is warm: its first few hundred calls
    after loading ran up to 3x slower, LeNet-300 at batch 1 0.17 against 0.055 ms a call)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        fn()


def alternate(contenders, *, repeat=30, block=1, warmup=2, flush=False, settle=SETTLE_S, spinners=None,
              max_seconds=60.0, stable=None, lead_s=0.0):
    """Time callables alternating in blocks (A A B B C C A A ...); ``{name: {median_ms, p90_ms, min_ms, n}}``.

    Every call is timed on its own; medians and p90s are over all of a contender's calls.

    Parameters
    ----------
    contenders : dict of name -> zero-argument callable
    repeat : int
        Calls per contender, in rounds of one block each (``block=1``: A B C A B C ...).
    block : int
        Calls per block: within a block a contender meets only its own threads, as in use. Contenders
        slower than :data:`SLOW_CALL_S` per call (in the warm-up) run blocks of at most 2.
    warmup : int
        Untimed rounds of one call each first (compiles kernels, warms caches and thread pools).
    flush : bool
        Stream a buffer larger than the L3 through the caches before every timed call (weights then
        come from DRAM, as in a real network).
    settle : float
        Untimed pause (seconds) before a block that follows a spinner's block (:data:`SETTLE_S`).
    spinners : collection of names or None
        Contenders whose threads keep spinning after a call (NumPy's threaded BLAS, torch); ``None``:
        every contender counts as one (a pause before every block).
    max_seconds : float
        Stop at the end of the round in which this much time has passed.
    stable : float or None
        Stop early, after at least half of ``repeat`` calls, at the end of a round in which every
        contender's running median moved by less than this fraction (e.g. 0.02) since the previous round.
    lead_s : float
        Untimed calls (at least one when > 0) for this long at the start of every block, after the
        pause: the block then times the contender's steady state (see :data:`LEAD_S`).
    """
    names = list(contenders)
    blocks = dict.fromkeys(names, block)
    for _ in range(warmup):
        for n in names:
            t0 = time.perf_counter()
            contenders[n]()
            if time.perf_counter() - t0 > SLOW_CALL_S:
                blocks[n] = min(block, 2)
    times = {n: [] for n in names}
    start = time.perf_counter()
    rounds = -(-repeat // block)
    previous, medians = None, None
    for done in range(1, rounds + 1):
        for n in names:
            fn = contenders[n]
            if settle and previous is not None and (spinners is None or previous in spinners):
                time.sleep(settle)
            previous = n
            if lead_s > 0:
                end = time.perf_counter() + lead_s
                fn()
                while time.perf_counter() < end:
                    fn()
            for _ in range(blocks[n]):
                if flush:
                    flush_caches()
                t0 = time.perf_counter()
                fn()
                times[n].append(time.perf_counter() - t0)
        if time.perf_counter() - start >= max_seconds:
            break
        if stable:
            now = {n: float(np.median(t)) for n, t in times.items()}
            if (medians is not None and 2 * done >= rounds
                    and all(abs(now[n] - medians[n]) <= stable * medians[n] for n in names)):
                break
            medians = now
    return {n: _stats(t) for n, t in times.items()}


def in_loop(contenders, batch, repeat, *, warm_s=0.5):
    """``{name: median ms}`` of whole-model calls back to back, the protocol of every whole-model
    comparison (vs_ort, optimize): each zero-argument contender warmed ``warm_s`` of untimed calls,
    then alternating blocks of LOOP_BLOCK calls (LOOP_BLOCK_LARGE above batch 8), each after an
    untimed SETTLE_S pause (no contender meets another's spinning threads) and LEAD_S of untimed
    calls (the contender back in its steady state), ``repeat`` calls each."""
    for fn in contenders.values():
        warm(fn, warm_s)
    r = alternate(contenders, repeat=repeat, block=LOOP_BLOCK if batch <= 8 else LOOP_BLOCK_LARGE, settle=SETTLE_S,
                  lead_s=LEAD_S)
    return {k: v["median_ms"] for k, v in r.items()}


# --------------------------------------------------------------------------- the quiet gate
def _cpu_snap():
    """(idle jiffies, total jiffies) of the machine and this process's CPU jiffies."""
    with open("/proc/stat") as fh:
        v = [int(a) for a in fh.readline().split()[1:]]
    t = os.times()
    return v[3] + v[4], sum(v), (t.user + t.system) * os.sysconf("SC_CLK_TCK")


def others_busy(a, b):
    """Fraction of all CPU time between snapshots ``a`` and ``b`` used by other processes."""
    total = max(1, b[1] - a[1])
    return max(0.0, ((total - (b[0] - a[0])) - (b[2] - a[2])) / total)


def busy_fraction(seconds=2.0):
    """Fraction of the machine's CPU time used by other processes over ``seconds``."""
    a = _cpu_snap()
    time.sleep(seconds)
    return others_busy(a, _cpu_snap())


def quiet_row(row_fn, tries=3, clean=0.1, max_wait=600.0):
    """Run a speed row after a quiet gate, up to ``tries`` times while others used > ``clean`` of the CPUs.

    Keeps the attempt that other processes disturbed least (never the one with the best ratio) and
    records every attempt's contamination and speedup.
    """
    attempts = []
    for _ in range(tries):
        waited, busy = wait_quiet(max_wait) if max_wait > 0 else (0.0, None)
        a = _cpu_snap()
        row = row_fn()
        row["quiet_gate"] = {"waited_s": waited, "busy_before": busy, "load_1min": os.getloadavg()[0],
                             "others_busy_during": others_busy(a, _cpu_snap())}
        attempts.append(row)
        if row["quiet_gate"]["others_busy_during"] < clean:
            break
    best = min(attempts, key=lambda r: r["quiet_gate"]["others_busy_during"])
    best["attempts"] = [{"others_busy_during": r["quiet_gate"]["others_busy_during"], "speedup": r["speedup"]}
                        for r in attempts]
    return best


def wait_quiet(max_wait=600.0, threshold=0.15):
    """Wait (up to ``max_wait`` s) until other processes use under ``threshold`` of the CPUs.

    The machine is shared: a neighbour's job stalls 2-thread calls by whole scheduler slices. This
    only schedules a row; it never discards a measurement. Returns (seconds waited, busy fraction).
    """
    start = time.perf_counter()
    while True:
        busy = busy_fraction()
        waited = time.perf_counter() - start
        if busy < threshold or waited > max_wait:
            return waited, busy
