"""The one place for Numba flags.

``jit`` compiles a serial kernel, ``pjit`` a ``parallel=True`` one from the same Python body
(``prange`` is a plain ``range`` in the serial build), so a kernel is written once and the caller
picks serial for small work and parallel for large work.

Threading: a forward pass runs in Numba's thread pool only; its BLAS products are cut into one
block per Numba thread with OpenBLAS at one thread (nncomp/kernels/blas.py). Before Numba's OpenMP
pool starts, nncomp asks, unless the user has set them:

- ``OMP_WAIT_POLICY=PASSIVE`` with ``GOMP_SPINCOUNT=30000``: a worker spins 0.5-1 ms after a
  parallel region (a split mat-vec after a 0.5 ms pause found it awake, after 1 ms asleep), then
  sleeps (GNU OpenMP's default spins far longer and holds a core other libraries need: a NumPy
  sgemm after a prange mat-vec took 8.0 ms instead of 0.57 ms). Without any spin every
  region is a futex wake-up, and after an idle spell the first calls ran 1.8x slower (VGG-16 conv3_2,
  9 regions per call: 15-16 ms against 8.3 ms).
- worker threads pinned: :func:`pool_ready` pins each of Numba's worker threads (never the calling
  thread) to its own CPU, taken from the end of the process's CPU set, the first time a thread runs
  parallel kernels. Unpinned, the scheduler sometimes left a spinning worker on the caller's core,
  and every region waited out the spin: LeNet-300 at batch 64 alternating with another model took
  1.7 ms a call instead of 0.19 ms, LeNet-5 at batch 32 next to torch and ONNX Runtime 2.9 ms instead
  of 1.1 ms. ``OMP_PROC_BIND=true`` pins the same way but also pins the caller (and, through the
  environment, other libraries' OpenMP callers: torch then pinned the main thread and ONNX Runtime's
  pool, created from it, ran on one core). Skipped if the user set OMP_PROC_BIND, OMP_PLACES,
  GOMP_CPU_AFFINITY or NNCOMP_NO_PIN.
- a thread-safe threading layer (``NUMBA_THREADING_LAYER=threadsafe``): the ``workqueue`` layer
  aborts the process when two Python threads call a parallel kernel at once.
"""
import hashlib
import os
import pathlib
import threading
import types

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "30000")
# Pin Numba's worker threads (not the caller) unless the user chose a binding policy.
_BIND = not any(k in os.environ for k in ("OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY",
                                          "NNCOMP_NO_PIN"))

import numba  # noqa: E402
import numpy as np  # noqa: E402

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "threadsafe"

_FLAGS = dict(cache=True, nogil=True)


def source_digest(files):
    """SHA-256 (16 hex digits) of the names and contents of ``files`` (paths), in the order given."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + f.read_bytes())
    return digest.hexdigest()[:16]


def drop_stale_caches(here=None):
    """Numba keys a cached function on its own source file only: one that calls a kernel of another
    module keeps that kernel's old machine code after the module changes (a compiled run of
    convolutions kept the Winograd tiles of an earlier build, which skipped the new tile widths and
    left work memory unset). So when any kernel source changes, every cached nncomp function in the
    package's ``__pycache__`` folders goes (their first calls compile again), once per change, by
    the first process to see it. Nothing is done where the package is read-only (Numba then caches
    elsewhere) or NUMBA_CACHE_DIR is set (the user manages that cache). ``here``: the kernels folder
    (default this one; its parent is the package)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    here = pathlib.Path(__file__).resolve().parent if here is None else pathlib.Path(here)
    stamp = here / "__pycache__" / "nncomp-kernels.digest"
    try:
        digest = source_digest(sorted(here.glob("*.py")))
        if stamp.is_file() and stamp.read_text() == digest:
            return
        for cache in here.parent.rglob("__pycache__"):
            for f in [*cache.glob("*.nbi"), *cache.glob("*.nbc")]:
                f.unlink(missing_ok=True)
        stamp.parent.mkdir(exist_ok=True)
        tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}.tmp")
        tmp.write_text(digest)
        os.replace(tmp, stamp)
    except OSError:
        pass


drop_stale_caches()


def _writable(t):
    """Numba type ``t`` with every array in it (also inside a tuple) typed writable."""
    if isinstance(t, numba.types.Array) and not t.mutable:
        return t.copy(readonly=False)
    if isinstance(t, numba.types.BaseTuple) and not isinstance(t, numba.types.NamedTuple):
        items = tuple(_writable(i) for i in t.types)
        return numba.types.Tuple(items) if items != tuple(t.types) else t
    return t


def one_build_for_read_only(dispatcher):
    """Let a Python call with read-only arrays run the build for writable ones, instead of compiling
    its own. Numba compiles one machine code per type signature, and a read-only array (a layer's
    frozen bias, a memory-mapped or ``np.frombuffer`` input) is another type: a convolution's
    parallel kernel compiled 20-50 s again for it, and a process that saw both paid twice (the
    tests compiled 30% of their kernels twice for this and for float64 scalars). The kernels
    never write to the arrays they read, so the writable build runs them unchanged (their OUT
    arrays must be writable, as every contract says: a read-only one is not caught): on the first
    such call the writable build is compiled (or loaded from the cache) and registered for the
    read-only signature too, so later calls go straight to it. Calls from other kernels are not
    concerned (their argument types are fixed when the caller compiles). Returns ``dispatcher``."""
    compile_for_args = getattr(dispatcher, "_compile_for_args", None)
    insert = getattr(dispatcher, "_insert", None)
    if compile_for_args is None or insert is None:     # NUMBA_DISABLE_JIT (a plain function), or
        return dispatcher                               # a Numba without these internals

    def canonical_compile_for_args(*args, **kws):
        if kws:
            return compile_for_args(*args, **kws)
        try:
            seen = tuple(dispatcher.typeof_pyval(a) for a in args)
        except Exception:       # numba's own path reports what it cannot type
            return compile_for_args(*args)
        build = tuple(_writable(t) for t in seen)
        if build == seen:
            return compile_for_args(*args)
        entry = dispatcher.compile(build)
        try:
            insert([t._code for t in seen], entry)
        except (TypeError, ValueError, AttributeError):  # another Numba's internals: this path each call
            pass
        return entry
    dispatcher._compile_for_args = canonical_compile_for_args
    return dispatcher


def jit(fn=None, *, fastmath=False, error_model="python", inline="never"):
    """Serial kernel. ``error_model="numpy"``: a float division by zero gives inf or NaN instead of
    raising, which lets LLVM vectorize loops that divide (the zero check is a branch per value).
    ``inline="always"``: a helper inlined into its callers at Numba's level (no call per use).
    Read-only arrays run the writable arrays' build (:func:`one_build_for_read_only`)."""
    if fn is None:
        return lambda f: jit(f, fastmath=fastmath, error_model=error_model, inline=inline)
    return one_build_for_read_only(numba.njit(fastmath=fastmath, error_model=error_model, inline=inline,
                                              **_FLAGS)(fn))


def pjit(fn=None, *, fastmath=False, error_model="python"):
    """Parallel kernel (``prange`` loops spread over Numba's thread pool)."""
    if fn is None:
        return lambda f: pjit(f, fastmath=fastmath, error_model=error_model)
    return one_build_for_read_only(numba.njit(parallel=True, fastmath=fastmath, error_model=error_model,
                                              **_FLAGS)(fn))


def both(fn=None, *, fastmath=False, error_model="python"):
    """Compile one body twice: returns ``(serial, parallel)`` dispatchers."""
    if fn is None:
        return lambda f: both(f, fastmath=fastmath, error_model=error_model)
    # A distinct function object with its own qualified name, so that the on-disk caches of the
    # two builds (keyed by qualified name and line, not by the parallel flag) never collide.
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_parallel",
                              fn.__defaults__, fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + "_parallel"
    twin.__doc__ = fn.__doc__
    return jit(fn, fastmath=fastmath, error_model=error_model), pjit(twin, fastmath=fastmath, error_model=error_model)


# Below this many multiply-adds (or element visits) a prange launch (1-3 us, ~25 us with the
# passive wait policy when the pool sleeps) costs more than it saves.
PARALLEL_MIN_WORK = 1 << 17


def _thread_functions():
    """Numba's C accessors of the calling thread's thread count, once its pool is up: 0.1 us a
    read against 0.9 us through ``numba.get_num_threads`` (a forward pass asks several times per
    call); the public functions where a Numba version lacks them."""
    numba.get_num_threads()             # starts the pool: the accessors exist from then on
    from numba.np.ufunc import parallel
    get, put = getattr(parallel, "_get_num_threads", None), getattr(parallel, "_set_num_threads", None)
    if not (callable(get) and callable(put)) or get() != numba.get_num_threads():
        get, put = numba.get_num_threads, numba.set_num_threads
    global num_threads, set_num_threads
    num_threads, set_num_threads = get, put


def num_threads():
    """``numba.get_num_threads()`` of the calling thread, cheaply."""
    _thread_functions()
    return num_threads()


def set_num_threads(n):
    """``numba.set_num_threads(n)`` for the calling thread, cheaply; ``n`` must be between 1 and
    the pool's size (a value :func:`num_threads` returned)."""
    _thread_functions()
    set_num_threads(n)


def pick(kernels, work):
    """Choose the serial or the parallel build of a kernel by the amount of work."""
    serial, parallel = kernels
    if work >= PARALLEL_MIN_WORK and num_threads() > 1:
        pool_ready()
        return parallel
    return serial


_started = threading.local()


def _gettid_fn():
    import ctypes
    fn = getattr(ctypes.CDLL(None), "gettid", None)
    if fn is not None:
        fn.restype, fn.argtypes = ctypes.c_int, []
    return fn


_GETTID = _gettid_fn() if _BIND and hasattr(os, "sched_setaffinity") else None


def _thread_ids(out):
    for i in numba.prange(out.shape[0]):
        out[i, 0] = numba.get_thread_id()
        out[i, 1] = _GETTID()


# Not cached (it calls a ctypes function): compiled on its first call, once per process (1-5 s),
# only when the pool's workers were already started before pool_ready could watch them start.
_thread_ids_parallel = numba.njit(parallel=True)(_thread_ids)


@numba.njit(parallel=True, cache=True)
def _first_region(out):
    """A parallel region that starts the calling thread's worker team (cached: no compile)."""
    for i in numba.prange(out.shape[0]):
        out[i] = i


def _tasks():
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def _worker_ids(threads):
    """OS thread ids of the calling thread's Numba workers: the threads its first parallel region
    starts (seen in /proc), else asked inside a region (a kernel compiled for the purpose)."""
    before = _tasks()
    _first_region(np.zeros(threads * 64, np.int64))
    new = _tasks() - before
    if before and len(new) == threads - 1:
        return sorted(new)
    ids = np.zeros((threads * 64, 2), np.int64)
    _thread_ids_parallel(ids)
    me = threading.get_native_id()
    return sorted({int(t) for t in ids[:, 1] if t > 0 and t != me})


def pool_ready():
    """Before parallel kernels (``pick``, nncomp/kernels/blas.py and the conv steps call it): once
    per calling thread, pin Numba's worker threads to one CPU each (see the module notes); every
    time, move a pinned worker off the caller's CPU (:func:`keep_apart`). The caller's own CPU set
    is never changed.
    """
    if not getattr(_started, "done", False):
        _started.done = True
        _pin_workers()
    keep_apart()


def _pin_workers():
    """Pin each of the calling thread's Numba workers to its own CPU, from the end of its CPU set."""
    if _GETTID is None:
        return
    threads = numba.get_num_threads()
    cpus = sorted(os.sched_getaffinity(0))
    if threads < 2 or len(cpus) < threads:
        return
    try:
        workers = _worker_ids(threads)
        pins = {}
        for tid, cpu in zip(workers, reversed(cpus)):
            os.sched_setaffinity(tid, {cpu})
            pins[tid] = cpu
        _started.pins = pins
    except Exception:  # pinning is an optimisation: never fail a forward pass over it  # noqa: BLE001
        pass


def _sched_getcpu():
    import ctypes
    fn = getattr(ctypes.CDLL(None), "sched_getcpu", None)
    if fn is not None:
        fn.restype, fn.argtypes = ctypes.c_int, []
    return fn


_GETCPU = _sched_getcpu() if _GETTID is not None else None


def keep_apart():
    """If the calling thread runs on a CPU one of its pinned workers uses, pin that worker to a CPU
    the caller is not on. A caller that the scheduler left on a worker's CPU made every parallel
    region share one core while the other idled (a 14x14 32->32 conv at batch 1: 1.6 ms a call
    instead of 23 us; LeNet-300 at batch 64 next to ONNX Runtime: 2.2 ms instead of 0.40). One
    ``sched_getcpu`` (~0.2 us) per parallel pass (nncomp.plan.run_parallel) or :func:`pool_ready`
    call; a system call only when a worker moves. The caller's own CPU set is never changed."""
    pins = getattr(_started, "pins", None)
    if not pins or _GETCPU is None:
        return
    cpu = _GETCPU()
    if cpu not in pins.values():
        return
    try:
        used = set(pins.values())
        free = [c for c in sorted(os.sched_getaffinity(0)) if c != cpu and c not in used]
        for tid, at in list(pins.items()):
            if at == cpu and free:
                target = free.pop(0)
                os.sched_setaffinity(tid, {target})
                pins[tid] = target
    except OSError:     # a worker gone, or a CPU set changed under us: leave them
        pass
