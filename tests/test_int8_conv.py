"""The implicit-GEMM int8 convolution (nncomp/kernels/int8_conv.py, nncomp/layers/conv_int8.py):
kernels against their NumPy twins, and Conv2D layers and whole quantized models that give the same
bits with the fused kernel as with the chunked im2col path it replaces."""
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import reference as ref
from nncomp.errors import InputError
from nncomp.kernels import int8_amx as amx, int8_conv as kc, int8_vnni as vnni, isa
from nncomp.layers import conv_int8
from nncomp.layers.conv import Conv2D
from nncomp.matrices.int8 import Int8Matrix, pack_panels

needs_vnni = pytest.mark.skipif(not vnni.HAVE_BLOCK, reason="CPU (or JIT target) lacks AVX-512 VNNI and AVX2")
F = np.float32


@st.composite
def _geometry(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    oh, ow = draw(st.integers(1, 6)), draw(st.integers(1, 30))
    return kh, kw, sh, sw, dh, dw, oh, ow


@needs_vnni
@pytest.mark.parametrize("parallel", [False, True])
@settings(max_examples=50, deadline=None)
@given(geo=_geometry(), n=st.integers(1, 3), c=st.integers(1, 48), co=st.integers(1, 90), lines=st.integers(1, 5),
       epilogue=st.sampled_from(["none", "affine", "res", "clip", "act", "all", "nan"]), extreme=st.booleans(),
       pool=st.sampled_from([0, 0, 2, 3]), seed=st.integers(0, 2**31))
@example(geo=(3, 3, 1, 1, 1, 1, 5, 28), n=2, c=16, co=16, lines=2, epilogue="all", extreme=False, pool=0, seed=0)
@example(geo=(3, 3, 1, 1, 1, 1, 2, 13), n=1, c=32, co=70, lines=1, epilogue="none", extreme=True, pool=0, seed=1)
@example(geo=(3, 3, 1, 1, 1, 1, 6, 28), n=2, c=16, co=32, lines=2, epilogue="clip", extreme=False, pool=2, seed=2)
@example(geo=(3, 3, 1, 1, 1, 1, 4, 10), n=1, c=8, co=20, lines=1, epilogue="nan", extreme=False, pool=2, seed=3)
@example(geo=(3, 3, 1, 1, 1, 1, 6, 9), n=2, c=4, co=48, lines=3, epilogue="nan", extreme=True, pool=3, seed=4)
@example(geo=(3, 3, 1, 1, 1, 1, 5, 28), n=2, c=1, co=16, lines=2, epilogue="clip", extreme=False, pool=2, seed=5)
@example(geo=(5, 5, 1, 2, 1, 1, 4, 12), n=1, c=3, co=20, lines=1, epilogue="all", extreme=True, pool=0, seed=7)
def test_int8_conv_kernel_matches_its_twin(parallel, geo, n, c, co, lines, epilogue, extreme, pool, seed):
    """The padded codes (borders, channel padding, NaN and infinities counted), then the product:
    rows of 12/8/4 and remainders, 1-4 panels per unit and several units, dilated taps (one segment
    per tap) and whole kernel rows, every part of the epilogue (no residual with a pool), a max-pool
    over blocks of lines (trailing lines and columns dropped)."""
    rng = np.random.default_rng(seed)
    kh, kw, sh, sw, dh, dw, oh, ow = geo
    if pool and (oh < pool or ow < pool):
        pool = 0
    if pool and epilogue in ("res", "all"):
        epilogue = "clip"
    packed = c < 4 and dw == 1 and rng.integers(0, 2) == 1     # kernel rows of kw * c codes rounded up to 4
    cp = c if packed else -(-c // 4) * 4 + 4 * int(rng.integers(0, 2))
    kwb = -(-kw * c // 4) * 4 if packed else kw * cp
    hp, wp_ = (oh - 1) * sh + (kh - 1) * dh + 1 + int(rng.integers(0, 2)), (ow - 1) * sw + (kw - 1) * dw + 1
    if packed:
        wp_ = max(wp_, (ow - 1) * sw + -(-kwb // c))
    top, left = int(rng.integers(0, min(3, hp))), int(rng.integers(0, min(3, wp_)))
    h, w = max(1, hp - top - int(rng.integers(0, 3))), max(1, wp_ - left - int(rng.integers(0, 3)))
    h, w = min(h, hp - top), min(w, wp_ - left)
    scale, zero = F(rng.uniform(0.01, 0.1)), int(rng.integers(0, 256))
    if extreme:     # every product at its largest magnitude: codes 255 (inputs far above the range)
        x = np.full((n, h, w, c), 1e6, F)
        q = np.full((co, kh * kwb), -128, np.int8)
        zero = 0
    else:
        x = (rng.standard_normal((n, h, w, c)) * 3).astype(F)
        q = rng.integers(-127, 128, (co, kh * kwb), dtype=np.int8)
    if epilogue == "nan":
        x.flat[rng.integers(0, x.size)] = rng.choice([np.nan, np.inf, -np.inf])
    if packed:
        q.reshape(co, kh, kwb)[:, :, kw * c:] = 0       # a kernel row's padding has zero weights
    else:
        q.reshape(co, kh * kw, cp)[:, :, c:] = 0        # the channel padding has zero weights
    wp = pack_panels(q, 16)
    zc = (np.int64(zero) * q.sum(1, dtype=np.int64)).astype(np.int32)
    mul = (scale * rng.random(co).astype(F)).astype(F)
    bias = rng.standard_normal(co).astype(F)
    none, rows = np.zeros(0, F), n * oh * ow
    escale = rng.random(co).astype(F) if epilogue in ("affine", "all") else none
    eshift = rng.standard_normal(co).astype(F) if epilogue in ("affine", "all") else none
    res = rng.standard_normal((rows, co)).astype(F) if epilogue in ("res", "all") else np.zeros((0, co), F)
    lo, hi = (F(0), F(6)) if epilogue in ("clip", "all") else (F(-np.inf), F(np.inf))
    act, alpha, beta = (4, F(0.1), F(0)) if epilogue in ("act", "all") else (0, F(0), F(0))
    xp = np.full((n, hp, wp_, cp), 7, vnni.CODE)
    rows_out = n * (oh // pool) * (ow // pool) if pool else rows
    out = np.full((rows_out, co), np.nan, F)
    kern = kc.int8_conv_nhwc_parallel if parallel else kc.int8_conv_nhwc
    tail = (kh, kw, sh, sw, dh, dw, oh, ow, wp, zc, mul, bias, escale, eshift, res, lo, hi, act, alpha, beta)
    bad = kern(x, scale, zero, top, left, xp, *tail, pool, lines, out)
    want_bad, want_xp, want = ref.int8_conv_nhwc(x, scale, zero, top, left, xp.shape, *tail, pool)
    assert (bad > 0) == (want_bad > 0) and np.array_equal(xp, want_xp)
    if not bad:
        assert np.array_equal(out, want)


@pytest.mark.skipif(not amx.HAVE_AMX, reason="no AMX tiles on this CPU (or the OS refused the tile state)")
@pytest.mark.parametrize("parallel", [False, True])
@settings(max_examples=40, deadline=None)
@given(kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(1, 3), dh=st.integers(1, 2),
       oh=st.integers(1, 6), ow=st.integers(1, 40), n=st.integers(1, 3), c=st.integers(1, 48), co=st.integers(1, 90),
       pool=st.sampled_from([0, 2]), epilogue=st.sampled_from(["none", "all"]), seed=st.integers(0, 2**31))
@example(kh=3, kw=3, sh=1, sw=1, dh=1, oh=4, ow=28, n=2, c=16, co=16, pool=0, epilogue="all", seed=0)
@example(kh=3, kw=3, sh=1, sw=2, dh=1, oh=3, ow=17, n=1, c=24, co=48, pool=2, epilogue="all", seed=1)
def test_int8_conv_amx_kernel_matches_its_twin(parallel, kh, kw, sh, sw, dh, oh, ow, n, c, co, pool, epilogue, seed):
    """The tiles' kernel (kernels/int8_conv_amx.py): 16-pixel tiles (partial ones at a line's end),
    one or two 16-channel panels a block, kernel rows padded to 64 codes with zero weights (the bytes
    read past them: anything, here 7s and the slack), the epilogue and pool of the VNNI kernel."""
    from nncomp.kernels import int8_conv_amx as ka
    rng = np.random.default_rng(seed)
    if pool and (oh < 2 or ow < 2):
        pool = 0
    cp = -(-c // 4) * 4
    kwb = kw * cp
    hp, wp_ = (oh - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + kw
    top, left = int(rng.integers(0, min(2, hp))), int(rng.integers(0, min(2, wp_)))
    h, w = hp - top, wp_ - left
    scale, zero = F(rng.uniform(0.01, 0.1)), int(rng.integers(0, 256))
    x = (rng.standard_normal((n, h, w, c)) * 3).astype(F)
    q = rng.integers(-127, 128, (co, kh, ka.kw64(kwb)), dtype=np.int8)
    q[:, :, kwb:] = 0
    q.reshape(co, kh, -1)[:, :, :kwb].reshape(co, kh, kw, cp)[..., c:] = 0
    wp = pack_panels(q.reshape(co, -1), 16)
    zc = (np.int64(zero) * q.sum(axis=(1, 2), dtype=np.int64)).astype(np.int32)
    mul = (scale * rng.random(co).astype(F)).astype(F)
    bias = rng.standard_normal(co).astype(F)
    none, rows = np.zeros(0, F), n * oh * ow
    full = epilogue == "all"
    escale, eshift = (rng.random(co).astype(F), rng.standard_normal(co).astype(F)) if full else (none, none)
    res = rng.standard_normal((rows, co)).astype(F) if full and not pool else np.zeros((0, co), F)
    lo, hi = (F(0), F(6)) if full else (F(-np.inf), F(np.inf))
    size = n * hp * wp_ * cp
    xp = np.full(size + ka.slack(sw, cp, kwb), 7, vnni.CODE)[:size].reshape(n, hp, wp_, cp)
    out = np.full((n * (oh // pool) * (ow // pool) if pool else rows, co), np.nan, F)
    kern = ka.int8_conv_amx_nhwc_parallel if parallel else ka.int8_conv_amx_nhwc
    tail = (kh, kw, sh, sw, dh, 1, oh, ow, wp, zc, mul, bias, escale, eshift, res, lo, hi, 0, F(0), F(0))
    assert kern(x, scale, zero, top, left, xp, *tail, pool, 2, out) == 0
    _, want_xp, want = ref.int8_conv_amx_nhwc(x, scale, zero, top, left, xp.shape, *tail, pool)
    assert np.array_equal(xp, want_xp) and np.array_equal(out, want)


@needs_vnni
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("lines", [9, 40])
def test_int8_conv_epilogue_over_several_lines_matches_its_twin(parallel, lines):
    """A task's lines get their epilogue in chunks of up to FINISH_VALUES values (here 40 lines of
    30 x 96 values: cut after 23 lines), with the residual rows cut alike."""
    rng = np.random.default_rng(lines)
    n, h, w, c, co = 1, 40, 30, 16, 96
    assert lines * w * co > kc.FINISH_VALUES or lines < 10
    x = (rng.standard_normal((n, h, w, c)) * 2).astype(F)
    q = rng.integers(-127, 128, (co, 9 * c), dtype=np.int8)
    wp, zero, scale = pack_panels(q, 16), 5, F(0.03)
    zc = (np.int64(zero) * q.sum(1, dtype=np.int64)).astype(np.int32)
    mul, bias = (scale * rng.random(co)).astype(F), rng.standard_normal(co).astype(F)
    escale, eshift = rng.random(co).astype(F), rng.standard_normal(co).astype(F)
    res = rng.standard_normal((n * h * w, co)).astype(F)
    tail = (3, 3, 1, 1, 1, 1, h, w, wp, zc, mul, bias, escale, eshift, res, F(-1), F(6), 4, F(0.1), F(0))
    xp = np.empty((n, h + 2, w + 2, c), vnni.CODE)
    out = np.full((n * h * w, co), np.nan, F)
    kern = kc.int8_conv_nhwc_parallel if parallel else kc.int8_conv_nhwc
    assert kern(x, scale, zero, 1, 1, xp, *tail, 1, lines, out) == 0
    _, _, want = ref.int8_conv_nhwc(x, scale, zero, 1, 1, xp.shape, *tail)
    assert np.array_equal(out, want)


def _int8_conv(rng, c, co, kernel, stride, padding, dilation, same=False):
    w = rng.standard_normal((co, kernel[0] * kernel[1] * c)).astype(F)
    weight = Int8Matrix.from_float(w, activations="static", act_range=(-1.5, 2.5))
    return Conv2D(weight=weight, bias=rng.standard_normal(co).astype(F), in_channels=c, kernel_size=kernel,
                  stride=stride, padding=padding, dilation=dilation, same=same)


def _unfused(monkeypatch):
    monkeypatch.setattr(conv_int8, "fused_int8", lambda *a: False)


@needs_vnni
@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 3), hw=st.tuples(st.integers(3, 12), st.integers(3, 12)), c=st.integers(1, 20),
       co=st.integers(1, 40), kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       stride=st.tuples(st.integers(1, 2), st.integers(1, 2)), padding=st.tuples(*[st.integers(0, 2)] * 4),
       dilation=st.sampled_from([(1, 1), (2, 1), (1, 2)]), same=st.booleans(), seed=st.integers(0, 2**31),
       tiles=st.booleans())
@example(n=2, hw=(9, 11), c=1, co=16, kernel=(3, 3), stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), same=False,
         seed=0, tiles=False)      # fewer than 4 channels: kernel rows read unpadded (kernels/int8_conv.py)
@example(n=1, hw=(12, 10), c=3, co=20, kernel=(3, 2), stride=(2, 1), padding=(0, 1, 2, 0), dilation=(2, 1), same=False,
         seed=1, tiles=False)
@example(n=3, hw=(12, 12), c=20, co=40, kernel=(3, 3), stride=(1, 2), padding=(1, 1, 1, 1), dilation=(2, 1), same=False,
         seed=2, tiles=True)
def test_conv_layer_gives_the_bits_of_the_im2col_path(n, hw, c, co, kernel, stride, padding, dilation, same, seed,
                                                      tiles):
    """The implicit kernel (on AMX tiles with ``tiles`` where the CPU has them: any image count and
    row length) gives the bits of the im2col path."""
    with pytest.MonkeyPatch.context() as mp:
        if tiles:
            mp.setattr(conv_int8, "uses_amx", lambda layer, n, oh, ow: amx.HAVE_AMX and layer.dilation[1] == 1)
        _implicit_against_im2col(n, hw, c, co, kernel, stride, padding, dilation, same, seed)


def _implicit_against_im2col(n, hw, c, co, kernel, stride, padding, dilation, same, seed):
    rng = np.random.default_rng(seed)
    conv = _int8_conv(rng, c, co, kernel, stride, padding, dilation, same)
    shape = (*hw, c)
    try:
        oh, ow, _ = conv.for_input(shape).shape_of(shape)
    except Exception:
        return                       # the window does not fit this input
    x = (rng.standard_normal((n, *shape)) * 1.2).astype(F)
    assert conv_int8.fused_int8(conv.for_input(shape), shape, n, oh, ow)
    got = conv.prepare(n, shape)(x)
    with pytest.MonkeyPatch.context() as mp:
        _unfused(mp)
        want = conv.prepare(n, shape)(x)
    assert np.array_equal(got, want)


@needs_vnni
def test_quantized_models_give_the_same_bits_fused_and_unfused(monkeypatch):
    """Whole static-int8 CNNs (batch norm, ReLU and residual adds fused into the conv's store)."""
    import nncomp as nc
    from nncomp.data import for_model, model_path

    for name in ("lenet5", "vgg_small", "resnet_small"):
        model = nc.load(model_path(name))
        xs = for_model(model)[0][:80]
        got = nc.quantize(model, activations="static", calibration=xs[:64])(xs[64:])
        with monkeypatch.context() as mp:
            _unfused(mp)
            want = nc.quantize(model, activations="static", calibration=xs[:64])(xs[64:])
        assert np.array_equal(got, want), name


@needs_vnni
def test_nan_input_is_refused():
    conv = _int8_conv(np.random.default_rng(0), 8, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    x = np.zeros((1, 5, 5, 8), F)
    x[0, 2, 2, 3] = np.nan
    with pytest.raises(InputError, match="NaN or Inf"):
        conv.prepare(1, (5, 5, 8))(x)


def test_lines_per_task_balances_the_threads():
    assert conv_int8.lines_per_task(1792, 2) == conv_int8.MAX_LINES
    assert conv_int8.lines_per_task(28, 2) == 7          # 4 tasks for 2 threads
    assert conv_int8.lines_per_task(1, 2) == 1
    assert conv_int8.lines_per_task(30, 1) == 15


@settings(max_examples=30, deadline=None)
@given(ow_n=st.integers(1, 20), co=st.integers(1, 70), extra_rows=st.integers(0, 3), off=st.integers(0, 9),
       seed=st.integers(0, 2**31))
def test_dequant_line_matches_its_twin(ow_n, co, extra_rows, off, seed):
    """A line's dequantization (shared by the VNNI and the AMX line products): whole 16-channel vectors
    and the rest, a line buffer with more rows and columns than the line uses, at an offset."""
    rng = np.random.default_rng(seed)
    ncols = -(-co // 16) * 16
    acc = rng.integers(-2**29, 2**29, (ow_n + extra_rows, ncols), dtype=np.int32)     # |acc - zc| < 2**31
    zc = rng.integers(-2**29, 2**29, ncols, dtype=np.int32)
    mul, bias = rng.random(co).astype(F), rng.standard_normal(co).astype(F)
    dst = np.full(off + ow_n * co + 5, np.nan, F)
    want = ref.dequant_line(acc, ow_n, zc, mul, bias, dst, off)
    kc.dequant_line(acc, ow_n, zc, mul, bias, dst, off)
    assert np.array_equal(dst, want, equal_nan=True)


@given(m=st.integers(0, 5), co=st.integers(1, 40), affine=st.booleans(), add=st.booleans(), clip=st.booleans(),
       act=st.sampled_from([0, 2, 3, 4]), seed=st.integers(0, 2**31))
def test_finish_row_matches_its_twin(m, co, affine, add, clip, act, seed):
    """The epilogue the int8 convolution (and the small sparse kernels) apply to stored rows."""
    from nncomp.kernels.sparse_small import finish_row

    rng = np.random.default_rng(seed)
    y = (rng.standard_normal((m, co)) * 3).astype(F)
    none = np.zeros(0, F)
    scale, shift = (rng.random(co).astype(F), rng.standard_normal(co).astype(F)) if affine else (none, none)
    res = rng.standard_normal((m, co)).astype(F) if add else np.zeros((0, co), F)
    lo, hi = (F(-1), F(2)) if clip else (F(-np.inf), F(np.inf))
    want = ref.finish_row(y, scale, shift, res, lo, hi, act, F(0.2), F(0.5))
    finish_row(y, scale, shift, res, lo, hi, act, F(0.2), F(0.5))
    assert np.array_equal(y, want)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 70), log2_scale=st.integers(-8, 8), odd_scale=st.booleans(), zero=st.integers(0, 255),
       qmax=st.integers(0, 255), special=st.booleans(), seed=st.integers(0, 2**31))
def test_quantize_run_matches_its_twin(n, log2_scale, odd_scale, zero, qmax, special, seed):
    """The 16-lane quantization (and its scalar tail) against NumPy's float32 division: exact ties
    (half-integer multiples of a power-of-two scale), saturation, NaN and infinities."""
    from nncomp.kernels.int8 import quantize_run

    rng = np.random.default_rng(seed)
    s = F(2.0 ** log2_scale * (1.37 if odd_scale else 1.0))
    x = (rng.integers(-600, 600, n) / 2 * s).astype(F)
    x[rng.random(n) < 0.3] = rng.standard_normal() * 300 * s
    if special and n >= 3:
        x[rng.choice(n, 3, replace=False)] = [np.nan, np.inf, -np.inf]
    lo = F(min(zero, qmax))
    out = np.empty(n, np.uint8)
    bad = quantize_run(x, out, s, F(zero), lo, F(qmax))
    want, want_bad = ref.quantize_run(x, out, s, F(zero), lo, F(qmax))
    assert bad == want_bad and np.array_equal(out, want)


@given(v=st.floats(width=32, allow_nan=True, allow_infinity=True), log2_scale=st.integers(-20, 20),
       zero=st.integers(0, 255), qmax=st.integers(0, 255))
def test_quantize_value_matches_its_twin(v, log2_scale, zero, qmax):
    from nncomp.kernels.int8 import quantize_value

    s, lo = F(2.0 ** log2_scale * 1.37), F(min(zero, qmax))
    with np.errstate(all="ignore"):
        assert quantize_value(F(v), s, F(zero), lo, F(qmax)) == ref.quantize_value(F(v), s, F(zero), lo, F(qmax))


@needs_vnni
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_static_int8_dense_layers_give_the_bits_of_the_matrix_product(batch, monkeypatch):
    """Dense layers with static-int8 weights run as 1x1 convolutions of the int8 kernel (quantize,
    product, bias and ReLU in one call): the same bits as the int8 matrix product and the bias
    epilogue, at any batch (a sample's result may not depend on how the batch is split)."""
    import nncomp as nc
    from nncomp.data import for_model, model_path
    from nncomp.layers.dense import Dense

    model = nc.load(model_path("lenet300"))
    x = for_model(model)[0]
    q = nc.quantize(model, activations="static", calibration=x[:256])
    got = q(x[300:300 + batch])
    assert np.array_equal(got[:1], q(x[300:301]))
    with monkeypatch.context() as mp:
        mp.setattr(Dense, "_int8", lambda self, n, epilogue: None)
        want = nc.quantize(model, activations="static", calibration=x[:256])(x[300:300 + batch])
    assert np.array_equal(got, want)


def test_big_weights_on_short_lines_keep_the_im2col_path(monkeypatch):
    """The rule, not the speed: a weight over REREAD_MAX_BYTES with lines under REREAD_MIN_PIXELS
    pixels (each line would stream it) keeps the im2col path; smaller weights or longer lines do not."""
    monkeypatch.setattr(vnni, "HAVE_BLOCK", True)
    monkeypatch.setattr(conv_int8.amx, "HAVE_AMX", False)
    rng = np.random.default_rng(0)
    big = _int8_conv(rng, 512, 512, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    small = _int8_conv(rng, 128, 128, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    assert big.weight.packed.nbytes > conv_int8.REREAD_MAX_BYTES >= small.weight.packed.nbytes
    assert not conv_int8.fused_int8(big, (14, 14, 512), 4, 14, 14)
    assert conv_int8.fused_int8(big, (28, 28, 512), 1, 28, 28)
    assert conv_int8.fused_int8(small, (14, 14, 128), 4, 14, 14)


@pytest.mark.parametrize("kind", [pytest.param("vnni", marks=pytest.mark.skipif(not vnni.HAVE_VNNI, reason="no AVX-512 VNNI")),
                                  pytest.param("avx2", marks=pytest.mark.skipif(not isa.HAVE_AVX2, reason="no AVX2"))])
@settings(max_examples=60, deadline=None)
@given(block=st.sampled_from([(m, nb) for nb in range(1, 5) for m in range(1, 5)] + [(12, 1), (8, 2)]),
       ngroups=st.integers(0, 20), nseg=st.integers(0, 4), contiguous=st.booleans(), seed=st.integers(0, 2**31))
def test_int8_blocks_match_their_twin(kind, block, ngroups, nseg, contiguous, seed):
    """The block the matrix product (one segment) and the convolution (segments: kernel rows) share,
    at the offsets and strides each uses: panels read as 4 streams (gstride 64) or one wide panel;
    VNNI's and AVX2's (each where the CPU has it) give the same sums."""
    from nncomp.kernels.int8_avx2 import avx2_block
    from nncomp.kernels.int8_vnni import vnni_block
    kernel = vnni_block if kind == "vnni" else avx2_block

    rng = np.random.default_rng(seed)
    mr, nb = block
    gstride, rstride = (64, 64 * ngroups) if contiguous else (64 * nb, 64)
    wseg, xseg = (64 * ngroups * (nb if contiguous else 1), int(rng.integers(4 * ngroups, 4 * ngroups + 9)))
    xstride = int(rng.integers(1, 9)) * 4
    xoff, woff, ooff = (int(v) for v in rng.integers(0, 17, 3))
    x = rng.integers(0, 256, xoff + max(nseg, 1) * xseg + mr * xstride + 4 * ngroups + 4, dtype=np.uint8)
    wp = rng.integers(-128, 128, woff + max(nseg, 1) * wseg + 64 * nb * max(ngroups, 1) + 64 * nb * ngroups,
                      dtype=np.int8)
    ostride = 16 * nb + int(rng.integers(0, 5))
    out = rng.integers(-1000, 1000, ooff + mr * ostride + 16 * nb, dtype=np.int32)
    args = (x, xoff, xstride, xseg, wp, woff, gstride, rstride, wseg, ngroups, nseg)
    want = ref.vnni_block(mr, nb, *args, out, ooff, ostride)
    kernel(mr, nb, *((x if kind == "vnni" else x.astype(np.int16)),) + args[1:], out, ooff, ostride)
    assert np.array_equal(out, want)
