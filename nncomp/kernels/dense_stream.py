"""A large float32 dense weight times a small batch, the weight read once and in its own layout.

Where a dense layer's weight does not fit the caches (VGG-16's fc6: 411 MB) and the batch is small,
the product is bound by streaming the weight, and by how well that stream overlaps the arithmetic.
OpenBLAS's sgemm packs the weight on every call (fc6 at 32 samples: 46 ms through nncomp's
threaded BLAS split against 33 ms for ONNX Runtime's MLAS, which packs it once at load). Here the
roles of the register tiles are swapped: the *weight* is the broadcast operand and the *samples*
are the vectors. A tile of ``P`` weight rows x ``V`` vectors of 16 samples (the register-blocked
micro-kernel of nncomp/kernels/conv_tiles.py, ``P * V`` accumulators in registers) broadcasts
each weight value once, straight from its row (no packing, no copy of the weight), and multiplies
it with the transposed inputs of a block of ``kc`` features, which stay in L2 for all the weight
rows of a thread: the weight is read exactly once a call (for up to 64 samples; every 64 more read
it again), in ``P`` sequential streams. fc6 at 32 samples (Intel Xeon with AMX, 2 threads): 26 ms
against MLAS's 33; the packed-weight variant (weight vectors, broadcast samples) reached 35-37.

Three steps in one call: the inputs transposed into ``xt`` (features x samples, rows padded to 16),
the tiles accumulating ``outt = w @ xt`` block by block, then ``out[b] = epilogue(outt[:, b] + bias)``
by the epilogue kernels' own code. Each sum runs over the features in order, one fused multiply-add
per feature and sample, so a sample's result does not depend on the batch it came in; it differs
from BLAS's order in the last bits.

Contract (NumPy twin: tests/reference.py ``stream_gemm``):
``out[b, j] = act(clip((w[j] @ x[b] + bias[j]) * scale[j] + shift[j] + res[b, j], lo, hi))``, the
parts after the bias as in nncomp/kernels/sparse_small.py ``bias_epilogue_rows``.
"""
import numpy as np
from numba import prange

from ._jit import both
from .conv_tiles import tile_pixels, tiles1, tiles2, tiles3, tiles4
from .isa import VECTOR_REGISTERS
from .sparse_small import finish_row

# Samples per tile: up to 4 vectors of 16 (one pass over the weight for up to 64 samples); with 16
# vector registers (AVX2) one vector: its tiles are 6 weight rows where two vectors get 2, and each
# weight value feeds 12 ymm multiply-adds instead of 8 for the same 128 bytes of inputs. fc6 on a
# Zen 3 guest, 2 threads: 16 samples 24.7 ms, 32 in one pass of 2-vector tiles 65.6-76.9 ms (the
# weight read once); two passes of 16 read it twice (11.7 ms each from DRAM) and compute in about 50.
SAMPLE_VECTORS = 4 if VECTOR_REGISTERS >= 32 else 1
GROUP = 16 * SAMPLE_VECTORS
# Features per block: the block of transposed inputs (kc x up to 64 samples) is BLOCK_BYTES, half of
# a Zen 4 core's L2 (1 MB), an eighth of a Sapphire Rapids core's (2 MB); fc6 at 32 samples read
# 26-28 ms for 1024-4096 features a block (Xeon with AMX).
BLOCK_BYTES = 1 << 19

# weight rows per tile, by vectors of samples (fewer where the CPU has 16 vector registers)
_R1, _R2, _R3, _R4 = (tile_pixels(v) for v in range(1, 5))


def block_features(n, k):
    """Features per block for ``n`` samples and ``k`` features (:data:`BLOCK_BYTES`)."""
    width = min(GROUP, -(-n // 16) * 16)
    return max(16, min(k, BLOCK_BYTES // (4 * width)))


def work_shapes(n, k, co):
    """Shapes of the work arrays ``(xt, outt)`` for ``n`` samples, ``k`` features, ``co`` outputs."""
    width = -(-n // 16) * 16
    return (k, width), (co, width)


def _stream(w, x, bias, scale, shift, res, lo, hi, act, alpha, beta, kc, parts, xt, outt, out):
    """``out = epilogue(x @ w.T + bias)`` (module doc).

    IN  w (co, k) float32 C-contiguous; x (n, k) float32 C-contiguous; bias (co,) float32, or (0,)
        for none; scale, shift (co,) float32, or (0,) for no affine map; res (n, co) float32, or
        (0, co) for no residual; lo, hi float32 clip bounds (-inf, inf: none); act an ACT_* code of
        nncomp/kernels/epilogue.py (0: none) with its alpha, beta; kc features per block (>= 1);
        parts: contiguous ranges of weight rows, one per thread (>= 1).
    WORK xt (k, nw), outt (co, nw) float32 C-contiguous, nw >= n a multiple of 16 (work_shapes).
    OUT out (n, co) float32 C-contiguous, overwritten.
    """
    n, k = x.shape
    co = w.shape[0]
    nw = xt.shape[1]
    zero = np.zeros(GROUP, np.float32)
    inf = np.float32(np.inf)
    # 1. the inputs transposed, a block of features per work item
    for f in prange((k + 255) // 256):
        f0 = f * 256
        f1 = min(k, f0 + 256)
        for b in range(n):
            row = x[b]
            for i in range(f0, f1):
                xt[i, b] = row[i]
        for i in range(f0, f1):     # padding lanes zero: left as they came, a work buffer's old
            for b in range(n, nw):  # denormals made every multiply-add slow (fc7, 3 samples: 80 ms)
                xt[i, b] = 0.0
    # 2. the tiles: each thread a contiguous range of weight rows, block by block of features
    for g0 in range(0, n, GROUP):
        nv = min(SAMPLE_VECTORS, (n - g0 + 15) // 16)
        lanes = n - g0 - 16 * (nv - 1)
        p_max = _R1 if nv == 1 else _R2 if nv == 2 else _R3 if nv == 3 else _R4
        tiles = (co + p_max - 1) // p_max
        for part in prange(parts):
            t0 = part * tiles // parts
            t1 = (part + 1) * tiles // parts
            for k0 in range(0, k, kc):
                span = min(kc, k - k0)
                t = t0
                while t < t1:       # the full tiles of the range as one run, then the last one if short
                    r0 = t * p_max
                    p = min(p_max, co - r0)
                    count = 1 if p < p_max else min(t1, co // p_max) - t
                    a = (p, w, r0 * k + k0, k, span, 1, 0, 0, xt, k0 * nw + g0, nw, zero, 0, int(k0 == 0), outt,
                         r0 * nw + g0, nw, lanes, 0, zero, zero, False, outt, False, -inf, inf, 1, count, p_max * k,
                         p_max * nw, 0, inf, inf)
                    t += count
                    if nv == 4:
                        tiles4(*a)
                    elif nv == 3:
                        tiles3(*a)
                    elif nv == 2:
                        tiles2(*a)
                    else:
                        tiles1(*a)
    # 3. back to samples x outputs, with the bias and the epilogue
    for b in prange(n):
        y = out[b]
        for j in range(co):
            y[j] = outt[j, b]
        if bias.shape[0] > 0:
            for j in range(co):
                y[j] = y[j] + bias[j]
        finish_row(out[b:b + 1], scale, shift, res[b:b + 1] if res.shape[0] > 0 else res, lo, hi, act, alpha, beta)


stream_gemm, stream_gemm_parallel = both(_stream, error_model="numpy")
