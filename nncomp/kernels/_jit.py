"""The one place for Numba flags.

``jit`` compiles a serial kernel, ``pjit`` a ``parallel=True`` one from the same Python body
(``prange`` is a plain ``range`` in the serial build), so a kernel is written once and the caller
picks serial for small work and parallel for large work.

Threading: a forward pass runs in Numba's thread pool only; its BLAS products are cut into one
block per Numba thread with OpenBLAS at one thread (nncomp/kernels/blas.py). Before Numba's OpenMP
pool starts, nncomp asks, unless the user has set them:

- ``OMP_WAIT_POLICY=PASSIVE`` with ``GOMP_SPINCOUNT=30000``: a worker spins ~2 ms after a parallel
  region, then sleeps. GNU OpenMP's default spins far longer and holds a core that other libraries
  need (a 256x512x512 NumPy sgemm after a 1024x1024 prange mat-vec took 8.0 ms instead of 0.57 ms);
  pure PASSIVE (no spin) makes every region a futex wake-up, and after an idle spell the first
  calls ran 1.8x slower (VGG-16 conv3_2, 9 regions per call: 18.9 ms against 10.5 ms) while the
  scheduler spread the woken threads again.
- a thread-safe threading layer (``NUMBA_THREADING_LAYER=threadsafe``): the ``workqueue`` layer
  aborts the process when two Python threads call a parallel kernel at once.
"""
import os
import types

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "30000")

import numba  # noqa: E402

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "threadsafe"

_FLAGS = dict(cache=True, nogil=True)


def jit(fn=None, *, fastmath=False):
    """Serial kernel."""
    if fn is None:
        return lambda f: jit(f, fastmath=fastmath)
    return numba.njit(fastmath=fastmath, **_FLAGS)(fn)


def pjit(fn=None, *, fastmath=False):
    """Parallel kernel (``prange`` loops spread over Numba's thread pool)."""
    if fn is None:
        return lambda f: pjit(f, fastmath=fastmath)
    return numba.njit(parallel=True, fastmath=fastmath, **_FLAGS)(fn)


def both(fn=None, *, fastmath=False):
    """Compile one body twice: returns ``(serial, parallel)`` dispatchers."""
    if fn is None:
        return lambda f: both(f, fastmath=fastmath)
    # A distinct function object with its own qualified name, so that the on-disk caches of the
    # two builds (keyed by qualified name and line, not by the parallel flag) never collide.
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_parallel",
                              fn.__defaults__, fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + "_parallel"
    twin.__doc__ = fn.__doc__
    return jit(fn, fastmath=fastmath), pjit(twin, fastmath=fastmath)


# Below this many multiply-adds (or element visits) a prange launch (1-3 us, ~25 us with the
# passive wait policy when the pool sleeps) costs more than it saves.
PARALLEL_MIN_WORK = 1 << 17


def pick(kernels, work):
    """Choose the serial or the parallel build of a kernel by the amount of work."""
    serial, parallel = kernels
    return parallel if work >= PARALLEL_MIN_WORK and numba.get_num_threads() > 1 else serial
