"""Plain NumPy twins of every Numba kernel, named alike; float64 inside, written for clarity.

A meta-test (tests/test_kernels_meta.py) fails if a kernel in nncomp.kernels has no twin here.
Kernels that fill an ``out`` argument have twins that return the array instead.
"""
import importlib
import pathlib

import numpy as np


def _pad_nhwc(x, ph, pb, pw, pr, value=0.0):
    return np.pad(x, ((0, 0), (ph, pb), (pw, pr), (0, 0)), constant_values=value)


def im2col_nhwc(x, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, r0, r1):
    """Patch rows (kh, kw, c) of output lines [r0, r1) of n*oh_n."""
    n, h, w, c = x.shape
    big = max(kh * dh + oh_n * sh, kw * dw + ow_n * sw) + 1
    xp = _pad_nhwc(x.astype(np.float64), ph, big, pw, big)
    rows = []
    for r in range(r0, r1):
        b, oh = divmod(r, oh_n)
        for ow in range(ow_n):
            patch = xp[b, oh * sh: oh * sh + dh * (kh - 1) + 1: dh, ow * sw: ow * sw + dw * (kw - 1) + 1: dw, :]
            rows.append(patch.reshape(-1))
    return np.array(rows).reshape(len(rows), kh * kw * c)


def im2col_u8_nhwc(x, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, r0, r1, fill, kp):
    """``im2col_nhwc`` of uint8 codes padded with ``fill``, rows widened to ``kp`` with ``fill``
    (``kp`` in place of the kernel's ``out``)."""
    n, h, w, c = x.shape
    big = max(kh * dh + oh_n * sh, kw * dw + ow_n * sw) + 1
    xp = _pad_nhwc(x.astype(np.int64), ph, big, pw, big, value=fill)
    rows = []
    for r in range(r0, r1):
        b, oh = divmod(r, oh_n)
        for ow in range(ow_n):
            patch = xp[b, oh * sh: oh * sh + dh * (kh - 1) + 1: dh, ow * sw: ow * sw + dw * (kw - 1) + 1: dw, :]
            rows.append(np.concatenate([patch.reshape(-1), np.full(kp - kh * kw * c, fill)]))
    return np.array(rows, np.int64).reshape(len(rows), kp).astype(np.uint8)


def conv2d_nhwc(x, w, bias, stride, padding, dilation, groups):
    """Direct convolution; w (c_out, c_in/groups, kh, kw) in PyTorch layout, padding (t, b, l, r)."""
    n, h, wd, c = x.shape
    co, cg, kh, kw = w.shape
    (sh, sw), (dh, dw), (t, b, l, r) = stride, dilation, padding
    xp = _pad_nhwc(x.astype(np.float64), t, b, l, r)
    oh_n = (h + t + b - dh * (kh - 1) - 1) // sh + 1
    ow_n = (wd + l + r - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, oh_n, ow_n, co))
    og = co // groups
    for o in range(co):
        g = o // og
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, i * dh: i * dh + sh * (oh_n - 1) + 1: sh, j * dw: j * dw + sw * (ow_n - 1) + 1: sw,
                           g * cg:(g + 1) * cg]
                out[..., o] += patch @ w[o, :, i, j].astype(np.float64)
    if bias is not None:
        out += bias
    return out


def depthwise_conv_nhwc(x, wt, bias, mult, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n):
    """Depthwise convolution; wt (kh*kw, c*mult) tap-major; output channel o reads o // mult."""
    c = x.shape[3]
    w = wt.T.reshape(c * mult, 1, kh, kw)
    big = kh * dh + oh_n * sh + kw * dw + ow_n * sw
    full = conv2d_nhwc(x, w, bias, (sh, sw), (ph, big, pw, big), (dh, dw), c)
    return full[:, :oh_n, :ow_n]


def conv_direct_nhwc(x, wt, bias, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n):
    """Convolution from the transposed weight wt (kh*kw*c, co), rows ordered (kh, kw, c)."""
    c = x.shape[3]
    w = wt.T.reshape(wt.shape[1], kh, kw, c).transpose(0, 3, 1, 2)
    big = kh * dh + oh_n * sh + kw * dw + ow_n * sw
    return conv2d_nhwc(x, w, bias, (sh, sw), (ph, big, pw, big), (dh, dw), 1)[:, :oh_n, :ow_n]


def conv_blocked_nhwc(xp, w, bias, kh, kw, sh, sw, dh, dw, oh_n, ow_n, co):
    """Register-blocked direct convolution of an already padded input; w (kh*kw*c, cop), rows
    ordered (kh, kw, c), only its first co columns used (the rest is the kernel's padding); or
    (n*kh*kw*c, cop), a weight per image; either in column panels (nncomp/kernels/conv_blocked.py)
    where w has fewer columns than bias."""
    if w.shape[1] < bias.shape[0]:
        w = unpack_panels(w, bias.shape[0])
    k = kh * kw * xp.shape[3]
    if w.shape[0] > k:
        return np.concatenate([conv_blocked_nhwc(xp[b:b + 1], w[b * k:(b + 1) * k], bias, kh, kw, sh, sw, dh, dw,
                                                 oh_n, ow_n, co) for b in range(xp.shape[0])])
    return conv_direct_nhwc(xp, w[:, :co], bias[:co], kh, kw, sh, sw, 0, 0, dh, dw, oh_n, ow_n)


def unpack_panels(w, cop):
    """(rows, cop) from column panels (panels * rows, width) (nncomp/kernels/conv_blocked.pack_panels)."""
    width = w.shape[1]
    panels = -(-cop // width)
    rows = w.shape[0] // panels
    return w.reshape(panels, rows, width).transpose(1, 0, 2).reshape(rows, panels * width)[:, :cop]


def tile_activation(act, alpha, beta, dw=1):
    """``(act, alpha, beta)`` the register tiles apply as they store (hard sigmoid 2, hard swish 3 with
    1/6 and 1/2, leaky ReLU 4; undilated rows only), else ``(0, 0, 0)``: the activation kernel's pass."""
    from nncomp.kernels.epilogue import IN_TILES      # where the tiles carry it (16 vector registers)
    if IN_TILES and 2 <= act <= 4 and dw == 1:
        return (3, np.float32(1 / 6), np.float32(0.5)) if act == 3 else (act, np.float32(alpha), np.float32(beta))
    return 0, np.float32(0.0), np.float32(0.0)


def per_image_weight(w, s):
    """(n * k, cop): w's rows (tap-major, c channels each) scaled by each image's channel values s (n, c)."""
    n, c = s.shape
    k = w.shape[0]
    return (w.reshape(k // c, c, -1)[None] * s[:, None, :, None]).reshape(n * k, -1)


def depthwise_blocked_nhwc(xp, w, bias, kh, kw, sh, sw, dh, dw, oh_n, ow_n, c):
    """Depthwise convolution of an already padded input; w (kh*kw, cop) tap-major, its first c columns used."""
    return depthwise_conv_nhwc(xp, w[:, :c], bias[:c], 1, kh, kw, sh, sw, 0, 0, dh, dw, oh_n, ow_n)


def conv_blocked_pooled_nhwc(xp, w, bias, kh, kw, sh, sw, dh, dw, pool, oh_n, ow_n, co):
    """The blocked convolution (output oh_n x ow_n) then a pool x pool max-pool, stride pool, floor."""
    y = conv_blocked_nhwc(xp, w, bias, kh, kw, sh, sw, dh, dw, oh_n, ow_n, co)
    return maxpool_nhwc(y, pool, pool, pool, pool, 0, 0, 1, 1, oh_n // pool, ow_n // pool)


def to_nhwc(x, out):
    """A batch of planar images in NHWC order (nncomp/kernels/layout.py)."""
    out[...] = x.transpose(0, 2, 3, 1)


def erf_values(x):
    """erf in float64 (nncomp/kernels/erf.py approximates it in float32)."""
    from scipy import special
    return special.erf(x.astype(np.float64))


def gelu_value(x):
    """GELU in float64: 0.5 x (1 + erf(x / sqrt(2))) (nncomp/kernels/erf.py's float32 one)."""
    from scipy import special
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1 + special.erf(x / np.sqrt(2)))


def gelu_values(x):
    """GELU of each value in float64 (nncomp/kernels/erf.py's gelu_values, float32)."""
    return gelu_value(x)


def softmax_rows(x):
    """Each row's softmax in float64 (nncomp/kernels/softmax.py), NaN where NumPy's float32 formula gives NaN."""
    with np.errstate(invalid="ignore", over="ignore"):
        x = x.astype(np.float64)
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def softmax_mid(x, out, top):
    """The softmax over the middle axis of (o, k, i) in float64, NaN where NumPy's float32 formula gives NaN."""
    o, k, i = x.shape
    return softmax_rows(x.transpose(0, 2, 1).reshape(o * i, k)).reshape(o, i, k).transpose(0, 2, 1)


def layernorm_rows(x, scale, bias, eps, out):
    """Each row normalized in float64 (nncomp/kernels/rows.py): (x - mean) / sqrt(var + eps) * scale + bias."""
    x = x.astype(np.float64)
    mean = x.mean(axis=1, keepdims=True)
    y = (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=1, keepdims=True) + eps)
    if scale.shape[0]:
        y = y * scale
    if bias.shape[0]:
        y = y + bias
    return y


def concat_columns(src, out, at):
    """A copy of out with columns at .. at + k replaced by src."""
    out = out.copy()
    out[:, at:at + src.shape[1]] = src
    return out


def take_columns(src, at, out):
    """Columns at .. at + k of src (k: out's width)."""
    return src[:, at:at + out.shape[1]].copy()


def conv_pad_nhwc(x, n0, t, l, out):
    """Images n0.. of x zero-padded at (t, l) into a copy of out (images past n keep their values)."""
    out = out.copy()
    n, h, w, _ = x.shape
    gn = min(out.shape[0], n - n0)
    out[:gn] = 0.0
    out[:gn, t:t + h, l:l + w] = x[n0:n0 + gn]
    return out


def conv_crop_bias_nhwc(grid, bias, n0, out):
    """A copy of out whose images n0.. are grid's top-left (oh, ow) corner plus bias (float64)."""
    out = out.astype(np.float64)
    n, oh, ow, _ = out.shape
    gn = min(grid.shape[0], n - n0)
    out[n0:n0 + gn] = grid[:gn, :oh, :ow].astype(np.float64) + bias
    return out


def im2col_gemm_nhwc(sgemm, x, w, bias, kh, kw, sh, sw, ph, pw, dh, dw, lines, pool, cols, tmp, oh_n, ow_n):
    """Convolution as the patch matrix times w.T plus bias, float64, then (pool > 1) max-pooled with
    window = stride = pool (blocks and parts change nothing); (oh_n, ow_n) is the conv's output size."""
    patches = im2col_nhwc(x, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, 0, x.shape[0] * oh_n)
    y = (patches @ w.T.astype(np.float64) + bias).reshape(x.shape[0], oh_n, ow_n, w.shape[0])
    if pool == 1:
        return y
    return maxpool_nhwc(y, pool, pool, pool, pool, 0, 0, 1, 1, oh_n // pool, ow_n // pool)


def blas_gemm_rows(sgemm, x, w, out, beta, parts):
    """x @ w.T + beta * out in float64 (the kernel cuts the rows into parts; the result is the same)."""
    return x.astype(np.float64) @ w.T.astype(np.float64) + beta * out.astype(np.float64)


def blas_gemm_t(sgemm, x, w, out_t, parts):
    """w @ x.T in float64."""
    return w.astype(np.float64) @ x.T.astype(np.float64)


def blas_gemm_kn(sgemm, x, wt, out, parts):
    """x @ wt in float64."""
    return x.astype(np.float64) @ wt.astype(np.float64)


def blas_gemv(sgemv, w, x, out, parts):
    """w @ x in float64."""
    return w.astype(np.float64) @ x.astype(np.float64)


def maxpool_nhwc(x, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n):
    big = kh * dh + oh_n * sh + kw * dw + ow_n * sw
    xp = _pad_nhwc(x.astype(np.float64), ph, big, pw, big, -np.inf)
    out = np.full((x.shape[0], oh_n, ow_n, x.shape[3]), -np.inf)
    for i in range(kh):
        for j in range(kw):
            win = xp[:, i * dh: i * dh + sh * (oh_n - 1) + 1: sh, j * dw: j * dw + sw * (ow_n - 1) + 1: sw]
            # NaN wins, as in PyTorch: a NaN already taken stays (np.fmax would drop it)
            out = np.where(np.isnan(out), out, np.where(np.isnan(win) | (win > out), win, out))
    return out


def global_mean_nhwc(x):
    """The mean over axis 1 of x (n, p, c), in float64, rounded to float32."""
    return x.astype(np.float64).mean(axis=1).astype(np.float32)


def avgpool_nhwc(x, kh, kw, sh, sw, ph, pw, pb, pr, count_include_pad, oh_n, ow_n):
    n, h, w, c = x.shape
    out = np.zeros((n, oh_n, ow_n, c))
    for oh in range(oh_n):
        h0 = oh * sh - ph
        h1 = min(h0 + kh, h + pb)
        for ow in range(ow_n):
            w0 = ow * sw - pw
            w1 = min(w0 + kw, w + pr)
            hs, he, ws, we = max(h0, 0), min(h1, h), max(w0, 0), min(w1, w)
            size = (h1 - h0) * (w1 - w0) if count_include_pad else (he - hs) * (we - ws)
            out[:, oh, ow] = x[:, hs:he, ws:we].astype(np.float64).sum(axis=(1, 2)) / max(size, 1)
    return out


def clip_value(v, lo, hi):
    """NumPy's ``minimum(maximum(v, lo), hi)`` of one float32 value."""
    return np.minimum(np.maximum(np.float32(v), np.float32(lo)), np.float32(hi))


def epilogue_rows(y, scale, shift, res, lo, hi):
    """The epilogue as the layers compute it one by one, in float32 NumPy (returns a new array)."""
    y = np.array(y, np.float32)
    if scale.shape[0]:
        y = y * scale + shift
    if res.shape[0]:
        y = y + res
    y = np.maximum(y, np.float32(lo))
    return np.minimum(y, np.float32(hi))


def activation_rows(y, act, alpha, beta):
    """``act`` 1 sigmoid (exact, float64), 2 hard sigmoid, 3 hard swish, 4 leaky ReLU (float32
    NumPy, the kernel's sequence), 5 SiLU (the exact sigmoid, times y in float32), 6 GELU (float64)."""
    f = np.float32
    y = np.array(y, f)
    with np.errstate(all="ignore"):
        if act == 6:
            return gelu_value(y).astype(f)
        if act in (1, 5):       # sigmoid; SiLU: y times the float32 sigmoid
            s = (1 / (1 + np.exp(-y.astype(np.float64)))).astype(f)
            return s if act == 1 else y * s
        if act in (2, 3):
            t = y * f(alpha) + f(beta) if act == 2 else y * f(1 / 6) + f(0.5)
            t = np.minimum(np.maximum(t, f(0)), f(1))
            return t if act == 2 else y * t
        if act == 4:
            return np.where((y >= 0) | np.isnan(y), y, y * f(alpha))
    return y


def chain_rows(y, kinds, params, vecs, res):
    """The ops one after another as the layers run them: 0 affine, 1 residual add, 2 clip,
    3 activation (returns a new array)."""
    c = y.shape[1]
    none, no_res = np.zeros(0, np.float32), np.zeros((0, c), np.float32)
    for j, kind in enumerate(kinds):
        if kind == 0:
            y = epilogue_rows(y, vecs[j, 0], vecs[j, 1], no_res, -np.inf, np.inf)
        elif kind == 1:
            y = epilogue_rows(y, none, none, res, -np.inf, np.inf)
        elif kind == 2:
            y = epilogue_rows(y, none, none, no_res, params[j, 0], params[j, 1])
        else:
            y = activation_rows(y, int(params[j, 0]), params[j, 1], params[j, 2])
    return y


def run_chain(x0, x1, ints, floats):
    """A compiled run of blocked and depthwise convolutions, static-int8 convolutions, global means
    and channel ops (nncomp/kernels/conv_chain.py) from its table, with the twins above and in
    reference_spatial and reference_int8 (float64 convolutions, exact int8 products; returns the
    last value). Slots a row drops (DROP0, DROP1) become None after it, so a row that reads a
    dropped value fails here."""
    import ctypes

    from nncomp.kernels import conv_chain as K

    def array(address, shape, ctype=ctypes.c_float):
        size = int(np.prod(shape))
        if not size:
            return np.zeros(shape, np.float32)
        return np.ctypeslib.as_array((ctype * size).from_address(int(address))).reshape(shape)
    values = [x0, x1]
    for p, f in zip(ints, floats):
        src = values[p[K.IN]]
        n, h, wd, c = src.shape
        if p[K.KIND] == K.MEAN:
            values.append(global_mean_nhwc(src.reshape(n, h * wd, c)).reshape(n, 1, 1, c))
            _drop(values, p)
            continue
        if p[K.KIND] == K.CHANNEL:
            vec = values[p[K.RES]].reshape(n, c)
            y = channel_binary_nhwc(src.reshape(n, h * wd, c), vec, p[K.OP], p[K.REVERSE])
            values.append(np.asarray(y, np.float32).reshape(src.shape))
            _drop(values, p)
            continue
        if p[K.KIND] == K.INT8:
            values.append(_int8_row(array, p, f, src, values[p[K.RES]]))
            _drop(values, p)
            continue
        xp = np.pad(src, ((0, 0), (p[K.T], p[K.B]), (p[K.L], p[K.R]), (0, 0)))
        w = array(p[K.W_ADDR], (p[K.W_ROWS], p[K.W_COLS]))
        if p[K.SCALED]:
            w = per_image_weight(w, values[p[K.SCALE]].reshape(n, c))
        bias, scale, shift, post, post_shift = (array(p[K.V_ADDR + k], (p[K.V_ADDR + K.N_VECTORS + k],))
                                                for k in range(5))
        geo = (p[K.KH], p[K.KW], p[K.SH], p[K.SW], p[K.DH], p[K.DW])
        oh, ow, co, pool = p[K.OH], p[K.OW], p[K.CO], p[K.POOL]
        if p[K.WINOGRAD]:
            m = p[K.WINOGRAD]       # F(m x m, kh x kh)
            conv = winograd_nhwc(xp, w.reshape((m + p[K.KH] - 1) ** 2, -1, w.shape[1]), bias, oh, ow, co, m=m)
        elif p[K.KIND] == K.DEPTHWISE:
            conv = depthwise_blocked_nhwc(xp, w, bias, *geo, oh, ow, co)
        else:
            conv = conv_blocked_nhwc(xp, w, bias, *geo, oh, ow, co)
        if pool == 0:
            y = conv.astype(np.float32)
            res = values[p[K.RES]] if p[K.ADD] else np.zeros((0, co), np.float32)
            y = epilogue_rows(y.reshape(-1, co), scale[:co] if p[K.AFFINE] else np.zeros(0, np.float32),
                              shift[:co], res.reshape(-1, co), f[K.LO], f[K.HI])
            if p[K.ACT]:
                y = activation_rows(y, p[K.ACT], f[K.ALPHA], f[K.BETA])
        else:
            y = maxpool_nhwc(conv, pool, pool, pool, pool, 0, 0, 1, 1, oh // pool, ow // pool)
            y = y.astype(np.float32).reshape(-1, co)
            y = epilogue_rows(y, post, post_shift, np.zeros((0, co), np.float32), f[K.POST_LO], f[K.POST_HI])
            if p[K.POST_ACT]:
                y = activation_rows(y, p[K.POST_ACT], f[K.POST_ALPHA], f[K.POST_BETA])
            oh, ow = oh // pool, ow // pool
        values.append(y.reshape(src.shape[0], oh, ow, co).astype(np.float32))
        _drop(values, p)
    return values[-1]


def _int8_row(array, p, f, src, res_map):
    """An INT8 row of :func:`run_chain`: reference_int8's twin of the implicit GEMM with the row's
    parameters, then (pooled) the epilogue after the pool."""
    import ctypes

    from nncomp.kernels import conv_chain as K
    vec = [array(p[K.V_ADDR + k], (p[K.V_ADDR + K.N_VECTORS + k],)) for k in range(6)]
    zc = array(p[K.V_ADDR + 6], (p[K.V_ADDR + K.N_VECTORS + 6],), ctypes.c_int32)
    wp = array(p[K.W_ADDR], (p[K.W_ROWS], p[K.W_COLS] // 64, 64), ctypes.c_int8)
    n, co, oh, ow, q = src.shape[0], p[K.CO], p[K.OH], p[K.OW], max(1, p[K.POOL])
    res = res_map.reshape(-1, co) if p[K.ADD] else np.zeros((0, co), np.float32)
    bad, _, y = int8_conv_nhwc(src, f[K.SX], p[K.ZERO], p[K.T], p[K.L], (n, p[K.HPAD], p[K.WPAD], p[K.CPAD]),
                               p[K.KH], p[K.KW], p[K.SH], p[K.SW], p[K.DH], p[K.DW], oh, ow, wp, zc, vec[5], vec[0],
                               vec[1], vec[2], res, f[K.LO], f[K.HI], p[K.ACT], f[K.ALPHA], f[K.BETA], q, p[K.LINES])
    assert not bad
    if q > 1:
        y = epilogue_rows(y, vec[3], vec[4], np.zeros((0, co), np.float32), f[K.POST_LO], f[K.POST_HI])
        if p[K.POST_ACT]:
            y = activation_rows(y, p[K.POST_ACT], f[K.POST_ALPHA], f[K.POST_BETA])
    return np.asarray(y, np.float32).reshape(n, oh // q, ow // q, co)


def _drop(values, p):
    from nncomp.kernels import conv_chain as K
    for d in (p[K.DROP0], p[K.DROP1], p[K.DROP2]):
        if d >= 2:
            values[d] = None


# Twins of other kernel families live in tests/reference_<family>.py; they are gathered here so
# that ``reference.<kernel name>`` finds every twin.
for _path in sorted(pathlib.Path(__file__).parent.glob("reference_*.py")):
    _mod = importlib.import_module(_path.stem)
    globals().update({k: v for k, v in vars(_mod).items() if not k.startswith("_")})


def gemv_epilogue(w, x, perm, bias, scale, shift, res, lo, hi, act, alpha, beta):
    """``(1, co)``: ``w @ x[perm] + bias`` in float64 rounded to float32, then the epilogue and
    activation (``perm`` empty: x as it is)."""
    x = x[perm] if perm.shape[0] else x
    y = ((w.astype(np.float64) @ x.astype(np.float64)).astype(np.float32) + bias)[None]
    return activation_rows(epilogue_rows(y, scale, shift, res, lo, hi), act, alpha, beta) if act else \
        epilogue_rows(y, scale, shift, res, lo, hi)


def csr_gemv_epilogue(data, indices, indptr, x, perm, bias, scale, shift, res, lo, hi, act, alpha, beta):
    """``(1, co)``: the CSR product (float64, rounded to float32) plus the bias, then the epilogue
    and activation (``perm`` empty: x as it is; data the values, or ``(codes, cb)``)."""
    x = x[perm] if perm.shape[0] else x
    data = data[1][data[0]] if isinstance(data, tuple) else data
    y = (csr_matvec(data, indices, indptr, x).astype(np.float32) + bias)[None]
    return bias_epilogue_rows(y, np.zeros(0, np.float32), scale, shift, res, lo, hi, act, alpha, beta)


def stream_gemm(w, x, bias, scale, shift, res, lo, hi, act, alpha, beta):
    """``(n, co)``: ``x @ w.T`` in float64 rounded to float32, then the bias, the epilogue and the
    activation as bias_epilogue_rows runs them (the kernel's block size, parts and work arrays
    change nothing)."""
    y = (x.astype(np.float64) @ w.T.astype(np.float64)).astype(np.float32)
    return bias_epilogue_rows(y, bias, scale, shift, res, lo, hi, act, alpha, beta)


def few_gemm(w, x, bias, scale, shift, res, lo, hi, act, alpha, beta):
    """Twin of kernels.dense_few.few_gemm: the contract of :func:`stream_gemm` (the kernel's tile
    shapes and threads change nothing)."""
    return stream_gemm(w, x, bias, scale, shift, res, lo, hi, act, alpha, beta)


def bias_epilogue_rows(y, bias, scale, shift, res, lo, hi, act, alpha, beta):
    """``y + bias`` (float32; bias empty: none), then the epilogue and the activation, as the
    layers run them one by one (returns a new array)."""
    y = np.array(y, np.float32) + bias if bias.shape[0] else np.array(y, np.float32)
    y = epilogue_rows(y, scale, shift, res, lo, hi)
    return activation_rows(y, act, alpha, beta) if act else y


def gathered(x, perm):
    """Twin of kernels.sparse_small.gathered: ``x[perm]``, or x itself for an empty ``perm``."""
    return x[perm] if perm.shape[0] else x


def finish_row(y, scale, shift, res, lo, hi, act, alpha, beta):
    """Twin of kernels.sparse_small.finish_row: the epilogue and activation of rows ``y``."""
    return bias_epilogue_rows(y, np.zeros(0, np.float32), scale, shift, res, lo, hi, act, alpha, beta)


def codebook_gemv_epilogue(codes, cb, wide, x, perm, bias, scale, shift, res, lo, hi, act, alpha, beta):
    """``codebook_matmul_vpermps`` of ``x[perm]`` zero-padded to the codes' width (the contract's
    bits), plus the bias, then the epilogue and activation."""
    x = x[perm] if perm.shape[0] else x
    xs = np.zeros((1, codes.shape[1] * (1 if wide else 2)), np.float32)
    xs[0, :x.shape[0]] = x
    y = codebook_matmul_vpermps(codes, xs, cb, wide) + bias
    return bias_epilogue_rows(y, np.zeros(0, np.float32), scale, shift, res, lo, hi, act, alpha, beta)


def address(a):
    """The address of ``a``'s data (nncomp/kernels/aligned.py)."""
    return a.ctypes.data
