"""The roofline limits of this machine: DRAM read bandwidth and float32 GEMM throughput.

A cell's roofline time is ``max(weight bytes / bandwidth, FLOPs / sgemm throughput)``; its distance to
the roof is that time over the measured one (100 % = at the limit). The bandwidth probe reads a buffer
of at least 4x the L3 with every thread, three ways (a Numba ``prange`` sum, NumPy's threaded sgemv,
the product a dense layer runs, and NumPy sums of one slice per thread), best of several reads, the
ways alternating so that a neighbour's burst does not hit one of them only; and :func:`cap` raises the roof to the best
rate any contender of the run achieved, so that no cell reads more than 100 %.
"""
import time

import numpy as np
from numba import prange

from ..kernels._jit import pjit
from .timing import l3_bytes


def _read_sum(a, nchunks):
    """Sum of ``a`` (float32, 1-D) in ``nchunks`` parallel chunks: one streaming read of every byte."""
    n = a.size
    step = (n + nchunks - 1) // nchunks
    out = np.zeros(nchunks, np.float32)
    for c in prange(nchunks):
        lo = min(n, c * step)
        seg = a[lo:min(n, lo + step)]
        s0 = s1 = s2 = s3 = np.float32(0.0)
        m = seg.size - seg.size % 4
        for i in range(0, m, 4):   # four independent sums: the loop waits on memory, not on an add
            s0 += seg[i]
            s1 += seg[i + 1]
            s2 += seg[i + 2]
            s3 += seg[i + 3]
        for i in range(m, seg.size):
            s0 += seg[i]
        out[c] = s0 + s1 + s2 + s3
    return out.sum()


_read_sum_parallel = pjit(_read_sum, fastmath=True)


def _best_seconds(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _numpy_sum_threads(a, threads):
    """One ``np.add.reduce`` per thread over its slice of ``a`` (NumPy releases the GIL in reductions)."""
    from concurrent.futures import ThreadPoolExecutor
    step = -(-a.size // threads)
    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(lambda lo: float(np.add.reduce(a[lo:lo + step])), range(0, a.size, step)))


def probe_bytes(quick=False):
    """Bytes the bandwidth probe reads: at least 4x the L3 (1 GiB; 256 MiB with ``quick``)."""
    return max((256 << 20) if quick else (1 << 30), 4 * l3_bytes())


def machine_limits(*, quick=False, repeat=5):
    """Measure the two roofline limits: DRAM read bandwidth and float32 GEMM throughput.

    Bandwidth: the best of ``repeat`` reads of a float32 buffer of :func:`probe_bytes`, by a Numba
    ``prange`` sum over every thread, by NumPy's sgemv (``A @ v``, OpenBLAS's threads) and by NumPy
    sums of one slice per thread (as many as Numba's), alternating, the fastest. On a 2-core Zen 4 VM
    the Numba sum read at least as fast as the other two (best 32-41 GB/s against 23-34).
    GEMM: NumPy's sgemm on 4096x4096 matrices (1024 with ``quick``), median.
    """
    nbytes = probe_bytes(quick)
    import numba
    a = np.ones(nbytes // 4, np.float32)
    _read_sum_parallel(a[:1024], 64)
    rows = a.reshape(-1, 4096)
    v = np.ones(4096, np.float32)
    rows @ v
    threads = numba.get_num_threads()
    ways = {"numba": lambda: _read_sum_parallel(a, 256), "blas": lambda: rows @ v,
            "numpy_sum": lambda: _numpy_sum_threads(a, threads)}
    best = dict.fromkeys(ways, float("inf"))
    for _ in range(repeat):
        for k, fn in ways.items():
            best[k] = min(best[k], _best_seconds(fn, 1))
    t_numba, t_blas, t_sum = best["numba"], best["blas"], best["numpy_sum"]
    a = rows = ways = None   # free the buffer before the sgemm probe
    n = 1024 if quick else 4096
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, n), dtype=np.float32)
    y = rng.standard_normal((n, n), dtype=np.float32)
    x @ y
    times = []
    for _ in range(max(3, repeat // 2)):
        t0 = time.perf_counter()
        x @ y
        times.append(time.perf_counter() - t0)
    gflops = 2.0 * n ** 3 / float(np.median(times)) / 1e9
    return {"bandwidth_GBps": nbytes / min(t_numba, t_blas, t_sum) / 1e9, "bandwidth_bytes": nbytes,
            "bandwidth_probe": {"numba_sum_GBps": nbytes / t_numba / 1e9, "numpy_sgemv_GBps": nbytes / t_blas / 1e9,
                                "numpy_sum_threads_GBps": nbytes / t_sum / 1e9, "threads": threads,
                                "l3_bytes": l3_bytes(), "repeat": repeat},
            "sgemm_GFLOPs": gflops, "sgemm_n": n}


def roofline_ms(weight_bytes, flops, limits):
    """The faster-than-possible time: ``max(bytes / bandwidth, flops / sgemm throughput)`` in ms."""
    return max(weight_bytes / (limits["bandwidth_GBps"] * 1e9), flops / (limits["sgemm_GFLOPs"] * 1e9)) * 1e3


def cap(limits, observed, flops=()):
    """``limits`` raised to the best rates contenders achieved, where above the probes'.

    ``observed``: ``(label, bytes read from DRAM, ms)`` triples, e.g. the weight bytes of a layer
    whose weights exceed the caches (or were flushed from them) and its median time; ``flops``:
    ``(label, float32 FLOPs, ms)`` of dense float32 contenders (the sgemm probe's peers). The result
    records the probes' own figures and which contender set each roof.
    """
    out = dict(limits)
    out["probe_bandwidth_GBps"] = limits.get("probe_bandwidth_GBps", limits["bandwidth_GBps"])
    out["roof_source"] = limits.get("roof_source", "probe")
    for label, nbytes, ms in observed:
        if nbytes and ms:
            rate = nbytes / (ms * 1e-3) / 1e9
            if rate > out["bandwidth_GBps"]:
                out["bandwidth_GBps"], out["roof_source"] = rate, label
    if "sgemm_GFLOPs" in limits:
        out["probe_sgemm_GFLOPs"] = limits.get("probe_sgemm_GFLOPs", limits["sgemm_GFLOPs"])
        out["sgemm_source"] = limits.get("sgemm_source", "probe")
        for label, n, ms in flops:
            if n and ms and n / (ms * 1e-3) / 1e9 > out["sgemm_GFLOPs"]:
                out["sgemm_GFLOPs"], out["sgemm_source"] = n / (ms * 1e-3) / 1e9, label
    return out


def roof_text(limits):
    """The bandwidth of ``limits`` as a sentence part, naming the contender when it set the roof."""
    text = f"DRAM read {limits['bandwidth_GBps']:.1f} GB/s"
    if limits.get("roof_source", "probe") != "probe":
        text += (f" (the best rate observed in the run, by {limits['roof_source']}; the probe read "
                 f"{limits['probe_bandwidth_GBps']:.1f} GB/s)")
    if limits.get("sgemm_source", "probe") != "probe":
        text += (f", float32 compute {limits['sgemm_GFLOPs']:.0f} GFLOP/s (by {limits['sgemm_source']}; the sgemm "
                 f"probe ran {limits['probe_sgemm_GFLOPs']:.0f})")
    return text
