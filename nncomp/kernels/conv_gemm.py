"""im2col and its BLAS product fused in one kernel, for convolutions with dense weights.

Each thread takes blocks of output lines in turn: it copies their patches into its own buffer
(which stays in its cache), multiplies them by the weight with one single-threaded BLAS call and
writes the result plus the bias into the output. Against building the patch matrix, then running
the product, then adding the bias as three Python steps, this saves the steps' calls (LeNet-5 at
batch 1: conv1 24 -> 10 us, conv2 37 -> 18 us) and splits small products across threads with one
launch (development measurements; bench/results/conv_algos.md has the committed ones).

A max-pooling layer that follows (window = stride, no padding, as in LeNet and VGG) can run in
the same pass: each block's product is pooled in the thread's buffer and only the pooled output is
written (a model's plan fuses the two, see ``Model``).

The product runs in the orientation OpenBLAS runs faster for small shapes: the longer of the
block's rows and the output channels as BLAS's ``m`` (LeNet-5 conv2, 32 rows x 50 channels x 500:
14 us as ``w @ patches.T`` against 19 us as ``patches @ w.T``).
"""
import numpy as np
from numba import prange

from ._jit import both
from .blas import call_sgemm
from .conv import im2col_nhwc


def _im2col_gemm(sgemm, x, w, bias, kh, kw, sh, sw, ph, pw, dh, dw, lines, pool, cols, tmp, out):
    """Convolution through per-thread im2col blocks of ``lines`` output lines and BLAS products,
    optionally max-pooled (window = stride = ``pool``, no padding) before it is written.

    IN  sgemm address of cblas_sgemm (64-bit integers); x (n, h, w, c) float32 C-contiguous;
        w (co, kh*kw*c) float32 C-contiguous, columns ordered (kh, kw, c); bias (co,) float32;
        kernel, stride, top/left padding, dilation as in im2col; lines >= 1 output lines per block;
        pool 1 (none) or the max-pool size p: then the conv output size (oh, ow) is a multiple of p
        and so is ``lines``. Work buffers, one per part (their first axis is the number of parts):
        cols (parts, >= lines*ow, kh*kw*c) float32 C-contiguous; tmp (parts, >= lines*ow*co)
        float32 C-contiguous (the block's product when it is not written straight into out: pooled,
        or with fewer rows than co, when it is computed transposed).
    OUT out float32 C-contiguous: (n, oh, ow, co), or (n, oh/p, ow/p, co) when pooled. NaN wins a
        pooling window, as in PyTorch.
    """
    _, h_out, w_out, co = out.shape
    oh_n, ow_n = h_out * pool, w_out * pool
    k = w.shape[1]
    parts = cols.shape[0]
    total = out.shape[0] * oh_n
    blocks = (total + lines - 1) // lines
    flat = out.reshape(out.shape[0] * h_out * w_out, co)
    wp = w.ctypes.data
    for t in prange(parts):
        buf = cols[t]
        tt = tmp[t]
        bp = buf.ctypes.data
        tp = tt.ctypes.data
        for blk in range(t, blocks, parts):
            r0 = blk * lines
            r1 = min(total, r0 + lines)
            im2col_nhwc(x, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, r0, r1, buf)
            rows = (r1 - r0) * ow_n
            base = r0 * ow_n
            if pool == 1 and rows >= co:    # out rows = patches @ w.T, then the bias
                call_sgemm(sgemm, (101, 111, 112, rows, co, k, 1.0, bp, k, wp, k, 0.0,
                                    flat.ctypes.data + 4 * base * co, co))
                for r in range(base, base + rows):
                    dst = flat[r]
                    for o in range(co):
                        dst[o] += bias[o]
                continue
            # the block's product in tt: (rows, co) row-major, or (co, rows) when rows < co
            across = rows >= co
            if across:
                call_sgemm(sgemm, (101, 111, 112, rows, co, k, 1.0, bp, k, wp, k, 0.0, tp, co))
            else:
                call_sgemm(sgemm, (101, 111, 112, co, rows, k, 1.0, wp, k, bp, k, 0.0, tp, rows))
            if pool == 1:
                for r in range(rows):
                    dst = flat[base + r]
                    for o in range(co):
                        dst[o] = tt[o * rows + r] + bias[o]
                continue
            for pl in range((r1 - r0) // pool):
                g = r0 + pl * pool                  # first conv line of the window, image-major
                dst_line = (g // oh_n) * h_out + (g % oh_n) // pool
                for q in range(w_out):
                    dst = flat[dst_line * w_out + q]
                    dst[:] = -np.inf
                    for di in range(pool):
                        for dj in range(pool):
                            r = (pl * pool + di) * ow_n + q * pool + dj
                            if across:      # the window's rows are contiguous channel vectors
                                src = tt[r * co:(r + 1) * co]
                                for o in range(co):
                                    v = src[o]
                                    if v > dst[o] or v != v:
                                        dst[o] = v
                            else:
                                for o in range(co):
                                    v = tt[o * rows + r]
                                    if v > dst[o] or v != v:
                                        dst[o] = v
                    for o in range(co):
                        dst[o] += bias[o]


im2col_gemm_nhwc, im2col_gemm_nhwc_parallel = both(_im2col_gemm)
