"""Linear int8 weights (symmetric, per output row or per tensor), with int8 or float activations.

Number format (the kernels in nncomp/kernels/int8.py and int8_vnni.py implement it exactly):

- **weights** ``W ~= q * scale[o]``: ``q`` int8 in ``-127..127``, ``scale`` float32 ``(n_out,)`` (per
  output channel, default) or ``(1,)`` (per tensor). Quantization: ``scale = float32(amax / 127)``,
  ``q = clip(rint(w / scale), -127, 127)`` (float32 division, round half to even), so
  ``|q * scale - w| <= scale / 2``. A group whose ``amax`` is below float32's smallest normal number
  (all zeros, subnormals) gets ``scale = 1`` and codes 0; a group holding one magnitude ``m`` (a constant
  layer) gets ``scale = m`` and codes ``-1, 0, 1``: it dequantizes exactly. Scales are never 0, NaN or inf.
- **activations** (``activations="dynamic"`` or ``"static"``): per tensor, ``x ~= (xu - z) * sx`` with
  uint8 codes ``xu = clip(rint(x / sx) + z, 0, 255)`` (IEEE float32 division, round half to even,
  saturating). ``act_dtype="uint8"``: asymmetric, the range ``[min(lo, 0), max(hi, 0)]`` maps onto
  ``0..255`` with ``sx = (hi - lo) / 255`` and ``z = rint(-lo / sx)``; ``"int8"``: symmetric,
  ``sx = max(|lo|, |hi|) / 127`` and codes ``-128..127`` stored as ``xu = q + 128`` (``z = 128``).
  ``"dynamic"`` takes ``lo, hi`` from each call's input (for a convolution: each im2col chunk);
  ``"static"`` uses the calibrated ``act_scale``, ``act_zero``: inputs outside the calibrated range
  **saturate** to code 0 or 255. A range below float32's tiny (all-zero input) gets ``sx = 1``.
- **products** are exact in int32: ``acc = sum_k xu * q - z * colsum[o]`` (``colsum`` = row sums of
  ``q``); rows longer than 65536 are summed in blocks of 65536 into int64, so no length overflows.
  The output is ``y = float32(acc) * float32(sx * scale[o])``; the layer adds the bias.
  On AVX-512 VNNI CPUs the u8 x s8 products run ``vpdpbusd``; on CPUs with AMX-INT8 (and the OS's
  tile state) products of 16 or more rows, 1024 or more inputs and 256 or more outputs run
  ``tdpbusd`` on tiles; elsewhere plain loops give the
  same integers.
- **weight-only** (``activations="float"``): ``y = scale[o] * sum_k x * float32(q)`` in float32: the
  batch-1 win is reading 1 byte per weight instead of 4.

Any Int8Matrix refuses NaN/Inf inputs with InputError (never a silent code 0).
"""
from ..checks import is_integer
from dataclasses import dataclass, field

import numpy as np

from ..errors import CompressionParameterError, InputError
from ..kernels import _jit
from ..kernels import decode
from ..kernels import int8 as quant
from ..kernels import int8_amx as amx
from ..kernels import int8_gemv as gemv8
from ..kernels import int8_vnni as vnni
from .base import Matrix, expect, register_format
from .int8_panels import PANEL, pack_panels, panel_width, unpack_panels  # noqa: F401 - the kernels' layout

TINY = float(np.finfo(np.float32).tiny)
ACTIVATIONS = ("float", "dynamic", "static")
ACT_DTYPES = ("uint8", "int8")
# One sample's int8 mat-vec runs parallel from this many x PARALLEL_MIN_WORK weight bytes (2^20).
GEMV_SERIAL_FACTOR = 8
KBLOCK = 65536          # int32 sums of at most this many u8 x s8 products cannot overflow
# The element-wise steps (quantize, dequantize) are cheap next to the product: they run serially
# below this many elements, so that a call launches one parallel region, not three (each launch
# waits for every pool thread, which costs most on a busy machine).
ELEMENTWISE_PARALLEL_MIN = 1 << 19   # fc6 at batch 32 (0.8 M): quantize 0.37 -> 0.20 ms


def quantize_weights(w, per_channel=True):
    """Symmetric int8 codes and float32 scales of a float weight ``(n_out, n_in)`` (rules above)."""
    w = np.asarray(w, dtype=np.float32)
    groups = w if per_channel else w.reshape(1, -1)
    amax = np.abs(groups).max(axis=1)
    nonzero = np.abs(groups)
    nonzero = np.where(nonzero > 0, nonzero, amax[:, None])
    one_magnitude = nonzero.min(axis=1) == amax
    scale = (amax.astype(np.float64) / 127.0).astype(np.float32)
    scale = np.where(one_magnitude, amax, scale)
    scale = np.where(amax < TINY, np.float32(1.0), scale).astype(np.float32)
    s = scale[:, None] if per_channel else scale[0]
    q = np.clip(np.rint(w / s), -127, 127).astype(np.int8)
    return q, scale


def activation_params(lo, hi, act_dtype):
    """``(sx, z)``: float32 scale and uint8-domain zero point for activations in ``[lo, hi]``."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if act_dtype == "int8":
        s = np.float32(max(-lo, hi) / 127.0)
        return (np.float32(1.0) if not s >= TINY else s), 128
    s = np.float32((hi - lo) / 255.0)
    if not s >= TINY:
        return np.float32(1.0), 0
    return s, int(np.clip(np.rint(-lo / float(s)), 0, 255))


def int8_problems(shape, scale, activations, act_dtype, act_scale, act_zero):
    """What is wrong with these fields (empty list: nothing)."""
    bad = []
    if len(shape) != 2 or min(shape) < 1:   # shape: (n_out, n_in)
        return [f"shape must be (n_out >= 1, n_in >= 1), got {shape}"]
    if not (isinstance(scale, np.ndarray) and scale.dtype == np.float32 and scale.ndim == 1
            and scale.shape[0] in (1, shape[0])):
        bad.append(f"scale must be float32 of shape ({shape[0]},) or (1,), got "
                   f"{getattr(scale, 'dtype', type(scale))} {getattr(scale, 'shape', '')}")
    elif not (np.isfinite(scale).all() and (scale > 0).all()):
        bad.append("every scale must be finite and > 0")
    if activations not in ACTIVATIONS:
        bad.append(f"activations must be one of {ACTIVATIONS}, got {activations!r}")
    if act_dtype not in ACT_DTYPES:
        bad.append(f"act_dtype must be one of {ACT_DTYPES}, got {act_dtype!r}")
    if activations == "static":
        if not (isinstance(act_scale, (float, int, np.floating, np.integer)) and np.isfinite(act_scale)
                and act_scale > 0):
            bad.append(f"static activations need a finite act_scale > 0, got {act_scale!r}")
        ok_zero = (128,) if act_dtype == "int8" else range(256)
        if not is_integer(act_zero) or act_zero not in ok_zero:
            bad.append(f"act_zero must be {'128' if act_dtype == 'int8' else 'an int in 0..255'} "
                       f"for {act_dtype} activations, got {act_zero!r}")
    elif act_scale is not None or act_zero is not None:
        bad.append(f"act_scale/act_zero are for static activations only (activations={activations!r})")
    return bad


def elementwise(kernels, n_elements):
    """The serial or parallel one of an element-wise kernel pair, by size and threads."""
    return kernels[1] if n_elements >= ELEMENTWISE_PARALLEL_MIN and _jit.num_threads() > 1 else kernels[0]


@register_format
@dataclass(frozen=True, repr=False, eq=False)
class Int8Matrix(Matrix):
    """Symmetric int8 weights ``(n_out, n_in)`` with per-row (or per-tensor) float32 scales.

    Build one with :meth:`from_float` (quantize float weights) or :meth:`from_codes` (given codes).
    The codes are held in the layout of their kernel, ``packed``: for quantized activations the
    panels of :func:`pack_panels` (16 output channels x 4 inputs per 64-byte group, rows padded to
    a panel and to a multiple of 4 inputs); for float activations plain rows ``(n_out, n_in)``.
    ``q`` unpacks them. ``nbytes`` counts the packed codes, the scales and the row sums of the codes
    kept for the zero-point correction.

    Parameters
    ----------
    packed : ndarray of int8
        Codes in the kernel layout (see above).
    shape : tuple (n_out, n_in)
    scale : ndarray of float32, shape (n_out,) or (1,)
        Finite, > 0. ``W ~= q * scale[:, None]``.
    activations : {"dynamic", "static", "float"}
        Inputs are quantized per call, quantized with calibrated parameters, or kept float32.
    act_dtype : {"uint8", "int8"}
        Activation codes: asymmetric uint8 with a zero point, or symmetric int8.
    act_scale, act_zero : float, int
        Static activation parameters (``activations="static"`` only).
    """

    packed: np.ndarray
    shape: tuple
    scale: np.ndarray
    activations: str = "dynamic"
    act_dtype: str = "uint8"
    act_scale: float = None
    act_zero: int = None
    _colsum: np.ndarray = field(default=None, init=False, repr=False)
    format = "int8"

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        shape = tuple(int(d) for d in self.shape)
        bad = int8_problems(shape, self.scale, self.activations, self.act_dtype, self.act_scale, self.act_zero)
        if not bad:
            want = self._layout(shape, self.activations)
            if not (isinstance(self.packed, np.ndarray) and self.packed.dtype == np.int8
                    and self.packed.shape == want):
                bad.append(f"packed codes must be int8 of shape {want}, got "
                           f"{getattr(self.packed, 'dtype', type(self.packed))} {getattr(self.packed, 'shape', '')}")
        if bad:
            raise CompressionParameterError("Int8Matrix: " + "; ".join(bad))
        if self.activations == "static":
            set_("act_scale", np.float32(self.act_scale))
            set_("act_zero", int(self.act_zero))
        packed = np.ascontiguousarray(self.packed)
        packed.setflags(write=False)
        scale = np.array(self.scale, np.float32)
        scale.setflags(write=False)
        colsum = np.zeros(0, np.int64)
        if self.activations != "float":
            colsum = packed.reshape(packed.shape[0], packed.shape[1], -1, 4).sum(axis=(1, 3), dtype=np.int64).reshape(-1)
        colsum.setflags(write=False)
        set_("packed", packed)
        set_("shape", shape)
        set_("scale", scale)
        set_("_colsum", colsum)

    @staticmethod
    def _layout(shape, activations):
        n_out, n_in = shape
        if activations == "float":
            return (n_out, n_in)
        width = panel_width(n_out)
        return (-(-n_out // width), -(-n_in // 4), 4 * width)

    @classmethod
    def from_codes(cls, q, scale, activations="dynamic", act_dtype="uint8", act_scale=None, act_zero=None):
        """From int8 codes ``q`` ``(n_out, n_in)`` and float32 scales ``(n_out,)`` or ``(1,)``."""
        if not (isinstance(q, np.ndarray) and q.dtype == np.int8 and q.ndim == 2 and min(q.shape) >= 1):
            raise CompressionParameterError(f"Int8Matrix: codes must be a non-empty 2-D int8 array, got "
                                            f"{getattr(q, 'dtype', type(q))} {getattr(q, 'shape', '')}")
        bad = int8_problems(q.shape, scale, activations, act_dtype, act_scale, act_zero)
        if bad:
            raise CompressionParameterError("Int8Matrix: " + "; ".join(bad))
        packed = q if activations == "float" else pack_panels(q, panel_width(q.shape[0]))
        return cls(packed, q.shape, scale, activations, act_dtype, act_scale, act_zero)

    @classmethod
    def from_float(cls, w, *, per_channel=True, activations="dynamic", act_dtype="uint8", act_range=None):
        """Quantize a finite float weight ``(n_out, n_in)``.

        ``act_range=(lo, hi)`` gives the calibrated activation range for ``activations="static"``.
        """
        w = np.asarray(w, dtype=np.float32)
        if w.ndim != 2 or w.size == 0 or not np.isfinite(w).all():
            raise CompressionParameterError(
                f"Int8Matrix.from_float needs a non-empty finite 2-D weight, got shape {w.shape}"
                f"{'' if w.size == 0 or np.isfinite(w).all() else ' with NaN/Inf'}")
        q, scale = quantize_weights(w, per_channel)
        act_scale = act_zero = None
        if activations == "static":
            if act_range is None:
                raise CompressionParameterError("static activations need act_range=(lo, hi) from calibration")
            act_scale, act_zero = activation_params(*act_range, act_dtype)
        return cls.from_codes(q, scale, activations, act_dtype, act_scale, act_zero)

    @property
    def q(self):
        """The int8 codes ``(n_out, n_in)`` (a copy, unpacked from the kernel layout)."""
        return self.packed.copy() if self.activations == "float" else unpack_panels(self.packed, self.shape)

    @property
    def nbytes(self):
        return (self.packed.nbytes + self.scale.nbytes + self._colsum.nbytes
                + (8 if self.activations == "static" else 0))

    def to_dense(self):
        scale = self.scale[:, None] if self.scale.shape[0] > 1 else self.scale[0]
        return (self.q.astype(np.float32) * scale).astype(np.float32)

    def _act_params(self, x):
        if self.activations == "static":
            return self.act_scale, self.act_zero
        if x.size == 0:       # no rows (or no inputs): nothing to quantize
            return activation_params(np.float32(0), np.float32(0), self.act_dtype)
        lo, hi = x.min(), x.max()   # NaN propagates through NumPy's min/max (SIMD: a Numba loop was 9x slower)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise InputError(f"int8 layer {self.shape}: input holds NaN or Inf; quantized layers refuse them")
        return activation_params(lo, hi, self.act_dtype)

    def _apply(self, x):
        n, k = x.shape
        n_out = self.shape[0]
        if self.activations == "float":
            out = np.empty((n, n_out), np.float32)
            if not np.isfinite(x).all():
                raise InputError(f"int8 layer {self.shape}: input holds NaN or Inf; quantized layers refuse them")
            _jit.pick((quant.int8_matmul_float, quant.int8_matmul_float_parallel), n * n_out * k)(
                x, self.packed, self.scale, out)
            return out
        found = self.single_sample_kernel() if n == 1 else None
        if found is not None:       # one row: the mat-vec in one call (the same bits)
            return self._one_row(x, *found)
        xu, sx, z = self.quantize_rows(x, self.code_width)
        return self.product_codes(xu, sx, z)

    def _one_row(self, x, arrays, kernels, work):
        n_out = self.shape[0]
        out, none = np.empty((1, n_out), np.float32), np.zeros(0, np.float32)
        if _jit.pick(kernels, work)(*arrays, x.reshape(-1), np.zeros(0, np.int64), np.zeros(n_out, np.float32), none,
                                    none, np.zeros((0, n_out), np.float32), np.float32(-np.inf), np.float32(np.inf),
                                    0, np.float32(0), np.float32(0), out):
            raise InputError(f"int8 layer {self.shape}: input holds NaN or Inf; quantized layers refuse them")
        return out

    @property
    def code_width(self):
        """Input codes per row the integer product reads (``n_in`` rounded up to 4)."""
        return 4 * self.packed.shape[1]

    def quantize_rows(self, x, width):
        """``(xu, sx, z)``: float32 rows ``x`` (n, k) as uint8 activation codes ``(n, width)``
        (columns from k on: the zero point), with the scale and zero point (static: calibrated;
        dynamic: from ``x``'s range, which always includes 0). Raises InputError on NaN or Inf.
        A convolution quantizes its input image once this way and builds patches of codes."""
        self._codes_check()
        if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 2 and x.flags.c_contiguous
                and isinstance(width, (int, np.integer)) and x.shape[1] <= width):
            raise InputError(f"int8 layer {self.shape}: quantize_rows needs C-contiguous float32 rows (n, k) and "
                             f"a width >= k, got {getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')} and "
                             f"width {width!r}; pass np.ascontiguousarray(x, np.float32)")
        n = x.shape[0]
        sx, z = self._act_params(x)
        xu = np.empty((n, width), np.uint8)
        bad = elementwise((quant.int8_quantize, quant.int8_quantize_parallel), n * width)(
            x, np.float32(sx), z, 0, 255, xu)
        if bad:
            raise InputError(f"int8 layer {self.shape}: input holds {bad} NaN or Inf value(s); "
                             "quantized layers refuse them")
        return xu, sx, z

    def product_codes(self, xu, sx, z):
        """``x @ W.T`` (n, n_out) float32 from activation codes ``xu`` (n, code_width) of scale
        ``sx`` and zero point ``z``: the int32 product, then dequantized."""
        self._codes_check()
        if not (isinstance(xu, np.ndarray) and xu.dtype == np.uint8 and xu.ndim == 2
                and xu.shape[1] == self.code_width and xu.flags.c_contiguous):
            raise InputError(f"int8 layer {self.shape}: product_codes needs C-contiguous uint8 codes "
                             f"(n, {self.code_width}), got {getattr(xu, 'dtype', type(xu))} "
                             f"{getattr(xu, 'shape', '')}; make them with quantize_rows(x, code_width)")
        n = xu.shape[0]
        n_out = self.shape[0]
        out = np.empty((n, n_out), np.float32)
        n_p, n_g, pw4 = self.packed.shape
        kp = self.code_width
        if amx.HAVE_AMX and vnni.HAVE_VNNI and amx.worth(n, kp, n_out):   # AMX leaves remainders to VNNI
            matmul = amx.matmul
        else:
            kernels = ((vnni.int8_matmul_u8s8_vnni, vnni.int8_matmul_u8s8_vnni_parallel) if vnni.HAVE_BLOCK
                       else (quant.int8_matmul_u8s8, quant.int8_matmul_u8s8_parallel))
            matmul = _jit.pick(kernels, n * n_p * pw4 * n_g)
        acc = np.zeros((n, n_p * pw4 // 4), np.int32)
        if kp <= KBLOCK:
            matmul(xu, self.packed, 0, kp, acc)
        else:
            total = np.zeros(acc.shape, np.int64)
            for k0 in range(0, kp, KBLOCK):
                acc[:] = 0
                matmul(xu, self.packed, k0, min(k0 + KBLOCK, kp), acc)
                total += acc
            acc = total
        elementwise((quant.int8_dequantize, quant.int8_dequantize_parallel), n * n_out)(
            acc, z, self._colsum, np.float32(sx), self.scale, out)
        return out

    def single_sample_kernel(self):
        """int8 activations on a VNNI CPU, inputs up to KBLOCK: the one-call kernel of
        nncomp/kernels/int8_gemv.py (the same bits as the batch paths); otherwise None."""
        if self.activations == "float" or not vnni.HAVE_BLOCK or self.code_width > KBLOCK:
            return None
        n_out = self.shape[0]
        if self.activations == "static":
            mode, sx, z = gemv8.STATIC, np.float32(self.act_scale), int(self.act_zero)
        else:
            mode, sx, z = (gemv8.DYNAMIC_INT8 if self.act_dtype == "int8" else gemv8.DYNAMIC_UINT8), np.float32(1.0), 0
        wscale = np.ascontiguousarray(np.broadcast_to(self.scale, (n_out,)), np.float32)
        return ((self.packed, self._colsum, wscale, sx, z, mode),
                (gemv8.int8_gemv_epilogue, gemv8.int8_gemv_epilogue_parallel), n_out * self.code_width // GEMV_SERIAL_FACTOR)

    def _codes_check(self):
        if self.activations == "float":
            raise InputError(f"int8 layer {self.shape} keeps float activations: it has no activation codes; "
                             "call apply(x) instead")

    def decoder(self):
        if self.activations != "float":
            return None
        return (decode.decode_int8_t, decode.decode_int8_t_parallel), (self.packed, self.scale)

    def describe(self):
        act = {"float": "w8 float-act", "dynamic": f"w8a8 dynamic {self.act_dtype}",
               "static": f"w8a8 static {self.act_dtype}"}[self.activations]
        return f"int8 {act}{' per-tensor' if self.scale.shape[0] == 1 else ''}"

    def to_arrays(self):
        arrays = {"q": self.q, "scale": self.scale}
        if self.activations == "static":
            arrays["act_scale"] = np.array([self.act_scale], np.float32)
            arrays["act_zero"] = np.array([self.act_zero], np.int32)
        return arrays, {"activations": self.activations, "act_dtype": self.act_dtype}

    @classmethod
    def from_arrays(cls, arrays, attrs, *, path=None, obj=None):
        activations, act_dtype = attrs.get("activations"), attrs.get("act_dtype")
        act_scale = act_zero = None
        if activations == "static":
            s, z = arrays.get("act_scale"), arrays.get("act_zero")
            expect(isinstance(s, np.ndarray) and s.shape == (1,) and s.dtype == np.float32
                   and isinstance(z, np.ndarray) and z.shape == (1,) and z.dtype.kind in "iu", path, obj,
                   "static int8 matrix needs act_scale (1,) float32 and act_zero (1,) int")
            act_scale, act_zero = float(s[0]), int(z[0])
        q = arrays.get("q")
        expect(isinstance(q, np.ndarray) and q.dtype == np.int8 and q.ndim == 2 and min(q.shape) >= 1, path, obj,
               "int8 matrix needs a non-empty 2-D int8 array 'q'")
        bad = int8_problems(q.shape, arrays.get("scale"), activations, act_dtype, act_scale, act_zero)
        expect(not bad, path, obj, "int8 matrix: " + "; ".join(bad))
        return cls.from_codes(q, arrays["scale"], activations, act_dtype, act_scale, act_zero)
