"""Runs of convolution steps compiled into one call (nncomp/kernels/conv_chain.py).

A prepared blocked (dense or depthwise), Winograd or static-int8 implicit-GEMM step
(nncomp/layers/conv_int8.py) carries its row of the run
(:class:`ChainStep` as ``step.chain``); a pooled one with an epilogue
after the pool gets that epilogue added by :func:`with_post`. A global mean that keeps its (1, 1)
pixel and a per-sample channel vector applied to a map (the squeeze-and-excitation block of
MobileNetV3 and EfficientNet between its convolutions) carry one from :func:`squeeze_row`.
:func:`merge_runs` replaces each run of consecutive such steps of a plan whose inner values nothing
after the run reads by one call of the compiled driver.
"""
from dataclasses import dataclass, replace

import numpy as np

from ..errors import InputError
from ..kernels import conv_chain as K

# A run needs at least this many steps to pay for its Python call.
MIN_RUN = 2


@dataclass(frozen=True)
class ChainStep:
    """A step as a row of a compiled run (see nncomp/layers/conv_chain.py); ``label`` names an int8
    step's layer in the error its NaN or infinite input raises."""

    weight: np.ndarray
    vectors: tuple
    ints: np.ndarray
    floats: np.ndarray
    label: str = ""


def chain_tables():
    """A step's integer and float rows of a compiled run with nothing set: no clips (LO, HI,
    POST_LO, POST_HI at -inf, inf), every other entry 0."""
    floats = np.zeros(K.N_FLOATS, np.float32)
    floats[[K.LO, K.POST_LO]], floats[[K.HI, K.POST_HI]] = -np.inf, np.inf
    return np.zeros(K.N_INTS, np.int64), floats


def with_post(spec, epilogue, parallel):
    """``spec`` (a pooled step's row) with ``epilogue`` ``(scale, shift, add, lo, hi, act)``
    applied to the pooled output by the epilogue kernels (their ``parallel`` builds or not), or
    None when the epilogue has a residual add."""
    scale, shift, add, lo, hi, act = epilogue
    if add:
        return None
    ints, floats = spec.ints.copy(), spec.floats.copy()
    code, alpha, beta = act or (0, 0.0, 0.0)
    ints[K.POST_ACT], ints[K.POST_PARALLEL] = code, parallel
    floats[[K.POST_LO, K.POST_HI, K.POST_ALPHA, K.POST_BETA]] = lo, hi, alpha, beta
    vectors = (spec.vectors[:3] + (np.ascontiguousarray(scale, np.float32), np.ascontiguousarray(shift, np.float32))
               + spec.vectors[5:])
    return replace(spec, vectors=vectors, ints=ints, floats=floats)


_NO_WEIGHT = np.zeros((1, 1), np.float32)
_NO_VECTOR = np.zeros(0, np.float32)


def squeeze_row(kind, parallel, op=0, reverse=False):
    """The row of a K.MEAN step, or of a K.CHANNEL step with channel op code ``op`` (the vector
    first with ``reverse``; the row's IN slot is the map's, RES the vector's), running the
    ``parallel`` build of its kernel or the serial one."""
    ints = np.zeros(K.N_INTS, np.int64)
    ints[K.KIND], ints[K.PARALLEL], ints[K.OP], ints[K.REVERSE] = kind, parallel, op, reverse
    return ChainStep(_NO_WEIGHT, (_NO_VECTOR,) * K.N_VECTORS, ints, np.zeros(K.N_FLOATS, np.float32))


def _runs(steps, kept):
    """``(first, last)`` index pairs of runs: consecutive chainable steps reading at most two
    values from before the run, whose values other than the last nothing after the run reads."""
    runs, i = [], 0
    while i < len(steps):
        j = i
        outside = set()
        while j < len(steps) and getattr(steps[j][0], "chain", None) is not None:
            reads = {s for s in steps[j][1] if s <= i}          # slot s is step s - 1's value
            if len(outside | reads) > 2:
                break
            outside |= reads
            j += 1
        # trim the run until no inner value is read after it or kept
        while j - i >= MIN_RUN:
            inner = set(range(i + 1, j))                        # slots of steps i .. j - 2
            later = {s for st in steps[j:] for s in st[1]}
            if not (inner & (later | kept)):
                break
            j -= 1
        if j - i >= MIN_RUN:
            runs.append((i, j - 1))
            i = j
        else:
            i += 1
    return runs


def merge_runs(steps, kept):
    """``steps`` (``(step, input slots, slots to free)`` per plan step; slot 0 the input, slot
    k + 1 step k's value) with each run replaced by one compiled call in its last step's place
    and placeholders (returning None) in the others, so the slots stay as they were."""
    steps = list(steps)
    for first, last in _runs(steps, set(kept)):
        outside = sorted({s for st in steps[first:last + 1] for s in st[1] if s <= first})
        slot = {s: k for k, s in enumerate(outside)}
        for k in range(first, last + 1):
            slot[k + 1] = k - first + 2
        specs = [steps[k][0].chain for k in range(first, last + 1)]
        ints = np.stack([sp.ints for sp in specs])
        for row, k in zip(ints, range(first, last + 1)):
            ins = steps[k][1]
            if row[K.KIND] == K.CHANNEL and row[K.REVERSE]:
                ins = ins[::-1]                                 # the map is IN, the vector RES
            if row[K.SCALED]:                                   # map, channel vector[, residual]
                vec, ins = (ins[0], ins[1:]) if row[K.REVERSE] else (ins[1], ins[:1] + ins[2:])
                row[K.SCALE] = slot[vec]
            row[K.IN] = slot[ins[0]]
            row[K.RES] = slot[ins[1]] if len(ins) > 1 else 0
            # the values of the run this step reads last (the plan's own frees; not the run's
            # inputs, slots 0 and 1, which are the caller's)
            for col, d in zip((K.DROP0, K.DROP1, K.DROP2), [slot[f] for f in steps[k][2] if slot[f] >= 2]):
                row[col] = d
        for row, sp in zip(ints, specs):
            row[[K.W_ADDR, K.W_ROWS, K.W_COLS]] = sp.weight.ctypes.data, *sp.weight.shape
            row[K.V_ADDR:K.V_ADDR + K.N_VECTORS] = [v.ctypes.data for v in sp.vectors]
            row[K.V_ADDR + K.N_VECTORS:K.V_ADDR + 2 * K.N_VECTORS] = [v.shape[0] for v in sp.vectors]
        floats = np.stack([sp.floats for sp in specs])
        frees = tuple(sorted({f for st in steps[first:last + 1] for f in st[2]} - set(range(first + 1, last + 1))))
        run = _call(specs, ints, floats)
        run.first = first                   # the plan's step (and layer) index of the run's first step
        steps[last] = (run, tuple(outside), frees)
        for k in range(first, last):
            steps[k] = (_nothing, (), ())
    return tuple(steps)


def _nothing():
    return None


_nothing.blas = False


# tools/profile_steps.py sets a list here: each run appends (its specs, the time-stamp counter before
# its first step and after each step), the time of each step inside the compiled call.
PROFILE = None


def _call(specs, ints, floats):
    """The run's step; it holds ``specs``, whose arrays the table points to."""
    def run(x0, x1=None):
        status = np.zeros(len(specs) + 2, np.int64)
        y = K.run_chain(np.ascontiguousarray(x0), x0 if x1 is None else np.ascontiguousarray(x1), ints, floats,
                        status)
        if status[0]:
            raise InputError(f"{specs[status[0] - 1].label}: input holds NaN or Inf; quantized layers refuse them")
        if PROFILE is not None:
            PROFILE.append((run, status[1:]))
        return y
    run.specs, run.ints, run.floats, run.blas = specs, ints, floats, False
    return run
