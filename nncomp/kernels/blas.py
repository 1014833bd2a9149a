"""float32 matrix products through NumPy's own BLAS, run in Numba's thread pool.

**One thread pool.** A forward pass mixes BLAS products with Numba ``prange`` kernels. OpenBLAS's
worker threads spin for a while after each threaded call (about 2**28 cycles), so a Numba kernel
that follows a BLAS product shares its cores with them: LeNet-5's first convolution took 0.93 ms
after the previous pass's BLAS calls against 0.49 ms alone, and the whole pass at batch 32 took
1.74 ms against 1.31 ms with OpenBLAS's spin disabled (bench notes in README). Here every product
is instead cut into one block per Numba thread, and each thread calls OpenBLAS, set to one thread
for the duration of the call, on its block: OpenBLAS's own workers never run, and the blocks run
in the same pool as every other kernel. For VGG-16's conv3_2 and fc6 this is as fast as
OpenBLAS's own threading (measured in bench/results/dense.md).

**Strided operands and accumulation**, which NumPy's ``matmul`` cannot express without copies:
the stride-1 convolution of nncomp/layers/conv_algorithms.py passes a column slice of the weight (leading
dimension ``kh*kw*c``) and a row slice of the padded image, and accumulates its taps with
``beta = 1``.

The library is the one NumPy loaded (found through threadpoolctl), called through its CBLAS
symbols. Where it cannot be found or lacks a symbol (a NumPy built against Accelerate or MKL),
:data:`ONE_POOL` is False and the products fall back to NumPy's ``matmul`` and SciPy's ``sgemm``:
the same results, with BLAS's own threads. BLAS does not check bounds: the Python functions here
check dtypes, shapes and strides first; the kernels trust them.
"""
import ctypes
import threading
from pathlib import Path

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from . import _jit
from ._jit import pjit, pool_ready
from .aligned import address

_F32 = np.dtype(np.float32)
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
# (prefix, suffix, integer type) of the symbol families an OpenBLAS may export
# (only 64-bit integer builds, "64_" symbols: the kernels' calls are compiled for them; NumPy >= 2
# wheels are)
_PREFIXES = ("scipy_", "")
# Below this many multiply-adds a product runs as one BLAS call on the calling thread.
SPLIT_MIN_WORK = 1 << 21
# A mat-vec (one sample) streams its weight once and is split from this many: LeNet-5's 500x800
# layer took 17 us in one thread and 8.6 us in two, each thread's half then fitting its L2 cache.
# Smaller ones stay on the calling thread: a split saves at most ~5 us there and pays the worker's
# wake-up when it sleeps (LeNet-300's 300x784 layer split read 1.5 ms a call for spells in the
# default benchmark's alternating loop).
GEMV_SPLIT_MIN_WORK = 1 << 18
# Below this many samples a (samples x features) product is computed transposed, ``W @ x.T``:
# blocks of weight rows, each streaming its part of the weight once (fc6 at batch 32: 27 ms against
# 39 ms for blocks of output columns).
SMALL_BATCH = 256


def _find():
    """``(sgemm, sgemv, set_threads, get_threads, description)`` from NumPy's OpenBLAS, or None."""
    try:
        import threadpoolctl
        config = str(np.__config__.CONFIG.get("Build Dependencies", {}).get("blas", {}))
        libs = threadpoolctl.threadpool_info()
    except Exception:  # pragma: no cover - an unusual NumPy build
        return None
    if "64BITINT" not in config:
        return None
    root = Path(np.__file__).resolve().parent.parent
    for lib in libs:
        path = Path(lib.get("filepath") or "/nonexistent").resolve()
        if (lib.get("internal_api") != "openblas" or not path.is_relative_to(root)
                or not path.parent.name.startswith("numpy")):
            continue
        dll = ctypes.CDLL(str(path))
        c_int = ctypes.c_int64
        for prefix in _PREFIXES:
            names = (f"{prefix}cblas_sgemm64_", f"{prefix}cblas_sgemv64_",
                     f"{prefix}openblas_set_num_threads64_", f"{prefix}openblas_get_num_threads64_")
            fns = [getattr(dll, nm, None) for nm in names]
            if any(f is None for f in fns):
                continue
            sgemm, sgemv, set_threads, get_threads = fns
            vp, f32 = ctypes.c_void_p, ctypes.c_float
            sgemm.restype = sgemv.restype = set_threads.restype = None
            sgemm.argtypes = [ctypes.c_int] * 3 + [c_int] * 3 + [f32, vp, c_int, vp, c_int, f32, vp, c_int]
            sgemv.argtypes = [ctypes.c_int] * 2 + [c_int] * 2 + [f32, vp, c_int, vp, c_int, f32, vp, c_int]
            set_threads.argtypes = [ctypes.c_int]
            get_threads.restype = ctypes.c_int
            get_threads.argtypes = []
            return sgemm, sgemv, set_threads, get_threads, f"{path} ({names[0]})"
    return None


_FOUND = _find()
ONE_POOL = _FOUND is not None
_sgemm, _sgemv, _set_threads, _get_threads, SOURCE = _FOUND or (None, None, None, None,
                                                               "numpy matmul / scipy sgemm")


# ---------------------------------------------------------------- kernels (Numba's pool)
# The kernels receive the BLAS functions' addresses as arguments and call them through
# ``_call``, so that Numba can cache them (a ctypes function as a global cannot be cached).

_I32, _I64, _F = ir.IntType(32), ir.IntType(64), ir.FloatType()
_PTR = ir.IntType(8).as_pointer()


def _lowered(kinds):
    """LLVM types of a C call's arguments: 'e' enum (int32), 'i' int64, 'f' float, 'p' pointer."""
    return [{"e": _I32, "i": _I64, "f": _F, "p": _PTR}[c] for c in kinds]


def _make_call(kinds):
    @intrinsic
    def call(typingctx, fptr, args):
        sig = types.void(fptr, args)

        def codegen(context, builder, signature, llargs):
            fn = builder.inttoptr(llargs[0], ir.FunctionType(ir.VoidType(), _lowered(kinds)).as_pointer())
            values = []
            for i, c in enumerate(kinds):
                v = builder.extract_value(llargs[1], i)
                if c == "e":
                    v = builder.trunc(v, _I32)
                elif c == "f":
                    v = builder.fptrunc(v, _F)
                elif c == "p":
                    v = builder.inttoptr(v, _PTR)
                values.append(v)
            builder.call(fn, values)
            return context.get_dummy_value()
        return sig, codegen
    return call


# cblas_sgemm(order, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
call_sgemm = _make_call("eeeiiifpipifpi")
# cblas_sgemv(order, trans, m, n, alpha, a, lda, x, incx, beta, y, incy)
_call_sgemv = _make_call("eeiifpipifpi")


def _gemm_rows(sgemm, x, w, out, beta, parts):
    """``out = x @ w.T + beta * out`` with the rows of ``x`` and ``out`` cut into ``parts`` blocks.

    IN  sgemm address of cblas_sgemm (64-bit integers); x (m, k) float32, w (n, k) float32 (unit
        column stride, row strides >= k); beta 0 or 1.
    OUT out (m, n) float32 (unit column stride).
    """
    m, k = x.shape
    n = w.shape[0]
    ldx, ldw, ldo = max(x.strides[0] // 4, k), max(w.strides[0] // 4, k), max(out.strides[0] // 4, n)
    xp, wp, op = x.ctypes.data, w.ctypes.data, out.ctypes.data
    for t in prange(parts):
        r0 = m * t // parts
        r1 = m * (t + 1) // parts
        if r1 > r0:
            call_sgemm(sgemm, (101, 111, 112, r1 - r0, n, k, 1.0, xp + 4 * r0 * ldx, ldx, wp, ldw, beta,
                                op + 4 * r0 * ldo, ldo))


def _gemm_t(sgemm, x, w, out_t, parts):
    """``out_t = w @ x.T`` with the rows of ``w`` and ``out_t`` cut into ``parts`` blocks.

    IN  sgemm address of cblas_sgemm (64-bit integers); x (m, k) float32, w (n, k) float32 (unit
        column stride, row strides >= k).
    OUT out_t (n, m) float32 C-contiguous.
    """
    m, k = x.shape
    n = w.shape[0]
    ldx, ldw = max(x.strides[0] // 4, k), max(w.strides[0] // 4, k)
    xp, wp, op = x.ctypes.data, w.ctypes.data, out_t.ctypes.data
    for t in prange(parts):
        c0 = n * t // parts
        c1 = n * (t + 1) // parts
        if c1 > c0:
            call_sgemm(sgemm, (101, 111, 112, c1 - c0, m, k, 1.0, wp + 4 * c0 * ldw, ldw, xp, ldx, 0.0,
                                op + 4 * c0 * m, m))


def _gemm_kn(sgemm, x, wt, out, parts):
    """``out = x @ wt`` with the columns of ``wt`` and ``out`` cut into ``parts`` blocks: the product
    of a weight stored transposed, (k, n), written in the samples' row order (no transposed view).

    IN  sgemm address of cblas_sgemm (64-bit integers); x (m, k) float32, wt (k, n) float32 (unit
        column stride, row strides >= their widths).
    OUT out (m, n) float32 (unit column stride, row stride >= n).
    """
    m, k = x.shape
    n = wt.shape[1]
    ldx, ldw, ldo = max(x.strides[0] // 4, k), max(wt.strides[0] // 4, n), max(out.strides[0] // 4, n)
    xp, wp, op = x.ctypes.data, wt.ctypes.data, out.ctypes.data
    for t in prange(parts):
        c0 = n * t // parts
        c1 = n * (t + 1) // parts
        if c1 > c0:
            call_sgemm(sgemm, (101, 111, 111, m, c1 - c0, k, 1.0, xp, ldx, wp + 4 * c0, ldw, 0.0, op + 4 * c0, ldo))


def _gemv(sgemv, w, x, out, parts):
    """``out = w @ x`` with the rows of ``w`` cut into ``parts`` blocks.

    IN  sgemv address of cblas_sgemv (64-bit integers); w (n, k) float32 (unit column stride, row
        stride >= k), x (k,) float32 contiguous.
    OUT out (n,) float32 contiguous.
    """
    n, k = w.shape
    ldw = max(w.strides[0] // 4, k)
    xp, wp, op = x.ctypes.data, w.ctypes.data, out.ctypes.data
    for t in prange(parts):
        c0 = n * t // parts
        c1 = n * (t + 1) // parts
        if c1 > c0:
            _call_sgemv(sgemv, (101, 111, c1 - c0, k, 1.0, wp + 4 * c0 * ldw, ldw, xp, 1, 0.0, op + 4 * c0, 1))


blas_gemm_rows = pjit(_gemm_rows)
blas_gemm_t = pjit(_gemm_t)
blas_gemm_kn = pjit(_gemm_kn)
blas_gemv = pjit(_gemv)
# The CBLAS functions' addresses, for kernels that call BLAS (nncomp/kernels/conv_gemm.py too).
SGEMM_AT = ctypes.cast(_sgemm, ctypes.c_void_p).value if ONE_POOL else 0
SGEMV_AT = ctypes.cast(_sgemv, ctypes.c_void_p).value if ONE_POOL else 0


# ---------------------------------------------------------------- checked entry points

def _leading(a, name, cols):
    """BLAS leading dimension (row stride in elements) of a float32 2-D operand, after checks."""
    if not (isinstance(a, np.ndarray) and a.dtype == _F32 and a.ndim == 2):
        raise TypeError(f"{name} must be a 2-D float32 array, got {getattr(a, 'dtype', type(a))} "
                        f"with shape {getattr(a, 'shape', None)}")
    rows, s0, s1 = a.shape[0], a.strides[0], a.strides[1]
    if a.size == 0:
        return max(1, cols)
    if (a.shape[1] > 1 and s1 != 4) or (rows > 1 and (s0 % 4 or s0 < 4 * cols)):
        raise ValueError(f"{name} must have unit column stride and a row stride of at least its width, "
                         f"got strides {a.strides} for shape {a.shape}")
    return max(1, cols, s0 // 4 if rows > 1 else cols)


def direct():
    """Whether the compiled kernels here can call BLAS (:data:`ONE_POOL`, and the JIT on)."""
    return ONE_POOL and not numba.config.DISABLE_JIT


def split_parts(work):
    """How many parts (threads) a product of ``work`` multiply-adds is cut into by the kernels here."""
    return _parts(work) if ONE_POOL else 1


def _parts(work, split_min=None):
    if work < (SPLIT_MIN_WORK if split_min is None else split_min) or numba.config.DISABLE_JIT:
        # (the kernels' BLAS calls need compiling)
        return 1
    threads = _jit.num_threads()
    if threads > 1:
        pool_ready()
    return max(1, threads)


class _OneThreadBLAS:
    """OpenBLAS at one thread while any body runs (counted across Python threads, so that a call
    never sees another call's restore); the setting found on entry is restored by the last exit."""

    _lock = threading.Lock()
    _depth = 0
    _saved = 1

    def __enter__(self):
        cls = type(self)
        if not ONE_POOL:
            return
        with cls._lock:
            if cls._depth == 0:
                cls._saved = _get_threads()
                if cls._saved != 1:
                    _set_threads(1)
            cls._depth += 1

    def __exit__(self, *exc):
        cls = type(self)
        if not ONE_POOL:
            return
        with cls._lock:
            cls._depth -= 1
            if cls._depth == 0 and cls._saved != 1:
                _set_threads(cls._saved)


ONE_THREAD = _OneThreadBLAS()


def gemm_nt(x, w, out, beta=0.0):
    """``out = x @ w.T + beta * out`` in float32, in place, with no copies.

    IN  x (m, k) float32 and w (n, k) float32, each with unit column stride and any row stride
        >= k (slices of bigger arrays are fine); beta 0.0 (overwrite) or 1.0 (accumulate).
    OUT out (m, n) float32, unit column stride, writeable, not overlapping x or w. Returns ``out``.
    """
    m, k = x.shape
    n = w.shape[0]
    if w.shape[1] != k or out.shape != (m, n):
        raise ValueError(f"gemm_nt shapes do not match: x {x.shape}, w {w.shape}, out {out.shape}")
    ldx, ldw, ldo = _leading(x, "x", k), _leading(w, "w", k), _leading(out, "out", n)
    if not out.flags.writeable or np.may_share_memory(out, x) or np.may_share_memory(out, w):
        raise ValueError("gemm_nt needs a writeable out that does not overlap x or w")
    if m == 0 or n == 0:
        return out
    if k == 0:
        out *= np.float32(beta)
        return out
    if not ONE_POOL:
        _scipy_gemm_nt(x, w, out, beta)
        return out
    with ONE_THREAD:
        parts = min(_parts(m * n * k), m)
        if parts == 1:
            _sgemm(_ROW_MAJOR, _NO_TRANS, _TRANS, m, n, k, 1.0, address(x), ldx, address(w), ldw, float(beta),
                   address(out), ldo)
        else:
            blas_gemm_rows(SGEMM_AT, x, w, out, float(beta), parts)
    return out


def matmul_nt(x, w):
    """``x @ w.T`` as float32 ``(m, n)`` for C-contiguous float32 x (m, k) and w (n, k).

    Below :data:`SMALL_BATCH` samples the result may be the transposed view of ``w @ x.T``.
    Products under :data:`SPLIT_MIN_WORK` (mat-vecs under :data:`GEMV_SPLIT_MIN_WORK`) run through
    NumPy's ``matmul`` (its call costs ~1 us, a ctypes call ~4 us) with OpenBLAS at one thread.
    """
    with ONE_THREAD:
        return plan_nt(x.shape[0], w)(x)


def plan_nt(m, w):
    """The function ``x -> x @ w.T`` of :func:`matmul_nt` for inputs of ``m`` rows, its path (mat-vec,
    transposed or row blocks; how many parts) decided once. Call it inside :data:`ONE_THREAD`, as
    :func:`matmul_nt` and a model's forward pass do (otherwise OpenBLAS's own threads run too)."""
    n, k = w.shape
    parts = 1
    if ONE_POOL and k:
        parts = _parts(m * n * k, GEMV_SPLIT_MIN_WORK if m == 1 else SPLIT_MIN_WORK)
    if parts == 1:
        return (lambda x: (w @ x.T).T) if m < SMALL_BATCH else (lambda x: x @ w.T)
    if m == 1:
        def gemv(x):
            out = np.empty((1, n), np.float32)
            blas_gemv(SGEMV_AT, w, x[0], out[0], parts)
            return out
        return gemv
    if m < SMALL_BATCH:
        def transposed(x):
            out_t = np.empty((n, m), np.float32)
            blas_gemm_t(SGEMM_AT, x, w, out_t, parts)
            return out_t.T
        return transposed

    def rows(x):
        out = np.empty((m, n), np.float32)
        blas_gemm_rows(SGEMM_AT, x, w, out, 0.0, parts)
        return out
    return rows


_scipy = None


def _scipy_gemm_nt(x, w, out, beta):
    """The fallback: SciPy's Fortran sgemm through its Cython table (column-major, by reference)."""
    global _scipy
    if _scipy is None:
        from numba.extending import get_cython_function_address
        _scipy = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 13))(
            get_cython_function_address("scipy.linalg.cython_blas", "sgemm"))
    m, k = x.shape
    n = w.shape[0]
    ref, c_int, c_float = ctypes.byref, ctypes.c_int, ctypes.c_float
    # column-major: out.T (n x m) = (w read transposed) (n x k) @ x.T (k x m)
    _scipy(ref(ctypes.c_char(b"T")), ref(ctypes.c_char(b"N")), ref(c_int(n)), ref(c_int(m)), ref(c_int(k)),
           ref(c_float(1.0)), address(w), ref(c_int(_leading(w, "w", k))), address(x),
           ref(c_int(_leading(x, "x", k))), ref(c_float(beta)), address(out),
           ref(c_int(_leading(out, "out", n))))
