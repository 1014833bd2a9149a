"""Sparse weights: CSR with compact column indices, and dense storage of a pruned weight.

``CSRMatrix`` holds the nonzeros of ``W (n_out, n_in)`` row by row: ``data`` float32 values,
``indices`` column indices (uint16 when ``n_in <= 65536``, so that one AVX-512 gather loads 16 of
them; int32 otherwise), sorted and distinct within each row, and ``indptr`` (int32, or int64 beyond
2**31 - 1 nonzeros). It applies itself with the kernels of nncomp/kernels/csr.py: a gathered dot
product per output row at batch 1, one pass over the matrix for all samples at batch > 1; serial
below ``_jit.PARALLEL_MIN_WORK`` multiply-adds, else spread over Numba's threads.

``PrunedDenseMatrix`` is what pruning keeps when a layer is not sparse enough for CSR to be faster
(``DENSE_ABOVE_DENSITY``, measured in bench/sparse.py): the same BLAS product as DenseMatrix, with
the zeros stored, and a summary line that says so.
"""
from dataclasses import dataclass

import numpy as np

from ..coding.index import index_dtype
from ..errors import CompressionParameterError
from ..kernels import _jit
from ..kernels import csr as kernels
from ..kernels import decode
from ..kernels import sparse_small
from .base import Matrix, expect, register_format
from .dense import DenseMatrix

_NO_CODES = np.zeros(0, np.uint8)      # the sparse decoder's "values are the weights"

# Above this density (fraction of nonzeros) pruning keeps dense storage. At batch 1 CSR pays ~3-4x
# more per stored weight than dense (a gathered 6-byte nonzero against a streamed 4-byte weight);
# bench/sparse.py's density sweep on fc7 puts the crossover between 40% and 60% density on a loaded
# 2-core machine (CSR/dense 0.66 at 30%); 30% keeps a margin for the noise and for small layers.
DENSE_ABOVE_DENSITY = 0.30


def csr_problems(data, indices, indptr, shape, values=np.float32):
    """What is wrong with these CSR arrays (empty list: nothing). Checks everything a kernel trusts;
    ``values`` is the stored values' dtype (float32 values must also be finite)."""
    if not (isinstance(shape, tuple) and len(shape) == 2 and all(type(s) is int and s >= 1 for s in shape)):
        return [f"shape must be two ints >= 1, got {shape!r}"]
    n_out, n_in = shape
    arrays = {"data": data, "indices": indices, "indptr": indptr}
    for name, arr in arrays.items():
        if not (isinstance(arr, np.ndarray) and arr.ndim == 1):
            return [f"{name} must be a 1-D array, got {type(arr).__name__} {getattr(arr, 'shape', '')}"]
    bad = []
    if data.dtype != values:
        bad.append(f"data must be {np.dtype(values).name}, got {data.dtype}")
    elif data.dtype.kind == "f" and not np.isfinite(data).all():
        bad.append(f"data holds {int((~np.isfinite(data)).sum())} non-finite value(s)")
    if indices.dtype not in (np.uint16, np.int32) or (indices.dtype == np.uint16 and n_in > 65536):
        bad.append(f"indices must be uint16 (n_in <= 65536) or int32, got {indices.dtype} for n_in={n_in}")
    if indptr.dtype not in (np.int32, np.int64):
        bad.append(f"indptr must be int32 or int64, got {indptr.dtype}")
    if bad:
        return bad
    nnz = data.shape[0]
    if indices.shape[0] != nnz:
        return [f"indices has {indices.shape[0]} entries, data {nnz}"]
    if indptr.shape[0] != n_out + 1:
        return [f"indptr has {indptr.shape[0]} entries; {n_out} rows need {n_out + 1}"]
    if indptr[0] != 0 or indptr[-1] != nnz:
        return [f"indptr must run from 0 to nnz={nnz}, got {indptr[0]}..{indptr[-1]}"]
    if np.any(np.diff(indptr.astype(np.int64)) < 0):
        return ["indptr is not non-decreasing"]
    if nnz:
        cols = indices.astype(np.int64)
        if cols.min() < 0 or cols.max() >= n_in:
            return [f"column index {int(cols.max() if cols.max() >= n_in else cols.min())} out of range "
                    f"for n_in={n_in}"]
        step = np.diff(cols)
        row_start = np.zeros(nnz, bool)
        row_start[indptr[:-1][indptr[:-1] < nnz]] = True
        if np.any((step <= 0) & ~row_start[1:]):
            return ["column indices are not strictly increasing within a row (unsorted or duplicated)"]
    return []


@register_format
@dataclass(frozen=True, repr=False, eq=False)
class CSRMatrix(Matrix):
    """Compressed sparse rows ``(n_out, n_in)``: float32 values and compact column indices.

    Parameters
    ----------
    data : ndarray of float32, shape (nnz,)
        Finite nonzero values (explicit zeros are allowed), row by row.
    indices : ndarray of uint16 or int32, shape (nnz,)
        Column of each value, strictly increasing within a row; uint16 only when ``n_in <= 65536``.
    indptr : ndarray of int32 or int64, shape (n_out + 1,)
        Row ``o`` holds entries ``indptr[o]:indptr[o + 1]``.
    shape : (int, int)
        ``(n_out, n_in)``.

    Use :meth:`from_dense` to build one from a weight with zeros. ``nbytes`` counts the three arrays.
    """

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    shape: tuple
    format = "csr"
    codable = ("indices",)

    def __post_init__(self):
        shape = tuple(int(s) if isinstance(s, (int, np.integer)) and type(s) is not bool else s
                      for s in self.shape) if isinstance(self.shape, (tuple, list)) else self.shape
        bad = csr_problems(self.data, self.indices, self.indptr, shape)
        if bad:
            raise CompressionParameterError(f"CSRMatrix: {'; '.join(bad)}")
        object.__setattr__(self, "shape", shape)
        for name in ("data", "indices", "indptr"):
            arr = np.ascontiguousarray(getattr(self, name))
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @classmethod
    def from_dense(cls, w):
        """The nonzeros of a 2-D weight as a CSRMatrix (indices uint16 where ``n_in <= 65536``)."""
        w = np.asarray(w, dtype=np.float32)
        if w.ndim != 2 or min(w.shape) < 1:
            raise CompressionParameterError(f"CSRMatrix.from_dense needs a non-empty 2-D weight, got {w.shape}")
        rows, cols = np.nonzero(w)
        counts = np.bincount(rows, minlength=w.shape[0])
        nnz = rows.shape[0]
        indptr = np.zeros(w.shape[0] + 1, np.int32 if nnz < 2**31 else np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(w[rows, cols], cols.astype(index_dtype(w.shape[1])), indptr, tuple(w.shape))

    @property
    def nnz(self):
        return int(self.data.shape[0])

    @property
    def density(self):
        return self.nnz / (self.shape[0] * self.shape[1])

    @property
    def nbytes(self):
        return self.data.nbytes + self.indices.nbytes + self.indptr.nbytes

    @property
    def macs_per_row(self):
        return self.nnz

    def _apply(self, x):
        n = x.shape[0]
        work = self.nnz * n + self.shape[0]
        if n == 1:
            out = np.empty((1, self.shape[0]), np.float32)
            kern = _jit.pick((kernels.csr_matvec, kernels.csr_matvec_parallel), work)
            kern(self.data, self.indices, self.indptr, x[0], out[0])
            return out
        out = np.empty((n, self.shape[0]), np.float32)
        kern = _jit.pick((kernels.csr_matmul, kernels.csr_matmul_parallel), work)
        kern(self.data, self.indices, self.indptr, x, out, kernels.column_panel(self.shape[1], n))
        return out

    def single_sample_kernel(self):
        return ((self.data, self.indices, self.indptr),
                (sparse_small.csr_gemv_epilogue, sparse_small.csr_gemv_epilogue_parallel), self.nnz + self.shape[0])

    def to_dense(self):
        w = np.zeros(self.shape, np.float32)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr.astype(np.int64)))
        w[rows, self.indices.astype(np.int64)] = self.data
        return w

    def to_arrays(self):
        return ({"data": self.data, "indices": self.indices, "indptr": self.indptr},
                {"shape": list(self.shape)})

    @classmethod
    def from_arrays(cls, arrays, attrs, *, path=None, obj=None):
        shape = attrs.get("shape") if isinstance(attrs, dict) else None
        expect(isinstance(shape, list) and len(shape) == 2 and all(type(s) is int for s in shape),
               path, obj, f"csr matrix needs attribute shape [n_out, n_in], got {shape!r}")
        expect(set(arrays) == {"data", "indices", "indptr"}, path, obj,
               f"csr matrix needs arrays data, indices, indptr; got {sorted(arrays)}")
        bad = csr_problems(arrays["data"], arrays["indices"], arrays["indptr"], tuple(shape))
        expect(not bad, path, obj, "; ".join(bad))
        return cls(arrays["data"], arrays["indices"], arrays["indptr"], tuple(shape))

    def decoder(self):
        return ((decode.decode_sparse_t, decode.decode_sparse_t_parallel),
                (self.data, _NO_CODES, self.indices, self.indptr))

    def describe(self):
        return f"csr {1 - self.density:.0%} ({self.indices.dtype.name})"

    def __repr__(self):
        return (f"CSRMatrix(shape={self.shape}, nnz={self.nnz}, sparsity={1 - self.density:.1%}, "
                f"indices={self.indices.dtype.name}, nbytes={self.nbytes})")


@register_format
@dataclass(frozen=True, repr=False, eq=False)
class PrunedDenseMatrix(DenseMatrix):
    """A pruned weight kept in dense storage because CSR would not be faster at its density."""

    format = "pruned_dense"

    @property
    def density(self):
        return float(np.count_nonzero(self.w)) / self.w.size

    def describe(self):
        why = (f"kept dense: density {self.density:.0%} > {DENSE_ABOVE_DENSITY:.0%}"
               if self.density > DENSE_ABOVE_DENSITY else "stored dense on request")
        return f"dense {1 - self.density:.0%} zeros ({why})"

    @classmethod
    def from_arrays(cls, arrays, attrs, *, path=None, obj=None):
        return cls(DenseMatrix.from_arrays(arrays, attrs, path=path, obj=obj).w)
