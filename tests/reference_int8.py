"""NumPy twins of the int8 kernels (nncomp/kernels/int8.py, vnni.py).

Integer products upcast to int64 before multiplying: NumPy's own ``int8 @ int8`` returns int8 and
wraps. Float twins follow the specified float32 operation order exactly (they are compared with
``np.array_equal``); the weight-only twin is float64 (tolerance rule).
"""
import numpy as np


def int8_quantize(x, scale, zero, qmin, qmax, kp):
    """uint8 codes ``clip(rint(x / scale) + zero, qmin, qmax)`` (float32 division), padded to kp
    columns with ``zero``; and the number of non-finite inputs."""
    x = np.asarray(x, np.float32)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        q = np.rint(x / np.float32(scale)) + np.float32(zero)
        q = np.clip(np.nan_to_num(q, nan=qmin), qmin, qmax)
    out = np.full((x.shape[0], kp), zero, np.uint8)
    out[:, :x.shape[1]] = q.astype(np.uint8)
    return out, int((~np.isfinite(x)).sum())


def quantize_value(v, s, z, lo, hi):
    """Twin of kernels.int8.quantize_value: one code."""
    return quantize_run(np.array([v], np.float32), None, s, z, lo, hi)[0][0]


def quantize_run(src, dst, s, z, lo, hi):
    """Twin of kernels.int8.quantize_run: ``(codes, bad)``, ``clip(rint(src / s) + z, lo, hi)`` with
    NaN to ``lo``, and the number of NaN or infinite values."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        q = np.rint(np.asarray(src, np.float32) / np.float32(s)) + np.float32(z)
        q = np.clip(np.nan_to_num(q, nan=lo, posinf=hi, neginf=lo), lo, hi)
    return q.astype(np.uint8), int((~np.isfinite(src)).sum())


def unpack(wp):
    """Panels ``(n_panels, n_groups, 4 * width)`` -> codes ``(n_panels * width, 4 * n_groups)``."""
    n_p, n_g, pw4 = wp.shape
    return wp.reshape(n_p, n_g, pw4 // 4, 4).transpose(0, 2, 1, 3).reshape(n_p * pw4 // 4, 4 * n_g)


def int8_matmul_u8s8(xu, wp, k0, k1, out):
    """``out + xu[:, k0:k1] @ w[:, k0:k1].T`` for panel-packed ``wp``, exact (int64 inside, int32 result)."""
    w = unpack(wp)
    acc = xu[:, k0:k1].astype(np.int64) @ w[:, k0:k1].astype(np.int64).T
    total = out.astype(np.int64) + acc
    assert np.abs(total).max(initial=0) < 2 ** 31
    return total.astype(np.int32)


int8_matmul_u8s8_vnni = int8_matmul_u8s8


def vnni_block(mr, nb, x, xoff, xstride, xseg, wp, woff, gstride, rstride, wseg, ngroups, nseg, out, ooff, ostride):
    """Twin of kernels.int8_vnni.vnni_block and kernels.int8_avx2.avx2_block: ``out`` (a copy) plus, for rows m < mr and channels
    16 r + c (r < nb), the sums over segments s and groups g of the 4 codes at flat ``xoff + s * xseg
    + m * xstride + 4 g`` of ``x`` times the 4 weights at flat ``woff + s * wseg + g * gstride + r *
    rstride + 4 c`` of ``wp``, at flat ``ooff + m * ostride + 16 r + c``."""
    xf, wf = x.reshape(-1).astype(np.int64), wp.reshape(-1).astype(np.int64)
    res = out.reshape(-1).astype(np.int64)
    for m in range(mr):
        for r in range(nb):
            total = np.zeros(16, np.int64)
            for s in range(nseg):
                for g in range(ngroups):
                    xa = xoff + s * xseg + m * xstride + 4 * g
                    wa = woff + s * wseg + g * gstride + r * rstride
                    total += wf[wa:wa + 64].reshape(16, 4) @ xf[xa:xa + 4]
            res[ooff + m * ostride + 16 * r:ooff + m * ostride + 16 * r + 16] += total
    assert np.abs(res).max(initial=0) < 2 ** 31
    return res.astype(np.int32).reshape(out.shape)


avx2_block = vnni_block       # the same contract; the AVX2 block reads the codes as int16
int8_block = vnni_block       # kernels.int8_vnni.int8_block: whichever block the CPU runs


def block_codes(xu):
    """Twin of kernels.int8_vnni.block_codes: the codes as the CPU's int8 block reads them (uint8 with
    VNNI, int16 for the AVX2 block), the same values."""
    from nncomp.kernels.int8_vnni import CODE
    return xu.astype(CODE)


def int8_matmul_u8s8_amx(xa, wp, k0, out):
    """Twin of the AMX tile kernel: ``out`` plus the product of the packed activation tiles ``xa``
    (T, S, 16, 64) (rows 0..16T, inputs k0..k0 + 64S) with the panel-packed weights; other rows as given."""
    t, s = xa.shape[:2]
    xu = xa.transpose(0, 2, 1, 3).reshape(16 * t, 64 * s).astype(np.int64)
    total = out.astype(np.int64)
    total[:16 * t] += xu @ unpack(wp)[:, k0:k0 + 64 * s].astype(np.int64).T
    assert np.abs(total).max(initial=0) < 2 ** 31
    return total.astype(np.int32)


def int8_dequantize(acc, zero, colsum, xscale, scale, n_out=None):
    """``float32(acc - zero * colsum) * float32(xscale * scale[o])`` over the first n_out columns,
    float32 operations in that order."""
    n_out = acc.shape[1] if n_out is None else n_out
    a = acc[:, :n_out].astype(np.int64) - np.int64(zero) * colsum[:n_out].astype(np.int64)
    m = np.float32(xscale) * np.broadcast_to(scale.astype(np.float32), (n_out,))
    return a.astype(np.float32) * m


def int8_matmul_float(x, w, scale):
    """Weight-only: ``(x @ w.T) * scale`` in float64."""
    y = x.astype(np.float64) @ w.astype(np.float64).T
    return y * np.broadcast_to(scale.astype(np.float64), (w.shape[0],))


def amx_pack_rows(xu, k0, k1):
    """Twin of kernels.int8_amx.pack_rows: whole 16-row tiles x whole 64-input steps, each tile contiguous."""
    t, s = xu.shape[0] // 16, (k1 - k0) // 64
    return np.ascontiguousarray(xu[:16 * t, k0:k0 + 64 * s].reshape(t, 16, s, 64).transpose(0, 2, 1, 3))


def _quantize_pad(x, scale, zero, top, left, hp, wp, cp):
    """``(codes (n, hp, wp, cp), bad)``: the codes of int8_quantize at ``[b, top + i, left + j, k]``
    and ``zero`` elsewhere."""
    n, h, w, c = x.shape
    codes, bad = int8_quantize(x.reshape(-1, c), scale, zero, 0, 255, c)
    out = np.full((n, hp, wp, cp), zero, np.uint8)
    out[:, top:top + h, left:left + w, :c] = codes.reshape(n, h, w, c)
    return out, bad


def int8_conv_nhwc(x, scale, zero, top, left, xp_shape, kh, kw, sh, sw, dh, dw, oh_n, ow_n, wp, zc, mul, bias,
                   escale, eshift, res, lo, hi, act, alpha, beta, pool=0, lines=1):
    """Twin of kernels.int8_conv.int8_conv_nhwc: ``(bad, xp, out)``, the padded codes of ``x``
    (n, hp, wp, cp = ``xp_shape``), and their patches times the unpacked weight in int64,
    ``float32(acc - zc) * mul + bias`` (float32, in that order), then the epilogue and activation
    as the layers run them, (n * oh_n * ow_n, co) float32; with ``pool`` >= 2 max-pooled (floor mode)."""
    from reference import activation_rows, epilogue_rows
    xp, bad = _quantize_pad(x, scale, zero, top, left, *xp_shape[1:])
    n, _, _, cp = xp.shape
    co = mul.shape[0]
    w = unpack(wp)[:co].astype(np.int64)
    kwb = w.shape[1] // kh          # kw * cp, or (packed rows, cp == c < 4) rounded up to 4
    w = w.reshape(co, kh, kwb)[:, :, :kw * cp].reshape(co, kh * kw * cp)
    taps = [xp[:, i * dh:i * dh + (oh_n - 1) * sh + 1:sh, j * dw:j * dw + (ow_n - 1) * sw + 1:sw, :]
            for i in range(kh) for j in range(kw)]
    patches = np.concatenate(taps, axis=3).reshape(n * oh_n * ow_n, kh * kw * cp).astype(np.int64)
    acc = patches @ w.T
    assert np.abs(acc).max(initial=0) < 2 ** 31
    y = (acc - zc[:co].astype(np.int64)).astype(np.float32) * mul + bias
    y = epilogue_rows(y, escale, eshift, res, lo, hi)
    y = activation_rows(y, act, alpha, beta) if act else y
    if pool > 1:
        q, oq, wq = pool, oh_n // pool, ow_n // pool
        y = y.reshape(n, oh_n, ow_n, co)[:, :oq * q, :wq * q].reshape(n, oq, q, wq, q, co).max(axis=(2, 4))
        y = y.reshape(n * oq * wq, co)
    return bad, xp, y


def dequant_line(acc, ow_n, zc, mul, bias, dst, off):
    """Twin of kernels.int8_conv.dequant_line: ``dst`` with ``dst[off + p * co + o] = float32(acc[p, o] -
    zc[o]) * mul[o] + bias[o]`` for ``p < ow_n``, ``o < co`` (a copy; float32 multiply, then add)."""
    co = mul.shape[0]
    y = (acc[:ow_n, :co].astype(np.int64) - zc[:co]).astype(np.float32) * mul
    out = dst.copy()
    out[off:off + ow_n * co] = (y + bias).ravel()
    return out


def int8_conv_amx_nhwc(x, scale, zero, top, left, xp_shape, kh, kw, sh, sw, dh, dw, oh_n, ow_n, wp, zc, mul,
                       bias, escale, eshift, res, lo, hi, act, alpha, beta, pool=0, lines=1):
    """Twin of kernels.int8_conv_amx.int8_conv_amx_nhwc: :func:`int8_conv_nhwc`'s, whose weight
    layout (kernel rows of ``kwb`` codes, the first ``kw * cp`` used) covers the tiles' rows padded to
    64 codes."""
    return int8_conv_nhwc(x, scale, zero, top, left, xp_shape, kh, kw, sh, sw, dh, dw, oh_n, ow_n, wp, zc, mul, bias,
                          escale, eshift, res, lo, hi, act, alpha, beta, pool, lines)


def int8_gemv_epilogue(wp, colsum, wscale, sx, z, mode, x, perm, bias, scale, shift, res, lo, hi, act, alpha,
                       beta):
    """Twin of kernels.int8_gemv.int8_gemv_epilogue: ``(bad, out (1, co))``. The activation codes of
    ``x[perm]`` with the calibrated ``(sx, z)`` (mode 0) or matrices/int8.activation_params of the
    sample's range (1: uint8, 2: int8), the exact product in int64, ``float32(acc - z * colsum) *
    float32(sx * wscale) + bias``, then the epilogue and activation as the layers run them."""
    from reference import finish_row

    from nncomp.matrices.int8 import activation_params
    xs = np.asarray(x[perm] if perm.shape[0] else x, np.float32)
    if mode:
        finite = xs[np.isfinite(xs)]      # with NaN or Inf only the count is specified
        lo_x, hi_x = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
        sx, z = activation_params(lo_x, hi_x, "int8" if mode == 2 else "uint8")
    codes, bad = quantize_run(xs, None, sx, z, 0.0, 255.0)
    co = wscale.shape[0]
    w = unpack(wp)[:co, :xs.shape[0]].astype(np.int64)
    acc = w @ codes.astype(np.int64)
    y = (acc - np.int64(z) * colsum[:co]).astype(np.float32) * (np.float32(sx) * wscale) + bias
    return bad, finish_row(y[None], scale, shift, res, lo, hi, act, alpha, beta)
