"""Conv2D with int8 weights and static (calibrated) activations as an implicit GEMM.

The input image is quantized once into a zero-point-padded copy of codes, then (in the same
kernel call) nncomp/kernels/int8_conv.py runs the VNNI product straight from it (one block product per kernel
row, no patch matrix), dequantizes each output line in L1 and applies the bias and the fused
epilogue as it stores. Where it does not apply (no VNNI, products the AMX tiles run faster, big
weights on short lines: :func:`fused_int8`) the caller keeps the chunked im2col path
(conv_algorithms.int8_patch_product); both give the same bits. The step is also a row of a compiled
run (nncomp/layers/conv_chain.py): a run of int8 and float32 convolutions is one call, without the
~5 us of Python a step costs at batch 1 (VGG-small, all-int8 static, batch 1 on the Xeon: 0.79-0.86x
the float32 engine's speed as separate steps, 1.03-1.14x in a run; development A/B).
"""
import numpy as np

from ..errors import InputError
from ..kernels import _jit, conv_chain as K, int8_amx as amx, int8_vnni as vnni
from ..kernels.int8_conv import int8_conv_nhwc, int8_conv_nhwc_parallel
from ..matrices.int8 import KBLOCK, PANEL, Int8Matrix, pack_panels
from .conv_chain import ChainStep, chain_tables
from .workspace import scratch

# Output lines per task: at least TASKS_PER_THREAD tasks a thread when there are that many lines
# (two threads stay balanced), at most MAX_LINES (a task's weight panels stay in L1/L2 anyway).
TASKS_PER_THREAD = 2
MAX_LINES = 64
# Every output line streams the whole weight: a weight over REREAD_MAX_BYTES on lines of fewer than
# REREAD_MIN_PIXELS pixels keeps the im2col path, whose row tiles reuse each weight panel longer.
# VNNI only (AMX off), Xeon, 2 threads: 512->512 3x3 at 14x14, batch 4 (2.4 MB of codes) 5.6 ms
# against 4.9; at 28x28 4.7 against 5.4; 256->512 at 14x14, batch 8 (1.2 MB) 5.3 against 6.7;
# 256->256 at 56x56 4.8 against 6.9; 64->64 at 56x56, batch 4 1.5 against 3.7.
REREAD_MAX_BYTES = 2 << 20
REREAD_MIN_PIXELS = 16
# AMX tiles (kernels/int8_conv_amx.py) from this many output pixels a call of at least 2 images (a
# single image keeps the VNNI kernel, whose steps join the compiled runs), on kernel rows of at least
# AMX_MIN_ROW codes (a tile row reads 64: a 1-channel 3x3 layer's 4 codes ran 1.2x slower on tiles).
AMX_MIN_PIXELS = 512
AMX_MIN_ROW = 32
_NONE = np.zeros(0, np.float32)


def fused_int8(layer, shape, n, oh, ow):
    """Whether Conv2D ``layer`` on ``n`` images of ``shape`` runs the implicit int8 kernel."""
    w = layer.weight
    if not (layer.groups == 1 and isinstance(w, Int8Matrix) and w.activations == "static" and vnni.HAVE_BLOCK):
        return False
    kh, kw = layer.kernel_size
    kp = kh * code_layout(layer)[1]
    amx_pays = amx.HAVE_AMX and amx.worth(n * oh * ow, w.code_width, w.n_out)
    rereads = w.packed.nbytes > REREAD_MAX_BYTES and ow < REREAD_MIN_PIXELS
    return kp <= KBLOCK and not amx_pays and not rereads


def packed_rows(layer):
    """Whether the implicit kernel reads ``layer``'s input unpadded, a kernel row's ``kw * c`` codes
    rounded up to 4 (fewer than 4 channels, undilated columns: kernels/int8_conv.py)."""
    return layer.in_channels < 4 and layer.dilation[1] == 1


def code_layout(layer):
    """``(cp, kwb)``: the padded input's channels and a kernel row's codes in the packed weight."""
    kw, c = layer.kernel_size[1], layer.in_channels
    if packed_rows(layer):
        return c, -(-kw * c // 4) * 4
    cp = -(-c // 4) * 4
    return cp, kw * cp


def _kernel_rows(layer, width):
    """The weight codes ``(n_out, kh, width)`` laid out (kh, kwb) (:func:`code_layout`: channels padded
    to a multiple of 4 with zero weights, or a kernel row's codes padded to 4), each kernel row
    padded with zeros to ``width >= kwb``."""
    w = layer.weight
    kh, kw = layer.kernel_size
    c = layer.in_channels
    cp, kwb = code_layout(layer)
    rows = np.zeros((w.n_out, kh, kwb), np.int8)
    if cp == c:
        rows[:, :, :kw * c] = w.q.reshape(w.n_out, kh, kw * c)
    else:
        rows.reshape(w.n_out, kh, kw, cp)[..., :c] = w.q.reshape(w.n_out, kh, kw, c)
    q = np.zeros((w.n_out, kh, width), np.int8)
    q[:, :, :kwb] = rows
    return q.reshape(w.n_out, -1)


def implicit_weights(layer):
    """``(wp, zc_unit)``: the weight codes (:func:`_kernel_rows`, rows of kwb codes) packed into
    panels; and the codes' row sums (int64)."""
    def make():
        return (pack_panels(_kernel_rows(layer, code_layout(layer)[1]), PANEL),
                layer.weight.q.sum(axis=1, dtype=np.int64))
    return layer.memo(("int8_implicit",), make)


def amx_weights(layer):
    """The implicit weights with each kernel row's codes padded with zeros to a multiple of 64
    (kernels/int8_conv_amx.py's tiles)."""
    def make():
        from ..kernels.int8_conv_amx import kw64
        return pack_panels(_kernel_rows(layer, kw64(code_layout(layer)[1])), PANEL)
    return layer.memo(("int8_amx_implicit",), make)


def uses_amx(layer, n, oh, ow):
    """Whether the implicit convolution runs on AMX tiles (kernels/int8_conv_amx.py): where the CPU
    and OS allow them, on undilated columns, as :data:`AMX_MIN_PIXELS` and :data:`AMX_MIN_ROW` say."""
    return (amx.HAVE_AMX and layer.dilation[1] == 1 and n >= 2 and n * oh * ow >= AMX_MIN_PIXELS
            and code_layout(layer)[1] >= AMX_MIN_ROW)


def lines_per_task(total, threads):
    """Output lines per task (see :data:`TASKS_PER_THREAD`)."""
    return max(1, min(MAX_LINES, -(-total // (TASKS_PER_THREAD * max(1, threads)))))


def int8_step(layer, shape, n, oh, ow, epilogue=None, pool=1):
    """The fused step ``(x[, res]) -> y`` for batches of ``n``, applying ``epilogue`` ``(scale, shift,
    add, lo, hi, act)`` (nncomp.layers.fused.epilogue_args) as it stores, or a ``pool`` x ``pool``
    max-pool of stride ``pool`` (floor mode); None where :func:`fused_int8` says no."""
    if not fused_int8(layer, shape, n, oh, ow):
        return None
    w = layer.weight
    h, wd, c = shape
    co = w.n_out
    kh, kw = layer.kernel_size
    sh, sw = layer.stride
    dh, dw = layer.dilation
    t, b, l, r = layer.padding
    cp, kwb = code_layout(layer)
    hp, wp_ = h + t + b, wd + l + r
    if packed_rows(layer):      # the last pixel reads kwb codes from its first column on
        wp_ = max(wp_, (ow - 1) * sw + -(-kwb // c))
    wp, colsum = implicit_weights(layer)
    tiles = uses_amx(layer, n, oh, ow)
    extra = 0
    if tiles:
        from ..kernels.int8_conv_amx import int8_conv_amx_nhwc, int8_conv_amx_nhwc_parallel, slack
        wp, extra = amx_weights(layer), slack(sw, cp, kwb)
    sx, z = np.float32(w.act_scale), int(w.act_zero)
    zc = (np.int64(z) * colsum).astype(np.int32)     # |z * colsum| <= 255 * 128 * 65536 < 2**31
    mul = np.ascontiguousarray(np.broadcast_to(sx * w.scale, (co,)), np.float32)
    bias = layer.bias if layer.bias is not None else np.zeros(co, np.float32)
    scale, shift, add, lo, hi, act = epilogue or (_NONE, _NONE, False, -np.inf, np.inf, None)
    code, alpha, beta = act or (0, 0.0, 0.0)
    geo = (kh, kw, sh, sw, dh, dw, oh, ow)
    tail = (np.float32(lo), np.float32(hi), code, np.float32(alpha), np.float32(beta))
    empty = np.zeros((0, co), np.float32)
    oh_q, ow_q = (oh // pool, ow // pool) if pool > 1 else (oh, ow)
    parallel = (n * oh * ow * co * kh * kw * cp >= _jit.PARALLEL_MIN_WORK and n * oh_q > 1   # lines: the tasks
                and _jit.num_threads() > 1)
    kern = int8_conv_nhwc_parallel if parallel else int8_conv_nhwc
    if tiles:
        kern = int8_conv_amx_nhwc_parallel if parallel else int8_conv_amx_nhwc
    lines = lines_per_task(n * oh_q, _jit.num_threads() if parallel else 1)

    def run(x, res=None):
        x = np.ascontiguousarray(x)
        size = n * hp * wp_ * cp
        xp = scratch("int8_padded", (size + extra,), vnni.CODE)[:size].reshape(n, hp, wp_, cp)
        out = np.empty((n * oh_q * ow_q, co), np.float32)
        if parallel:
            _jit.pool_ready()
        res2 = empty if res is None else np.ascontiguousarray(res, np.float32).reshape(n * oh * ow, co)
        if kern(x, sx, z, t, l, xp, *geo, wp, zc, mul, bias, scale, shift, res2, *tail, pool, lines, out):
            count = np.count_nonzero(~np.isfinite(x))
            raise InputError(f"int8 layer {w.shape}: input holds {count} NaN or Inf value(s); "
                             "quantized layers refuse them")
        return out.reshape(n, oh_q, ow_q, co)
    run.blas = False
    if parallel:
        _jit.pool_ready()
    if tiles:                   # the tiles' kernel is not compiled into the runs (CPUs without AMX)
        return run
    ints, floats = chain_tables()       # the same call as a row of a compiled run (layers/conv_chain.py)
    ints[[K.KH, K.KW, K.SH, K.SW, K.DH, K.DW, K.OH, K.OW, K.CO, K.T, K.L]] = kh, kw, sh, sw, dh, dw, oh, ow, co, t, l
    ints[[K.KIND, K.UNPADDED, K.POOL, K.ADD, K.ACT, K.PARALLEL]] = K.INT8, 1, pool if pool > 1 else 0, add, code, parallel
    ints[[K.ZERO, K.HPAD, K.WPAD, K.CPAD, K.LINES]] = z, hp, wp_, cp, lines
    floats[[K.LO, K.HI, K.ALPHA, K.BETA, K.SX]] = lo, hi, alpha, beta, sx
    run.chain = ChainStep(wp.reshape(wp.shape[0], -1), (bias, scale, shift, _NONE, _NONE, mul, zc), ints, floats,
                          label=f"int8 layer {w.shape}")
    return run
