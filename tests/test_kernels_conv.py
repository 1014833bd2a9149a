"""Conv and pool kernels against their NumPy twins (tests/reference.py), serial and parallel builds."""
import numpy as np
import pytest
from hypothesis import example, given, strategies as st

import reference as ref
from conftest import assert_close_f32
from nncomp.kernels import conv, pool
from nncomp.layers import _window_out


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


@pytest.mark.parametrize("kernel", [pool.maxpool_nhwc, pool.maxpool_nhwc_parallel])
@given(g=geometry())
def test_maxpool_nhwc_matches_reference(kernel, g):
    x, (kh, kw, sh, sw, ph, pw, dh, dw), _, _, _ = g
    ph, pw = min(ph, kh // 2), min(pw, kw // 2)
    oh = _window_out(x.shape[1], kh, sh, ph, ph, dh, False)
    ow = _window_out(x.shape[2], kw, sw, pw, pw, dw, False)
    out = np.empty((x.shape[0], oh, ow, x.shape[3]), np.float32)
    kernel(x, kh, kw, sh, sw, ph, pw, dh, dw, out)
    assert np.array_equal(out, ref.maxpool_nhwc(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow))


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
