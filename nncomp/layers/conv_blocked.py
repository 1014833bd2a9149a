"""The blocked convolution steps (nncomp/kernels/conv_blocked.py) and the Winograd ones (conv_winograd.py):
which layers they serve, their weight layouts, and the steps a plan runs (plain, with an epilogue, pooled)."""
import numba
import numpy as np

from ..kernels import _jit, aligned
from ..kernels.conv import conv_pad_nhwc, conv_pad_nhwc_parallel
from ..kernels.conv_blocked import (conv_blocked_nhwc, conv_blocked_nhwc_parallel, conv_blocked_pooled_nhwc,
                                    conv_blocked_pooled_nhwc_parallel, image_tiles, pack_panels, per_image_weight,
                                    tile_pixels)
from ..kernels.conv_depthwise import depthwise_blocked_nhwc, depthwise_blocked_nhwc_parallel
from ..kernels import conv_chain as K
from ..kernels.conv_winograd import (chunk_rows, filter_matrix, product_pixels, winograd_nhwc, winograd_nhwc_parallel,
                                     winograd_weight, work_sizes)
from ..kernels.decode import decode_winograd_t, decode_winograd_t_parallel
from ..kernels.isa import VECTOR_REGISTERS
from ..matrices import DenseMatrix
from .conv_chain import ChainStep, chain_tables
from .gemv import NO_EPILOGUE
from .workspace import scratch

# The blocked kernel streams a tile's weight columns once per tile, from L2 or L3. 2 threads (Zen 4,
# bench/results/amd-epyc-zen4/conv_algos.md): VGG-16's conv3_2 (2.4 MB) 725 ms against 732 for im2col
# at batch 32, 1.05x the shifted GEMM's time at batch 1; only tied at 9.4 MB (conv4_2: 23.2 against
# 24.3 and 22.5 ms at batch 1; conv5_2 at batch 32: 177 against 172): larger weights keep BLAS ...
BLOCKED_MAX_WEIGHT_BYTES = 4 << 20
# except 1 x 1 ones (and dense layers) over up to 512 inputs: 120 -> 18,710 (9 MB) at 2-256 samples
# 0.49-0.84x the time of BLAS, 512 -> 18,710 0.57-1.01x (Intel Xeon, 2 threads; kernels' SLICE_BYTES).
BLOCKED_WIDE_MAX_INPUTS = 512
SERIAL_FACTOR = 8     # the kernels go parallel at 8x _jit.PARALLEL_MIN_WORK multiply-adds, but the blocked
# convolution at 2x (262k). Batch 1, pool awake, Intel Xeon, parallel over serial time: dense 0.55-0.80x at
# 0.45-1.4 M multiply-adds, 0.74-0.97x at 0.2-0.4 M, 1.0-1.3x at 75-100k; depthwise 0.75-0.78x at 314-452k,
# 0.91-0.99x at 169-226k, 1.4-1.7x at 28-56k (MobileNetV3-Small at batch 1: 1.29x -> 1.11x ORT's time).
BLOCKED_SERIAL_FACTOR = 2
# Winograd serves 3x3 and 5x5 stride-1 layers with at least this many input channels (9x9x5->20 ran 0.4-0.6x
# the blocked kernel's speed) and a transformed weight (F(2x2, 3x3) 16/9 the layer's, F(4x4, 3x3) 4x, F(2x2,
# 5x5) 1.44x) up to WINOGRAD_MAX_WEIGHT_BYTES. F(2x2, 3x3) at 2 threads (Zen 4, conv_algos): 32-64 channels at
# 7x7-28x28 1.1-2.4x the blocked kernel's speed at batch 1 and 32, VGG-16's conv3_2 2.1-2.4x, conv4_2 at batch
# 32 0.97-1.5x (BLAS). A weight above BLOCKED_MAX_WEIGHT_BYTES streams from L3 or DRAM on every call: there it
# needs WINOGRAD_MIN_PIXELS output pixels per call to pay (at batch 1 conv5_2, 14x14, ran 6.5-17 ms against
# 6.0-8.9 for im2col). F(2x2, 5x5) (LeNet-5's 12x12 20->50 pooled, Zen 3): 0.71-0.75x the blocked kernel's
# time at 8 and 64 images, 1.0x at 1.
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MAX_WEIGHT_BYTES = 32 << 20
WINOGRAD_MIN_PIXELS = 1024
# A compressed weight runs Winograd on maps of at least this many output pixels per sample: its
# filter transform (~100 flops per channel pair, every call) then costs a few percent of the
# products. Per sample, not per call, so that a model computes the same bits whichever way its run
# mode splits the batch.
WINOGRAD_DECODED_MIN_PIXELS = 400
_NONE = np.zeros(0, np.float32)


def _padded_channels(layer):
    """``(cp, cop)``: the input and output channels rounded up to 16 (the kernels' vectors)."""
    return tuple(-(-k // 16) * 16 for k in (layer.in_channels, layer.out_channels))


def blocked_eligible(layer):
    """Whether ``layer`` may run the blocked kernels: ungrouped weights up to
    :data:`BLOCKED_MAX_WEIGHT_BYTES` as float32, dense (the layer then keeps its padded transposed
    weight) or in a format with a decoder (codebook, CSR, CSR + codebook, int8 with float
    activations: decoded into a work buffer on every call, :func:`blocked_weight_source`), or a
    depthwise layer without a channel multiplier."""
    cop = _padded_channels(layer)[1]
    if layer.depthwise:
        return layer.out_channels == layer.in_channels
    return (layer.groups == 1 and (isinstance(layer.weight, DenseMatrix) or layer.weight.decoder() is not None)
            and (4 * layer.weight.n_in * cop <= BLOCKED_MAX_WEIGHT_BYTES
                 or layer.kernel_size == (1, 1) and layer.weight.n_in <= BLOCKED_WIDE_MAX_INPUTS))


def winograd_eligible(layer):
    """Whether ``layer`` can run Winograd F(2x2, r x r): an ungrouped 3x3 or 5x5 convolution, stride 1, no
    dilation, at least :data:`WINOGRAD_MIN_CHANNELS` input channels and a transformed weight up to
    :data:`WINOGRAD_MAX_WEIGHT_BYTES`, its weight dense or decodable as for the blocked kernel
    (then decoded and transformed on every call: :func:`winograd_pays`)."""
    dense = isinstance(layer.weight, DenseMatrix)
    return (layer.groups == 1 and layer.kernel_size in ((3, 3), (5, 5)) and layer.stride == layer.dilation == (1, 1)
            and layer.in_channels >= WINOGRAD_MIN_CHANNELS and _winograd_bytes(layer) <= WINOGRAD_MAX_WEIGHT_BYTES
            and (dense or blocked_eligible(layer)))


def winograd4_eligible(layer):
    """Whether ``layer`` can run Winograd F(4x4, 3x3) too: 3x3, its weight up to the bound."""
    return layer.kernel_size == (3, 3) and winograd_eligible(layer) and _winograd_bytes(layer, 4) <= WINOGRAD_MAX_WEIGHT_BYTES


def _winograd_bytes(layer, m=2):
    """Bytes of the F(m x m, r x r) weight: (m + r - 1)**2 positions x channels in x out (rounded up)."""
    cp, cop = _padded_channels(layer)
    return 4 * (m + layer.kernel_size[0] - 1) ** 2 * cp * cop


def winograd_pays(layer, n, oh, ow):
    """Whether a Winograd-eligible ``layer`` runs Winograd on ``n`` samples of ``oh x ow`` outputs:
    always with a cache-sized dense weight, else from :data:`WINOGRAD_MIN_PIXELS` output pixels a
    call; a compressed weight from :data:`WINOGRAD_DECODED_MIN_PIXELS` a sample."""
    if not isinstance(layer.weight, DenseMatrix):
        return oh * ow >= WINOGRAD_DECODED_MIN_PIXELS
    return _winograd_bytes(layer) <= BLOCKED_MAX_WEIGHT_BYTES or n * oh * ow >= WINOGRAD_MIN_PIXELS


def winograd_weights(layer, m=2):
    """The F(m x m, r x r) kernel's weight, ``((m + r - 1)**2 * cp, cop)`` (nncomp.kernels.conv_winograd.
    winograd_weight as rows, which the compiled runs take); computed on first use and kept by the
    layer (None for a compressed weight: :func:`winograd_weight_source`)."""
    if not isinstance(layer.weight, DenseMatrix):
        return None

    def make():
        c, co, k = layer.in_channels, layer.out_channels, layer.kernel_size[0]
        wt = winograd_weight(layer.weight.w.reshape(co, k, k, c).transpose(0, 3, 1, 2), m)
        return wt.reshape(-1, wt.shape[2])
    return layer.memo(("winograd_weight", m), make)


def winograd_weight_source(layer, m=2):
    """``get()`` -> the F(m x m, r x r) kernel's ``(span**2, cp, cop)`` weight: the one the layer
    keeps, or its compressed weight decoded and transformed (nncomp/kernels/decode.py) into work
    buffers, on every call."""
    wt = winograd_weights(layer, m)
    cp, cop = _padded_channels(layer)
    if wt is not None:
        wt3 = wt.reshape(-1, cp, cop)
        return lambda: wt3
    decoded = blocked_weight_source(layer)
    k = layer.kernel_size[0]
    span, g_mat = (m + k - 1) ** 2, filter_matrix(m, k)
    kern = _jit.pick((decode_winograd_t, decode_winograd_t_parallel), span * cp * cop // SERIAL_FACTOR)

    def get():
        out = scratch(f"winograd{m}_{k}_decoded", (span, cp, cop))
        kern(decoded(), layer.in_channels, g_mat, out)
        return out
    return get


def blocked_weights(layer):
    """``(w, bias)`` in the blocked kernel's layout: ``(k, cop)`` and ``(cop,)``, zero-padded to
    ``cop``, the output channels rounded up to 16; ``w`` None for a compressed weight (decoded call
    by call)."""
    co, k = layer.out_channels, layer.weight.n_in
    cop = _padded_channels(layer)[1]
    if not isinstance(layer.weight, DenseMatrix):
        return None, _padded_bias(layer, cop)
    w = aligned.zeros((k, cop))
    w[:, :co] = layer.weight.w.T
    return w, _padded_bias(layer, cop)


def blocked_panels(layer, nvec):
    """The dense blocked weight in column panels of ``16 * nvec`` (nncomp/kernels/conv_blocked.py),
    kept by the layer beside ``weight_b`` (its own where it is one panel; None if compressed)."""
    w = layer.weight_b[0]
    one = w is None or w.shape[1] <= 16 * nvec
    return w if one else layer.memo(("weight_panels", nvec), lambda: pack_panels(w, 16 * nvec))


def blocked_weight_source(layer, nvec=None):
    """``get()`` -> the blocked kernel's weight: the dense one the layer keeps (with ``nvec``: :func:`blocked_panels`),
    or its compressed weight decoded (kernels/decode.py) into a work buffer on every call, ``(k, cop)``."""
    w, bias = layer.weight_b
    if w is not None:
        w = w if nvec is None else blocked_panels(layer, nvec)
        return lambda: w
    (serial, parallel), args = layer.weight.decoder()
    shape = (layer.weight.n_in, bias.shape[0])
    kern = _jit.pick((serial, parallel), shape[0] * shape[1] // SERIAL_FACTOR)

    def get():
        out = scratch("decoded_weight", shape)
        kern(*args, out)
        return out
    return get


def _padded_bias(layer, cop):
    """The layer's bias (zeros for none) zero-padded to ``cop`` outputs."""
    bias = np.zeros(cop, np.float32)
    if layer.bias is not None:
        bias[:layer.out_channels] = layer.bias
    return bias


def _blocked_setup(layer, shape, n, oh, ow, kernels, factor=SERIAL_FACTOR):
    """What the blocked and Winograd steps need: ``(padded, kern, nvec, pmax, geo)``. ``padded(x)``
    is the input zero-padded into a per-thread buffer (``x`` itself when the layer has no padding);
    ``kern`` the serial or parallel build of ``kernels`` (parallel from ``factor`` x
    _jit.PARALLEL_MIN_WORK multiply-adds); tiles as wide as the CPU's registers allow; ``geo`` the
    kernel size, stride and dilation."""
    h, wd, c = shape
    t, b, l, r = layer.padding
    # AVX2 (16 registers): dense tiles and Winograd products of one vector (tile_vectors,
    # kernels/conv_winograd.AVX2_PRODUCT_PIXELS); depthwise tiles keep the widest
    nvec = min(-(-layer.out_channels // 16), 4) if VECTOR_REGISTERS >= 32 or layer.depthwise else 1
    macs = n * oh * ow * layer.out_channels * layer.weight.n_in
    kern = _jit.pick(kernels, macs // factor)
    pad = _jit.pick((conv_pad_nhwc, conv_pad_nhwc_parallel), n * (h + t + b) * (wd + l + r) * c)

    def padded(x):
        if (t, b, l, r) == (0, 0, 0, 0):
            return np.ascontiguousarray(x)
        xp = scratch("blocked_input", (n, h + t + b, wd + l + r, c))
        pad(x, 0, t, l, xp)
        return xp
    padded.parallel = pad is conv_pad_nhwc_parallel
    return padded, kern, nvec, tile_pixels(nvec, depthwise=layer.depthwise), (*layer.kernel_size, *layer.stride,
                                                                              *layer.dilation)


def _chain_spec(layer, kern, parallel_kern, padded, w, vectors, nvec, pmax, geo, out_shape, **fields):
    """The step's row of a compiled run (nncomp/kernels/conv_chain.py): its weight, vectors and
    integer and float parameters; the run fills in the slots it reads."""
    ints, floats = chain_tables()
    ints[[K.KH, K.KW, K.SH, K.SW, K.DH, K.DW]] = geo
    ints[[K.T, K.B, K.L, K.R]] = layer.padding
    ints[[K.OH, K.OW, K.CO]] = out_shape
    ints[K.NVEC], ints[K.PMAX], ints[K.PARALLEL] = nvec, pmax, kern is parallel_kern
    ints[K.PAD_PARALLEL] = padded.parallel
    for name, value in fields.items():
        if name.isupper():
            ints[getattr(K, name)] = value
        else:
            floats[getattr(K, name.upper())] = value
    return ChainStep(w, tuple(vectors) + (_NONE,) * (K.N_VECTORS - len(vectors)), ints, floats)


def _epilogue_vectors(epilogue, co, cop):
    """``(scale, shift, affine, add, lo, hi, code, alpha, beta)`` of an ``epilogue`` for the kernels."""
    scale, shift, add, lo, hi, act = epilogue or NO_EPILOGUE
    code, alpha, beta = act or (0, np.float32(0.0), np.float32(0.0))
    affine = scale is not None and scale.shape[0] > 0
    if affine:
        scale, shift = (np.concatenate([a, np.zeros(cop - co, np.float32)]) for a in (scale, shift))
    else:
        scale = shift = np.zeros(cop, np.float32)
    return scale, shift, affine, add, np.float32(lo), np.float32(hi), code, alpha, beta


def winograd_step(layer, shape, n, oh, ow, epilogue=None, pool=0, m=2):
    """The Winograd F(m x m, r x r) step for batches of ``n``, with an ``epilogue`` as
    :func:`blocked_step` takes, or with a ``pool`` (2) x 2 max-pool instead."""
    padded, kern, nvec, _, geo = _blocked_setup(layer, shape, n, oh, ow, (winograd_nhwc, winograd_nhwc_parallel))
    pmax = product_pixels(nvec)
    wt = winograd_weights(layer, m)
    weight = winograd_weight_source(layer, m)
    co = layer.out_channels
    cp, cop = _padded_channels(layer)
    bias = _padded_bias(layer, cop)
    scale, shift, affine, add, lo, hi, code, alpha, beta = _epilogue_vectors(epilogue, co, cop)
    threads = numba.get_num_threads()
    k = layer.kernel_size[0]
    rows = chunk_rows(oh, ow, n, threads if kern is winograd_nhwc_parallel else 1, m, k)
    us, ms = work_sizes(oh, ow, cp, cop, rows, m, k)
    shape_out = (n, oh // pool, ow // pool, co) if pool else (n, oh, ow, co)

    pads = layer.padding        # read as zeros by the kernel: no padded copy

    def run(x, res=None):
        out = aligned.empty(shape_out)
        res = out if res is None else np.ascontiguousarray(res)
        kern(np.ascontiguousarray(x), *pads, weight(), bias, scale, shift, affine, res, add, lo, hi, code, alpha,
             beta, nvec, pmax, rows, scratch("winograd_u", (threads, us)), scratch("winograd_m", (threads, ms)), pool,
             out, m)
        return out
    if wt is not None:
        run.chain = _chain_spec(layer, kern, winograd_nhwc_parallel, padded, wt, (bias, scale, shift, _NONE, _NONE),
                                nvec, pmax, geo, (oh, ow, co), AFFINE=affine, ADD=add, ACT=code, lo=lo, hi=hi,
                                alpha=alpha, beta=beta, POOL=pool, THREADS=threads, WINOGRAD=m, CHUNK=rows)
    run.blas = False
    return run


def blocked_step(layer, shape, n, oh, ow, epilogue=None, scaled=None):
    """The blocked-kernel step for batches of ``n``. With an ``epilogue`` ``(scale, shift, add, lo,
    hi, act)`` (nncomp.layers.fused.epilogue_args) the kernel applies it as it stores each tile; the
    step then reads the residual as a second input. ``scaled`` (a dense weight, not depthwise): the
    step ``(map, s[, res])`` (``(s, map[, res])`` when ``scaled == "vector first"``) convolves
    ``map * s``, ``s`` one value per sample and input channel ``(n, 1, 1, c)``, as the map with
    each sample's weight rows scaled (kernels/conv_blocked.per_image_weight): no scaled map is
    written."""
    kernels = ((depthwise_blocked_nhwc, depthwise_blocked_nhwc_parallel) if layer.depthwise
               else (conv_blocked_nhwc, conv_blocked_nhwc_parallel))
    padded, kern, nvec, pmax, geo = _blocked_setup(layer, shape, n, oh, ow, kernels, BLOCKED_SERIAL_FACTOR)
    if not layer.depthwise:
        strided_1x1 = layer.in_channels if layer.kernel_size == (1, 1) and layer.stride != (1, 1) else 0
        nvec = tile_vectors(layer.out_channels, n, ow, strided_1x1=strided_1x1, pixels=n * oh * ow)
        pmax = tile_pixels(nvec)
    panels = scaled is None and not layer.depthwise     # (a weight per image is made from weight_b's columns)
    w, bias = blocked_panels(layer, nvec) if panels else layer.weight_b[0], layer.weight_b[1]
    weight = blocked_weight_source(layer, nvec if panels else None)
    co, cop = layer.out_channels, bias.shape[0]
    scale, shift, affine, add, lo, hi, code, alpha, beta = _epilogue_vectors(epilogue, co, cop)

    pads = layer.padding
    unpadded = reads_padding(layer)

    def conv(x, wb, res):
        out = aligned.empty((n, oh, ow, co))
        res = out if res is None else np.ascontiguousarray(res)
        xp, pt, pl = (np.ascontiguousarray(x), pads[0], pads[2]) if unpadded else (padded(x), 0, 0)
        kern(xp, pt, pl, wb, bias, *geo, nvec, pmax, scale, shift, affine, res, add, lo, hi, code, alpha, beta, out)
        return out
    if scaled is None:
        def run(x, res=None):
            return conv(x, weight(), res)
    else:
        rows, first = w.shape[0], scaled != "vector first"

        def run(a, b, res=None):
            x, vec = (a, b) if first else (b, a)
            ws = scratch("scaled_weight", (n * rows, cop))
            per_image_weight(w, np.ascontiguousarray(vec).reshape(n, -1), ws)
            return conv(x, ws, res)
    if w is not None:       # compiled runs take fixed weights
        run.chain = _chain_spec(layer, kern, kernels[1], padded, w, (bias, scale, shift, _NONE, _NONE),
                                nvec, pmax, geo, (oh, ow, co), AFFINE=affine, ADD=add, ACT=code, lo=lo, hi=hi,
                                alpha=alpha, beta=beta, UNPADDED=unpadded,
                                KIND=K.DEPTHWISE if layer.depthwise else K.CONV, SCALED=scaled is not None,
                                REVERSE=scaled == "vector first")
    run.blas = False
    return run


def tile_vectors(co, n, ow, registers=None, strided_1x1=0, pixels=None):
    """The vectors of 16 output channels (1-4) of the dense blocked kernel's tiles for ``co`` channels
    and ``n`` images of ``ow``-pixel lines: the width whose tiles (along lines, or across images where
    the kernel takes those) hold the most accumulators on average, each tile weighted by its outputs;
    the widest on a tie. Always 4 (where co allows) left short lines in small tiles: 96 channels on
    7-pixel lines as 4 + 3 pixels x 4 + 2 vectors (12 accumulators on average) where 3 vectors make
    7 x 3 + 7 x 3 (21). One thread, Intel Xeon, 1 x 1 convolutions: 7 x 7 x 576 -> 96 71 against 50-51
    GMAC/s, 96 -> 576 67-71 against 53-59, 14 x 14 40 -> 240 59 against 57, 28 x 28 24 -> 88 50 both.
    ``registers``: as :func:`~nncomp.kernels.conv_tiles.tile_pixels` (default: this CPU's). With 16
    (AVX2), always 1 vector of 6 pixels (12 ymm accumulators): one thread, AMD EPYC Zen 3, round-robin
    A/B, it was the fastest or within 5% on 3 x 3 and 5 x 5 convolutions of 16-64 channels on 7-28
    pixel lines (7 x 7 64 -> 64, 16 images: 30.4 GMAC/s against 22.7 for 2 x 2 and 21.7 for 4 x 1),
    except a 1-channel input (6.8 against 8.4). ``strided_1x1``: the input channels of a 1 x 1
    convolution with a stride (0: another kernel): with 16 registers and at most 32 input channels
    every vector of ``co`` in one tile (up to 4), the input value a tile broadcasts serving all
    of them (one thread, Zen 3, 1 x 1 stride 2, 31 alternating rounds: 32 images 28 x 28 16 -> 32
    0.87x the time of 1 vector, 14 x 14 32 -> 64 0.79x, 8 images 56 x 56 24 -> 48 0.90x; from 64
    channels up 1 vector stays fastest: 64 -> 128 0.99x, 128 -> 256 1.10x with 2). ``pixels``: the
    output's pixels over all images; with 16 registers one pixel (an SE block's 1 x 1 convolutions
    at batch 1, a mat-vec) takes every vector of ``co`` too, 1 vector's 2 accumulators waiting on
    each multiply-add's latency (one thread, Zen 3, 31 rounds: 144 -> 576 0.79x the time, 576 -> 144
    0.86x, 64 -> 240 0.73x, 240 -> 64 0.81x, 24 -> 96 0.93x; at 8 pixels 576 -> 144 3-4 vectors
    were slower, 1.31-1.36x)."""
    registers = VECTOR_REGISTERS if registers is None else registers
    if registers < 32:
        return min(4, -(-co // 16)) if 0 < strided_1x1 <= 32 or pixels == 1 else 1
    vectors = -(-co // 16)
    best, score = 1, -1.0
    for nvec in range(min(vectors, 4), 0, -1):
        pmax = tile_pixels(nvec, registers)
        if image_tiles(n, ow, nvec, pmax):
            groups = -(-n // pmax)
            pixels = [n * (g + 1) // groups - n * g // groups for g in range(groups)]
        else:
            p0 = -(-ow // -(-ow // pmax))
            pixels = [p0] * (ow // p0) + ([ow % p0] if ow % p0 else [])
        sizes = [p * v for p in pixels for v in [nvec] * (vectors // nvec) + ([vectors % nvec] if vectors % nvec else [])]
        mean = sum(a * a for a in sizes) / sum(sizes)
        if mean > score + 1e-9:
            best, score = nvec, mean
    return best


def reads_padding(layer):
    """Whether the blocked kernel reads ``layer``'s padding as zeros (no padded copy of its input):
    where every window reaches the input (each padding under the kernel's size, no dilation). The
    windows at a line's ends are then tiles of one pixel over the taps inside (across images they
    cost nothing extra). One thread, batch 1, Intel Xeon, A/B in one process: never slower than the
    padded copy and the kernel (0.94-1.02x from 7 x 7 to 112 x 112 lines of 16-64 channels), and
    for few input channels, whose copy moves a pixel's values one by one, 0.52x (a 3-channel stem,
    3 x 3 stride 2 over 224 x 224: 118 against 227 us) to 0.81x (1 channel, 28 x 28)."""
    (kh, kw), (t, b, l, r) = layer.kernel_size, layer.padding
    return t + b + l + r > 0 and layer.dilation == (1, 1) and max(t, b) < kh and max(l, r) < kw


def blocked_pooled_step(layer, shape, n, oh, ow, p):
    """The blocked kernel and its p x p max-pool in one step for batches of ``n``."""
    kernels = (conv_blocked_pooled_nhwc, conv_blocked_pooled_nhwc_parallel)
    padded, kern, nvec, pmax, geo = _blocked_setup(layer, shape, n, oh, ow, kernels)
    w, bias = blocked_panels(layer, nvec), layer.weight_b[1]
    weight = blocked_weight_source(layer, nvec)
    co = layer.out_channels
    threads = numba.get_num_threads()

    def run(x):
        out = aligned.empty((n, oh // p, ow // p, co))
        lines = scratch("blocked_lines", (threads, p, ow, co))
        kern(padded(x), weight(), bias, *geo, nvec, pmax, p, lines, out)
        return out
    if w is not None:
        run.chain = _chain_spec(layer, kern, conv_blocked_pooled_nhwc_parallel, padded, w,
                                (bias, _NONE, _NONE, _NONE, _NONE), nvec, pmax, geo, (oh, ow, co), POOL=p,
                                THREADS=threads)
    run.blas = False
    return run
