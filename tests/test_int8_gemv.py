"""int8 dense layers on one sample (nncomp/kernels/int8_gemv.py): the kernel against its NumPy twin,
and the same bits at batch 1 as every batch path gives the same sample (static: the implicit int8
kernel or the matrix product; dynamic: the quantize / product / dequantize kernels)."""
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import nncomp as nc
import reference as ref
from nncomp.errors import InputError
from nncomp.kernels import int8_gemv as kg, int8_vnni as vnni, sparse_small
from nncomp.layers.dense import Dense
from nncomp.matrices.int8 import Int8Matrix, pack_panels

needs_vnni = pytest.mark.skipif(not vnni.HAVE_BLOCK, reason="CPU (or JIT target) lacks AVX-512 VNNI and AVX2")
F = np.float32
MODES = (kg.STATIC, kg.DYNAMIC_UINT8, kg.DYNAMIC_INT8)


@needs_vnni
@pytest.mark.parametrize("parallel", [False, True])
@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 300), co=st.integers(1, 150), mode=st.sampled_from(MODES), gather=st.booleans(),
       epilogue=st.sampled_from(["none", "affine", "res", "clip", "act", "all", "nan"]),
       data=st.sampled_from(["normal", "positive", "negative", "zeros", "extreme"]), seed=st.integers(0, 2**31))
@example(k=784, co=300, mode=kg.STATIC, gather=False, epilogue="none", data="normal", seed=0)
@example(k=100, co=10, mode=kg.DYNAMIC_UINT8, gather=True, epilogue="all", data="normal", seed=1)
def test_int8_gemv_matches_its_twin(parallel, k, co, mode, gather, epilogue, data, seed):
    """Codes (calibrated, or from the sample's range incl. an all-zero, all-positive or all-negative sample), 1-4
    panels per unit and several units, channel remainders past the 16-lane dequantization, inputs
    gathered by a permutation, every part of the epilogue, NaN and infinities counted."""
    rng = np.random.default_rng(seed)
    kp = -(-k // 4) * 4
    k0 = k + 3 if gather else k
    x = {"normal": lambda: rng.standard_normal(k0) * 3, "positive": lambda: rng.random(k0) * 5,
         "negative": lambda: -rng.random(k0) * 5,
         "zeros": lambda: np.zeros(k0), "extreme": lambda: np.full(k0, 1e6)}[data]().astype(F)
    perm = rng.permutation(k0)[:k].astype(np.int64) if gather else np.zeros(0, np.int64)
    if epilogue == "nan":
        x[perm[0] if gather else rng.integers(0, k)] = rng.choice([np.nan, np.inf, -np.inf])
    q = (np.full((co, kp), -128, np.int8) if data == "extreme"
         else rng.integers(-127, 128, (co, kp), dtype=np.int8))
    q[:, k:] = 0
    wp = pack_panels(q, 16)
    colsum = np.zeros(wp.shape[0] * 16, np.int64)
    colsum[:co] = q.sum(1, dtype=np.int64)
    wscale = (rng.random(co) * 0.01 + 1e-3).astype(F)
    sx, z = (F(rng.uniform(0.01, 0.1)), int(rng.integers(0, 256))) if mode == kg.STATIC else (F(1), 0)
    bias = rng.standard_normal(co).astype(F)
    none = np.zeros(0, F)
    scale = rng.random(co).astype(F) if epilogue in ("affine", "all") else none
    shift = rng.standard_normal(co).astype(F) if epilogue in ("affine", "all") else none
    res = rng.standard_normal((1, co)).astype(F) if epilogue in ("res", "all") else np.zeros((0, co), F)
    lo, hi = (F(0), F(6)) if epilogue in ("clip", "all") else (F(-np.inf), F(np.inf))
    act, alpha, beta = (4, F(0.1), F(0)) if epilogue in ("act", "all") else (0, F(0), F(0))
    args = (wp, colsum, wscale, sx, z, mode, x, perm, bias, scale, shift, res, lo, hi, act, alpha, beta)
    out = np.full((1, co), np.nan, F)
    bad = (kg.int8_gemv_epilogue_parallel if parallel else kg.int8_gemv_epilogue)(*args, out)
    want_bad, want = ref.int8_gemv_epilogue(*args)
    assert bad == want_bad
    if not bad:
        np.testing.assert_array_equal(out, want)


@settings(max_examples=30, deadline=None)
@given(k0=st.integers(1, 50), frac=st.floats(0, 1), seed=st.integers(0, 2**31))
def test_gathered_matches_its_twin(k0, frac, seed):
    """The input gather the single-sample kernels share (sparse_small.gathered): a flatten's order."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(k0).astype(F)
    perm = rng.permutation(k0)[:int(frac * k0)].astype(np.int64)
    np.testing.assert_array_equal(sparse_small.gathered(x, perm), ref.gathered(x, perm))


def _dense(rng, k, co, activations, act_dtype="uint8", per_channel=True):
    w = (rng.standard_normal((co, k)) * 0.1).astype(F)
    kw = {"act_range": (-2.0, 3.0)} if activations == "static" else {}
    m = Int8Matrix.from_float(w, per_channel=per_channel, activations=activations, act_dtype=act_dtype, **kw)
    return Dense(weight=m, bias=rng.standard_normal(co).astype(F))


@needs_vnni
@pytest.mark.parametrize("activations,act_dtype,per_channel", [
    ("static", "uint8", True), ("static", "int8", False), ("dynamic", "uint8", True), ("dynamic", "int8", True)])
@pytest.mark.parametrize("k,co", [(784, 300), (37, 5), (300, 100)])
def test_one_sample_has_the_batch_paths_bits(activations, act_dtype, per_channel, k, co):
    """Batch 1 runs the new kernel; the same sample through the batch paths (static: every batch,
    whose codes do not depend on the other samples; dynamic: the matrix product at batch 1) gives
    the same bits."""
    rng = np.random.default_rng(k + co)
    layer = _dense(rng, k, co, activations, act_dtype, per_channel)
    x = (rng.standard_normal((7, k)) * 1.5).astype(F)
    one = layer.prepare(1, (k,))
    assert layer.weight.single_sample_kernel() is not None
    got = np.concatenate([one(x[i:i + 1]) for i in range(7)])
    if activations == "static":
        want = layer.prepare(7, (k,))(x)
    else:
        w = layer.weight        # the quantize / product / dequantize kernels on each sample
        want = np.concatenate([w.product_codes(*w.quantize_rows(x[i:i + 1], w.code_width)) + layer.bias
                               for i in range(7)])
        np.testing.assert_array_equal(np.concatenate([w.apply(x[i:i + 1]) for i in range(7)]) + layer.bias, want)
    np.testing.assert_array_equal(got, want)


@needs_vnni
@pytest.mark.parametrize("activations", ["static", "dynamic"])
def test_one_sample_refuses_nan(activations):
    rng = np.random.default_rng(0)
    layer = _dense(rng, 40, 20, activations)
    x = rng.standard_normal((1, 40)).astype(F)
    x[0, 3] = np.nan
    with pytest.raises(InputError, match="NaN or Inf"):
        layer.prepare(1, (40,))(x)


def test_float_activations_and_long_rows_keep_the_matrix_product():
    rng = np.random.default_rng(1)
    assert _dense(rng, 30, 4, "float").weight.single_sample_kernel() is None
    long = Int8Matrix.from_codes(np.ones((2, 65537), np.int8), np.ones(2, F), activations="static",
                                 act_scale=0.1, act_zero=0)
    assert long.single_sample_kernel() is None


@needs_vnni
@pytest.mark.parametrize("activations", ["static", "dynamic"])
def test_quantized_lenet300_one_sample_at_a_time(activations):
    """A real model (LeNet-300-100, its shipped digits): every sample alone gives the bits of the
    batch path (static: the batch of 16; dynamic: the matrix product kernels on that sample)."""
    model = nc.load(nc.data.model_path("lenet300"))
    x, _ = nc.data.for_model(model, "train")
    q = nc.quantize(model, calibration=x[:256], activations=activations)
    xs = np.ascontiguousarray(x[256:272])
    alone = np.concatenate([q(xs[i:i + 1]) for i in range(16)])
    if activations == "static":
        np.testing.assert_array_equal(alone, q(xs))
    else:
        want = []
        for i in range(16):
            h = xs[i:i + 1]
            for node in q.nodes:
                layer = node.layer
                w = getattr(layer, "weight", None)
                h = (w.product_codes(*w.quantize_rows(h, w.code_width)) + layer.bias if w is not None
                     else np.maximum(h, 0))
            want.append(h)
        np.testing.assert_array_equal(alone, np.concatenate(want))


@needs_vnni
def test_quantized_cnn_classifier_after_a_flatten_one_sample_at_a_time():
    """VGG-small, static int8: its first dense layer reads the flattened NHWC image through the
    mat-vec's gather (a flatten's channel-first order) at batch 1; each sample alone gives the bits
    of the batch of 8 (the implicit int8 kernels, no gather)."""
    model = nc.load(nc.data.model_path("vgg_small"))
    x, _ = nc.data.for_model(model, "train")
    q = nc.quantize(model, calibration=x[:128], activations="static")
    xs = np.ascontiguousarray(x[128:136])
    alone = np.concatenate([q(xs[i:i + 1]) for i in range(8)])
    np.testing.assert_array_equal(alone, q(xs))


@given(n=st.integers(1, 9), k=st.integers(1, 70), seed=st.integers(0, 2**31))
@settings(max_examples=25, deadline=None)
def test_block_codes_match_their_twin(n, k, seed):
    """The codes the CPU's int8 block reads: the same values, in the block's type (int16 for AVX2)."""
    xu = np.random.default_rng(seed).integers(0, 256, (n, k), dtype=np.uint8)
    got, want = vnni.block_codes(xu), ref.block_codes(xu)
    assert got.dtype == want.dtype == vnni.CODE and np.array_equal(got, want) and np.array_equal(got, xu)
