"""How a Conv2D computes: the algorithm chosen per layer shape, over NHWC float32 images.

- **shifted GEMM** (stride 1, ungrouped, dense weights, enough channels): no patch matrix at all.
  The input is zero-padded once into a flat ``(rows, c)`` buffer whose rows are the padded image's
  pixels; for kernel tap ``(i, j)`` the input window of every output pixel is that buffer shifted
  by ``i*dh*Wp + j*dw`` rows, a contiguous ``(m, c)`` slice, so the convolution is ``kh*kw`` BLAS
  products accumulating into one output (``beta = 1``, nncomp/kernels/blas.py). The output is
  computed on the padded width (``Wp`` columns per line, ``Wp - ow`` of them discarded) and cropped
  while the bias is added. Against im2col it saves writing and reading a patch matrix ``kh*kw``
  times the input's size.
- **direct** (few input channels, e.g. a first layer over 1 or 3 channels): each output pixel sums
  its taps' weight rows; im2col there feeds BLAS a product with ``k <= 75``, which it runs slowly.
- **blocked**: a register-blocked direct convolution (nncomp/kernels/conv_blocked.py): tiles of
  output pixels x 16-channel vectors accumulate in vector registers over each kernel row's
  contiguous NHWC run, on a zero-padded copy of the input: 1.2-1.9x faster than im2col + BLAS on
  LeNet-5 and 16-64-channel 3x3 layers (Zen 4, conv_algos.md), for weights up to 4 MB.
  A depthwise layer runs the same tiles with each channel's own input loaded as a vector (3-10x
  faster than the scalar kernel below on MobileNet shapes, development run).
- **winograd**, **winograd4**: Winograd F(2x2, 3x3) and F(4x4, 3x3) (nncomp/kernels/conv_winograd.py,
  winograd_tiles.py) for 3x3 stride-1 layers of 16+ input channels (16 and 36 multiplies per 4 and 16
  outputs and channel pair instead of 36 and 144), F(2x2, 5x5) for 5x5 ones (**winograd**: 36 instead
  of 100). F(2x2, 3x3) on Zen 4: 32-64 channels 1.1-2.4x the next best's speed; measured per CPU.
- **depthwise**: a direct kernel over one input channel per group (any channel multiplier).
- **compressed weights** (codebook, CSR, CSR + codebook, int8 with float activations) run the
  blocked kernel, or Winograd from WINOGRAD_DECODED_MIN_PIXELS output pixels a sample, on their weight
  decoded into a per-thread work buffer right before the kernel (nncomp/kernels/decode.py): the
  model keeps only the compressed arrays (whole compressed CNNs 0.73-1.04x the dense engine's speed
  at batch 64, 0.34-1.14x at batch 1, against 0.07-0.78x with im2col; Zen 4, 2 threads).
  int8 with static activations runs as an implicit GEMM over its quantized input, the epilogue or
  max-pool in the same kernel (nncomp/layers/conv_int8.py); dynamic activations keep im2col and the
  integer product.
- **im2col** (everything else: strides, groups, int8 activations): the patch matrix, built in
  bounded chunks of output lines, times the weight in whatever format it is stored. With dense
  weights the patches and the product run fused in one kernel (nncomp/kernels/conv_gemm.py): each
  thread builds a block of patches in its own buffer and multiplies it with one BLAS call.
"""
import numba
import numpy as np

from ..errors import NncompError
from ..kernels import _jit, aligned, blas
from ..kernels.blas import gemm_nt, matmul_nt
from ..kernels.conv import (conv_crop_bias_nhwc, conv_crop_bias_nhwc_parallel, conv_direct_nhwc,
                           conv_direct_nhwc_parallel, conv_pad_nhwc, conv_pad_nhwc_parallel,
                           depthwise_conv_nhwc, depthwise_conv_nhwc_parallel, im2col_nhwc,
                           im2col_nhwc_parallel, im2col_u8_nhwc, im2col_u8_nhwc_parallel)
from ..kernels.conv_gemm import im2col_gemm_nhwc, im2col_gemm_nhwc_parallel
from ..matrices import DenseMatrix
from ..matrices.int8 import Int8Matrix
from .conv_int8 import int8_step
from .conv_tuning import measured_choice
from .conv_blocked import (blocked_eligible, blocked_pooled_step, blocked_step, winograd4_eligible, winograd_eligible,
                           winograd_pays, winograd_step)
from .workspace import scratch

# im2col works in chunks of output lines whose patch buffer stays under this many bytes.
IM2COL_CHUNK_BYTES = 8 << 20
# The fused im2col + BLAS kernel: each thread's patch block stays under this many bytes (at least
# one output line), and the work is split over the threads from this many multiply-adds (LeNet-5
# conv1 at batch 1, 288k: 17.7 us in one thread, 10.3 in two).
FUSED_BLOCK_BYTES = IM2COL_CHUNK_BYTES // 2
FUSED_SPLIT_MIN_MACS = 1 << 17
# With a max-pool fused in, each block's product (pooled from the thread's buffer) stays under this.
FUSED_POOL_BYTES = 256 << 10
# The shifted GEMM works on chunks of whole images whose padded input and output buffers stay
# under this many bytes (at least one image).
SHIFTED_CHUNK_BYTES = 16 << 20
# Which algorithm serves which shape: measured by bench/conv_algos.py (bench/results/conv_algos.md).
# The shifted GEMM computes hp*wp / (oh*ow) times the useful output (the padding columns and
# lines); it pays when that waste is small and the layer is big enough for kh*kw BLAS calls instead
# of one to be amortized, and not so big that the fused im2col's cache-sized blocks win (above 2^33
# multiply-adds, VGG-16's conv3_2-conv5_2 and factorized pairs at batch 32, im2col was faster in 4 of 5).
# The direct kernel beats the unfused im2col + BLAS when both k and c_out are small; the fused
# kernel beats it (LeNet-5 conv1: 18 us against 30 at batch 1, 0.26 ms against 0.52 at batch 32).
SHIFTED_MIN_CHANNELS = 16
SHIFTED_MAX_WASTE = 1.2
SHIFTED_MIN_MACS = 1 << 25
SHIFTED_MAX_MACS = 1 << 33
DIRECT_MAX_PATCH = 75
DIRECT_MAX_OUT = 32
DIRECT_MIN_MACS = 1 << 21   # below this (LeNet-5 conv1 at batch 1: 288k MACs) im2col + BLAS is faster
DIRECT_SERIAL_FACTOR = 8    # the direct kernel goes parallel at 8x _jit.PARALLEL_MIN_WORK
ALGORITHMS = ("im2col", "shifted", "direct", "depthwise", "blocked", "winograd", "winograd4")
WINOGRAD_TILES = {"winograd": 2, "winograd4": 4}     # the m of each Winograd F(m x m, 3x3) algorithm


def direct_eligible(layer):
    """Whether ``layer`` may run the direct kernel (it then keeps its transposed weight)."""
    kh, kw = layer.kernel_size
    return (layer.groups == 1 and isinstance(layer.weight, DenseMatrix)
            and kh * kw * layer.in_channels <= DIRECT_MAX_PATCH and layer.out_channels <= DIRECT_MAX_OUT)


def algorithms_for(layer):
    """The algorithms that can compute ``layer``, the default one first (computed)."""
    if layer.depthwise:
        return ("blocked", "depthwise") if blocked_eligible(layer) else ("depthwise",)
    if layer.groups > 1:
        return ("im2col",)
    found = ["im2col"]
    if layer.stride == (1, 1) and isinstance(layer.weight, DenseMatrix):
        found.append("shifted")
    if direct_eligible(layer):
        found.insert(0, "direct")
    if blocked_eligible(layer):
        found.insert(0, "blocked")
    if winograd_eligible(layer):
        found[:0] = ["winograd", "winograd4"] if winograd4_eligible(layer) else ["winograd"]
    return tuple(found)


def choose(layer, shape, n):
    """The algorithm Conv2D ``layer`` uses on ``n`` samples of ``shape`` (h, w, c): :func:`rule`'s, or
    where that is Winograd or blocked, the faster of them on this CPU (nncomp/layers/conv_tuning.py)."""
    return measured_choice(layer, shape, n, rule(layer, shape, n), prepare)


def rule(layer, shape, n):
    """The built-in choice of algorithm for Conv2D ``layer`` on ``n`` samples of ``shape`` (h, w, c)."""
    can = layer.algorithms
    if can[0] == "winograd":
        oh, ow, _ = layer.shape_of(shape)
        if winograd_pays(layer, n, oh, ow):
            return can[1] if can[1] == "winograd4" else "winograd"
        can = tuple(a for a in can[1:] if a != "winograd4")
    if can[0] == "blocked":
        return "blocked"
    if can[0] == "direct":
        oh, ow, co = layer.shape_of(shape)
        big = n * oh * ow * co * layer.weight.n_in >= DIRECT_MIN_MACS
        return "direct" if big and not fused_kernel() else "im2col"
    if "shifted" in can and can[0] == "im2col" and shape[2] >= SHIFTED_MIN_CHANNELS:
        h, w, c = shape
        oh, ow, co = layer.shape_of(shape)
        t, b, l, r = layer.padding
        waste = (h + t + b) * (w + l + r) / (oh * ow)
        if (layer.kernel_size != (1, 1) and waste <= SHIFTED_MAX_WASTE
                and SHIFTED_MIN_MACS <= n * oh * ow * co * layer.weight.n_in < SHIFTED_MAX_MACS):
            return "shifted"
    return can[0]


def forward(layer, x, algorithm=None):
    """Run Conv2D ``layer`` on NHWC float32 ``x`` (n, h, w, c) -> (n, oh, ow, c_out).

    ``algorithm`` (one of :data:`ALGORITHMS`; default :func:`choose`) is for tests and benchmarks
    and must be one of ``layer.algorithms``.
    """
    n, h, w, c = x.shape
    return prepare(layer, (h, w, c), n, algorithm)(x)


def prepare_epilogue(layer, shape, n, epilogue):
    """The step ``(x[, res]) -> y`` computing Conv2D ``layer`` and the in-place ``epilogue``
    ``(scale, shift, add, lo, hi, act)`` in its kernel, or None where the chosen algorithm cannot."""
    algorithm = choose(layer, shape, n)
    oh, ow, _ = layer.shape_of(shape)
    if algorithm == "im2col":
        return int8_step(layer, shape, n, oh, ow, epilogue)
    if algorithm in WINOGRAD_TILES:
        return winograd_step(layer, shape, n, oh, ow, epilogue, m=WINOGRAD_TILES[algorithm])
    return blocked_step(layer, shape, n, oh, ow, epilogue) if algorithm == "blocked" else None


def prepare(layer, shape, n, algorithm=None):
    """The step ``x -> y`` that runs Conv2D ``layer`` on batches of ``n`` NHWC images of per-sample
    ``shape``, with the algorithm and its blocking decided once (a model keeps its steps per batch
    size, see ``Model``)."""
    oh, ow, _ = layer.shape_of(shape)
    algorithm = algorithm or choose(layer, shape, n)
    if algorithm not in layer.algorithms:
        raise NncompError(f"conv algorithm {algorithm!r} cannot run this layer; it can run "
                          f"{layer.algorithms}: pass one of those, or None to let nncomp choose")
    bias = _bias(layer)
    if algorithm == "shifted":
        return lambda x: shifted(x, layer.weight.w, bias, layer, oh, ow)
    if algorithm == "direct":
        return lambda x: direct(x, layer.weight_t, bias, layer, oh, ow)
    if algorithm == "blocked":
        return blocked_step(layer, shape, n, oh, ow)
    if algorithm in WINOGRAD_TILES:
        return winograd_step(layer, shape, n, oh, ow, m=WINOGRAD_TILES[algorithm])
    if algorithm == "depthwise":
        return lambda x: depthwise(x, layer.weight_t, bias, layer, oh, ow)
    step = int8_step(layer, shape, n, oh, ow) if algorithm == "im2col" else None
    if step is not None:
        return step
    if _fusable(layer, shape, oh, ow):
        return _fused(layer.weight.w, bias, layer.window.args, n, oh, ow)
    return lambda x: _im2col(layer, x, layer.window, oh, ow)


def _bias(layer):
    """The bias vector the kernels add: zeros stand in for none."""
    return layer.bias if layer.bias is not None else np.zeros(layer.out_channels, np.float32)


def _im2col(layer, x, window, oh, ow):
    """im2col in chunks, each chunk's patches times the weight in whatever format it is stored."""
    n, c = x.shape[0], x.shape[3]
    co = layer.out_channels
    if layer.groups == 1 and isinstance(layer.weight, Int8Matrix) and layer.weight.activations == "static":
        y = int8_patch_product(x, window, oh, ow, layer.weight)
    elif layer.groups == 1:
        y = patch_product(x, window, oh, ow, layer.weight.apply)
    else:
        cg, og, wd = c // layer.groups, co // layer.groups, layer.weight.w
        y = np.empty((n * oh * ow, co), np.float32)
        for g in range(layer.groups):
            xg = np.ascontiguousarray(x[..., g * cg:(g + 1) * cg])
            wg = wd[g * og:(g + 1) * og]
            y[:, g * og:(g + 1) * og] = patch_product(xg, window, oh, ow, lambda p: matmul_nt(p, wg))
    if not y.flags.c_contiguous:      # the transposed result of a small product: one pass
        out = aligned.empty(y.shape)
        if layer.bias is None:
            out[...] = y
        else:
            np.add(y, layer.bias, out=out)
        return out.reshape(n, oh, ow, co)
    if layer.bias is not None:
        y += layer.bias
    return y.reshape(n, oh, ow, co)


def fused_kernel():
    """Whether the fused im2col + BLAS kernel can run here (NumPy's CBLAS found, kernels compiled)."""
    return blas.ONE_POOL and not numba.config.DISABLE_JIT


def _fusable(layer, shape, oh, ow):
    """Whether an im2col convolution of per-sample input ``shape`` runs the fused kernel: ungrouped,
    dense weights, the kernel available, and a patch matrix that is not the input itself (a 1x1
    stride-1 unpadded conv multiplies the input directly)."""
    return (layer.groups == 1 and isinstance(layer.weight, DenseMatrix) and fused_kernel()
            and not (layer.window.pointwise and tuple(shape[:2]) == (oh, ow)))


def _fused(w, bias, geo, n, oh, ow, pool=1):
    """The fused im2col + BLAS step for batches of ``n``: blocks of output lines over the threads
    (whole pooling windows of ``pool`` lines when a max-pool is fused in)."""
    co, k = w.shape
    total = n * oh
    parts = min(_jit.num_threads(), total) if total * ow * co * k >= FUSED_SPLIT_MIN_MACS else 1
    lines = max(1, min(-(-total // max(parts, 1)), FUSED_BLOCK_BYTES // (4 * ow * k)))
    if pool > 1:    # whole windows, and a block product that stays in cache while it is pooled
        lines = min(lines, FUSED_POOL_BYTES // (4 * ow * co))
        lines = max(pool, lines // pool * pool)
    parts = max(1, min(parts, -(-total // lines)))
    kernel = im2col_gemm_nhwc_parallel if parts > 1 else im2col_gemm_nhwc
    shape = (n, oh // pool, ow // pool, co)
    spare = lines * ow * co if pool > 1 else max(1, min(lines * ow, co - 1) * co)

    def run(x):
        out = aligned.empty(shape)
        if total == 0:
            return out
        if parts > 1:
            _jit.pool_ready()
        cols = scratch("fused_cols", (parts, lines * ow, k))
        tmp = scratch("fused_tmp", (parts, spare))
        with blas.ONE_THREAD:
            kernel(blas.SGEMM_AT, np.ascontiguousarray(x), w, bias, *geo, lines, pool, cols, tmp, out)
        return out
    return run


def prepare_pooled(layer, shape, n, pool_layer):
    """One step for Conv2D ``layer`` and the MaxPool2D ``pool_layer`` that reads only its output, or
    None when they cannot run fused: the pool a plain p x p window with stride p, no padding, and the
    conv's algorithm the blocked kernel (lines pooled p at a time from a per-thread buffer; floor
    mode drops trailing lines), the int8 implicit GEMM (the same way) or the fused im2col kernel
    (over an output of whole windows)."""
    p = pool_layer.kernel_size[0]
    oh, ow, _ = layer.shape_of(shape)
    whole = oh % p == 0 and ow % p == 0
    algorithm = choose(layer, shape, n)
    if not pool_layer.plain or oh < p or ow < p:
        return None
    floor_ok = whole or not pool_layer.ceil_mode       # the kernels pool in floor mode
    step = int8_step(layer, shape, n, oh, ow, pool=p) if algorithm == "im2col" and floor_ok else None
    if step is not None:
        return step
    if algorithm in WINOGRAD_TILES and p == 2 and floor_ok:
        return winograd_step(layer, shape, n, oh, ow, pool=p, m=WINOGRAD_TILES[algorithm])
    if (algorithm in WINOGRAD_TILES or algorithm == "blocked") and "blocked" in layer.algorithms and not (
            layer.depthwise) and floor_ok:
        return blocked_pooled_step(layer, shape, n, oh, ow, p)
    if not (whole and algorithm == "im2col" and _fusable(layer, shape, oh, ow)):
        return None
    return _fused(layer.weight.w, _bias(layer), layer.window.args, n, oh, ow, p)


def shifted(x, w, bias, layer, oh, ow):
    """Stride-1 convolution as ``kh*kw`` accumulating BLAS products over shifted windows (``bias``
    a float32 (co,) vector, as for :func:`direct` and :func:`depthwise`)."""
    n, h, wd, c = x.shape
    co = w.shape[0]
    kh, kw = layer.kernel_size
    dh, dw = layer.dilation
    t, b, l, r = layer.padding
    hp, wp = h + t + b, wd + l + r
    s = hp * wp                     # rows per padded image
    m1 = (oh - 1) * wp + ow         # output rows per image, up to its last real pixel
    g = max(1, min(n, SHIFTED_CHUNK_BYTES // (4 * s * (c + co))))
    xp = scratch("shifted_input", (g * s, c))
    acc = scratch("shifted_output", (g * s, co))
    out = aligned.empty((n, oh, ow, co))
    pad = _jit.pick((conv_pad_nhwc, conv_pad_nhwc_parallel), xp.size)
    crop = _jit.pick((conv_crop_bias_nhwc, conv_crop_bias_nhwc_parallel), min(n, g) * oh * ow * co)
    for n0 in range(0, n, g):
        gn = min(g, n - n0)
        pad(x, n0, t, l, xp.reshape(g, hp, wp, c))
        m = (gn - 1) * s + m1
        for i in range(kh):
            for j in range(kw):
                tap = i * kw + j
                shift = i * dh * wp + j * dw
                gemm_nt(xp[shift:shift + m], w[:, tap * c:(tap + 1) * c], acc[:m], 0.0 if tap == 0 else 1.0)
        crop(acc.reshape(g, hp, wp, co), bias, n0, out)
    return out


def direct(x, wt, bias, layer, oh, ow):
    """Direct convolution over few input channels (``wt`` is the transposed weight, (k, co))."""
    n = x.shape[0]
    co = wt.shape[1]
    out = aligned.empty((n, oh, ow, co))
    # one line of output per task: below a few images a parallel launch costs more than it saves
    kern = _jit.pick((conv_direct_nhwc, conv_direct_nhwc_parallel), out.size * wt.shape[0] // DIRECT_SERIAL_FACTOR)
    kern(x, wt, bias, *layer.window.args, out)
    return out


def depthwise(x, wt, bias, layer, oh, ow):
    """Depthwise convolution (``wt`` is the tap-major weight, (kh*kw, co))."""
    n, c = x.shape[0], x.shape[3]
    co = wt.shape[1]
    kh, kw = layer.kernel_size
    out = aligned.empty((n, oh, ow, co))
    kern = _jit.pick((depthwise_conv_nhwc, depthwise_conv_nhwc_parallel), out.size * kh * kw)
    kern(x, wt, bias, co // c, *layer.window.args, out)
    return out


def int8_patch_product(x, window, oh, ow, weight):
    """``patches(x) @ W.T`` for an Int8Matrix with static (calibrated) activations: the input image
    quantized once (a patch's codes are its pixels' codes: the same scale and zero point, and the
    padding the zero point, the code of 0.0, so the result is the quantized patch matrix's to the
    bit), patches of codes built chunk by chunk (a quarter of the float patches' bytes), each chunk's
    integer product dequantized. VGG-small's 28x28 16->16 conv at batch 64 (Zen 4, 2 threads,
    development run): float patches then quantized 4.8 ms, this 2.6 ms; whole int8-static CNNs
    1.0-1.3x faster. Dynamic activations keep float patches: their range is taken per chunk of
    patches, and one range over the whole input (this path) tripled ResNet-small's median error
    against float at batch 64 (0.06 -> 0.17); per-sample ranges would be the better fix."""
    x = np.ascontiguousarray(x)
    n, h, w, c = x.shape
    kp = weight.code_width
    if window.pointwise and (h, w) == (oh, ow):
        return weight.product_codes(*weight.quantize_rows(x.reshape(n * h * w, c), kp))
    xu, sx, z = weight.quantize_rows(x.reshape(n * h * w, c), c)
    xu = xu.reshape(n, h, w, c)
    lines = n * oh
    step = max(1, min(lines, IM2COL_CHUNK_BYTES // max(1, ow * kp)))
    out = aligned.empty((lines * ow, weight.n_out))
    buf = scratch("im2col_codes", (step * ow, kp), np.uint8)
    kern = _jit.pick((im2col_u8_nhwc, im2col_u8_nhwc_parallel), step * ow * kp)
    for r0 in range(0, lines, step):
        r1 = min(lines, r0 + step)
        cols = buf[:(r1 - r0) * ow]
        kern(xu, *window.args, oh, ow, r0, r1, z, cols)
        out[r0 * ow:r1 * ow] = weight.product_codes(cols, sx, z)
    return out


def patch_product(x, window, oh, ow, apply):
    """``patches(x) @ W.T`` for a :class:`~nncomp.layers.base.Window`, the patch matrix built chunk
    by chunk (bounded memory)."""
    x = np.ascontiguousarray(x)
    n, h, w, c = x.shape
    if window.pointwise and (h, w) == (oh, ow):
        return apply(x.reshape(n * h * w, c))
    k = window.patch * c
    lines = n * oh
    if lines == 0:
        return apply(np.zeros((0, k), np.float32))
    step = max(1, min(lines, IM2COL_CHUNK_BYTES // max(1, ow * k * 4)))
    out = None
    buf = scratch("im2col", (step * ow, k))
    kern = _jit.pick((im2col_nhwc, im2col_nhwc_parallel), step * ow * k)
    for r0 in range(0, lines, step):
        r1 = min(lines, r0 + step)
        cols = buf[:(r1 - r0) * ow]
        kern(x, *window.args, oh, ow, r0, r1, cols)
        y = apply(cols)
        if out is None:
            if r1 == lines:
                return y
            out = aligned.empty((lines * ow, y.shape[1]))
        out[r0 * ow:r1 * ow] = y
    return out
