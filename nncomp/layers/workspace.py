"""Per-thread work buffers the convolution steps reuse across calls."""
import math
import threading

import numpy as np

_WORKSPACE = threading.local()


def scratch(name, shape):
    """A float32 work array of ``shape``, reused across calls on this thread (not zeroed).

    Fresh multi-megabyte arrays cost page faults on every call (conv3_2 at batch 1: 2.5 ms of
    11.5 for the shifted GEMM's two work buffers); these are kept per thread and grown as needed.
    """
    size = math.prod(shape)
    buffers = _WORKSPACE.__dict__
    buf = buffers.get(name)
    if buf is None or buf.size < size:
        buf = buffers[name] = np.empty(size, np.float32)
    return buf[:size].reshape(shape)
