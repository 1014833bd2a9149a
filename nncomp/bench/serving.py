"""How a model serves requests: lone calls after a pause, and calls while another process keeps a
core busy (the issue's two serving conditions, beside the back-to-back loop of the other tables).

- **Lone call**: each timed call follows an untimed pause (``pause`` seconds) long enough for every
  runtime's worker threads to go to sleep (OpenMP's spin, ORT's spinning is off in the peers), as a
  request to a server that was idle; the contenders alternate call by call. Reported as a median
  over calls.
- **Contention**: a second process spins on one core (a busy loop, started before and stopped
  after the timed block); the model is timed in a loop with all its threads. The reference is the
  same model with one thread on a quiet machine, so ``contended / single`` says how much a pass
  collapses when one of its cores is taken (target: at most 1.2).
"""
import contextlib
import subprocess
import sys
import time

import numpy as np

SPIN_CODE = "import time\nend = time.perf_counter() + {seconds}\nwhile time.perf_counter() < end:\n    pass\n"


@contextlib.contextmanager
def busy_core(seconds=60.0):
    """A child process spinning on one core for at most ``seconds`` (stopped on exit)."""
    proc = subprocess.Popen([sys.executable, "-c", SPIN_CODE.format(seconds=float(seconds))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.2)          # let it start spinning
        yield proc
    finally:
        proc.kill()
        proc.wait()


def lone_calls(contenders, *, calls=31, pause=0.05):
    """``{name: {median_ms, p90_ms, n}}`` of calls of each zero-argument callable in ``contenders``,
    each call after an untimed ``pause``, the contenders alternating (A B A B ...): a lone call's
    time is mostly the machine refilling caches and waking a core after the pause (on a KVM guest a
    call of ``np.add`` on 3 KB took 78 us after 50 ms asleep, 3 in a loop), which drifts over
    seconds; one contender's calls after the other's let that drift decide the ratio (VGG-small
    read 1.17x and 0.85x in two runs)."""
    times = {name: [] for name in contenders}
    for fn in contenders.values():
        fn()
    for _ in range(calls):
        for name, fn in contenders.items():
            time.sleep(pause)
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: {"median_ms": float(np.median(t) * 1e3), "p90_ms": float(np.percentile(t, 90) * 1e3),
                   "n": len(t)} for name, t in times.items()}


def loop_calls(fn, *, calls=40, max_seconds=5.0, min_seconds=0.0):
    """Median and p90 (ms) of back-to-back ``fn()`` calls (after 3 untimed ones): at least ``calls``
    and for at least ``min_seconds``, stopping after ``max_seconds``."""
    for _ in range(3):
        fn()
    times, start = [], time.perf_counter()
    while ((len(times) < calls or time.perf_counter() - start < min_seconds)
           and time.perf_counter() - start < max_seconds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_ms": float(np.median(times) * 1e3), "p90_ms": float(np.percentile(times, 90) * 1e3),
            "n": len(times)}


def contention(fn, threads, set_threads, *, calls=40, min_seconds=0.5):
    """``fn`` in a loop with one thread on a quiet machine, and with ``threads`` while a second
    process keeps one core busy; ``set_threads(n)`` sets the pools' threads. Returns both and
    their ratio. Each loop lasts at least ``min_seconds``: 40 calls of a 40 us pass (LeNet-300)
    spanned one scheduler time slice, and read 1.05x, 1.09x or 1.66x as the spinner happened to
    share the caller's core for that millisecond or not.

    Also ``fn`` with one thread next to the busy core (``single_busy_ms``, and ``floor`` = it over
    the quiet single-thread time): what the busy core costs a pass that uses no second thread at all.
    On a KVM guest whose two vCPUs share a physical core or a power budget, a spinner on one slowed
    a single-threaded compute loop pinned to the other 1.24-1.51x (AMD EPYC Zen 3 guest): the
    target's 1.2x then is under the hardware's own slowdown, which ``floor`` shows."""
    set_threads(1)
    try:
        single = loop_calls(fn, calls=calls, min_seconds=min_seconds)
        with busy_core():
            single_busy = loop_calls(fn, calls=calls, min_seconds=min_seconds)
    finally:
        set_threads(threads)
    with busy_core():
        contended = loop_calls(fn, calls=calls, min_seconds=min_seconds)
    return {"single_ms": single["median_ms"], "contended_ms": contended["median_ms"],
            "ratio": contended["median_ms"] / single["median_ms"], "single_busy_ms": single_busy["median_ms"],
            "floor": single_busy["median_ms"] / single["median_ms"]}
