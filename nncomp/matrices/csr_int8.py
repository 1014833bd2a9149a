"""Pruned and quantized weights: CSR rows whose values are symmetric int8 codes with per-row scales.

``CSRInt8Matrix`` holds the nonzeros of ``W (n_out, n_in)`` exactly as :class:`~.csr.CSRMatrix` does
(``indices`` uint16 when ``n_in <= 65536`` else int32, strictly increasing within a row; ``indptr``
int32, or int64 beyond 2**31 - 1 nonzeros; the same validation, ``csr.csr_problems``), but each value
is an int8 code: ``W[o, indices[j]] ~= codes[j] * scale[o]``. A nonzero costs 1 + 2 bytes instead of
4 + 2. The number format is Int8Matrix's (nncomp/matrices/int8.py), applied to the stored values only:

- **weights**: ``codes, scale = quantize_weights(row values)`` per output row (or per tensor): codes in
  ``-127..127``, ``|codes * scale - w| <= scale / 2``; the zeros of the pruned weight stay structurally
  absent (an explicit stored zero stays a stored code 0).
- **activations** ``"float"`` (weight-only): ``y = scale[o] * sum_j x[c_j] * float32(codes[j])``.
- ``"dynamic"`` / ``"static"``: uint8 activation codes ``xu`` with zero point ``z`` from
  int8.py's :func:`~.int8.activation_params` (per call, or calibrated), quantized by the int8 kernel
  ``quant.int8_quantize``; exact integer sums ``acc = sum_j xu[c_j] * codes[j] - z * rowsum[o]``
  (int32 over blocks of 65536 nonzeros, int64 across blocks) and ``y = float32(acc) *
  float32(sx * scale[o])`` by ``quant.int8_dequantize``. Inputs outside a static range saturate.

Any CSRInt8Matrix refuses NaN/Inf inputs with InputError.
"""
from dataclasses import dataclass, field

import numpy as np

from ..errors import CompressionParameterError, InputError
from ..kernels import _jit
from ..kernels import int8 as quant
from ..kernels import csr_int8 as K
from .base import Matrix, expect, register_format
from .csr import CSRMatrix, csr_problems
from .int8 import activation_params, elementwise, int8_problems, quantize_weights

# Batch-1 integer products gather activation codes from int32 words: one code per word up to this
# many inputs (a 32 KB table, in L1), four per word beyond (a shift and a mask more per nonzero, but an
# L1-resident table: fc6's 25088 inputs 3.7 ms instead of 4.4 ms, one thread; fc7-like 8192: 2.9 vs 3.5).
PACK_ABOVE = 8192
# quantize_weights runs on row blocks padded to their longest row: at most this many elements each.
PAD_ELEMENTS = 1 << 22


def _problems(codes, indices, indptr, shape, scale, activations, act_dtype, act_scale, act_zero):
    """What is wrong with these fields (empty list: nothing): CSR structure by csr.py's checks, scales
    and activation fields by int8.py's, and the codes' own type and range."""
    if not (isinstance(codes, np.ndarray) and codes.ndim == 1 and codes.dtype == np.int8):
        return [f"codes must be a 1-D int8 array, got {getattr(codes, 'dtype', type(codes))} "
                f"{getattr(codes, 'shape', '')}"]
    bad = csr_problems(codes, indices, indptr, shape, values=np.int8)
    if bad:
        return bad
    if codes.size and int(codes.min()) < -127:
        return ["codes must lie in -127..127 (symmetric int8), got -128"]
    return int8_problems(shape, scale, activations, act_dtype, act_scale, act_zero)


def quantize_rows(data, indptr, per_channel=True):
    """int8 codes ``(nnz,)`` and float32 scales of CSR values, by int8.py's ``quantize_weights``.

    Each block of rows is padded with zeros to its longest row: a zero changes neither a row's largest
    magnitude nor its set of magnitudes, so the codes and scales are those of the dense weight.
    """
    data = np.asarray(data, np.float32)
    if not per_channel:
        q, scale = quantize_weights(data.reshape(1, -1) if data.size else np.zeros((1, 1), np.float32), False)
        return q.reshape(-1)[:data.size].copy(), scale
    ptr = indptr.astype(np.int64)
    lengths = np.diff(ptr)
    n_out = lengths.shape[0]
    codes = np.empty(data.shape[0], np.int8)
    scale = np.empty(n_out, np.float32)
    o0 = 0
    while o0 < n_out:
        o1 = o0 + 1
        width = max(1, int(lengths[o0]))
        while o1 < n_out and (o1 - o0 + 1) * max(width, int(lengths[o1])) <= PAD_ELEMENTS:
            width = max(width, int(lengths[o1]))
            o1 += 1
        n = lengths[o0:o1]
        mask = np.arange(width)[None, :] < n[:, None]
        block = np.zeros((o1 - o0, width), np.float32)
        block[mask] = data[ptr[o0]:ptr[o1]]
        q, scale[o0:o1] = quantize_weights(block, True)
        codes[ptr[o0]:ptr[o1]] = q[mask]
        o0 = o1
    return codes, scale


@register_format
@dataclass(frozen=True, repr=False, eq=False)
class CSRInt8Matrix(Matrix):
    """Compressed sparse rows ``(n_out, n_in)`` of int8 codes with per-row (or per-tensor) scales.

    Parameters
    ----------
    codes : ndarray of int8, shape (nnz,)
        Codes in ``-127..127``, row by row.
    indices : ndarray of uint16 or int32, shape (nnz,)
        Column of each code, strictly increasing within a row; uint16 only when ``n_in <= 65536``.
    indptr : ndarray of int32 or int64, shape (n_out + 1,)
        Row ``o`` holds entries ``indptr[o]:indptr[o + 1]``.
    shape : (int, int)
        ``(n_out, n_in)``.
    scale : ndarray of float32, shape (n_out,) or (1,)
        Finite, > 0: ``W[o, indices[j]] ~= codes[j] * scale[o]``.
    activations : {"float", "dynamic", "static"}
        Keep inputs float32 (weight-only), quantize them per call, or with calibrated parameters.
    act_dtype : {"uint8", "int8"}
        Activation codes: asymmetric uint8 with a zero point, or symmetric int8 (stored + 128).
    act_scale, act_zero : float, int
        Static activation parameters (``activations="static"`` only).

    Build one with :meth:`from_csr`. ``nbytes`` counts codes, indices, indptr, scales, and for
    quantized activations the int64 row sums of the codes (the zero-point correction).
    """

    codes: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    shape: tuple
    scale: np.ndarray
    activations: str = "dynamic"
    act_dtype: str = "uint8"
    act_scale: float = None
    act_zero: int = None
    _rowsum: np.ndarray = field(default=None, init=False, repr=False)
    format = "csr_int8"
    codable = ("codes", "indices")

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        shape = tuple(int(s) if isinstance(s, (int, np.integer)) and type(s) is not bool else s
                      for s in self.shape) if isinstance(self.shape, (tuple, list)) else self.shape
        bad = _problems(self.codes, self.indices, self.indptr, shape, self.scale, self.activations,
                        self.act_dtype, self.act_scale, self.act_zero)
        if bad:
            raise CompressionParameterError("CSRInt8Matrix: " + "; ".join(bad))
        set_("shape", shape)
        if self.activations == "static":
            set_("act_scale", np.float32(self.act_scale))
            set_("act_zero", int(self.act_zero))
        for name in ("codes", "indices", "indptr", "scale"):
            arr = np.array(getattr(self, name))
            arr.setflags(write=False)
            set_(name, arr)
        rowsum = np.zeros(0, np.int64)
        if self.activations != "float":
            total = np.concatenate([[0], np.cumsum(self.codes, dtype=np.int64)])
            rowsum = total[self.indptr[1:]] - total[self.indptr[:-1]]
        rowsum.setflags(write=False)
        set_("_rowsum", rowsum)

    @classmethod
    def from_csr(cls, csr, *, per_channel=True, activations="dynamic", act_dtype="uint8", act_range=None):
        """Quantize the values of a :class:`~.csr.CSRMatrix`, keeping its sparsity pattern exactly.

        ``act_range=(lo, hi)`` gives the calibrated activation range for ``activations="static"``.
        """
        if not isinstance(csr, CSRMatrix):
            raise CompressionParameterError(f"CSRInt8Matrix.from_csr needs a CSRMatrix, got {type(csr).__name__}")
        codes, scale = quantize_rows(csr.data, csr.indptr, per_channel)
        act_scale = act_zero = None
        if activations == "static":
            if act_range is None:
                raise CompressionParameterError("static activations need act_range=(lo, hi) from calibration")
            act_scale, act_zero = activation_params(*act_range, act_dtype)
        return cls(codes, csr.indices, csr.indptr, csr.shape, scale, activations, act_dtype, act_scale, act_zero)

    @property
    def nnz(self):
        return int(self.codes.shape[0])

    @property
    def density(self):
        return self.nnz / (self.shape[0] * self.shape[1])

    @property
    def nbytes(self):
        return (self.codes.nbytes + self.indices.nbytes + self.indptr.nbytes + self.scale.nbytes
                + self._rowsum.nbytes + (8 if self.activations == "static" else 0))

    @property
    def macs_per_row(self):
        return self.nnz

    def to_dense(self):
        w = np.zeros(self.shape, np.float32)
        counts = np.diff(self.indptr.astype(np.int64))
        rows = np.repeat(np.arange(self.shape[0]), counts)
        scale = self.scale[rows] if self.scale.shape[0] > 1 else self.scale[0]
        w[rows, self.indices.astype(np.int64)] = self.codes.astype(np.float32) * scale
        return w

    def _refuse_nonfinite(self, count=None):
        what = f"{count} NaN or Inf value(s)" if count else "NaN or Inf"
        raise InputError(f"csr_int8 layer {self.shape}: input holds {what}; quantized layers refuse them")

    def _apply(self, x):
        n = x.shape[0]
        n_out = self.shape[0]
        work = self.nnz * n + n_out
        out = np.empty((n, n_out), np.float32)
        if self.activations == "float":
            if not np.isfinite(x).all():
                self._refuse_nonfinite()
            if n == 1:
                kern = _jit.pick((K.csr_int8_matvec_float, K.csr_int8_matvec_float_parallel), work)
                kern(self.codes, self.indices, self.indptr, self.scale, x[0], out[0])
            else:
                kern = _jit.pick((K.csr_int8_matmul_float, K.csr_int8_matmul_float_parallel), work)
                kern(self.codes, self.indices, self.indptr, self.scale, x, out)
            return out
        if self.activations == "static":
            sx, z = self.act_scale, self.act_zero
        else:
            lo, hi = x.min(), x.max()   # NaN propagates through NumPy's min/max
            if not (np.isfinite(lo) and np.isfinite(hi)):
                self._refuse_nonfinite()
            sx, z = activation_params(lo, hi, self.act_dtype)
        xu = np.empty(x.shape, np.uint8)
        bad = elementwise((quant.int8_quantize, quant.int8_quantize_parallel), x.size)(
            x, np.float32(sx), z, 0, 255, xu)
        if bad:
            self._refuse_nonfinite(bad)
        acc = np.empty((n, n_out), np.int64)
        if n == 1:
            kern = _jit.pick((K.csr_int8_matvec_u8s8, K.csr_int8_matvec_u8s8_parallel), work)
            packed = x.shape[1] > PACK_ABOVE
            if packed:
                xw = np.zeros(-(-x.shape[1] // 4) * 4, np.uint8)
                xw[:x.shape[1]] = xu[0]
                xw = xw.view(np.int32)
            else:
                xw = xu[0].astype(np.int32)
            kern(self.codes, self.indices, self.indptr, xw, packed, acc[0])
        else:
            kern = _jit.pick((K.csr_int8_matmul_u8s8, K.csr_int8_matmul_u8s8_parallel), work)
            kern(self.codes, self.indices, self.indptr, xu, acc)
        elementwise((quant.int8_dequantize, quant.int8_dequantize_parallel), n * n_out)(
            acc, z, self._rowsum, np.float32(sx), self.scale, out)
        return out

    def describe(self):
        act = {"float": "w8 float-act", "dynamic": f"w8a8 dynamic {self.act_dtype}",
               "static": f"w8a8 static {self.act_dtype}"}[self.activations]
        return (f"csr {1 - self.density:.0%} ({self.indices.dtype.name}) + int8 {act}"
                f"{' per-tensor' if self.scale.shape[0] == 1 else ''}")

    def __repr__(self):
        return (f"CSRInt8Matrix(shape={self.shape}, nnz={self.nnz}, sparsity={1 - self.density:.1%}, "
                f"activations={self.activations!r}, nbytes={self.nbytes})")

    def to_arrays(self):
        arrays = {"codes": self.codes, "indices": self.indices, "indptr": self.indptr, "scale": self.scale}
        if self.activations == "static":
            arrays["act_scale"] = np.array([self.act_scale], np.float32)
            arrays["act_zero"] = np.array([self.act_zero], np.int32)
        return arrays, {"shape": list(self.shape), "activations": self.activations, "act_dtype": self.act_dtype}

    @classmethod
    def from_arrays(cls, arrays, attrs, *, path=None, obj=None):
        expect(isinstance(attrs, dict) and isinstance(arrays, dict), path, obj,
               "csr_int8 matrix needs a dict of arrays and a dict of attributes")
        shape = attrs.get("shape")
        expect(isinstance(shape, list) and len(shape) == 2 and all(type(s) is int for s in shape),
               path, obj, f"csr_int8 matrix needs attribute shape [n_out, n_in], got {shape!r}")
        activations, act_dtype = attrs.get("activations"), attrs.get("act_dtype")
        want = {"codes", "indices", "indptr", "scale"} | ({"act_scale", "act_zero"} if activations == "static" else set())
        expect(set(arrays) == want, path, obj, f"csr_int8 matrix needs arrays {sorted(want)}; got {sorted(arrays)}")
        act_scale = act_zero = None
        if activations == "static":
            s, z = arrays["act_scale"], arrays["act_zero"]
            expect(isinstance(s, np.ndarray) and s.shape == (1,) and s.dtype == np.float32
                   and isinstance(z, np.ndarray) and z.shape == (1,) and z.dtype.kind in "iu", path, obj,
                   "static csr_int8 matrix needs act_scale (1,) float32 and act_zero (1,) int")
            act_scale, act_zero = float(s[0]), int(z[0])
        bad = _problems(arrays["codes"], arrays["indices"], arrays["indptr"], tuple(shape), arrays["scale"],
                        activations, act_dtype, act_scale, act_zero)
        expect(not bad, path, obj, "csr_int8 matrix: " + "; ".join(bad))
        return cls(arrays["codes"], arrays["indices"], arrays["indptr"], tuple(shape), arrays["scale"],
                   activations, act_dtype, act_scale, act_zero)
