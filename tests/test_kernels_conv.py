"""Conv and pool kernels against their NumPy twins (tests/reference.py), serial and parallel builds."""
import numba
import numpy as np
import pytest
from hypothesis import assume, example, given, settings, strategies as st

import reference as ref
from conftest import assert_close_f32
from nncomp.kernels import blas, conv, conv_blocked, conv_depthwise, conv_gemm, layout, pool
from nncomp.kernels.epilogue import (ACT_HARDSIGMOID, ACT_HARDSWISH, ACT_LEAKYRELU, ACT_SIGMOID,
                                     activation_rows)
from nncomp.layers.base import window_out as _window_out

F32 = np.float32     # the kernels' float scalars (a float64 one compiles another build)


@st.composite
def geometry(draw, max_c=6):
    n = draw(st.integers(1, 2))
    c = draw(st.integers(1, max_c))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, kh)), draw(st.integers(0, kw))
    h = draw(st.integers(dh * (kh - 1) + 1, 9))
    w = draw(st.integers(dw * (kw - 1) + 1, 9))
    oh = _window_out(h, kh, sh, ph, ph, dh, False)
    ow = _window_out(w, kw, sw, pw, pw, dw, False)
    seed = draw(st.integers(0, 2**31))
    integer = draw(st.booleans())
    rng = np.random.default_rng(seed)
    if integer:   # exact-by-construction inputs separate indexing bugs from rounding
        x = rng.integers(-4, 5, size=(n, h, w, c)).astype(np.float32)
    else:
        x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    return x, (kh, kw, sh, sw, ph, pw, dh, dw), (oh, ow), rng, integer


@pytest.mark.parametrize("kernel", [conv.im2col_nhwc, conv.im2col_nhwc_parallel])
@given(g=geometry())
def test_im2col_nhwc_matches_reference(kernel, g):
    x, (kh, kw, sh, sw, ph, pw, dh, dw), (oh, ow), rng, _ = g
    lines = x.shape[0] * oh
    r0 = int(rng.integers(0, lines))
    r1 = int(rng.integers(r0 + 1, lines + 1))
    out = np.full(((r1 - r0) * ow, kh * kw * x.shape[3]), np.nan, np.float32)
    kernel(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, r0, r1, out)
    expect = ref.im2col_nhwc(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, r0, r1)
    assert np.array_equal(out, expect.astype(np.float32))


@pytest.mark.parametrize("kernel", [conv.im2col_u8_nhwc, conv.im2col_u8_nhwc_parallel])
@given(g=geometry(), fill=st.integers(0, 255), extra=st.integers(0, 5))
def test_im2col_u8_nhwc_matches_reference(kernel, g, fill, extra):
    """Codes, padding and the widened columns all ``fill``: every byte written."""
    x, (kh, kw, sh, sw, ph, pw, dh, dw), (oh, ow), rng, _ = g
    xu = rng.integers(0, 256, x.shape).astype(np.uint8)
    lines = x.shape[0] * oh
    r0 = int(rng.integers(0, lines))
    r1 = int(rng.integers(r0 + 1, lines + 1))
    kp = kh * kw * x.shape[3] + extra
    out = np.full(((r1 - r0) * ow, kp), 255 - fill, np.uint8)
    kernel(xu, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, r0, r1, fill, out)
    assert np.array_equal(out, ref.im2col_u8_nhwc(xu, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, r0, r1, fill, kp))


@pytest.mark.parametrize("kernel", [conv.depthwise_conv_nhwc, conv.depthwise_conv_nhwc_parallel])
@given(g=geometry(), mult=st.integers(1, 3))
def test_depthwise_conv_nhwc_matches_reference(kernel, g, mult):
    x, (kh, kw, sh, sw, ph, pw, dh, dw), (oh, ow), rng, integer = g
    co = x.shape[3] * mult
    wt = rng.standard_normal((kh * kw, co)).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32)
    if integer:
        wt, bias = np.round(wt * 2), np.round(bias * 2)
    out = np.empty((x.shape[0], oh, ow, co), np.float32)
    kernel(x, wt, bias, mult, kh, kw, sh, sw, ph, pw, dh, dw, out)
    expect = ref.depthwise_conv_nhwc(x, wt, bias, mult, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
    if integer:
        assert np.array_equal(out, expect)
    mag = ref.depthwise_conv_nhwc(np.abs(x), np.abs(wt), np.abs(bias), mult, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
    assert_close_f32(out, expect, mag, kh * kw + 1)


@pytest.mark.parametrize("kernel", [conv.conv_direct_nhwc, conv.conv_direct_nhwc_parallel])
@given(g=geometry(), co=st.integers(1, 9))
def test_conv_direct_nhwc_matches_reference(kernel, g, co):
    x, (kh, kw, sh, sw, ph, pw, dh, dw), (oh, ow), rng, integer = g
    wt = rng.standard_normal((kh * kw * x.shape[3], co)).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32)
    if integer:
        wt, bias = np.round(wt * 2), np.round(bias * 2)
    out = np.full((x.shape[0], oh, ow, co), np.nan, np.float32)
    kernel(x, wt, bias, kh, kw, sh, sw, ph, pw, dh, dw, out)
    expect = ref.conv_direct_nhwc(x, wt, bias, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
    if integer:
        assert np.array_equal(out, expect)
    mag = ref.conv_direct_nhwc(np.abs(x), np.abs(wt), np.abs(bias), kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
    assert_close_f32(out, expect, mag, wt.shape[0] + 1)


@pytest.mark.parametrize("kernel", [conv_blocked.conv_blocked_nhwc, conv_blocked.conv_blocked_nhwc_parallel])
@given(g=geometry(max_c=20), co=st.integers(1, 70), nvec=st.integers(1, 4), data=st.data())
def test_conv_blocked_nhwc_matches_reference(kernel, g, co, nvec, data):
    """Every tile width and vector count, masked channel tails (co not a multiple of 16), strides and
    dilations (a call per tap instead of per kernel row), on a padded input as the layer passes it."""
    x, (kh, kw, sh, sw, ph, pw, dh, dw), (oh, ow), rng, integer = g
    xp, w, bias, cop = _blocked_operands(g, kh * kw * x.shape[3], co)
    pmax = data.draw(st.integers(1, conv_blocked.TILE_PIXELS[nvec]), label="pmax")
    out = np.full((x.shape[0], oh, ow, co), np.nan, np.float32)
    kernel(xp, 0, 0, w, bias, kh, kw, sh, sw, dh, dw, nvec, pmax, *_no_epilogue(cop, out), out)
    expect = ref.conv_blocked_nhwc(xp, w, bias, kh, kw, sh, sw, dh, dw, oh, ow, co)
    if integer:
        assert np.array_equal(out, expect)
    mag = ref.conv_blocked_nhwc(np.abs(xp), np.abs(w), np.abs(bias), kh, kw, sh, sw, dh, dw, oh, ow, co)
    assert_close_f32(out, expect, mag, w.shape[0] + 1)
    # the weight in column panels of one or two tiles' width: the same bits
    panels = conv_blocked.pack_panels(w, 16 * nvec * data.draw(st.integers(1, 2), label="tiles a panel"))
    assert np.array_equal(ref.unpack_panels(panels, cop), w)
    packed = np.full_like(out, np.nan)
    kernel(xp, 0, 0, panels, bias, kh, kw, sh, sw, dh, dw, nvec, pmax, *_no_epilogue(cop, packed), packed)
    assert np.array_equal(packed, out)
    # the epilogue applied as tiles are stored equals the epilogue kernel's twin on that output
    affine, add = data.draw(st.booleans(), label="affine"), data.draw(st.booleans(), label="add")
    lo, hi = map(F32, data.draw(st.sampled_from([(-np.inf, np.inf), (0.0, np.inf), (0.0, 6.0), (-1.0, 1.0)]),
                                label="clip"))
    scale = np.zeros(cop, np.float32)
    shift = np.zeros(cop, np.float32)
    scale[:co], shift[:co] = rng.standard_normal(co), rng.standard_normal(co)
    res = rng.standard_normal(out.shape).astype(np.float32)
    fused = np.full_like(out, np.nan)
    act = data.draw(st.sampled_from([0, ACT_SIGMOID, ACT_HARDSIGMOID, ACT_HARDSWISH, ACT_LEAKYRELU]), label="act")
    alpha, beta = F32(0.2), F32(0.5)      # float32, as the layers pass them: one compiled signature
    kernel(xp, 0, 0, w, bias, kh, kw, sh, sw, dh, dw, nvec, pmax, scale, shift, affine, res if add else fused,
           add, lo, hi, act, alpha, beta, fused)
    expect = ref.epilogue_rows(out.reshape(-1, co), scale[:co] if affine else np.zeros(0, np.float32),
                               shift[:co] if affine else np.zeros(0, np.float32),
                               res.reshape(-1, co) if add else np.zeros((0, co), np.float32), lo, hi)
    if act:     # bit for bit what the activation kernel makes of the stored output
        activation_rows(expect, act, alpha, beta)
    assert np.array_equal(fused.reshape(-1, co), expect, equal_nan=True)


@given(n=st.integers(2, 14), hw=st.integers(1, 8), c=st.integers(1, 20), co=st.integers(1, 70), k=st.integers(1, 3),
       s=st.integers(1, 2), act=st.sampled_from([0, ACT_HARDSWISH]), add=st.booleans(), parallel=st.booleans(),
       seed=st.integers(0, 2**31))
def test_blocked_tiles_across_images_give_each_images_own_bits(n, hw, c, co, k, s, act, add, parallel, seed):
    """Where output lines are short the blocked kernel's tiles run across images (one pixel of up to
    pmax images): a batch gives, bit for bit, each image run alone (tiles along its lines), with the
    epilogue, and the reference's numbers."""
    rng = np.random.default_rng(seed)
    kernel = conv_blocked.conv_blocked_nhwc_parallel if parallel else conv_blocked.conv_blocked_nhwc
    h = max(hw, k)
    xp = rng.standard_normal((n, h, h, c)).astype(np.float32)
    cop, nvec = -(-co // 16) * 16, min(4, -(-co // 16))
    w = np.zeros((k * k * c, cop), np.float32)
    w[:, :co] = rng.standard_normal((k * k * c, co))
    bias = rng.standard_normal(cop).astype(np.float32)
    oh = (h - k) // s + 1
    res = rng.standard_normal((n, oh, oh, co)).astype(np.float32)
    scale = shift = np.zeros(cop, np.float32)

    def run(xs, r):
        out = np.full((xs.shape[0], oh, oh, co), np.nan, np.float32)
        kernel(xs, 0, 0, w, bias, k, k, s, s, 1, 1, nvec, conv_blocked.tile_pixels(nvec), scale, shift, False,
               r if add else out, add, F32(0), F32(np.inf), act, np.float32(0.2), np.float32(0.5), out)
        return out
    whole = run(xp, res)
    alone = np.concatenate([run(xp[b:b + 1], res[b:b + 1]) for b in range(n)])
    assert np.array_equal(whole, alone, equal_nan=True)
    if not act:
        expect = ref.conv_blocked_nhwc(xp, w, bias, k, k, s, s, 1, 1, oh, oh, co) + (res if add else 0)
        assert np.allclose(whole, np.maximum(expect, 0), rtol=1e-4, atol=1e-4 * (1 + np.abs(expect).max()))


@given(n=st.integers(1, 9), h=st.integers(1, 24), wd=st.integers(1, 24), c=st.integers(1, 40), co=st.integers(1, 70))
def test_flat_lines_of_a_1x1_convolution_divide_its_pixels(n, h, wd, c, co):
    """A 1 x 1 convolution's pixels run as equal lines: a divisor of the pixel count, longer than the
    image's lines, within the bounds, in a count the threads share evenly; else, where the image's
    lines would not split evenly, one line in FLAT_LINES parts; else the image's lines."""
    m = n * h * wd
    line, parts = conv_blocked.flat_line(m, wd, c, co)
    if parts > 1:
        assert line == m and parts == conv_blocked.FLAT_LINES and (n * h) % parts and n * h < 16
        assert 8 * parts <= m <= parts * conv_blocked.FLAT_PIXELS
        return
    if line == wd:
        return
    lines = m // line
    assert line > wd and lines * line == m and line <= conv_blocked.FLAT_PIXELS and lines >= conv_blocked.FLAT_LINES
    assert 4 * line * (c + co) <= conv_blocked.FLAT_BYTES
    assert lines % 4 == 0 or lines >= 16


@pytest.mark.parametrize("parallel", [False, True])
@given(n=st.integers(1, 6), h=st.integers(2, 20), wd=st.integers(1, 20), c=st.integers(1, 40), co=st.integers(1, 70),
       act=st.sampled_from([0, ACT_HARDSWISH]), add=st.booleans(), seed=st.integers(0, 2**31))
def test_1x1_convolution_as_long_lines_gives_the_references_numbers(parallel, n, h, wd, c, co, act, add, seed):
    """The blocked kernel runs a 1 x 1 convolution's batch as lines longer than its images' (above):
    integer-valued operands give the reference's numbers exactly, with the residual add and the
    activation per pixel as the epilogue kernels compute them."""
    rng = np.random.default_rng(seed)
    kernel = conv_blocked.conv_blocked_nhwc_parallel if parallel else conv_blocked.conv_blocked_nhwc
    x = rng.integers(-3, 4, (n, h, wd, c)).astype(np.float32)
    cop = -(-co // 16) * 16
    w = np.zeros((c, cop), np.float32)
    w[:, :co] = rng.integers(-3, 4, (c, co))
    bias = rng.integers(-3, 4, cop).astype(np.float32)
    res = rng.integers(-3, 4, (n, h, wd, co)).astype(np.float32)
    out = np.full((n, h, wd, co), np.nan, np.float32)
    zero = np.zeros(cop, np.float32)
    kernel(x, 0, 0, w, bias, 1, 1, 1, 1, 1, 1, 1, conv_blocked.tile_pixels(1), zero, zero, False, res if add else out,
           add, F32(-np.inf), F32(np.inf), act, np.float32(0.2), np.float32(0.5), out)
    expect = (ref.conv_blocked_nhwc(x, w, bias, 1, 1, 1, 1, 1, 1, h, wd, co) + (res if add else 0)).astype(np.float32)
    if act:
        activation_rows(expect.reshape(-1, co), act, F32(0.2), F32(0.5))
    assert np.array_equal(out, expect)


@pytest.mark.parametrize("parallel", [False, True])
@given(n=st.integers(1, 5), h=st.integers(1, 12), wd=st.integers(1, 12), c=st.integers(1, 20), co=st.integers(1, 40),
       k=st.sampled_from([1, 3]), add=st.booleans(), seed=st.integers(0, 2**31))
def test_a_weight_per_image_gives_each_image_its_own_convolution(parallel, n, h, wd, c, co, k, add, seed):
    """A weight of n times the rows (an SE block's channel scale folded in per sample:
    per_image_weight) convolves image b with rows b*k*k*c onwards, whether its lines run flattened
    (1 x 1) or not: each image's bits as its own call with its own weight, and the reference's
    numbers on integer-valued operands. per_image_weight against its twin, bit for bit."""
    rng = np.random.default_rng(seed)
    kernel = conv_blocked.conv_blocked_nhwc_parallel if parallel else conv_blocked.conv_blocked_nhwc
    x = rng.integers(-3, 4, (n, h + k - 1, wd + k - 1, c)).astype(np.float32)
    cop = -(-co // 16) * 16
    w = np.zeros((k * k * c, cop), np.float32)
    w[:, :co] = rng.integers(-3, 4, (k * k * c, co))
    s = rng.integers(-2, 3, (n, c)).astype(np.float32)
    ws = np.full((n * k * k * c, cop), np.nan, np.float32)
    conv_blocked.per_image_weight(w, s, ws)
    assert np.array_equal(ws, ref.per_image_weight(w, s))
    bias = rng.integers(-3, 4, cop).astype(np.float32)
    res = rng.integers(-3, 4, (n, h, wd, co)).astype(np.float32)
    zero = np.zeros(cop, np.float32)

    def run(xs, wb, rs):
        out = np.full(xs.shape[:1] + (h, wd, co), np.nan, np.float32)
        kernel(xs, 0, 0, wb, bias, k, k, 1, 1, 1, 1, 1, conv_blocked.tile_pixels(1), zero, zero, False,
               rs if add else out, add, F32(-np.inf), F32(np.inf), 0, np.float32(0.2), np.float32(0.5), out)
        return out
    out = run(x, ws, res)
    rows = k * k * c
    for b in range(n):
        assert np.array_equal(out[b:b + 1], run(x[b:b + 1], ws[b * rows:(b + 1) * rows], res[b:b + 1]))
    expect = ref.conv_blocked_nhwc(x * s[:, None, None, :], w, bias, k, k, 1, 1, 1, 1, h, wd, co) + (res if add else 0)
    assert np.array_equal(out, expect.astype(np.float32))


def test_tiles_take_the_activations_their_epilogue_computes():
    """The activations the tiles apply as they store (hard sigmoid, hard swish with its fixed 1/6 and
    1/2, leaky ReLU; undilated), with the parameters the activation kernel's vector code uses, and
    none (the kernel's pass) for sigmoid or dilated rows: against the twin, every code."""
    from nncomp.kernels.epilogue import tile_activation
    for act in range(5):
        for dw in (1, 2):
            got, want = tile_activation(act, 0.25, 0.75, dw), ref.tile_activation(act, 0.25, 0.75, dw)
            assert got[0] == want[0] and np.float32(got[1]) == want[1] and np.float32(got[2]) == want[2]


def test_1x1_convolution_lines_are_flattened_at_mobilenet_shapes():
    """The shapes the flattening is for take it (the property tests above draw both kinds)."""
    assert conv_blocked.flat_line(8 * 56 * 56, 56, 16, 72)[0] > 56
    assert conv_blocked.flat_line(8 * 7 * 7, 7, 96, 576) == (49, 1)
    assert conv_blocked.flat_line(1 * 7 * 7, 7, 96, 576) == (49, 4)          # one line of 49, 4 parts
    assert conv_blocked.flat_line(1 * 14 * 14, 14, 40, 240) == (49, 1)


@given(n=st.integers(1, 14), h=st.integers(1, 9), wd=st.integers(1, 9), c=st.integers(1, 20), co=st.integers(1, 70),
       k=st.integers(1, 3), s=st.integers(1, 2), pads=st.tuples(*[st.integers(0, 2)] * 4), act=st.sampled_from([0, ACT_HARDSWISH]),
       add=st.booleans(), parallel=st.booleans(), seed=st.integers(0, 2**31))
def test_blocked_kernel_reads_the_padding_as_zeros(n, h, wd, c, co, k, s, pads, act, add, parallel, seed):
    """On the unpadded input and the layer's padding (each under the kernel's size), tiles along lines
    (windows at a line's ends one pixel a tile) and across images give what the kernel gives on the
    zero-padded copy, with the epilogue."""
    t, b, l, r = (min(p, k - 1) for p in pads)
    oh, ow = (h + t + b - k) // s + 1, (wd + l + r - k) // s + 1
    assume(oh >= 1 and ow >= 1)
    rng = np.random.default_rng(seed)
    kernel = conv_blocked.conv_blocked_nhwc_parallel if parallel else conv_blocked.conv_blocked_nhwc
    x = rng.standard_normal((n, h, wd, c)).astype(np.float32)
    cop, nvec = -(-co // 16) * 16, min(4, -(-co // 16))
    w = np.zeros((k * k * c, cop), np.float32)
    w[:, :co] = rng.standard_normal((k * k * c, co))
    bias = rng.standard_normal(cop).astype(np.float32)
    res = rng.standard_normal((n, oh, ow, co)).astype(np.float32)
    scale, shift = rng.standard_normal(cop).astype(np.float32), rng.standard_normal(cop).astype(np.float32)

    def run(xs, pt, pl, rs):
        out = np.full((xs.shape[0], oh, ow, co), np.nan, np.float32)
        kernel(xs, pt, pl, w, bias, k, k, s, s, 1, 1, nvec, conv_blocked.tile_pixels(nvec), scale, shift, True,
               rs if add else out, add, F32(-1), F32(6), act, np.float32(0.2), np.float32(0.5), out)
        return out
    xp = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    assert np.array_equal(run(x, t, l, res), run(xp, 0, 0, res))
    one = int(rng.integers(0, n))       # one image alone: tiles along its lines
    assert np.array_equal(run(x[one:one + 1], t, l, res[one:one + 1]), run(xp[one:one + 1], 0, 0, res[one:one + 1]))


@given(n=st.integers(1, 3), h=st.integers(1, 9), wd=st.integers(1, 12), c=st.integers(1, 40), k=st.integers(1, 7),
       s=st.integers(1, 2), pads=st.tuples(*[st.integers(0, 4)] * 4), nvec=st.integers(1, 4), pmax=st.integers(1, 14),
       act=st.sampled_from([0, ACT_HARDSWISH]), add=st.booleans(), parallel=st.booleans(), seed=st.integers(0, 2**31))
def test_depthwise_kernel_reads_the_padding_as_zeros(n, h, wd, c, k, s, pads, nvec, pmax, act, add, parallel, seed):
    """On the unpadded input and the layer's padding (each under the kernel's size), the pixels at a
    line's ends as one-pixel tiles of the taps inside and the rows at the top and bottom with their
    taps inside give what the kernel gives on the zero-padded copy, with the epilogue."""
    t, b, l, r = (min(p, k - 1) for p in pads)
    oh, ow = (h + t + b - k) // s + 1, (wd + l + r - k) // s + 1
    assume(oh >= 1 and ow >= 1)
    pmax = min(pmax, conv_blocked.TILE_PIXELS[nvec])
    kernel = conv_depthwise.depthwise_blocked_nhwc_parallel if parallel else conv_depthwise.depthwise_blocked_nhwc
    x, w, bias, scale, shift, res = _depthwise_operands(seed, (n, h, wd, c), k, (oh, ow))

    def run(xs, pt, pl):
        out = np.full((n, oh, ow, c), np.nan, np.float32)
        kernel(xs, pt, pl, w, bias, k, k, s, s, 1, 1, nvec, pmax, scale, shift, True, res if add else out, add,
               F32(-1), F32(6), act, np.float32(0.2), np.float32(0.5), out)
        return out
    xp = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    assert np.array_equal(run(x, t, l), run(xp, 0, 0))


def _depthwise_operands(seed, shape, k, out_hw):
    """Seeded ``(x, w, bias, scale, shift, res)`` of a depthwise kernel call on ``shape`` (n, h, w, c)
    with a k x k kernel and an output of ``out_hw``; weight columns past c zero."""
    rng = np.random.default_rng(seed)
    n, _, _, c = shape
    x = rng.standard_normal(shape).astype(np.float32)
    cop = -(-c // 16) * 16
    w = np.zeros((k * k, cop), np.float32)
    w[:, :c] = rng.standard_normal((k * k, c))
    bias, scale, shift = (rng.standard_normal(cop).astype(np.float32) for _ in range(3))
    return x, w, bias, scale, shift, rng.standard_normal((n, *out_hw, c)).astype(np.float32)


@settings(max_examples=60)
@given(n=st.integers(1, 2), h=st.integers(1, 8), wd=st.integers(1, 70), c=st.integers(1, 64), k=st.sampled_from([3, 5, 7]),
       s=st.integers(1, 2), pad=st.booleans(), nvec=st.integers(1, 4), act=st.sampled_from([0, ACT_HARDSWISH]),
       add=st.booleans(), parallel=st.booleans(), seed=st.integers(0, 2**31))
def test_depthwise_sliding_tiles_give_the_general_tiles_bits(n, h, wd, c, k, s, pad, nvec, act, add, parallel, seed):
    """Lines whose taps step as their pixels do (stride = dilation: 1 and 1, or 2 and 2) run the
    sliding tiles (each input vector loaded once per kernel row; with 16 registers, AVX2, tiles of 8
    channels) for 3-, 5- and 7-tap rows (7: at most 2 vectors a tile, with AVX-512 only): the same
    bits as one-pixel tiles of the general kernel (pmax 1), epilogue included."""
    t = k // 2 * s if pad else 0
    oh, ow = (h + 2 * t - s * (k - 1) - 1) // s + 1, (wd + 2 * t - s * (k - 1) - 1) // s + 1
    assume(oh >= 1 and ow >= 1)
    kernel = conv_depthwise.depthwise_blocked_nhwc_parallel if parallel else conv_depthwise.depthwise_blocked_nhwc
    x, w, bias, scale, shift, res = _depthwise_operands(seed, (n, h, wd, c), k, (oh, ow))

    def run(pmax):
        out = np.full((n, oh, ow, c), np.nan, np.float32)
        xs = np.pad(x, ((0, 0), (t, t), (t, t), (0, 0))) if s > 1 else x     # dilated: no padding read
        kernel(xs, 0 if s > 1 else t, 0 if s > 1 else t, w, bias, k, k, s, s, s, s, nvec, pmax, scale, shift, True,
               res if add else out, add, F32(-1), F32(6), act, np.float32(0.2), np.float32(0.5), out)
        return out
    assert np.array_equal(run(conv_blocked.TILE_PIXELS[nvec]), run(1))


@pytest.mark.parametrize("kernel", [conv_depthwise.depthwise_blocked_nhwc, conv_depthwise.depthwise_blocked_nhwc_parallel])
@given(g=geometry(max_c=40), nvec=st.integers(1, 4), data=st.data())
def test_depthwise_blocked_nhwc_matches_reference(kernel, g, nvec, data):
    """The depthwise tiles (vector loads of each channel's input, the last one masked) on every
    channel count, stride, dilation and tile width, with and without the epilogue."""
    x, (kh, kw, sh, sw, ph, pw, dh, dw), (oh, ow), rng, integer = g
    c = x.shape[3]
    xp, w, bias, cop = _blocked_operands(g, kh * kw, c)
    pmax = data.draw(st.integers(1, conv_blocked.TILE_PIXELS[nvec]), label="pmax")
    out = np.full((x.shape[0], oh, ow, c), np.nan, np.float32)
    kernel(xp, 0, 0, w, bias, kh, kw, sh, sw, dh, dw, nvec, pmax, *_no_epilogue(cop, out), out)
    expect = ref.depthwise_blocked_nhwc(xp, w, bias, kh, kw, sh, sw, dh, dw, oh, ow, c)
    if integer:
        assert np.array_equal(out, expect)
    mag = ref.depthwise_blocked_nhwc(np.abs(xp), np.abs(w), np.abs(bias), kh, kw, sh, sw, dh, dw, oh, ow, c)
    assert_close_f32(out, expect, mag, kh * kw + 1)
    fused = np.full_like(out, np.nan)
    kernel(xp, 0, 0, w, bias, kh, kw, sh, sw, dh, dw, nvec, pmax, w[0], bias, True, out, True, F32(0), F32(6),
           ACT_HARDSWISH, F32(0), F32(0), fused)
    want = ref.epilogue_rows(out.reshape(-1, c), w[0, :c], bias[:c], out.reshape(-1, c), 0.0, 6.0)
    activation_rows(want, ACT_HARDSWISH, np.float32(0), np.float32(0))
    assert np.array_equal(fused.reshape(-1, c), want, equal_nan=True)


@pytest.mark.parametrize("kernel", [conv_blocked.conv_blocked_nhwc, conv_blocked.conv_blocked_nhwc_parallel])
@settings(max_examples=15, deadline=None)
@given(m=st.integers(1, 60), c=st.integers(16, 40), extra=st.integers(0, 40), nvec=st.integers(1, 4),
       act=st.sampled_from([0, ACT_HARDSWISH, ACT_SIGMOID]), panels=st.booleans(), seed=st.integers(0, 2**31))
def test_a_few_pixels_through_a_large_weight_run_as_channel_ranges(kernel, m, c, extra, nvec, act, panels, seed):
    """A 1 x 1 convolution of up to SLICE_PIXELS pixels through a weight of SLICE_BYTES or more runs
    as ranges of output channels (unless an activation needs its own pass over whole lines): the
    same bits as the same pixels among more than FLAT_PIXELS (pixel ranges), and close to the twin."""
    rng = np.random.default_rng(seed)
    co = -(-conv_blocked.SLICE_BYTES // (4 * c)) + extra        # the weight at or just past the bound
    cop = -(-co // 16) * 16
    w = np.zeros((c, cop), np.float32)
    w[:, :co] = rng.standard_normal((c, co))
    bias = np.zeros(cop, np.float32)
    bias[:co] = rng.standard_normal(co)
    x = rng.standard_normal((1, 1, conv_blocked.FLAT_PIXELS + 4, c)).astype(np.float32)
    wk = conv_blocked.pack_panels(w, 16 * nvec) if panels else w
    pmax = conv_blocked.TILE_PIXELS[nvec]
    args = (F32(-np.inf), F32(np.inf), act, F32(0.2), F32(0.5))
    few = np.full((1, 1, m, co), np.nan, np.float32)
    kernel(x[:, :, :m], 0, 0, wk, bias, 1, 1, 1, 1, 1, 1, nvec, pmax, bias, bias, False, few, False, *args, few)
    many = np.full((1, 1, x.shape[2], co), np.nan, np.float32)
    kernel(x, 0, 0, wk, bias, 1, 1, 1, 1, 1, 1, nvec, pmax, bias, bias, False, many, False, *args, many)
    assert np.array_equal(few, many[:, :, :m])
    if act == 0:
        expect = ref.conv_blocked_nhwc(x[:, :, :m], w, bias, 1, 1, 1, 1, 1, 1, 1, m, co)
        mag = ref.conv_blocked_nhwc(np.abs(x[:, :, :m]), np.abs(w), np.abs(bias), 1, 1, 1, 1, 1, 1, 1, m, co)
        assert_close_f32(few, expect, mag, c + 1)


@pytest.mark.parametrize("kernel", [conv_blocked.conv_blocked_pooled_nhwc, conv_blocked.conv_blocked_pooled_nhwc_parallel])
@given(g=geometry(max_c=20), co=st.integers(1, 40), nvec=st.integers(1, 3), pool=st.integers(2, 3), data=st.data())
def test_conv_blocked_pooled_nhwc_matches_reference(kernel, g, co, nvec, pool, data):
    """The blocked convolution with its max-pool: lines computed pool at a time into each thread's
    buffer, pooled from there (floor mode: trailing lines and columns dropped)."""
    x, (kh, kw, sh, sw, ph, pw, dh, dw), (oh, ow), rng, integer = g
    if oh < pool or ow < pool:
        return
    xp, w, bias, cop = _blocked_operands(g, kh * kw * x.shape[3], co)
    pmax = data.draw(st.integers(1, conv_blocked.TILE_PIXELS[nvec]), label="pmax")
    lines = np.full((numba.get_num_threads(), pool, ow, co), np.nan, np.float32)
    out = np.full((x.shape[0], oh // pool, ow // pool, co), np.nan, np.float32)
    kernel(xp, w, bias, kh, kw, sh, sw, dh, dw, nvec, pmax, pool, lines, out)
    expect = ref.conv_blocked_pooled_nhwc(xp, w, bias, kh, kw, sh, sw, dh, dw, pool, oh, ow, co)
    if integer:
        assert np.array_equal(out, expect)
    # the same float32 values as the unpooled kernel's, pooled exactly
    full = np.empty((x.shape[0], oh, ow, co), np.float32)
    conv_blocked.conv_blocked_nhwc(xp, 0, 0, w, bias, kh, kw, sh, sw, dh, dw, nvec, pmax, *_no_epilogue(cop, full), full)
    pooled = ref.maxpool_nhwc(full, pool, pool, pool, pool, 0, 0, 1, 1, oh // pool, ow // pool)
    assert np.array_equal(out, pooled)
    panels = np.full_like(out, np.nan)          # the weight in column panels: the same bits
    kernel(xp, conv_blocked.pack_panels(w, 16 * nvec), bias, kh, kw, sh, sw, dh, dw, nvec, pmax, pool, lines, panels)
    assert np.array_equal(panels, out)


def _blocked_operands(g, k, co):
    """The padded input, weight (k, cop) and bias (cop,) of a blocked-kernel call, zero past co."""
    x, (kh, kw, sh, sw, ph, pw, dh, dw), _, rng, integer = g
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    cop = -(-co // 16) * 16
    w = np.zeros((k, cop), np.float32)
    w[:, :co] = rng.standard_normal((k, co))
    bias = np.zeros(cop, np.float32)
    bias[:co] = rng.standard_normal(co)
    if integer:
        w, bias = np.round(w * 2), np.round(bias * 2)
    return xp, w, bias, cop


def _no_epilogue(cop, out):
    """The blocked kernel's epilogue arguments that leave its output as it is."""
    z = np.zeros(cop, np.float32)
    return z, z, False, out, False, F32(-np.inf), F32(np.inf), 0, F32(0), F32(0)


@pytest.mark.parametrize("kernel", [pool.global_mean_nhwc, pool.global_mean_nhwc_parallel])
@given(n=st.integers(1, 3), p=st.integers(1, 300), c=st.integers(1, 150), seed=st.integers(0, 2**31))
def test_global_mean_nhwc_matches_reference(kernel, n, p, c, seed):
    """The float64 sum makes it the float64 mean rounded, up to a last bit where the two sums'
    orders differ."""
    x = np.random.default_rng(seed).standard_normal((n, p, c)).astype(np.float32)
    out = np.full((n, c), np.nan, np.float32)
    kernel(x, out)
    expect = ref.global_mean_nhwc(x)
    assert np.allclose(out, expect, rtol=2e-7, atol=1e-7 * np.abs(x).max())


@pytest.mark.parametrize("kernel", [conv.conv_pad_nhwc, conv.conv_pad_nhwc_parallel])
@given(g=geometry(), n0=st.integers(0, 1), g_n=st.integers(1, 3), extra=st.tuples(*[st.integers(0, 3)] * 4))
def test_conv_pad_nhwc_matches_reference(kernel, g, n0, g_n, extra):
    x = g[0]
    n0 = min(n0, x.shape[0] - 1)
    t, b, l, r = extra
    out = np.full((g_n, x.shape[1] + t + b, x.shape[2] + l + r, x.shape[3]), np.nan, np.float32)
    expect = ref.conv_pad_nhwc(x, n0, t, l, out)
    kernel(x, n0, t, l, out)
    assert np.array_equal(out, expect, equal_nan=True)


@pytest.mark.parametrize("kernel", [conv.conv_crop_bias_nhwc, conv.conv_crop_bias_nhwc_parallel])
@given(g=geometry(), n0=st.integers(0, 2), g_n=st.integers(1, 3), extra=st.tuples(st.integers(0, 2), st.integers(0, 2)))
def test_conv_crop_bias_nhwc_matches_reference(kernel, g, n0, g_n, extra):
    x, _, _, rng, integer = g
    n, oh, ow, co = x.shape
    n0 = min(n0, n - 1)
    grid = rng.standard_normal((g_n, oh + extra[0], ow + extra[1], co)).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32)
    if integer:
        grid, bias = np.round(grid * 4), np.round(bias * 4)
    out = x.copy()
    expect = ref.conv_crop_bias_nhwc(grid, bias, n0, out)
    kernel(grid, bias, n0, out)
    mag = ref.conv_crop_bias_nhwc(np.abs(grid), np.abs(bias), n0, np.abs(out))
    assert_close_f32(out, expect, mag, 1)   # one float32 addition per element
    if integer:
        assert np.array_equal(out, expect)


@pytest.mark.parametrize("kernel", [pool.maxpool_nhwc, pool.maxpool_nhwc_parallel])
@given(g=geometry(), nans=st.integers(0, 2))
def test_maxpool_nhwc_matches_reference(kernel, g, nans):
    """Including NaN inputs, which win their windows wherever they sit in them."""
    x, (kh, kw, sh, sw, ph, pw, dh, dw), _, rng, _ = g
    x = x.copy()
    x.flat[rng.integers(x.size, size=nans)] = np.nan
    ph, pw = min(ph, kh // 2), min(pw, kw // 2)
    oh = _window_out(x.shape[1], kh, sh, ph, ph, dh, False)
    ow = _window_out(x.shape[2], kw, sw, pw, pw, dw, False)
    out = np.empty((x.shape[0], oh, ow, x.shape[3]), np.float32)
    kernel(x, kh, kw, sh, sw, ph, pw, dh, dw, out)
    assert np.array_equal(out, ref.maxpool_nhwc(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow), equal_nan=True)


@pytest.mark.parametrize("kernel", [pool.maxpool_nhwc, pool.maxpool_nhwc_parallel])
@given(n=st.integers(1, 2), h=st.integers(1, 7), w=st.integers(1, 9), c=st.integers(1, 40), k=st.integers(1, 5),
       pads=st.tuples(*[st.integers(0, 2)] * 4), nan=st.sampled_from([None, np.nan, -np.nan]), seed=st.integers(0, 2**31))
def test_maxpool_stride_one_lines_match_reference(kernel, n, h, w, c, k, pads, nan, seed):
    """Stride 1 runs each tap over whole output lines (contiguous runs of the input line): any
    padding on each side (the bottom and right ones implied by the output's size, as SAME_UPPER
    pads), NaNs of either sign winning their windows."""
    t, b, l, r = (min(p, k - 1) for p in pads)
    oh, ow = h + t + b - k + 1, w + l + r - k + 1
    assume(oh >= 1 and ow >= 1 and t <= k // 2 and l <= k // 2)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    if nan is not None:
        x.flat[rng.integers(x.size)] = nan
    out = np.full((n, oh, ow, c), 7.0, np.float32)
    kernel(x, k, k, 1, 1, t, l, 1, 1, out)
    assert np.array_equal(out, ref.maxpool_nhwc(x, k, k, 1, 1, t, l, 1, 1, oh, ow), equal_nan=True)


def test_maxpool_propagates_nan():
    x = np.zeros((1, 2, 2, 1), np.float32)
    x[0, 1, 0, 0] = np.nan
    out = np.empty((1, 1, 1, 1), np.float32)
    pool.maxpool_nhwc(x, 2, 2, 2, 2, 0, 0, 1, 1, out)
    assert np.isnan(out).all()


@pytest.mark.parametrize("kernel", [pool.avgpool_nhwc, pool.avgpool_nhwc_parallel])
@given(g=geometry(), include=st.booleans(), ceil=st.booleans())
@example(g=(np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1), (3, 3, 2, 2, 1, 1, 1, 1), (3, 3),
            np.random.default_rng(0), True), include=True, ceil=True)
def test_avgpool_nhwc_matches_reference(kernel, g, include, ceil):
    x, (kh, kw, sh, sw, ph, pw, _, _), _, _, _ = g
    ph, pw = min(ph, kh // 2), min(pw, kw // 2)
    oh = _window_out(x.shape[1], kh, sh, ph, ph, 1, ceil)
    ow = _window_out(x.shape[2], kw, sw, pw, pw, 1, ceil)
    out = np.empty((x.shape[0], oh, ow, x.shape[3]), np.float32)
    kernel(x, kh, kw, sh, sw, ph, pw, ph, pw, include, out)
    expect = ref.avgpool_nhwc(x, kh, kw, sh, sw, ph, pw, ph, pw, include, oh, ow)
    mag = ref.avgpool_nhwc(np.abs(x), kh, kw, sh, sw, ph, pw, ph, pw, include, oh, ow)
    assert_close_f32(out, expect, mag, kh * kw + 1)


def _strided(rng, rows, cols, pad):
    """A float32 (rows, cols) column slice of a wider array: its row stride exceeds its width."""
    return rng.standard_normal((rows, cols + pad)).astype(np.float32)[:, pad:]


needs_one_pool = pytest.mark.skipif(not blas.ONE_POOL or numba.config.DISABLE_JIT,
                                    reason="NumPy's BLAS has no 64-bit CBLAS symbols here, or no JIT")


@needs_one_pool
@given(m=st.integers(1, 12), n=st.integers(1, 12), k=st.integers(1, 12), pads=st.tuples(*[st.integers(0, 3)] * 3),
       beta=st.sampled_from([0.0, 1.0]), parts=st.integers(1, 4), seed=st.integers(0, 2**31))
def test_blas_gemm_rows_matches_reference(m, n, k, pads, beta, parts, seed):
    rng = np.random.default_rng(seed)
    x, w, out_full = _strided(rng, m, k, pads[0]), _strided(rng, n, k, pads[1]), _strided(rng, m, n + pads[2], 0)
    out = out_full[:, pads[2]:]
    before = out_full.copy()
    expect = ref.blas_gemm_rows(0, x, w, out, beta, parts)
    mag = ref.blas_gemm_rows(0, np.abs(x), np.abs(w), np.abs(out), beta, parts)
    blas.blas_gemm_rows(blas.SGEMM_AT, x, w, out, beta, parts)
    assert_close_f32(out, expect, mag, k + 1)
    assert np.array_equal(out_full[:, :pads[2]], before[:, :pads[2]])


@needs_one_pool
@given(m=st.integers(1, 12), n=st.integers(1, 12), k=st.integers(1, 12), pads=st.tuples(*[st.integers(0, 3)] * 2),
       parts=st.integers(1, 4), seed=st.integers(0, 2**31))
def test_blas_gemm_t_matches_reference(m, n, k, pads, parts, seed):
    rng = np.random.default_rng(seed)
    x, w = _strided(rng, m, k, pads[0]), _strided(rng, n, k, pads[1])
    out_t = np.full((n, m), np.nan, np.float32)
    blas.blas_gemm_t(blas.SGEMM_AT, x, w, out_t, parts)
    assert_close_f32(out_t, ref.blas_gemm_t(0, x, w, out_t, parts), ref.blas_gemm_t(0, np.abs(x), np.abs(w), out_t, parts), k)


@needs_one_pool
@given(m=st.integers(1, 12), n=st.integers(1, 12), k=st.integers(1, 12), pads=st.tuples(*[st.integers(0, 3)] * 3),
       parts=st.integers(1, 4), seed=st.integers(0, 2**31))
def test_blas_gemm_kn_matches_reference(m, n, k, pads, parts, seed):
    """The product with a weight stored (k, n), columns cut into parts, written in row order (strided
    operands; the padding of the output's rows untouched)."""
    rng = np.random.default_rng(seed)
    x, wt, out_full = _strided(rng, m, k, pads[0]), _strided(rng, k, n, pads[1]), _strided(rng, m, n + pads[2], 0)
    out = out_full[:, pads[2]:]
    before = out_full.copy()
    blas.blas_gemm_kn(blas.SGEMM_AT, x, wt, out, parts)
    assert_close_f32(out, ref.blas_gemm_kn(0, x, wt, out, parts), ref.blas_gemm_kn(0, np.abs(x), np.abs(wt), out, parts), k)
    assert np.array_equal(out_full[:, :pads[2]], before[:, :pads[2]])


@needs_one_pool
@given(n=st.integers(1, 12), k=st.integers(1, 12), pad=st.integers(0, 3), parts=st.integers(1, 4),
       seed=st.integers(0, 2**31))
def test_blas_gemv_matches_reference(n, k, pad, parts, seed):
    rng = np.random.default_rng(seed)
    w, x = _strided(rng, n, k, pad), rng.standard_normal(k).astype(np.float32)
    out = np.full(n, np.nan, np.float32)
    blas.blas_gemv(blas.SGEMV_AT, w, x, out, parts)
    assert_close_f32(out, ref.blas_gemv(0, w, x, out, parts), ref.blas_gemv(0, np.abs(w), np.abs(x), out, parts), k)


@needs_one_pool
@pytest.mark.parametrize("kernel", [conv_gemm.im2col_gemm_nhwc, conv_gemm.im2col_gemm_nhwc_parallel])
@given(g=geometry(), co=st.integers(1, 40), lines=st.integers(1, 4), parts=st.integers(1, 3),
       spare=st.integers(0, 5), pool=st.sampled_from([1, 1, 2, 3]), nan=st.booleans())
def test_im2col_gemm_nhwc_matches_reference(kernel, g, co, lines, parts, spare, pool, nan):
    """Every blocking, part count and product orientation (block rows above and below co), with
    and without the max-pool, with work buffers bigger than needed and full of NaN, and a NaN input
    (it must win its pooling windows)."""
    x, (kh, kw, sh, sw, ph, pw, dh, dw), (oh, ow), rng, _ = g
    if oh % pool or ow % pool:      # the kernel's contract: a conv output of whole pooling windows
        pool = 1
    lines *= pool                   # and blocks of whole windows
    if nan:
        x = x.copy()
        x.flat[rng.integers(x.size)] = np.nan
    k = kh * kw * x.shape[3]
    w = rng.standard_normal((co, k)).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32)
    cols = np.full((parts, lines * ow + spare, k), np.nan, np.float32)
    tmp = np.full((parts, lines * ow * co + spare), np.nan, np.float32)
    out = np.full((x.shape[0], oh // pool, ow // pool, co), np.nan, np.float32)
    kernel(blas.SGEMM_AT, x, w, bias, kh, kw, sh, sw, ph, pw, dh, dw, lines, pool, cols, tmp, out)
    args = (kh, kw, sh, sw, ph, pw, dh, dw, lines, pool, cols, tmp, oh, ow)
    expect = ref.im2col_gemm_nhwc(0, x, w, bias, *args)
    assert np.array_equal(np.isnan(out), np.isnan(expect))
    mag = ref.im2col_gemm_nhwc(0, np.abs(x), np.abs(w), np.abs(bias), *args)
    ok = ~np.isnan(expect)
    assert_close_f32(out[ok], expect[ok], mag[ok], k + 1)


@pytest.mark.parametrize("m", [0, 1, 3, 300])
def test_matmul_nt_every_path(m, monkeypatch):
    """Serial and split products at every batch regime give x @ w.T, and OpenBLAS's thread
    setting is restored after each call."""
    rng = np.random.default_rng(m)
    x, w = rng.standard_normal((m, 40)).astype(np.float32), rng.standard_normal((30, 40)).astype(np.float32)
    expect = x.astype(np.float64) @ w.T.astype(np.float64)
    mag = np.abs(x).astype(np.float64) @ np.abs(w).T
    before = blas._get_threads() if blas.ONE_POOL else None
    for split in (1 << 40, 1):          # never split, always split
        monkeypatch.setattr(blas, "SPLIT_MIN_WORK", split)
        monkeypatch.setattr(blas, "GEMV_SPLIT_MIN_WORK", split)
        assert_close_f32(blas.matmul_nt(x, w), expect, mag, 40)
        out = np.zeros((m, 30), np.float32)
        assert_close_f32(blas.gemm_nt(x, w, out), expect, mag, 40)
    if blas.ONE_POOL:
        assert blas._get_threads() == before


@pytest.mark.parametrize("backend", ["default", "scipy"])
@given(m=st.integers(0, 9), n=st.integers(1, 9), k=st.integers(0, 9), pads=st.tuples(*[st.integers(0, 3)] * 4),
       beta=st.sampled_from([0.0, 1.0]), seed=st.integers(0, 2**31))
def test_gemm_nt_strided_operands(backend, m, n, k, pads, beta, seed):
    rng = np.random.default_rng(seed)
    # operands are column slices of wider arrays: their BLAS leading dimension exceeds their width
    x = rng.standard_normal((m, k + pads[0])).astype(np.float32)[:, pads[0]:]
    w = rng.standard_normal((n, k + pads[1] + pads[2])).astype(np.float32)[:, pads[1]:pads[1] + k]
    out_full = rng.standard_normal((m, n + pads[3])).astype(np.float32)
    out = out_full[:, pads[3]:]
    before = out_full.copy()
    expect = x.astype(np.float64) @ w.T.astype(np.float64) + beta * out.astype(np.float64)
    mag = np.abs(x).astype(np.float64) @ np.abs(w).T + beta * np.abs(out)
    if backend == "scipy":
        assert blas._scipy_gemm_nt(x, w, out, beta) is None
    else:
        assert blas.gemm_nt(x, w, out, beta) is out
    assert_close_f32(out, expect, mag, k + 1)
    assert np.array_equal(out_full[:, :pads[3]], before[:, :pads[3]])     # nothing outside out written


def test_gemm_nt_refuses_bad_operands():
    x, w = np.ones((4, 3), np.float32), np.ones((2, 3), np.float32)
    with pytest.raises(TypeError, match="float32"):
        blas.gemm_nt(x.astype(np.float64), w, np.empty((4, 2), np.float32))
    with pytest.raises(ValueError, match="shapes"):
        blas.gemm_nt(x, w, np.empty((4, 3), np.float32))
    with pytest.raises(ValueError, match="unit column stride"):
        blas.gemm_nt(np.ones((4, 6), np.float32)[:, ::2], w, np.empty((4, 2), np.float32))
    with pytest.raises(ValueError, match="overlap"):
        big = np.ones((4, 3), np.float32)
        blas.gemm_nt(big, w, big[:, :2])


@given(n=st.integers(1, 3), c=st.integers(1, 9), h=st.integers(1, 7), w=st.integers(1, 40),
       parallel=st.booleans(), seed=st.integers(0, 2**31))
def test_to_nhwc_matches_reference(n, c, h, w, parallel, seed):
    x = np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(np.float32)
    got = np.full((n, h, w, c), np.nan, np.float32)
    want = np.empty_like(got)
    (layout.to_nhwc_parallel if parallel else layout.to_nhwc)(x, got)
    ref.to_nhwc(x, want)
    assert np.array_equal(got, want)
