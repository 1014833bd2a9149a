"""Pruned and shared weights: CSR rows whose values are codes into a per-layer codebook.

In memory (what the kernels read): ``codes`` uint8 ``(nnz,)``, ``indices`` column indices (uint16
when ``n_in <= 65536``, else int32), ``indptr`` int64 ``(n_out + 1,)``, and the float32 codebook.

In the file, as in Deep Compression, positions are stored as relative indices (nncomp.coding.index:
distances of ``index_bits`` bits in row-major order, filler entries 0 for longer jumps; a filler
carries no code). ``gaps`` and ``codes`` are the two integer streams that
``nc.save(..., huffman=True)`` Huffman-codes. ``index_bits`` defaults to the width whose
Huffman-coded stream is smallest, table included (``choose_index_bits``, as ``share`` picks it).
"""
from ..checks import is_integer
from dataclasses import dataclass

import numpy as np

from ..coding.index import choose_index_bits, gaps_of, index_dtype, positions_of
from ..errors import CompressionParameterError, CorruptModelFileError
from ..kernels import _jit
from ..kernels import codebook as K
from ..kernels import csr
from ..kernels import decode
from ..kernels import sparse_small
from .base import Matrix, expect, register_format


def _problems(codes, indices, indptr, codebook, bits, shape):
    if not is_integer(bits) or not 1 <= bits <= 8:
        return [f"bits must be an int in 1..8, got {bits!r}"]
    if not (isinstance(shape, tuple) and len(shape) == 2 and all(type(s) is int and s >= 1 for s in shape)):
        return [f"shape must be two ints >= 1, got {shape!r}"]
    n_out, n_in = shape
    if not (isinstance(codebook, np.ndarray) and codebook.dtype == np.float32 and codebook.ndim == 1
            and 1 <= codebook.size <= 2 ** bits and np.isfinite(codebook).all()):
        return [f"codebook must be finite float32 with 1..{2 ** bits} entries"]
    for name, arr, dts in (("codes", codes, (np.uint8,)), ("indices", indices, (index_dtype(n_in),)),
                           ("indptr", indptr, (np.int64,))):
        if not (isinstance(arr, np.ndarray) and arr.ndim == 1 and arr.dtype in dts):
            return [f"{name} must be 1-D {[np.dtype(d).name for d in dts]}, got "
                    f"{getattr(arr, 'dtype', type(arr))} {getattr(arr, 'shape', '')}"]
    nnz = codes.shape[0]
    if indices.shape[0] != nnz or indptr.shape[0] != n_out + 1 or indptr[0] != 0 or indptr[-1] != nnz:
        return [f"inconsistent CSR arrays: {nnz} codes, {indices.shape[0]} indices, indptr "
                f"{indptr.shape[0]} entries from {indptr[0]} to {indptr[-1]}"]
    if np.any(np.diff(indptr) < 0):
        return ["indptr is not non-decreasing"]
    if nnz:
        if int(codes.max()) >= codebook.size:
            return [f"code {int(codes.max())} out of range for a codebook of {codebook.size}"]
        cols = indices.astype(np.int64)
        if cols.min() < 0 or cols.max() >= n_in:
            return [f"column index out of range for n_in={n_in}"]
        pos = np.repeat(np.arange(n_out, dtype=np.int64), np.diff(indptr)) * n_in + cols
        if np.any(np.diff(pos) <= 0):
            return ["column indices are not strictly increasing within a row"]
    return []


@register_format
@dataclass(frozen=True, repr=False, eq=False)
class CSRCodebookMatrix(Matrix):
    """Compressed sparse rows whose stored values are codes: ``W[o, indices[j]] = codebook[codes[j]]``.

    Parameters
    ----------
    codes : ndarray of uint8, shape (nnz,)
    indices : ndarray of uint16 (n_in <= 65536) or int32, shape (nnz,)
        Strictly increasing within each row.
    indptr : ndarray of int64, shape (n_out + 1,)
    codebook : ndarray of float32, shape (k,), 1 <= k <= 2**bits
    bits : int
        Code width, 1..8.
    shape : (int, int)
    index_bits : int or None
        Relative-index width used in the file (1..8); None picks it by entropy.
    """

    codes: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    codebook: np.ndarray
    bits: int
    shape: tuple
    index_bits: int = None
    format = "csr_codebook"
    codable = ("gaps", "codes")

    def __post_init__(self):
        shape = tuple(int(s) if isinstance(s, (int, np.integer)) and type(s) is not bool else s
                      for s in self.shape) if isinstance(self.shape, (tuple, list)) else self.shape
        object.__setattr__(self, "shape", shape)
        bad = _problems(self.codes, self.indices, self.indptr, self.codebook, self.bits, shape)
        g = self.index_bits
        if g is not None and (not is_integer(g) or not 1 <= g <= 8):
            bad.append(f"index_bits must be None or an int in 1..8, got {g!r}")
        if bad:
            raise CompressionParameterError("CSRCodebookMatrix: " + "; ".join(bad))
        object.__setattr__(self, "bits", int(self.bits))
        for name in ("codes", "indices", "indptr", "codebook"):
            arr = np.array(getattr(self, name))
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        if g is None:
            g = choose_index_bits(self.positions()) if self.nnz else 8
        object.__setattr__(self, "index_bits", int(g))

    @classmethod
    def from_positions(cls, positions, codes, codebook, bits, shape, index_bits=None):
        """Build from strictly increasing flat positions ``row * n_in + col`` and their codes."""
        positions = np.asarray(positions, np.int64)
        n_out, n_in = (int(s) for s in shape)
        rows, cols = np.divmod(positions, n_in)
        indptr = np.zeros(n_out + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=n_out)[:n_out], out=indptr[1:])
        return cls(np.asarray(codes, np.uint8), cols.astype(index_dtype(n_in)), indptr,
                   np.asarray(codebook, np.float32), bits, (n_out, n_in), index_bits)

    @property
    def nnz(self):
        return int(self.codes.shape[0])

    @property
    def density(self):
        return self.nnz / (self.shape[0] * self.shape[1])

    @property
    def nbytes(self):
        return self.codes.nbytes + self.indices.nbytes + self.indptr.nbytes + self.codebook.nbytes

    @property
    def macs_per_row(self):
        return self.nnz

    def positions(self):
        """Flat positions ``row * n_in + col`` of the entries, int64, increasing."""
        rows = np.repeat(np.arange(self.shape[0], dtype=np.int64), np.diff(self.indptr))
        return rows * self.shape[1] + self.indices.astype(np.int64)

    def to_dense(self):
        w = np.zeros(self.shape[0] * self.shape[1], np.float32)
        w[self.positions()] = self.codebook[self.codes]
        return w.reshape(self.shape)

    def _apply(self, x):
        n = x.shape[0]
        work = self.nnz * n + self.shape[0]
        if n == 1:
            out = np.empty((1, self.shape[0]), np.float32)
            kern = _jit.pick((K.csr_codebook_matvec, K.csr_codebook_matvec_parallel), work)
            kern(self.codes, self.indices, self.indptr, self.codebook, x[0], out[0])
            return out
        out = np.empty((n, self.shape[0]), np.float32)       # the CSR kernel, values read through the codebook
        kern = _jit.pick((csr.csr_matmul, csr.csr_matmul_parallel), work)
        kern((self.codes, self.codebook), self.indices, self.indptr, x, out, csr.column_panel(self.shape[1], n))
        return out

    def single_sample_kernel(self):
        return (((self.codes, self.codebook), self.indices, self.indptr),
                (sparse_small.csr_gemv_epilogue, sparse_small.csr_gemv_epilogue_parallel), self.nnz + self.shape[0])

    def decoder(self):
        return ((decode.decode_sparse_t, decode.decode_sparse_t_parallel),
                (self.codebook, self.codes, self.indices, self.indptr))

    def describe(self):
        return f"csr {1 - self.density:.0%} + codebook {self.bits}-bit ({self.codebook.size} values)"

    def to_arrays(self):
        gaps = gaps_of(self.positions(), self.index_bits)
        return ({"gaps": gaps, "codes": self.codes, "codebook": self.codebook},
                {"bits": self.bits, "shape": list(self.shape), "index_bits": self.index_bits, "nnz": self.nnz})

    @classmethod
    def from_arrays(cls, arrays, attrs, *, path=None, obj=None):
        shape, g, nnz = attrs.get("shape"), attrs.get("index_bits"), attrs.get("nnz")
        expect(isinstance(shape, list) and len(shape) == 2 and all(type(s) is int and s >= 1 for s in shape)
               and type(g) is int and 1 <= g <= 8 and type(nnz) is int and nnz >= 0, path, obj,
               f"csr_codebook matrix needs attrs shape [n_out, n_in], index_bits 1..8 and nnz, got {attrs!r}")
        gaps, codes = arrays.get("gaps"), arrays.get("codes")
        expect(isinstance(gaps, np.ndarray) and gaps.ndim == 1 and gaps.dtype == np.uint8
               and isinstance(codes, np.ndarray) and codes.ndim == 1 and codes.dtype == np.uint8, path, obj,
               "csr_codebook matrix needs 1-D uint8 arrays gaps and codes")
        expect(gaps.size == 0 or (int(gaps.max()) < (1 << g) and gaps[-1] != 0), path, obj,
               f"relative index stream holds symbols >= 2**{g} or ends with a filler")
        n_real = int(np.count_nonzero(gaps))
        expect(n_real == nnz == codes.size, path, obj,
               f"relative index stream has {n_real} entries, codes {codes.size}, nnz {nnz}")
        pos = positions_of(gaps, g)
        expect(nnz == 0 or pos[-1] < shape[0] * shape[1], path, obj,
               f"relative indices run past the end of the {shape[0]}x{shape[1]} matrix")
        cb = arrays.get("codebook")
        expect(isinstance(cb, np.ndarray) and cb.dtype == np.float32 and cb.ndim == 1, path, obj,
               "csr_codebook matrix needs a 1-D float32 codebook")
        try:
            return cls.from_positions(pos, codes, cb, attrs.get("bits"), tuple(shape), g)
        except CompressionParameterError as e:
            raise CorruptModelFileError(path, obj, str(e)) from None
