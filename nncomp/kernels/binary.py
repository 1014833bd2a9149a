"""Element-wise binary operators of an activation and a per-channel operand (a constant, or a
squeeze-and-excitation scale of one value per sample and channel), over NHWC rows.

NumPy broadcasts such an operand through buffered iteration, 4-18x slower than a plain product
here (a (1, 128, 128, 64) image times a (1, 1, 1, 64) scale: 12 ms against 0.66 ms for x * x);
this kernel reads each row once. The same float32 operations as NumPy's ufuncs (no fused
multiply-add; maximum and minimum with NumPy's NaN and signed-zero rules), so results are identical.
"""
from numba import prange

from ._jit import both, jit

# Operator codes of the kernel's ``op`` argument.
CHANNEL_OPS = {"add": 0, "sub": 1, "mul": 2, "div": 3, "max": 4, "min": 5}


# Rows of a map a parallel task takes (a sample's rows in chunks: one division per task, not per row).
ROWS_PER_TASK = 64


def _rows(xs, sv, os, r0, r1, op, reverse):
    """Rows ``r0 <= r < r1`` of ``xs`` (m, c) op ``sv`` into ``os``: the operator chosen once for the
    rows (a branch per value kept the loop scalar), each row a view indexed from 0 (an offset of
    unknown sign makes Numba check every index for wraparound: no vector loop, 3.5x the time)."""
    c = xs.shape[1]
    for r in range(r0, r1):
        xr, o = xs[r], os[r]
        if op == 0:
            for k in range(c):
                o[k] = xr[k] + sv[k]
        elif op == 1 and reverse:
            for k in range(c):
                o[k] = sv[k] - xr[k]
        elif op == 1:
            for k in range(c):
                o[k] = xr[k] - sv[k]
        elif op == 2:
            for k in range(c):
                o[k] = xr[k] * sv[k]
        elif op == 3 and reverse:
            for k in range(c):
                o[k] = sv[k] / xr[k]
        elif op == 3:
            for k in range(c):
                o[k] = xr[k] / sv[k]
        else:           # maximum / minimum with NumPy's NaN rule
            for k in range(c):
                a, v = (sv[k], xr[k]) if reverse else (xr[k], sv[k])
                if op == 4:
                    o[k] = a if a > v or a != a else v
                else:
                    o[k] = a if a < v or a != a else v


_rows_jit = jit(_rows, error_model="numpy")


def _channel_binary(x, s, op, reverse, out):
    """``out[b, i, k] = x[b, i, k] op s[b or 0, k]`` (``s op x`` with ``reverse``).

    IN  x (n, m, c) float32 C-contiguous; s (1, c) or (n, c) float32 C-contiguous; op a code of
        CHANNEL_OPS; reverse bool.
    OUT out (n, m, c) float32.
    """
    n, m, c = x.shape
    per_sample = s.shape[0] > 1
    chunks = (m + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    for t in prange(n * chunks):
        b = t // chunks
        r0 = (t - b * chunks) * ROWS_PER_TASK
        _rows_jit(x[b], s[b if per_sample else 0], out[b], r0, min(m, r0 + ROWS_PER_TASK), op, reverse)


channel_binary_nhwc, channel_binary_nhwc_parallel = both(_channel_binary, error_model="numpy")
