"""Forward plans: a model's graph prepared once for one input shape, batch size and thread count.

Building a plan (22-116 us for the shipped models) does what a run must not repeat: it infers every
node's shape for this input, lets each producer absorb its only reader where it can
(:meth:`nncomp.layers.Layer.fuse`: epilogues such as ReLU, batch norm or a residual add written by
the producing step, a max-pool computed inside its convolution's kernel), asks every remaining
layer for its prepared step (:meth:`~nncomp.layers.Layer.prepare`: algorithm, blocking, serial or
parallel kernels), and decides which values can be dropped as soon as their last reader ran.
A run then only calls the steps, inside one OpenBLAS-at-one-thread scope.
"""
import ctypes
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .kernels import _jit, blas
from .kernels.isa import VECTOR_REGISTERS
from .layers.conv_chain import merge_runs

INPUT = "input"
# Runs of blocked convolution steps run as one compiled call (nncomp/layers/conv_chain.py).
CHAIN = True

# glibc returns freed blocks above 128 KB to the system (unmapped, or trimmed off the heap's top),
# so every pass at batch >= 8 wrote its activations to fresh pages: ResNet-small at batch 32 on
# one thread ran 11.2 ms a pass against 7.4 ms for its steps timed alone. nncomp asks glibc, once,
# to serve blocks up to MMAP_MAX_BYTES from its heap and to keep up to TRIM_BYTES free there
# (ResNet-small: 8.3 ms). The process then keeps its peak heap; NNCOMP_MALLOPT=0 leaves glibc as
# it was.
MMAP_MAX_BYTES = 32 << 20
TRIM_BYTES = 512 << 20


def keep_freed_memory():
    """Tell glibc's allocator to reuse freed activation memory (see above); False where there is
    no glibc or the user opted out."""
    if os.environ.get("NNCOMP_MALLOPT", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):
            return False
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, MMAP_MAX_BYTES) and libc.mallopt(m_trim_threshold, TRIM_BYTES))
    except (OSError, AttributeError):
        return False


MALLOPT = keep_freed_memory()


@dataclass
class _Group:
    """One step of a plan: the node whose output it writes, its (possibly fused) layer, its inputs."""

    name: str
    layer: object
    inputs: tuple


def fuse_graph(nodes, shapes, n, keep):
    """The nodes as steps after fusion: each producer whose output only one node reads, and that is
    not a kept value, offers that reader to its layer's ``fuse``; a fused step takes the reader's
    place (so every input it reads has been computed) and reads the producer's inputs first.
    Nodes that no kept value depends on are left out."""
    needed = set(keep)
    for node in reversed(nodes):
        if node.name in needed:
            needed.update(node.inputs)
    nodes = [node for node in nodes if node.name in needed]
    readers = {}
    for node in nodes:
        for src in node.inputs:
            readers.setdefault(src, []).append(node.name)
    groups = {node.name: _Group(node.name, node.layer, tuple(node.inputs)) for node in nodes}
    order = [node.name for node in nodes]
    gone = set()
    for name in order:
        if name in keep or len(readers.get(name, ())) != 1:
            continue
        group, target = groups[name], groups[readers[name][0]]
        layer = target.layer
        # the reader's inputs: exactly as many as its layer declares, this producer's once and
        # first (an epilogue reads the others in order) unless the layer is commutative
        if (len(target.inputs) != layer.n_inputs or list(target.inputs).count(name) != 1
                or (target.inputs[0] != name and not layer.commutative)):
            continue
        fused = group.layer.fuse(layer, n, *(shapes[s] for s in group.inputs))
        if fused is not None:
            others = tuple(s for s in target.inputs if s != name)
            groups[target.name] = _Group(target.name, fused, group.inputs + others)
            gone.add(name)
    return [groups[name] for name in order if name not in gone]


class Plan:
    """Prepared steps for batches of ``n`` internal-layout inputs of per-sample ``shapes[INPUT]``.

    Parameters
    ----------
    nodes : sequence of Node
    shapes : dict
        Per-sample output shape of every node (and of ``"input"``) for this input.
    n : int
        Batch size.
    keep : sequence of str
        Nodes whose values the run returns, in this order (outputs, or requested activations).
    """

    def __init__(self, nodes, shapes, n, keep):
        keep = tuple(keep)
        groups = fuse_graph(nodes, shapes, n, set(keep))
        slot = {INPUT: 0}
        for i, g in enumerate(groups):
            slot[g.name] = i + 1
        last = {}
        for i, g in enumerate(groups):
            for src in g.inputs:
                last[src] = i
        kept = set(keep)
        self.steps = tuple(
            (g.layer.prepare(n, *(shapes[s] for s in g.inputs)), tuple(slot[s] for s in g.inputs),
             tuple(slot[s] for s in set(g.inputs) if last[s] == i and s not in kept))
            for i, g in enumerate(groups))
        self.kept = tuple(slot[k] for k in keep)
        if CHAIN:
            self.steps = merge_runs(self.steps, self.kept)
        self.layers = tuple((g.name, g.layer) for g in groups)
        # whether a step may call BLAS (then OpenBLAS runs at one thread during the pass); steps
        # that never do say so with ``step.blas = False`` (the guard costs ~3 us alone)
        self.blas = any(getattr(step, "blas", True) for step, _, _ in self.steps)

    def run(self, x):
        """The kept values for the internal-layout batch ``x``."""
        if not self.blas:
            return self._run(x)
        with blas.ONE_THREAD:
            return self._run(x)

    def _run(self, x):
        values = [x]
        for step, ins, frees in self.steps:
            values.append(step(*[values[i] for i in ins]))
            for i in frees:
                values[i] = None
        return [values[i] for i in self.kept]


# Batches of at least this many samples per thread may be split into parts that whole passes run
# on, one thread each with serial kernels: no fork/join per layer, and a part another thread can
# take when one is late (a busy core). Each thread's parts are at least this many samples. Such a
# batch runs in parts or whole with parallel kernels as measured (:class:`MeasuredChoice`): in one
# process, alternating, parallel kernels ran VGG-small at batch 16 in 1.37 ms against 2.44 in parts
# and at 64 in 5.4-5.6 against 6.5-7.3, parts ResNet-small at 128 in 21.0 against 23.0 (Zen 4).
SPLIT_MIN_PER_THREAD = 4
PARTS_PER_THREAD = 2
# Only for models doing at least this many multiply-adds per weight and sample (convolutional ones):
# a dense layer's product reads its weights once for the whole batch, and split it reads them once
# per part (LeNet-300-100, 1 MAC per weight, ran 1.7x slower split; ResNet-small, 120, 2.2x faster).
SPLIT_MIN_MACS_PER_WEIGHT = 16
# ... and at most this many per sample: a layer as large as VGG-16's conv3_2 (1.85 G per sample)
# splits its own work efficiently, and ran 11% slower as two halves of a batch of 32.
SPLIT_MAX_MACS_PER_SAMPLE = 1 << 27
# A pass of fewer multiply-adds than this runs on the calling thread alone, with serial kernels:
# no step waits for a worker's wake-up after a pause, or for a core another process keeps busy.
SERIAL_BELOW_MACS = 1 << 19
# Up to CHOOSE_BELOW_MACS a single sample always does (every shipped CNN at batch 1: serial ran
# as fast as 2 threads in a loop, 10% faster after a pause, and 15-50x faster next to a busy core),
# and a batch runs serial or parallel as measured (:class:`MeasuredChoice`). Larger passes always
# run parallel: the measured choice, misled by the first calls after pauses, kept LeNet-300 at
# batch 64 (17 M) serial at 0.54 ms against 0.41 parallel.
CHOOSE_BELOW_MACS = 1 << 24
# ... with AVX-512 (32 vector registers). With AVX2 a single sample runs serial or parallel as
# measured too: one core does half the multiply-adds per cycle, and the second paid in a loop (AMD
# EPYC Zen 3, in_loop protocol: LeNet-5 0.126-0.130 ms parallel against 0.159-0.162 serial,
# ResNet-small 0.29-0.34 against 0.31-0.44, VGG-small either); next to a busy core the measured choice
# falls back to serial (contention 0.99-1.16x single-threaded).
SERIAL_SINGLE = VECTOR_REGISTERS >= 32
# ... for models of at most this many parameter bytes: a larger weight (VGG-16's fc6 pruned to 90%:
# 62 MB, 10 M multiply-adds) streams from L3 or DRAM at one sample, and one core reads it at half the
# rate two do: run serial, fc6 at 90% took 6.45 ms a call against 3.10 for the parallel product
# (Xeon, caches flushed before each call); such a model runs as measured.
SERIAL_SINGLE_MAX_BYTES = 4 << 20


def serial_single(n, nbytes):
    """Whether ``n`` samples of a model of ``nbytes`` parameter bytes, under CHOOSE_BELOW_MACS, always
    run serial (above)."""
    return n == 1 and SERIAL_SINGLE and nbytes <= SERIAL_SINGLE_MAX_BYTES


_POOL = None
_POOL_LOCK = threading.Lock()


def _pool(workers):
    """The process's worker threads for batch parts (grown, never shrunk)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < workers:
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nncomp-part")
        return _POOL


def batch_parts(n, threads, macs_per_weight, macs_per_sample):
    """Part boundaries for a batch of ``n`` run by ``threads`` threads, or None to run it whole."""
    if (threads < 2 or n < SPLIT_MIN_PER_THREAD * threads or macs_per_weight < SPLIT_MIN_MACS_PER_WEIGHT
            or macs_per_sample > SPLIT_MAX_MACS_PER_SAMPLE):
        return None
    parts = min(threads * PARTS_PER_THREAD, n // SPLIT_MIN_PER_THREAD)
    return [n * i // parts for i in range(parts + 1)]


def run_parallel(plan, x):
    """``plan.run(x)`` (a plan of parallel kernels) with no pinned worker on the caller's CPU."""
    _jit.keep_apart()
    return plan.run(x)


def run_serial(forward):
    """``forward()`` with one Numba thread on the calling thread (its plans are serial ones)."""
    saved = _jit.num_threads()
    _jit.set_num_threads(1)
    try:
        return forward()
    finally:
        _jit.set_num_threads(saved)


def run_parts(forward, x, bounds, threads):
    """``forward(x[a:b])`` for each part, by ``threads`` threads (the caller one of them) each
    taking the next part when it is free and running it with one Numba thread; the parts' values
    concatenated."""
    tasks = list(zip(bounds[:-1], bounds[1:]))
    results = [None] * len(tasks)
    claim = iter(range(len(tasks)))
    lock = threading.Lock()

    def work():
        saved = _jit.num_threads()
        _jit.set_num_threads(1)
        try:
            while True:
                with lock:
                    i = next(claim, None)
                if i is None:
                    return
                a, b = tasks[i]
                results[i] = forward(x[a:b])
        finally:
            _jit.set_num_threads(saved)
    helpers = [_pool(threads - 1).submit(work) for _ in range(threads - 1)]
    work()
    for h in helpers:
        h.result()
    return [np.concatenate(vals) for vals in zip(*results)]


class MeasuredChoice:
    """A forward pass run by whichever of ``forwards`` (serial, parallel) has the lower best time
    of its last WINDOW calls (the best, not the median: a call after a pause or a busy
    moment is slow for either); the other runs every ``explore`` calls to keep its times
    current, ``explore`` doubling (up to EXPLORE_MAX) while it stays slower and reset when it wins
    by MARGIN. After every call the incumbent's best is compared with the others' (the incumbent
    loses by MARGIN when its own recent calls got slower, without waiting for an exploration). Each
    forward's first call (plan building, caches) is not counted. An exploration runs the other
    forward BURST calls in a row and counts all but the first: explored one call at a time after 63
    serial calls, parallel kernels always found their threads asleep, and LeNet-5 at batch 4 stayed
    serial at 0.26 ms a call where its parallel pass took 0.16-0.18. The state is shared by the
    threads calling one model: a race only mixes up which times a forward is judged by."""

    WINDOW = 8
    EXPLORE_MIN, EXPLORE_MAX = 8, 64
    MARGIN = 0.97      # a challenger takes over when its best time is 3% below the incumbent's
    BURST = 3

    def __init__(self, *forwards, clock=time.perf_counter):
        self.forwards, self.clock = forwards, clock
        self.times = [[] for _ in forwards]
        self.started = [False] * len(forwards)
        self.best, self.calls, self.explore = 0, 0, self.EXPLORE_MIN
        self.burst, self.explored = 0, 0        # calls left in an exploration, and its forward

    def _best(self, k):
        return min(self.times[k], default=0.0)

    def __call__(self, x):
        self.calls += 1
        k, counted = self.best, True
        short = [i for i, t in enumerate(self.times) if len(t) < 3]
        if short:                       # warming up: every forward until each has a few times
            k = short[self.calls % len(short)]
        elif self.burst:                # an exploration's next call
            k = self.explored
            self.burst -= 1
        elif self.calls % self.explore == 0:
            k = self.explored = (self.best + 1) % len(self.forwards)
            self.burst, counted = self.BURST - 1, False
        t0 = self.clock()
        out = self.forwards[k](x)
        dt = self.clock() - t0
        if not self.started[k] or not counted:
            self.started[k] = True
            return out
        window = self.times[k]
        window.append(dt)
        if len(window) > self.WINDOW:
            del window[0]
        if not short:
            # the incumbent is judged by its last WINDOW calls, so it loses as soon as its best of
            # them rises above another's best; waiting for the next exploration (up to EXPLORE_MAX
            # calls) kept a model on the slower forward for dozens of calls (VGG-small at batch 64:
            # 5.5-6.0 ms against 3.7-4.9 ms for a fresh copy of the same model)
            other = min((i for i in range(len(self.times)) if i != self.best), key=self._best)
            if self._best(other) < self.MARGIN * self._best(self.best):
                self.best, self.explore, self.burst = other, self.EXPLORE_MIN, 0
            elif k != self.best and not self.burst:
                self.explore = min(2 * self.explore, self.EXPLORE_MAX)
        elif not [i for i, t in enumerate(self.times) if len(t) < 3]:
            self.best = min(range(len(self.times)), key=self._best)
        return out
