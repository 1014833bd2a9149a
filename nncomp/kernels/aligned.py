"""Arrays whose data starts on a 64-byte boundary: a cache line, and an AVX-512 vector.

NumPy's allocations start 16 bytes past one (16 or 48 mod 64 on Linux x86-64), Numba's 32 past
one half the time. A kernel's vector loads of a weight row then straddle two cache lines: every
other 8-float AVX2 load, every 16-float AVX-512 one. The blocked 1 x 1 convolution ran 10-20%
slower on a weight 16 bytes off (AMD EPYC Zen 3, one thread, 256 -> 64 channels at 28 x 28: 81
against 92 GFLOP/s; 576 -> 96 at 7 x 7: 66 against 82). So the weights the kernels read as
vectors, their work buffers and the steps' outputs come from here.
"""
import math

import numpy as np

from ._jit import jit

ALIGN = 64
# Arrays below this many bytes come from NumPy as they are: aligning them costs a microsecond a call
# (at batch 1 a small model's pass is 20-60 us) and saves nothing measurable.
SMALL = 4096


@jit
def address(a):
    """The address of ``a``'s data, ``a.ctypes.data``: ~0.2 us a call from Python where
    ``a.ctypes`` builds an object (1.4 us, AMD EPYC Zen 3 guest; 3 of them a BLAS call, and
    :func:`empty` took 3.8 us against NumPy's 0.34 for a 50 kB array)."""
    return a.ctypes.data


def empty(shape, dtype=np.float32):
    """An uninitialised C-contiguous array of ``shape`` and ``dtype``, its data :data:`ALIGN`-aligned
    from :data:`SMALL` bytes."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    size = math.prod(shape) * dtype.itemsize
    if size < SMALL:
        return np.empty(shape, dtype)
    raw = np.empty(size + ALIGN, np.uint8)
    return np.ndarray(shape, dtype, raw, -address(raw) % ALIGN)


def zeros(shape, dtype=np.float32):
    """:func:`empty`, zeroed."""
    out = empty(shape, dtype)
    out[...] = 0
    return out


def is_aligned(a):
    """Whether ``a``'s data starts on an :data:`ALIGN`-byte boundary, or ``a`` is below :data:`SMALL` bytes."""
    return a.nbytes < SMALL or address(a) % ALIGN == 0


def aligned(a, dtype=None):
    """``a`` as a C-contiguous array of ``dtype`` (default its own) with aligned data: ``a`` itself
    where it is one already, else an aligned copy."""
    a = np.asarray(a)
    dtype = a.dtype if dtype is None else np.dtype(dtype)
    if a.dtype == dtype and a.flags.c_contiguous and is_aligned(a):
        return a
    out = empty(a.shape, dtype)
    out[...] = a
    return out
