"""The Winograd F(2x2, 3x3), F(4x4, 3x3) and F(2x2, 5x5) kernel (nncomp/kernels/conv_winograd.py, winograd_tiles.py)
against its NumPy twin (tests/reference_winograd.py), and the twin against a float64 direct convolution."""
import numba
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import reference as ref
import reference_winograd as refw
from conftest import assert_close_f32
from nncomp.kernels import conv_winograd as W
from nncomp.kernels.epilogue import ACT_HARDSWISH, ACT_LEAKYRELU, ACT_SIGMOID, activation_rows


TILES = sorted(W.FILTER_MATRICES)       # (m, r): F(2x2, 3x3), F(2x2, 5x5), F(4x4, 3x3)


@st.composite
def problem(draw, max_c=40, max_co=70):
    """A tile (m, r), a padded input (n, oh + r - 1, ow + r - 1, c) with zero borders of the drawn
    padding, an r x r weight, bias."""
    m, r = draw(st.sampled_from(TILES))
    n = draw(st.integers(1, 3))
    c, co = draw(st.integers(1, max_c)), draw(st.integers(1, max_co))
    oh, ow = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    xp = np.zeros((n, oh + r - 1, ow + r - 1, c), np.float32)
    t, l = draw(st.integers(0, r // 2)), draw(st.integers(0, r // 2))
    xp[:, t:oh + r - 1 - draw(st.integers(0, r // 2)), l:ow + r - 1 - draw(st.integers(0, r // 2))] = 1.0
    xp *= rng.standard_normal(xp.shape).astype(np.float32)
    w = rng.standard_normal((co, c, r, r)).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32)
    return xp, w, bias, (n, oh, ow, c, co), rng, m


def _magnitude(xp, w, bias, oh, ow, co, m=2):
    """|A^T| (sum_c |B^T d B| |G g G^T|) |A| + |bias|: what rounding errors of the passes scale with."""
    r = w.shape[2]
    g = np.abs(W.filter_matrix(m, r))
    wt = np.abs(np.einsum("ar,ocrs,bs->abco", g, np.abs(w.astype(np.float64)), g))
    saved = refw.TILES[m, r]
    refw.TILES[m, r] = tuple(np.abs(a) for a in saved)
    try:
        return refw.winograd_nhwc(np.abs(xp), wt.reshape(len(g) ** 2, *wt.shape[2:]), np.abs(bias), oh, ow, co, m=m)
    finally:
        refw.TILES[m, r] = saved


def _direct(xp, w, bias):
    """Float64 direct r x r convolution of the padded input."""
    return ref.conv2d_nhwc(xp.astype(np.float64), w.astype(np.float64), bias, (1, 1), (0, 0, 0, 0), (1, 1), 1)


@given(p=problem())
def test_the_twin_is_a_convolution(p):
    """Every tile of the filter's size as the twin writes it (B, G, A; odd sizes with partial tiles)
    is the direct sum."""
    xp, w, bias, (n, oh, ow, c, co), _, m = p
    r = w.shape[2]
    want = _direct(xp, w, bias)
    for mm in (mm for mm, rr in TILES if rr == r):
        g = W.filter_matrix(mm, r)
        wt = np.einsum("ar,ocrs,bs->abco", g, w.astype(np.float64), g).reshape(len(g) ** 2, c, co)
        got = refw.winograd_nhwc(xp, wt, bias, oh, ow, co, m=mm)
        assert np.allclose(got, want, rtol=1e-10, atol=1e-10 * max(1.0, np.abs(want).max()))
    if oh < 2 or ow < 2:
        return
    g = W.filter_matrix(2, r)
    wt = np.einsum("ar,ocrs,bs->abco", g, w.astype(np.float64), g).reshape(len(g) ** 2, c, co)
    pooled = refw.winograd_nhwc(xp, wt, bias, oh, ow, co, pool=2)
    assert np.allclose(pooled, ref.maxpool_nhwc(want, 2, 2, 2, 2, 0, 0, 1, 1, oh // 2, ow // 2), rtol=1e-10,
                       atol=1e-10 * max(1.0, np.abs(want).max()))


def _call(kernel, xp, wt, bias, out, rows, nvec, pmax, epilogue=None, pool=0, pads=(0, 0, 0, 0), m=2):
    r = int(round(np.sqrt(wt.shape[0]))) - m + 1
    n, oh, ow = xp.shape[0], xp.shape[1] + pads[0] + pads[1] - r + 1, xp.shape[2] + pads[2] + pads[3] - r + 1
    cp, cop = wt.shape[1], wt.shape[2]
    us, ms = W.work_sizes(oh, ow, cp, cop, rows, m, r)
    threads = numba.get_num_threads()
    ub = np.full((threads, us), np.nan, np.float32)
    mb = np.full((threads, ms), np.nan, np.float32)
    z = np.zeros(cop, np.float32)
    scale, shift, affine, res, add, lo, hi, act = epilogue or (z, z, False, out, False, -np.inf, np.inf, 0)
    kernel(xp, *pads, wt, bias, scale, shift, affine, res, add, np.float32(lo), np.float32(hi), act, np.float32(0.2),
           np.float32(0.5),
           nvec, pmax, rows, ub, mb, pool, out, m)


@pytest.mark.parametrize("kernel", [W.winograd_nhwc, W.winograd_nhwc_parallel])
@given(p=problem(), data=st.data())
def test_winograd_nhwc_matches_reference(kernel, p, data):
    """F(2x2, 3x3), F(4x4, 3x3) and F(2x2, 5x5): every chunk size, vector count and product tile width, masked
    channel tails (c and co not multiples of 16), output sizes not multiples of the tile; then the
    epilogue as the blocked kernel applies it, bit for bit what the epilogue kernels make of the plain
    output, and the fused 2x2 max-pool."""
    numba.get_num_threads()         # the pool is up (a cached kernel asking its thread id needs it)
    xp, w, bias, (n, oh, ow, c, co), rng, m = p
    wt = W.winograd_weight(w, m)
    cop = wt.shape[2]
    bias_p = np.zeros(cop, np.float32)
    bias_p[:co] = bias
    rows = data.draw(st.integers(1, -(-oh // m)), label="rows")
    nvec = data.draw(st.integers(1, 4), label="nvec")
    pmax = data.draw(st.integers(1, W.PRODUCT_PIXELS[nvec]), label="pmax")
    out = np.full((n, oh, ow, co), np.nan, np.float32)
    _call(kernel, xp, wt, bias_p, out, rows, nvec, pmax, m=m)
    want = refw.winograd_nhwc(xp, wt, bias_p, oh, ow, co, m=m)
    mag, k = _magnitude(xp, w, bias, oh, ow, co, m), wt.shape[0] * c
    assert_close_f32(out, want, mag, k + 8)
    assert_close_f32(out, _direct(xp, w, bias), mag, k + 16)

    affine, add = data.draw(st.booleans(), label="affine"), data.draw(st.booleans(), label="add")
    lo, hi = data.draw(st.sampled_from([(-np.inf, np.inf), (0.0, np.inf), (0.0, 6.0)]), label="clip")
    act = data.draw(st.sampled_from([0, ACT_SIGMOID, ACT_HARDSWISH, ACT_LEAKYRELU]), label="act")
    scale, shift = np.zeros(cop, np.float32), np.zeros(cop, np.float32)
    scale[:co], shift[:co] = rng.standard_normal(co), rng.standard_normal(co)
    res = rng.standard_normal(out.shape).astype(np.float32)
    fused = np.full_like(out, np.nan)
    _call(kernel, xp, wt, bias_p, fused, rows, nvec, pmax,
          (scale, shift, affine, res if add else fused, add, np.float32(lo), np.float32(hi), act), m=m)
    expect = ref.epilogue_rows(out.reshape(-1, co), scale[:co] if affine else np.zeros(0, np.float32),
                               shift[:co] if affine else np.zeros(0, np.float32),
                               res.reshape(-1, co) if add else np.zeros((0, co), np.float32), lo, hi)
    if act:
        activation_rows(expect, act, np.float32(0.2), np.float32(0.5))
    assert np.array_equal(fused.reshape(-1, co), expect, equal_nan=True)

    if oh >= 2 and ow >= 2:
        pooled = np.full((n, oh // 2, ow // 2, co), np.nan, np.float32)
        _call(kernel, xp, wt, bias_p, pooled, rows, nvec, pmax, pool=2, m=m)
        assert np.array_equal(pooled, ref.maxpool_nhwc(out, 2, 2, 2, 2, 0, 0, 1, 1, oh // 2, ow // 2))


@given(n=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 20), co=st.integers(1, 20),
       pads=st.tuples(*[st.integers(0, 2)] * 4), epilogue=st.booleans(), parallel=st.booleans(),
       seed=st.integers(0, 2**31), tile=st.sampled_from(TILES))
def test_winograd_reads_the_padding_as_zeros(n, h, w, c, co, pads, epilogue, parallel, seed, tile):
    """The kernel (every tile) on the unpadded input and the layer's padding (nothing
    read outside the input) gives, bit for bit, what it gives on the zero-padded copy: plain, with an
    epilogue, pooled."""
    numba.get_num_threads()
    m, k = tile
    t, b, l, r = pads
    oh, ow = h + t + b - k + 1, w + l + r - k + 1
    assume(oh >= 1 and ow >= 1)
    rng = np.random.default_rng(seed)
    kernel = W.winograd_nhwc_parallel if parallel else W.winograd_nhwc
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    wt = W.winograd_weight(rng.standard_normal((co, c, k, k)), m)
    cop = wt.shape[2]
    bias = rng.standard_normal(cop).astype(np.float32)
    epi = None
    if epilogue:
        res = rng.standard_normal((n, oh, ow, co)).astype(np.float32)
        epi = (rng.standard_normal(cop).astype(np.float32), rng.standard_normal(cop).astype(np.float32), True, res,
               True, np.float32(0.0), np.float32(6.0), ACT_HARDSWISH)
    rows = int(rng.integers(1, -(-oh // m) + 1))
    for pool in ((0, 2) if oh >= 2 and ow >= 2 and not epilogue else (0,)):
        shape = (n, oh // 2, ow // 2, co) if pool else (n, oh, ow, co)
        got, want = np.full(shape, np.nan, np.float32), np.full(shape, np.nan, np.float32)
        _call(kernel, x, wt, bias, got, rows, 2, W.PRODUCT_PIXELS[2], epi, pool, pads, m)
        _call(kernel, np.pad(x, ((0, 0), (t, b), (l, r), (0, 0))), wt, bias, want, rows, 2, W.PRODUCT_PIXELS[2], epi,
              pool, m=m)
        assert np.array_equal(got, want, equal_nan=True)


@pytest.mark.parametrize("kernel", [W.winograd_nhwc, W.winograd_nhwc_parallel])
def test_winograd_nan_and_inf_reach_the_outputs_they_feed(kernel):
    """A NaN or inf input reaches every output whose window holds it (through the transforms' sums),
    and the max-pool lets NaN win as the pool kernel does."""
    numba.get_num_threads()
    xp = np.zeros((1, 8, 8, 16), np.float32)
    xp[0, 3, 4, 5] = np.nan
    w = np.ones((16, 16, 3, 3), np.float32)
    wt = W.winograd_weight(w)
    out = np.zeros((1, 6, 6, 16), np.float32)
    _call(kernel, xp, wt, np.zeros(16, np.float32), out, 1, 1, 14)
    hit = np.isnan(out[0, :, :, 0])
    window = np.zeros((6, 6), bool)
    window[1:4, 2:5] = True        # outputs i, j with i <= 3 <= i + 2 and j <= 4 <= j + 2
    # a NaN input poisons its whole 4x4 tile's sums: at least its window, at most the tiles touching it
    assert hit[window].all()
    pooled = np.zeros((1, 3, 3, 16), np.float32)
    _call(kernel, xp, wt, np.zeros(16, np.float32), pooled, 1, 1, 14, pool=2)
    assert np.isnan(pooled[0, 0:2, 1:3, 0]).all()


@given(c=st.integers(16, 40), co=st.integers(1, 40), n=st.integers(1, 3), h=st.integers(3, 11), w=st.integers(3, 11),
       pad=st.tuples(*[st.integers(0, 2)] * 4), seed=st.integers(0, 2**31), k=st.sampled_from([3, 5]))
def test_winograd_layer_steps_match_reference(c, co, n, h, w, pad, seed, k):
    """A 3x3 or 5x5 stride-1 Conv2D of 16+ input channels runs Winograd (any padding, odd sizes):
    alone, with a batch-norm + ReLU epilogue in the kernel, and with a 2x2 max-pool fused into it."""
    import nncomp as nc
    from nncomp.layers import conv_algorithms as convolution

    assume(h + pad[0] + pad[1] >= k and w + pad[2] + pad[3] >= k)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    wt = rng.standard_normal((co, c, k, k)).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32)
    layer = nc.Conv2D(np.ascontiguousarray(wt.transpose(0, 2, 3, 1).reshape(co, -1)), bias, in_channels=c,
                      kernel_size=k, padding=pad)
    algo = convolution.choose(layer, (h, w, c), n)
    tiles = (("winograd", 4), ("winograd4", 64)) if k == 3 else (("winograd", 64),)  # |A|, |B|, |G| magnitudes
    assert convolution.rule(layer, (h, w, c), n) == tiles[-1][0] and algo in ("winograd4", "winograd", "blocked")
    expect = ref.conv2d_nhwc(x, wt, bias, (1, 1), pad, (1, 1), 1)
    mag = ref.conv2d_nhwc(np.abs(x), np.abs(wt), np.abs(bias), (1, 1), pad, (1, 1), 1)
    for a, gain in tiles:
        assert_close_f32(convolution.forward(layer, x, a), expect, gain * mag, 36 * c + 16)
    got = convolution.forward(layer, x, algo)
    scale, shift = rng.standard_normal(co).astype(np.float32), rng.standard_normal(co).astype(np.float32)
    step = convolution.prepare_epilogue(layer, (h, w, c), n, (scale, shift, False, 0.0, np.inf, None))
    fused = step(x)
    assert np.array_equal(fused, np.maximum(got * scale + shift, np.float32(0.0)))
    oh, ow = expect.shape[1:3]
    if oh >= 2 and ow >= 2:
        pool = nc.MaxPool2D(kernel_size=2, stride=2)
        pooled = convolution.prepare_pooled(layer, (h, w, c), n, pool.for_input((oh, ow, co)))(x)
        assert np.array_equal(pooled, ref.maxpool_nhwc(got, 2, 2, 2, 2, 0, 0, 1, 1, oh // 2, ow // 2))


@given(n=st.integers(1, 70), th=st.integers(1, 30), rows=st.integers(1, 30), threads=st.integers(1, 4))
def test_the_busiest_thread_counts_each_chunks_own_lines(n, th, rows, threads):
    """chunk_rows' load model: the jobs (each image's chunks of ``rows`` tile lines, its last one
    the lines left) split into ``threads`` equal runs; the busiest run's lines, from the job list."""
    assume(rows <= th)
    jobs = [min(rows, th - k) for _ in range(n) for k in range(0, th, rows)]
    want = max(sum(jobs[t * len(jobs) // threads:(t + 1) * len(jobs) // threads]) for t in range(threads))
    assert W._busiest(n, th, rows, threads) == want


def test_chunks_of_small_maps_at_large_batches_are_not_cut_to_one_line():
    """28x28 maps (7 tile lines of F(4x4, 3x3)) at 64 images: chunks of 4 lines (the bound), where
    counting each image's last chunk as full chose 1 (1.2x the time); a 7x7 map of one image still
    splits into single lines for two threads."""
    assert W.chunk_rows(28, 28, 64, 2, 4) == 4 and W.chunk_rows(28, 28, 64, 2, 2) == 4
    assert W.chunk_rows(7, 7, 1, 2, 4) == 1 and W.chunk_rows(14, 14, 1, 2, 4) == 1
