"""Winograd F(2x2, 3x3) convolution over NHWC float32 images (the ``winograd`` conv algorithm); the
same kernel runs F(4x4, 3x3) (``winograd4``) and, for 5x5 filters, F(2x2, 5x5) (``winograd`` of a 5x5
layer); the tiles are built in nncomp/kernels/winograd_tiles.py.

A 3x3 stride-1 convolution computes each 2x2 block of output pixels from a 4x4 block of input with 16 multiplies
per input and output channel instead of 36 (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks",
2016): with the input tile ``d`` (4x4), the filter ``g`` (3x3) and the constant matrices ``B``, ``G``, ``A`` of F(2, 3),

    Y = A^T [ (G g G^T) * (B^T d B) ] A        (``*`` elementwise over the 16 positions)

summed over input channels: three passes over a chunk of tiles (a few tile rows of one image, in L2):

1. input transform: ``B^T d B`` for every tile and 16-channel vector (16 loads, 32 adds, 16 stores), into
   ``U[16, tiles, cp]``;
2. 16 independent products ``M[xi] = U[xi] @ W[xi]`` (tiles x cp times cp x cop), run by the register-blocked
   tiles of nncomp/kernels/conv_blocked.py as 1x1 convolutions;
3. output transform ``A^T m A`` (16 loads, 24 adds, up to four stores), with the bias and the epilogue of the
   blocked kernel (affine map, residual add, clip) applied before the store, then the activation kernel on the
   chunk's output lines.

The filter transform ``G g G^T`` is done once, in float64, when the layer is prepared (:func:`winograd_weight`).
The transforms' coefficients are 0, +-1 and +-1/2, so the result differs from the direct sum by rounding only (the
NumPy twin is tests/reference_winograd.py, which computes the same three passes; the property test checks
both against a float64 direct convolution). The transforms are LLVM IR over ``<16 x float>`` vectors, as the
blocked tiles are: plain Numba loops over 16 input and 16 output streams did not vectorize (LLVM could not rule
out aliasing; 4x slower than the products).

Shapes: the kernel reads the unpadded input and the layer's padding (no padded copy: 0.12 ms, a tenth of the
convolution, at 64x28x28x16); ``out`` has ``oh = h + pt + pb - 2`` lines and ``ow = w + pl + pr - 2`` columns.
Input tiles read zero for padding pixels without loading them (masked loads); an odd ``oh`` or ``ow`` ends with
half tiles, whose missing input line or column reads zero too (it only feeds the output that is not stored).
"""
import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from ._ir import declare, loop_latch, loop_phis
from .winograd_tiles import G4, G25, at4, at25, bt4, input_tile, output_tile
from . import aligned
from ._jit import both
from .isa import VECTOR_REGISTERS
from .epilogue import activation_rows

# F(2x2, 3x3): the filter transform (4x3); B^T and A^T are :func:`_bt` and :func:`_at` below.
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
# Tiles per chunk (a few tile lines of one image): U and M of a 64-channel chunk stay in L2.
CHUNK_TILES = 64
# Floats between the positions' slabs of U and M beyond their tiles x channels: a slab of 4 KB (16
# tiles of 64 channels) put a tile's 36 positions in one set of the 8-way L1 and 16 of them in one L2
# set; one cache line more spreads them. F(2x2, 5x5), 64 images of 12x12 -> 8x8, 64 output channels,
# one thread, Zen 3 (runs before and after, not alternating): 20 input channels 2.6 -> 2.1 ms, 1 input
# channel (the transforms and product calls alone) 1.44 -> 0.80 ms.
SKEW = 16


# The tiles the kernel runs, (m, r) -> G: F(2x2, 3x3), F(4x4, 3x3) and F(2x2, 5x5).
FILTER_MATRICES = {(2, 3): G, (4, 3): G4, (2, 5): G25}


def filter_matrix(m=2, r=3):
    """G of F(m x m, r x r), (m + r - 1) x r: one of :data:`FILTER_MATRICES`."""
    if (m, r) not in FILTER_MATRICES:
        raise ValueError(f"no Winograd F({m}x{m}, {r}x{r}) tile: the kernel runs {sorted(FILTER_MATRICES)}")
    return FILTER_MATRICES[m, r]


def winograd_weight(w, m=2):
    """``G g G^T`` of every (output, input) channel pair of ``w`` (co, c, r, r) for F(m x m, r x r), as
    the products read it: ``(span**2, cp, cop)`` float32 (span = m + r - 1), position ``xi = span * a
    + b`` first, ``cp`` and ``cop`` the channel counts rounded up to 16 (extra rows and columns zero);
    in float64, rounded once."""
    w = np.asarray(w, np.float64)
    co, c = w.shape[:2]
    cp, cop = -(-c // 16) * 16, -(-co // 16) * 16
    g = filter_matrix(m, w.shape[2])
    u = np.einsum("ar,ocrs,bs->abco", g, w, g)
    out = aligned.zeros((len(g) ** 2, cp, cop))
    out[:, :c, :co] = u.reshape(len(g) ** 2, c, co)
    return out


def _product_function(module, P, V):
    """``m[moff + p * mpix:][:16 V] = sum_{j < span} u[uoff + p * upix + j] * w[woff + j * wrow:][:16 V]``
    for the ``P`` pixels of a tile: the blocked kernel's tile without its bias, accumulated output
    and epilogue (with a 16-long reduction, as at 16 input channels, those cost as much as the
    multiply-adds). A function of its own, never inlined, as the blocked tiles are."""
    name = f"nncomp_winograd_product_{P}x{V}"
    fn = module.globals.get(name)
    if fn is not None:
        return fn
    f32, intp, i32 = ir.FloatType(), ir.IntType(64), ir.IntType(32)
    v16 = ir.VectorType(f32, 16)
    vptr, fptr = v16.as_pointer(), f32.as_pointer()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [fptr, intp, intp, intp, fptr, intp, intp, fptr, intp,
                                                             intp]), name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    ud, uoff, upix, span, wd, woff, wrow, md, moff, mpix = fn.args
    entry = fn.append_basic_block("entry")
    loop = fn.append_basic_block("loop")
    done = fn.append_basic_block("done")
    b = ir.IRBuilder(entry)
    fma = declare(module, "llvm.fma.v16f32", ir.FunctionType(v16, [v16, v16, v16]))
    undef = ir.Constant(v16, ir.Undefined)
    splat = ir.Constant(ir.VectorType(i32, 16), [0] * 16)
    zero = ir.Constant(v16, None)
    b.branch(loop)
    b.position_at_end(loop)
    j, accs = loop_phis(b, intp, v16, [zero] * (P * V), entry)
    wrow_j = b.add(woff, b.mul(j, wrow))
    wv = [b.load(b.bitcast(b.gep(wd, [b.add(wrow_j, intp(16 * v))]), vptr), align=4) for v in range(V)]
    new = []
    for p in range(P):
        s_ = b.load(b.gep(ud, [b.add(b.add(uoff, b.mul(upix, intp(p))), j)]), align=4)
        xv = b.shuffle_vector(b.insert_element(undef, s_, i32(0)), undef, splat)
        new.extend(b.call(fma, [xv, wv[v], accs[p * V + v]]) for v in range(V))
    loop_latch(b, intp, j, accs, new, span, loop, done)
    b.position_at_end(done)
    for p in range(P):
        for v in range(V):
            at = b.add(b.add(moff, b.mul(mpix, intp(p))), intp(16 * v))
            b.store(new[p * V + v], b.bitcast(b.gep(md, [at]), vptr), align=4)
    b.ret_void()
    return fn


def _make_products(V, pmax):
    """Intrinsic ``products(P, u, uoff, upix, span, w, woff, wrow, m, moff, mpix)`` for P in 1..pmax
    (:func:`_product_function`; span >= 1)."""

    @intrinsic
    def products(typingctx, P, u, uoff, upix, span, w, woff, wrow, m, moff, mpix):
        sig = types.void(P, u, uoff, upix, span, w, woff, wrow, m, moff, mpix)

        def codegen(context, builder, signature, args):
            data = lambda k: context.make_array(signature.args[k])(context, builder, args[k]).data  # noqa: E731
            num = lambda k: context.cast(builder, args[k], signature.args[k], types.int64)  # noqa: E731
            call_args = [data(1), num(2), num(3), num(4), data(5), num(6), num(7), data(8), num(9), num(10)]
            p_ = num(0)
            after = builder.append_basic_block("products_after")
            switch = builder.switch(p_, after)
            for p in range(1, pmax + 1):
                block = builder.append_basic_block(f"products_p{p}")
                switch.add_case(p_.type(p), block)
                builder.position_at_end(block)
                builder.call(_product_function(builder.module, p, V), call_args)
                builder.branch(after)
            builder.position_at_end(after)
            return context.get_dummy_value()

        return sig, codegen

    return products


# Product tiles: pixels per number of 16-channel vectors (the blocked kernel's, but 14 pixels for two
# vectors: 12 ran 1.1-1.2x slower on 32-channel outputs; 28 for one vector and 7 for four did not
# help, 7 ran VGG-16's conv3_2 1.25x slower; Zen 4, one process alternating).
PRODUCT_PIXELS = {1: 14, 2: 14, 3: 8, 4: 6}
# With 16 vector registers (AVX2) the layers run products of one vector (nncomp/layers/conv_blocked.py
# winograd_step) of 6 pixels; one thread, AMD EPYC Zen 3, round-robin: 56 x 56 256 -> 256 (VGG-16's
# conv3_2) 25.3 ms against 60.0 for 4 vectors x 1 pixel, 28 x 28 64 -> 64 0.43 against 0.69, 14 x 14
# 32 -> 32 0.035 against 0.052 (2 x 2: 0.037). The widths for more vectors serve callers that ask.
AVX2_PRODUCT_PIXELS = {1: 6, 2: 2, 3: 1, 4: 1}
_products1, _products2, _products3, _products4 = (_make_products(v, PRODUCT_PIXELS[v]) for v in range(1, 5))


def _bt(builder, v):
    """B^T of F(2x2, 3x3) applied to four vectors."""
    sub, add = builder.fsub, builder.fadd
    return [sub(v[0], v[2]), add(v[1], v[2]), sub(v[2], v[1]), sub(v[1], v[3])]


def _at(builder, v):
    """A^T of F(2x2, 3x3) applied to four vectors: two."""
    sub, add = builder.fsub, builder.fadd
    return [add(add(v[0], v[1]), v[2]), sub(sub(v[1], v[2]), v[3])]


_input_tile, _output_tile = input_tile(4, _bt), output_tile(2, _at)
_input_tile4, _output_tile4 = input_tile(6, bt4), output_tile(4, at4)
_output_tile25 = output_tile(2, at25, 6)       # F(2x2, 5x5): F(4x4, 3x3)'s input tile


def _winograd(x, pt, pb, pl, pr, wt, bias, scale, shift, affine, res, add, lo, hi, act, alpha, beta, nvec, pmax, rows,
              ubuf, mbuf, pool, out, m=2):
    """r x r stride-1 convolution of an NHWC batch by Winograd F(m x m, r x r): F(2x2, 3x3) (module
    doc), F(4x4, 3x3) or F(2x2, 5x5) (nncomp/kernels/winograd_tiles.py), with the blocked kernel's
    epilogue; r follows from m and the weight's positions ``(m + r - 1)**2``.

    IN  x (n, h, w, c) float32 C-contiguous, read as zero-padded by pt, pb lines above and below and
        pl, pr columns left and right (each >= 0; oh = h + pt + pb - r + 1, ow = w + pl + pr - r + 1);
        wt ((m + r - 1)**2, cp, cop) float32 from :func:`winograd_weight`; bias, scale, shift (cop,) float32
        (scale and shift used if ``affine``); res (n, oh, ow, co) float32 added if ``add`` (else any
        array of out's shape);
        lo, hi clip bounds; act, alpha, beta the activation (nncomp/kernels/epilogue.py); nvec (1..4)
        16-channel vectors and pmax pixels per product tile (at most PRODUCT_PIXELS[nvec]); rows tile
        lines per chunk; ubuf, mbuf (threads, :func:`work_sizes`) float32 work buffers, one slab per
        Numba thread; pool 0, or 2 for a 2x2 max-pool with stride 2 (floor mode) of the convolution's
        output (then without an epilogue: affine, add and act off, lo and hi infinite).
    OUT out (n, oh, ow, co) float32 C-contiguous, overwritten; pooled (n, oh // 2, ow // 2, co).
    Call it once Numba's thread pool is up (``numba.get_num_threads()`` starts it; every step does):
    a serial build loaded from Numba's cache asks ``numba.get_thread_id()`` of a pool that was
    never started, and crashes.
    """
    n, h, wd, c = x.shape
    co = out.shape[3]
    span = int(np.sqrt(wt.shape[0]) + 0.5)     # input lines and columns of a tile: m + r - 1
    oh, ow = h + pt + pb - span + m, wd + pl + pr - span + m
    cp, cop = wt.shape[1], wt.shape[2]
    th, tw = (oh + m - 1) // m, (ow + m - 1) // m
    groups = (th + rows - 1) // rows
    tmax = rows * tw
    us, ms = tmax * cp + SKEW, tmax * cop + SKEW
    lo32, hi32 = np.float32(lo), np.float32(hi)
    for job in prange(n * groups):
        b = job // groups
        ti0 = (job - b * groups) * rows
        ti1 = min(th, ti0 + rows)
        ntiles = (ti1 - ti0) * tw
        slab = numba.get_thread_id()
        u, m_ = ubuf[slab], mbuf[slab]
        for ti in range(ti0, ti1):
            r0 = m * ti - pt        # the tile's first input line (negative: in the padding)
            rvalid = 0
            for r in range(span):
                if 0 <= r0 + r < h:
                    rvalid |= 1 << r
            for tj in range(tw):
                t = (ti - ti0) * tw + tj
                s0 = m * tj - pl
                cvalid = 0
                for q in range(span):
                    if 0 <= s0 + q < wd:
                        cvalid |= 1 << q
                xo = ((b * h + r0) * wd + s0) * c
                for c0 in range(0, cp, 16):
                    if span == 6:
                        _input_tile4(x, xo + c0, wd * c, c, rvalid, cvalid, u, t * cp + c0, us, min(16, c - c0))
                    else:
                        _input_tile(x, xo + c0, wd * c, c, rvalid, cvalid, u, t * cp + c0, us, min(16, c - c0))
        blocks = (ntiles + pmax - 1) // pmax
        p0 = (ntiles + blocks - 1) // blocks
        for xi in range(span * span):
            for co0 in range(0, cop, 16 * nvec):
                nv = min(nvec, (cop - co0) // 16)
                j0 = 0
                while j0 < ntiles:
                    p = min(p0, ntiles - j0)
                    a = (p, u, xi * us + j0 * cp, cp, c, wt, xi * cp * cop + co0, cop, m_, xi * ms + j0 * cop + co0,
                         cop)
                    if nv == 4:
                        _products4(*a)
                    elif nv == 3:
                        _products3(*a)
                    elif nv == 2:
                        _products2(*a)
                    else:
                        _products1(*a)
                    j0 += p
        for ti in range(ti0, ti1):
            ny = min(m, oh - m * ti)
            for tj in range(tw):
                t = (ti - ti0) * tw + tj
                nx = min(m, ow - m * tj)
                orow, sy, sx = ow * co, ny, nx
                if pool != 0:
                    sy, sx = ny // 2, nx // 2   # the tile's whole 2x2 windows (floor mode drops a half one)
                    if sy == 0 or sx == 0:
                        continue
                    oo = ((b * (oh // 2) + ti * m // 2) * (ow // 2) + tj * m // 2) * co
                    orow = ow // 2 * co
                else:
                    oo = ((b * oh + m * ti) * ow + m * tj) * co
                for k0 in range(0, cop, 16):
                    if m == 4:
                        _output_tile4(m_, t * cop + k0, ms, bias, scale, shift, k0, affine, res, add, out, oo + k0,
                                      orow, co, sy, sx, min(16, co - k0), lo32, hi32, pool)
                    elif span == 6:
                        _output_tile25(m_, t * cop + k0, ms, bias, scale, shift, k0, affine, res, add, out, oo + k0,
                                       orow, co, sy, sx, min(16, co - k0), lo32, hi32, pool)
                    else:
                        _output_tile(m_, t * cop + k0, ms, bias, scale, shift, k0, affine, res, add, out, oo + k0,
                                     orow, co, sy, sx, min(16, co - k0), lo32, hi32, pool)
        if act != 0:
            first = (b * oh + m * ti0) * ow
            last = (b * oh + min(oh, m * ti1)) * ow
            activation_rows(out.reshape(n * oh * ow, co)[first:last], act, np.float32(alpha), np.float32(beta))


winograd_nhwc, winograd_nhwc_parallel = both(_winograd)


def chunk_rows(oh, ow, n=1, threads=1, m=2, r=3):
    """Tile lines per chunk of F(m x m, r x r): about :data:`CHUNK_TILES` tiles of F(2x2, 3x3)'s work
    buffers (16 / (m + r - 1)**2 as many of larger tiles), at least one line; for ``threads`` > 1
    (the parallel build) small enough that ``n`` images make two chunks per thread where they can
    (a 7x7 map at batch 1 is a single chunk otherwise, and ran 1.3x slower than the blocked kernel)."""
    th, tw = (oh + m - 1) // m, (ow + m - 1) // m
    rows = max(1, min(th, CHUNK_TILES * 16 // (m + r - 1) ** 2 // tw))
    if threads < 2:
        return rows
    rows = max(1, min(rows, n * th // (2 * threads)))
    # then the chunk size whose busiest thread has the fewest tile lines (the largest on ties)
    return min(range(rows, 0, -1), key=lambda k: _busiest(n, th, k, threads))


def _busiest(n, th, rows, threads):
    """Tile lines of the busiest thread when ``n`` images of ``th`` tile lines run in chunks of
    ``rows`` lines (an image's last chunk the lines left), the chunks split into ``threads`` equal
    runs as the parallel loop splits them. Counting every chunk as full made 28x28 maps at 64 images
    (7 tile lines of F(4x4)) run chunks of one line, not four: 1.2x the time (Zen 3, 2 threads)."""
    per = -(-th // rows)
    lines = [min(rows, th - k * rows) for k in range(per)]
    jobs = n * per
    prefix = lambda j: (j // per) * th + sum(lines[:j % per])  # noqa: E731 - lines in the first j jobs
    return max(prefix((t + 1) * jobs // threads) - prefix(t * jobs // threads) for t in range(threads))


def product_pixels(nvec, registers=None):
    """The widest product tile for ``nvec`` vectors with ``registers`` zmm-sized registers (default:
    this CPU's; 16 registers, as with AVX2, take :data:`AVX2_PRODUCT_PIXELS`)."""
    registers = VECTOR_REGISTERS if registers is None else registers
    return PRODUCT_PIXELS[nvec] if registers >= 32 else AVX2_PRODUCT_PIXELS[nvec]


def work_sizes(oh, ow, cp, cop, rows, m=2, r=3):
    """Floats per thread of the ``ubuf`` and ``mbuf`` work buffers of F(m x m, r x r)."""
    span2 = (m + r - 1) ** 2
    tiles = rows * ((ow + m - 1) // m)
    return span2 * (tiles * cp + SKEW), span2 * (tiles * cop + SKEW)
