"""Shared weights: every weight is a code into a small per-layer float32 codebook (Deep Compression).

Layout (what the kernels of nncomp/kernels/codebook.py and codebook_vpermps.py read):

- ``bits <= 4``: two codes per byte. Columns come in blocks of 32; byte ``j`` (0..15) of a block
  holds the code of column ``j`` in its low nibble and of column ``16 + j`` in its high nibble, so
  ``codes`` is ``(n_out, ceil(n_in / 32) * 16)`` uint8.
- ``bits`` 5..8: one code per byte, ``codes`` is ``(n_out, ceil(n_in / 16) * 16)`` uint8.
- Padding columns hold code 0 and meet zero-padded inputs, so they add nothing.

The codebook holds ``k <= 2**bits`` finite float32 values (fewer when the layer has fewer distinct
weights: a constant layer has a one-entry codebook). Products never rebuild the dense matrix: the
AVX-512 kernels keep a 16-entry codebook in one register (``vpermps``) and a 32-entry one in two
(``vpermi2ps``, bits 5); other CPUs and larger codebooks run plain loops, with bit-identical results
(the same summation order).
"""
from dataclasses import dataclass, field

import numpy as np

from ..checks import check_number, is_integer
from ..errors import CompressionParameterError
from ..kernels import _jit
from ..kernels import codebook as K
from ..kernels import codebook_avx2
from ..kernels import codebook_vpermps as vpermps
from ..kernels import decode
from .base import Matrix, expect, register_format


def check_bits(bits, where="bits"):
    """An int in 1..8 (``True`` and ``8.5`` are refused), else CompressionParameterError."""
    return check_number(bits, where, integer=True, low=1, high=8,
                        fix="bits per shared weight; pass e.g. bits=5")


def padded_width(n_in, bits):
    """Bytes per packed row: ``ceil(n_in/32)*16`` for bits <= 4, ``ceil(n_in/16)*16`` otherwise."""
    return -(-n_in // 32) * 16 if bits <= 4 else -(-n_in // 16) * 16


def pack(codes, bits):
    """Lay out ``(n_out, n_in)`` codes (each < 2**bits) as the kernels read them (module docstring)."""
    codes = np.asarray(codes, np.uint8)
    n_out, n_in = codes.shape
    width = padded_width(n_in, bits)
    if bits > 4:
        out = np.zeros((n_out, width), np.uint8)
        out[:, :n_in] = codes
        return out
    full = np.zeros((n_out, width * 2), np.uint8)
    full[:, :n_in] = codes
    blocks = full.reshape(n_out, -1, 2, 16)
    return np.ascontiguousarray((blocks[:, :, 0] | (blocks[:, :, 1] << 4)).reshape(n_out, width))


def unpack(packed, bits, n_in):
    """Inverse of :func:`pack`: ``(n_out, n_in)`` uint8 codes."""
    if bits > 4:
        return np.ascontiguousarray(packed[:, :n_in])
    n_out = packed.shape[0]
    blocks = packed.reshape(n_out, -1, 1, 16)
    both = np.concatenate([blocks & 15, blocks >> 4], axis=2)
    return np.ascontiguousarray(both.reshape(n_out, -1)[:, :n_in])


def _problems(codes, codebook, bits, shape):
    bad = []
    if not is_integer(bits) or not 1 <= bits <= 8:
        return [f"bits must be an int in 1..8, got {bits!r}"]
    if not (isinstance(shape, tuple) and len(shape) == 2 and all(isinstance(s, (int, np.integer)) and s >= 1
                                                                 for s in shape)):
        return [f"shape must be two ints >= 1, got {shape!r}"]
    if not (isinstance(codebook, np.ndarray) and codebook.dtype == np.float32 and codebook.ndim == 1
            and 1 <= codebook.size <= 2 ** bits):
        bad.append(f"codebook must be float32 with 1..{2 ** bits} entries, got "
                   f"{getattr(codebook, 'dtype', type(codebook))} {getattr(codebook, 'shape', '')}")
    elif not np.isfinite(codebook).all():
        bad.append("codebook values must be finite")
    want = (shape[0], padded_width(shape[1], bits))
    if not (isinstance(codes, np.ndarray) and codes.dtype == np.uint8 and codes.shape == want):
        bad.append(f"packed codes must be uint8 of shape {want}, got {getattr(codes, 'dtype', type(codes))} "
                   f"{getattr(codes, 'shape', '')}")
    elif not bad:
        top = int(max((codes & 15).max(), (codes >> 4).max())) if bits <= 4 else int(codes.max())
        if top >= codebook.size:
            bad.append(f"code {top} out of range for a codebook of {codebook.size}")
    return bad


@register_format
@dataclass(frozen=True, repr=False, eq=False)
class CodebookMatrix(Matrix):
    """Weights ``W[o, k] = codebook[code(o, k)]`` with packed codes (layout in the module docstring).

    Parameters
    ----------
    codes : ndarray of uint8, shape (n_out, padded_width(n_in, bits))
        Packed codes; build them with :meth:`from_codes`.
    codebook : ndarray of float32, shape (k,), 1 <= k <= 2**bits
        Finite shared values.
    bits : int
        Code width, 1..8.
    shape : tuple of int
        ``(n_out, n_in)``.
    """

    codes: np.ndarray
    codebook: np.ndarray
    bits: int
    shape: tuple
    _cb: np.ndarray = field(default=None, init=False, repr=False)
    format = "codebook"
    codable = ("codes",)

    def __post_init__(self):
        shape = tuple(int(s) if isinstance(s, (int, np.integer)) and type(s) is not bool else s
                      for s in self.shape) if isinstance(self.shape, (tuple, list)) else self.shape
        object.__setattr__(self, "shape", shape)
        bad = _problems(self.codes, self.codebook, self.bits, shape)
        if bad:
            raise CompressionParameterError("CodebookMatrix: " + "; ".join(bad))
        object.__setattr__(self, "bits", int(self.bits))
        codes, cb = self.codes.copy(), self.codebook.copy()
        padded = np.zeros(16 if self.bits <= 4 else 32, np.float32)   # the register copy, zero-padded
        padded[:min(padded.size, cb.size)] = cb[:padded.size]
        for a in (codes, cb, padded):
            a.setflags(write=False)
        object.__setattr__(self, "codes", codes)
        object.__setattr__(self, "codebook", cb)
        object.__setattr__(self, "_cb", padded)

    @classmethod
    def from_codes(cls, codes, codebook, bits):
        """Pack ``(n_out, n_in)`` codes (ints < len(codebook)) with a float32 codebook."""
        codes = np.asarray(codes)
        bits = check_bits(bits)
        if codes.ndim != 2 or codes.size == 0 or codes.dtype.kind not in "iu":
            raise CompressionParameterError(f"codes must be a non-empty 2-D integer array, got {codes.dtype} "
                                            f"{codes.shape}")
        if codes.min() < 0 or codes.max() >= 2 ** bits:
            raise CompressionParameterError(f"codes must be in 0..{2 ** bits - 1} for bits={bits}")
        return cls(pack(codes.astype(np.uint8), bits), np.asarray(codebook, np.float32), bits, codes.shape)

    @property
    def nbytes(self):
        return self.codes.nbytes + self.codebook.nbytes + self._cb.nbytes

    def unpacked_codes(self):
        """``(n_out, n_in)`` uint8 codes."""
        return unpack(self.codes, self.bits, self.shape[1])

    def to_dense(self):
        return self.codebook[self.unpacked_codes()]

    def _apply(self, x):
        n, n_in = x.shape
        per_byte = 2 if self.bits <= 4 else 1
        width = self.codes.shape[1] * per_byte
        if width != n_in:
            xp = np.zeros((n, width), np.float32)
            xp[:, :n_in] = x
            x = xp
        out = np.empty((n, self.shape[0]), np.float32)
        work = n * self.shape[0] * width
        fast = (vpermps.codebook_matmul_vpermps, vpermps.codebook_matmul_vpermps_parallel)
        if self.bits <= 4 and vpermps.HAVE_AVX512:
            _jit.pick(fast, work)(self.codes, x, self._cb, False, out)
        elif self.bits <= 4 and codebook_avx2.HAVE:      # AVX2's byte-plane lookups, the same bits
            _jit.pick((codebook_avx2.codebook_matmul4_avx2, codebook_avx2.codebook_matmul4_avx2_parallel), work)(
                self.codes, x, self._cb, out)
        elif self.bits <= 4:
            _jit.pick((K.codebook_matmul4, K.codebook_matmul4_parallel), work)(self.codes, x, self._cb, out)
        elif self.codebook.size <= 32 and vpermps.HAVE_AVX512:
            _jit.pick(fast, work)(self.codes, x, self._cb, True, out)
        else:
            _jit.pick((K.codebook_matmul8, K.codebook_matmul8_parallel), work)(self.codes, x, self.codebook, out)
        return out

    @property
    def batch_kernel(self):
        """Whether this CPU has a compiled product of this codebook for every batch, with the
        contract's bits (AVX-512 up to 32 values, AVX2 up to 16); otherwise layers decode it."""
        return bool(vpermps.HAVE_AVX512 and (self.bits <= 4 or self.codebook.size <= 32)
                    or self.bits <= 4 and codebook_avx2.HAVE)

    def single_sample_kernel(self):
        if not vpermps.HAVE_AVX512 or (self.bits > 4 and self.codebook.size > 32):
            return None
        work = self.shape[0] * self.codes.shape[1] * (2 if self.bits <= 4 else 1)
        return ((self.codes, self._cb, self.bits > 4),
                (vpermps.codebook_gemv_epilogue, vpermps.codebook_gemv_epilogue_parallel), work)

    def decoder(self):
        return (decode.decode_codebook_t, decode.decode_codebook_t_parallel), (self.codes, self.codebook, self.bits,
                                                                             self.shape[0])

    def describe(self):
        return f"codebook {self.bits}-bit ({self.codebook.size} values)"

    def to_arrays(self):
        return {"codes": self.codes, "codebook": self.codebook}, {"bits": self.bits, "shape": list(self.shape)}

    @classmethod
    def from_arrays(cls, arrays, attrs, *, path=None, obj=None):
        shape = attrs.get("shape")
        expect(isinstance(shape, list) and len(shape) == 2, path, obj, "codebook matrix needs attrs shape [n_out, n_in]")
        bad = _problems(arrays.get("codes"), arrays.get("codebook"), attrs.get("bits"), tuple(shape))
        expect(not bad, path, obj, "codebook matrix: " + "; ".join(bad))
        return cls(arrays["codes"], arrays["codebook"], attrs["bits"], tuple(shape))
