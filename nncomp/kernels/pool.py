"""Pooling kernels over NHWC float32 images, with PyTorch's window and divisor rules."""
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from ._ir import loop_latch, loop_phis
from ._jit import both


@intrinsic
def pool16(typingctx, src, soff, pix, line, q, dst, doff):
    """16 channels of one max-pooled pixel: ``dst[doff + j]`` = the max, from -inf, of
    ``src[soff + a * line + b * pix + j]`` over ``a``, ``b`` < ``q`` in that order (rows, then
    columns), a value winning where it is greater or NaN (:func:`_maxpool`'s rule), for ``j < 16``:
    the window's loads and comparisons in registers."""
    sig = types.void(src, soff, pix, line, q, dst, doff)

    def codegen(context, builder, signature, args):
        sdata, ddata = (context.make_array(signature.args[k])(context, builder, args[k]).data for k in (0, 5))
        intp = context.get_value_type(types.intp)
        soff_, pix_, line_, q_, doff_ = (context.cast(builder, args[k], signature.args[k], types.intp)
                                         for k in (1, 2, 3, 4, 6))
        vf = ir.VectorType(ir.FloatType(), 16)
        acc = ir.Constant(vf, [float("-inf")] * 16)
        pre = builder.block
        rows = builder.append_basic_block("pool_rows")
        cols = builder.append_basic_block("pool_cols")
        row_end = builder.append_basic_block("pool_row_end")
        done = builder.append_basic_block("pool_done")
        builder.cbranch(builder.icmp_signed(">", q_, intp(0)), rows, done)
        builder.position_at_end(rows)
        a, (acc_r,) = loop_phis(builder, intp, vf, [acc], pre)
        base = builder.add(soff_, builder.mul(a, line_))
        builder.branch(cols)
        builder.position_at_end(cols)
        b, (acc_c,) = loop_phis(builder, intp, vf, [acc_r], rows)
        ptr = builder.gep(sdata, [builder.add(base, builder.mul(b, pix_))])
        v = builder.load(builder.bitcast(ptr, vf.as_pointer()), align=4)
        wins = builder.or_(builder.fcmp_ordered(">", v, acc_c), builder.fcmp_unordered("uno", v, v))
        nxt = builder.select(wins, v, acc_c)
        loop_latch(builder, intp, b, [acc_c], [nxt], q_, cols, row_end)
        builder.position_at_end(row_end)
        loop_latch(builder, intp, a, [acc_r], [nxt], q_, rows, done)
        builder.position_at_end(done)
        fin = builder.phi(vf)
        fin.add_incoming(acc, pre)
        fin.add_incoming(nxt, row_end)
        builder.store(fin, builder.bitcast(builder.gep(ddata, [doff_]), vf.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


def _maxpool(x, kh, kw, sh, sw, ph, pw, dh, dw, out):
    """Max over each window; padded positions never win (they are -inf). Stride 1 without dilation
    (PP-OCRv6's 2 x 2 pool, YOLOv8's 5 x 5 SPPF pools) goes tap by tap over whole output lines: each
    tap's valid columns are one contiguous run of the input line, a vector loop (Intel Xeon, 2
    threads: 320 x 320 x 24, 2 x 2, 1.5 -> 0.79 ms; 5 x 5 8.3 -> 3.0 ms; pixel by pixel, 24 channels
    are a loop of one vector and a masked one per tap).

    IN  x (n, h, w, c) float32; kernel, stride, top/left padding, dilation.
    OUT out (n, oh, ow, c) float32.
    """
    n, h, w, c = x.shape
    _, oh_n, ow_n, _ = out.shape
    for r in prange(n * oh_n):
        b = r // oh_n
        oh = r - b * oh_n
        if sw == 1 and dw == 1:     # each tap's valid output columns read one contiguous run of x's line
            line = out[b, oh].reshape(ow_n * c)
            for k in range(ow_n * c):
                line[k] = -np.inf
            for i in range(kh):
                ih = oh * sh - ph + i * dh
                if ih < 0 or ih >= h:
                    continue
                src = x[b, ih].reshape(w * c)
                for j in range(kw):
                    o0 = max(0, pw - j)             # output columns whose tap j lies inside the line
                    o1 = min(ow_n, w + pw - j)
                    if o1 <= o0:
                        continue
                    d = line[o0 * c:o1 * c]
                    s = src[(o0 + j - pw) * c:(o1 + j - pw) * c]
                    for k in range(d.shape[0]):
                        v = s[k]
                        a = d[k]
                        d[k] = v if (v > a or v != v) else a
            continue
        for ow in range(ow_n):
            acc = out[b, oh, ow]
            for k in range(c):
                acc[k] = -np.inf
            for i in range(kh):
                ih = oh * sh - ph + i * dh
                if ih < 0 or ih >= h:
                    continue
                for j in range(kw):
                    iw = ow * sw - pw + j * dw
                    if iw < 0 or iw >= w:
                        continue
                    src = x[b, ih, iw]
                    for k in range(c):
                        v = src[k]
                        a = acc[k]
                        # NaN propagates as in PyTorch: a NaN in the window wins (a select, not
                        # a conditional store: LLVM vectorizes it)
                        acc[k] = v if (v > a or v != v) else a


maxpool_nhwc, maxpool_nhwc_parallel = both(_maxpool)


def _avgpool(x, kh, kw, sh, sw, ph, pw, pb, pr, count_include_pad, out):
    """Mean over each window, divided as PyTorch's AvgPool2d does.

    The window is clipped to the padded image (bottom/right padding pb, pr) for the divisor when
    ``count_include_pad``; otherwise the divisor counts only real pixels.
    IN  x (n, h, w, c) float32; kernel, stride, top/left padding (ph, pw), bottom/right (pb, pr).
    OUT out (n, oh, ow, c) float32.
    """
    n, h, w, c = x.shape
    _, oh_n, ow_n, _ = out.shape
    for r in prange(n * oh_n):
        b = r // oh_n
        oh = r - b * oh_n
        h0 = oh * sh - ph
        h1 = min(h0 + kh, h + pb)
        for ow in range(ow_n):
            w0 = ow * sw - pw
            w1 = min(w0 + kw, w + pr)
            size = (h1 - h0) * (w1 - w0)
            hs, he = max(h0, 0), min(h1, h)
            ws, we = max(w0, 0), min(w1, w)
            if not count_include_pad:
                size = (he - hs) * (we - ws)
            acc = out[b, oh, ow]
            for k in range(c):
                acc[k] = 0.0
            for ih in range(hs, he):
                for iw in range(ws, we):
                    src = x[b, ih, iw]
                    for k in range(c):
                        acc[k] += src[k]
            div = np.float32(max(size, 1))
            for k in range(c):
                acc[k] = acc[k] / div


avgpool_nhwc, avgpool_nhwc_parallel = both(_avgpool)


def _global_mean(x, out):
    """Mean over the pixels of each image, summed in float64 pixel by pixel (vectorized over the
    channels; NumPy's mean over two strided axes ran 2 GB/s here, a loop over blocks of channels
    that LLVM did not vectorize 14x slower than this one).

    IN  x (n, p, c) float32 C-contiguous (p = h * w pixels, p >= 1).
    OUT out (n, c) float32: ``float32(sum_p float64(x[b, p, k]) / p)``.
    """
    n, p, c = x.shape
    for b in prange(n):
        acc = np.zeros(c, np.float64)
        for i in range(p):
            for k in range(c):
                acc[k] += x[b, i, k]
        for k in range(c):
            out[b, k] = np.float32(acc[k] / p)


global_mean_nhwc, global_mean_nhwc_parallel = both(_global_mean)
