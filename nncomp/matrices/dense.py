"""Dense float32 weights, applied through BLAS."""
from dataclasses import dataclass

import numpy as np

from ..kernels import aligned, blas
from ..kernels.dense_small import gemv_epilogue, gemv_epilogue_parallel
from .base import Matrix, expect, register_format

# A single sample through a float32 dense weight runs the compiled mat-vec with its epilogue
# (nncomp/kernels/dense_small.py), on the thread pool from GEMV_SERIAL_FACTOR x
# _jit.PARALLEL_MIN_WORK multiply-adds (2^18, where the BLAS mat-vec split); VGG-16's fc6 (411 MB,
# 2 threads, alternating): 12.1 ms against 13.95 for OpenBLAS's sgemv split over the threads.
GEMV_SERIAL_FACTOR = 2


@register_format
@dataclass(frozen=True, repr=False, eq=False)
class DenseMatrix(Matrix):
    """Plain float32 ``(n_out, n_in)`` weights; ``apply`` is sgemm (NumPy's BLAS, in Numba's threads)."""

    w: np.ndarray
    format = "dense"
    uses_blas = True

    def __post_init__(self):
        w = aligned.aligned(self.w, np.float32)     # the kernels read its rows as vectors
        if w.ndim != 2:
            raise ValueError(f"DenseMatrix needs a 2-D weight, got shape {w.shape}")
        w.setflags(write=False)
        object.__setattr__(self, "w", w)

    @property
    def shape(self):
        return self.w.shape

    @property
    def nbytes(self):
        return self.w.nbytes

    def _apply(self, x):
        # In Numba's thread pool, with OpenBLAS at one thread per block (nncomp/kernels/blas.py);
        # below blas.SMALL_BATCH samples the result is the transposed view of ``w @ x.T``.
        return blas.matmul_nt(x, self.w)

    def prepare(self, n):
        mul = blas.plan_nt(n, self.w)
        return lambda x: mul(np.ascontiguousarray(x))

    def single_sample_kernel(self):
        n_out, n_in = self.w.shape         # w is C-contiguous
        return (self.w,), (gemv_epilogue, gemv_epilogue_parallel), n_out * n_in // GEMV_SERIAL_FACTOR

    def to_dense(self):
        return self.w

    def to_arrays(self):
        return {"w": self.w}, {}

    @classmethod
    def from_arrays(cls, arrays, attrs, *, path=None, obj=None):
        w = arrays.get("w")
        expect(w is not None and w.ndim == 2 and w.dtype == np.float32, path, obj,
               "dense matrix needs a 2-D float32 array 'w'")
        return cls(w)
