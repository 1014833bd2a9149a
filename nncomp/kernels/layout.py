"""Image layouts: a batch of planar (NCHW) images as NHWC, the layout every kernel reads.

NumPy's copy of ``x.transpose(0, 2, 3, 1)`` moves one value at a time through its strided iterator:
150 us for one 3 x 224 x 224 image here (Intel Xeon), 1.26 ms at 640 x 640, as much as a
MobileNetV3's stem convolution. Walking each plane's line in order and writing every ``c``-th
value of the output line took 39 us and 0.38 ms (one thread). Twin: tests/reference.py ``to_nhwc``.
"""
import numpy as np
from numba import prange

from . import aligned
from ._jit import both, pick

# Planar batches of 2 to this many channels go through the kernel (16 channels: NumPy's copy was faster).
KERNEL_CHANNELS = 8


def _to_nhwc(x, out):
    """``out[b, i, j, k] = x[b, k, i, j]``.

    IN  x (n, c, h, w) float32 C-contiguous.
    OUT out (n, h, w, c) float32 C-contiguous, overwritten.
    """
    n, c, h, w = x.shape
    for t in prange(n * h):
        b = t // h
        i = t - b * h
        line = out[b, i].reshape(w * c)
        for k in range(c):          # plane by plane: each read in order, writes c apart
            src = x[b, k, i]
            for j in range(w):
                line[j * c + k] = src[j]


to_nhwc, to_nhwc_parallel = both(_to_nhwc)


def nhwc(x):
    """A planar float32 batch ``x`` (n, c, h, w) as a C-contiguous NHWC array: through the kernel
    (serial or parallel by size) for 2 to KERNEL_CHANNELS channels, one channel as it is (the same
    order in memory), NumPy's copy otherwise."""
    n, c, h, w = x.shape
    if 1 < c <= KERNEL_CHANNELS and x.dtype == np.float32 and x.flags.c_contiguous:
        out = aligned.empty((n, h, w, c))
        pick((to_nhwc, to_nhwc_parallel), x.size)(x, out)
        return out
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
