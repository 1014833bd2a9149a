"""Per-thread work buffers the convolution steps reuse across calls."""
import math
import threading

import numpy as np

from ..kernels import aligned

_WORKSPACE = threading.local()


def scratch(name, shape, dtype=np.float32):
    """A work array of ``shape`` and ``dtype`` (float32, or any type, e.g. uint8 activation codes),
    reused across calls on this thread (not zeroed).

    Fresh multi-megabyte arrays cost page faults on every call (conv3_2 at batch 1: 2.5 ms of
    11.5 for the shifted GEMM's two work buffers); these are kept per thread and grown as needed.
    """
    size = math.prod(shape)
    words = size if dtype is np.float32 else -(-size * np.dtype(dtype).itemsize // 4)
    buffers = _WORKSPACE.__dict__
    buf = buffers.get(name)
    if buf is None or buf.size < words:
        buf = buffers[name] = aligned.empty(words)
    if dtype is np.float32:
        return buf[:size].reshape(shape)
    return buf[:words].view(dtype)[:size].reshape(shape)
