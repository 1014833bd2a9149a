"""Compressed weights decoded into the blocked convolution's layout (nncomp/kernels/decode.py), and
the compressed convolutions and dense layers that run the blocked kernel through them."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import reference as ref
from nncomp import layers as L
from nncomp.kernels import conv_winograd as W, decode as K
from nncomp.layers import conv_algorithms as algos
from nncomp.matrices.codebook import CodebookMatrix
from nncomp.matrices.csr import CSRMatrix
from nncomp.matrices.csr_codebook import CSRCodebookMatrix
from nncomp.matrices.int8 import Int8Matrix

FORMATS = ("codebook", "csr", "csr_codebook", "int8")


def make(fmt, rng, n_out, n_in, density=0.3, bits=5, per_channel=True):
    """A random weight of ``fmt`` (mixed signs, some exact zeros)."""
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    if fmt in ("csr", "csr_codebook"):
        w[rng.random(w.shape) >= density] = 0
    if fmt == "csr":
        return CSRMatrix.from_dense(w)
    if fmt == "int8":
        return Int8Matrix.from_float(w, per_channel=per_channel, activations="float")
    k = rng.integers(1, 2 ** bits + 1)
    codebook = rng.standard_normal(k).astype(np.float32)
    if fmt == "codebook":
        return CodebookMatrix.from_codes(rng.integers(0, k, (n_out, n_in)), codebook, bits)
    pos = np.flatnonzero(w)
    return CSRCodebookMatrix.from_positions(pos, rng.integers(0, k, pos.size).astype(np.uint8), codebook, bits,
                                            (n_out, n_in))


@st.composite
def weights(draw):
    fmt = draw(st.sampled_from(FORMATS))
    n_out, n_in = draw(st.integers(1, 70)), draw(st.integers(1, 300))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 31)))
    m = make(fmt, rng, n_out, n_in, density=draw(st.sampled_from([0.0, 0.05, 0.5, 1.0])),
             bits=draw(st.integers(1, 8)), per_channel=draw(st.booleans()))
    return m, draw(st.integers(0, 20))


@given(case=weights(), parallel=st.booleans())
def test_decoders_match_their_twins_and_the_dense_weight(case, parallel):
    """Every element written (the buffer starts as NaN), the padding columns zero, the values
    exactly ``to_dense()``'s."""
    m, extra = case
    (serial, par), args = m.decoder()
    cop = -(-(m.n_out + extra) // 16) * 16
    out = np.full((m.n_in, cop), np.nan, np.float32)
    (par if parallel else serial)(*args, out)
    twin = getattr(ref, next(name for name, f in vars(K).items() if f is serial))
    assert np.array_equal(out, twin(*args, out.shape))
    assert np.array_equal(out[:, :m.n_out], m.to_dense().T) and not out[:, m.n_out:].any()


def test_int8_activations_have_no_decoder():
    """Their product quantizes the input: a float32 product with the dequantized weight would not be
    the same computation, so they keep their own kernels (and no blocked algorithm)."""
    rng = np.random.default_rng(0)
    w = Int8Matrix.from_float(rng.standard_normal((32, 72)).astype(np.float32), activations="dynamic")
    assert w.decoder() is None
    conv = L.Conv2D(weight=w, in_channels=8, kernel_size=(3, 3))
    assert "blocked" not in conv.algorithms


@settings(max_examples=30, deadline=None)
@given(fmt=st.sampled_from(FORMATS), co=st.integers(1, 40), c=st.integers(1, 20), k=st.sampled_from([1, 3, 5]),
       stride=st.integers(1, 2), pad=st.integers(0, 2), n=st.integers(1, 3), seed=st.integers(0, 2 ** 31))
def test_compressed_convolutions_run_blocked_as_their_dense_weight(fmt, co, c, k, stride, pad, n, seed):
    """A compressed conv chooses the blocked kernel; its output is the dense conv of ``to_dense()``."""
    rng = np.random.default_rng(seed)
    w = make(fmt, rng, co, k * k * c)
    bias = rng.standard_normal(co).astype(np.float32)
    conv = L.Conv2D(weight=w, bias=bias, in_channels=c, kernel_size=(k, k), stride=(stride, stride),
                    padding=(pad, pad, pad, pad))
    dense = L.Conv2D(weight=w.to_dense(), bias=bias, in_channels=c, kernel_size=(k, k), stride=(stride, stride),
                     padding=(pad, pad, pad, pad))
    h = k + rng.integers(0, 8)
    x = rng.standard_normal((n, h, h + 1, c)).astype(np.float32)
    assert algos.choose(conv, x.shape[1:], n) == "blocked"
    got = algos.forward(conv, x)
    want = algos.forward(dense, x, "blocked")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * (1 + np.abs(want).max()))
    np.testing.assert_allclose(got, algos.forward(conv, x, "im2col"), rtol=1e-4, atol=1e-4 * (1 + np.abs(want).max()))


def test_pooled_and_fused_compressed_convolutions():
    """With a max-pool and with an epilogue fused in, as a model runs them, a compressed conv gives its
    dense weight's result."""
    import nncomp as nc

    def sequential(a, b):
        return nc.Model([nc.Node("a", a), nc.Node("b", b, ("a",))], input_shape=(10, 10, 8), input_layout="NHWC")
    rng = np.random.default_rng(5)
    w = make("codebook", rng, 24, 9 * 8, bits=4)
    conv = L.Conv2D(weight=w, bias=np.ones(24, np.float32), in_channels=8, kernel_size=(3, 3), padding=(1, 1, 1, 1))
    x = rng.standard_normal((3, 10, 10, 8)).astype(np.float32)
    for after in (L.MaxPool2D(kernel_size=2, stride=2), L.ReLU()):
        model = sequential(conv, after)
        dense = sequential(L.Conv2D(weight=w.to_dense(), bias=np.ones(24, np.float32), in_channels=8,
                                    kernel_size=(3, 3), padding=(1, 1, 1, 1)), after)
        np.testing.assert_allclose(model(x), dense(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits, values", [(5, 20), (8, 200)])
def test_codebook_dense_layers_give_each_sample_the_same_bits_at_any_batch(bits, values):
    """A run mode splits a batch into parts: whichever kernel a codebook dense layer runs (decoded
    into the blocked kernel for codebooks of over 32 values, its register kernel otherwise), a
    sample's result does not depend on the batch size from 2 samples on."""
    rng = np.random.default_rng(bits)
    w = CodebookMatrix.from_codes(rng.integers(0, values, (40, 90)), rng.standard_normal(values).astype(np.float32),
                                  bits)
    layer = L.Dense(weight=w, bias=rng.standard_normal(40).astype(np.float32))
    x = rng.standard_normal((64, 90)).astype(np.float32)
    full = layer.prepare(64, (90,))(x)
    want = x.astype(np.float64) @ w.to_dense().T.astype(np.float64) + layer.bias
    np.testing.assert_allclose(full, want, rtol=1e-4, atol=1e-4)
    for n in (2, 5, 16, 33):
        assert np.array_equal(layer.prepare(n, (90,))(x[:n]), full[:n])


@given(c=st.integers(1, 40), cop=st.sampled_from([16, 32, 48]), seed=st.integers(0, 2 ** 31), parallel=st.booleans(),
       tile=st.sampled_from(sorted(W.FILTER_MATRICES)))
def test_winograd_transform_of_a_decoded_weight_matches_its_twin(c, cop, seed, parallel, tile):
    """F(2x2, 3x3), F(4x4, 3x3) and F(2x2, 5x5)."""
    rng = np.random.default_rng(seed)
    m, r = tile
    wt = rng.standard_normal((r * r * c, cop)).astype(np.float32)
    cp = -(-c // 16) * 16
    g_mat = W.filter_matrix(m, r)
    out = np.full(((m + r - 1) ** 2, cp, cop), np.nan, np.float32)
    (K.decode_winograd_t_parallel if parallel else K.decode_winograd_t)(wt, c, g_mat, out)
    np.testing.assert_allclose(out, ref.decode_winograd_t(wt, c, g_mat, out.shape), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fmt", FORMATS)
def test_compressed_convolutions_run_winograd_on_large_maps(fmt):
    """From WINOGRAD_DECODED_MIN_PIXELS output pixels a sample (whatever the batch: a model's bits do
    not depend on how its run mode splits the batch) a compressed 3x3 conv of >= 16 channels runs
    Winograd (its weight decoded and transformed per call) and gives the dense weight's result; the
    transformed weight equals the dense layer's."""
    from nncomp.layers import conv_blocked as CB
    rng = np.random.default_rng(7)
    w = make(fmt, rng, 20, 9 * 17)
    conv = L.Conv2D(weight=w, bias=np.ones(20, np.float32), in_channels=17, kernel_size=(3, 3), padding=(1, 1, 1, 1))
    dense = L.Conv2D(weight=w.to_dense(), bias=np.ones(20, np.float32), in_channels=17, kernel_size=(3, 3),
                     padding=(1, 1, 1, 1))
    x = rng.standard_normal((2, 24, 23, 17)).astype(np.float32)
    assert algos.choose(conv, x.shape[1:], 2) == algos.choose(conv, x.shape[1:], 1) == "winograd4"
    assert algos.choose(conv, (14, 14, 17), 64) == "blocked"     # 196 pixels a sample: the transform would not pay
    for algo, m in (("winograd4", 4), ("winograd", 2)):
        want = algos.forward(dense, x, algo)     # F(4x4, 3x3)'s coefficients scale a weight's last-bit difference
        np.testing.assert_allclose(algos.forward(conv, x, algo), want, rtol=1e-5, atol=4e-6 * np.abs(want).max())
        np.testing.assert_allclose(CB.winograd_weight_source(conv, m)(), CB.winograd_weight_source(dense, m)(),
                                   rtol=1e-6, atol=1e-7)
