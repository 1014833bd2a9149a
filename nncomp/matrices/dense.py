"""Dense float32 weights, applied through BLAS."""
from dataclasses import dataclass

import numpy as np

from ..kernels import blas
from .base import Matrix, expect, register_format


@register_format
@dataclass(frozen=True, repr=False, eq=False)
class DenseMatrix(Matrix):
    """Plain float32 ``(n_out, n_in)`` weights; ``apply`` is sgemm (NumPy's BLAS, in Numba's threads)."""

    w: np.ndarray
    format = "dense"
    uses_blas = True

    def __post_init__(self):
        w = np.ascontiguousarray(self.w, dtype=np.float32)
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
