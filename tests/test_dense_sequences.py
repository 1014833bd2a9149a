"""Dense layers over sequences: a sample ``(t, k)`` (a transformer's projections, ONNX MatMul with a
constant on a rank-3 input) runs its ``t`` rows as one batch, in every weight format, with the
epilogue (bias, activation, residual add) inside, and every compression method takes them."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nncomp as nc
from nncomp.layers import Dense
from onnx_graphs import check, graph_model, helper, init, rand, save

K, H = 12, 24


def mlp_block(in_shape, seed=0):
    """``x + (relu(x @ W1 + b1) @ W2 + b2)``: a transformer's feed-forward block (MatMul + Add as
    torch exports a Linear on a sequence), on inputs of ``in_shape``."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"]), helper.make_node("Add", ["m1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["m2"]), helper.make_node("Add", ["b2", "m2"], ["a2"]),
             helper.make_node("Add", ["a2", "x"], ["y"])]
    inits = [init("w1", rand((K, H), seed + 1) / 3), init("b1", rand(H, seed + 2) / 3),
             init("w2", rand((H, K), seed + 3) / 5), init("b2", rand(K, seed + 4) / 5)]
    return graph_model(nodes, in_shape, inits=inits)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The block over sequences ``(n, 7, K)`` and over rows ``(n, K)``: the same weights."""
    tmp = tmp_path_factory.mktemp("seq")
    x = rand((3, 7, K), 5)
    seq = check(mlp_block(["n", 7, K]), x, tmp, name="seq.onnx", atol=1e-5)
    rows = nc.load(save(mlp_block(["n", K]), tmp / "rows.onnx"))
    return seq, rows


def test_import_makes_dense_layers_with_folded_biases(models):
    seq, _ = models
    dense = [n.layer for n in seq.nodes if n.layer.kind == "dense"]
    assert len(dense) == 2 and all(d.bias is not None for d in dense)
    assert "matmul" not in [n.layer.kind for n in seq.nodes]
    assert seq.macs == 7 * 2 * K * H


@pytest.mark.parametrize("method", ["prune", "quantize", "quantize_static", "share", "factorize", "deep_compression"])
def test_compressing_sequences_is_compressing_their_rows(models, method):
    """Every method on the sequence model gives the layers it gives the row model calibrated on the
    same feature vectors, and the sequence model computes the row model's numbers, bit for bit."""
    seq, rows = models
    calib = rand((40, 7, K), 6)
    kw = {"prune": lambda m, c: nc.prune(m, 0.75, calibration=c),
          "quantize": lambda m, c: nc.quantize(m, calibration=c),
          "quantize_static": lambda m, c: nc.quantize(m, activations="static", calibration=c),
          "share": lambda m, c: nc.share(m, bits=4, calibration=c),
          "factorize": lambda m, c: nc.factorize(m, rank=4, calibration=c),
          "deep_compression": lambda m, c: nc.deep_compression(m, sparsity=0.7, bits=4, calibration=c)}[method]
    cs, cr = kw(seq, calib), kw(rows, calib.reshape(-1, K))
    formats = [n.layer.describe() for n in cs.nodes if n.layer.kind == "dense"]
    assert formats == [n.layer.describe() for n in cr.nodes if n.layer.kind == "dense"]
    assert not any(f == "dense" for f in formats) or method == "factorize"
    for n in (1, 2, 5):
        x = rand((n, 7, K), 10 + n)
        got, want = cs(x), cr(x.reshape(-1, K)).reshape(n, 7, K)
        np.testing.assert_array_equal(got, want)
        assert np.abs(got - seq(x)).max() < 0.5 * np.abs(seq(x)).max()


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 5), t=st.sampled_from([1, 3, 40, 90]), k=st.integers(1, 40), co=st.integers(1, 70),
       bias=st.booleans(), seed=st.integers(0, 9))
def test_dense_over_sequences_matches_numpy(n, t, k, co, bias, seed):
    """Dense weights over ``(t, k)`` samples: one sample's single row (the mat-vec), a few rows and
    hundreds (the blocked and streamed products) all compute ``x @ W.T + b``."""
    w, b = rand((co, k), seed), (rand(co, seed + 1) if bias else None)
    x = rand((n, t, k), seed + 2)
    layer = Dense(w, b)
    assert layer.output_shape((t, k)) == (t, co)
    want = x.astype(np.float64) @ w.T.astype(np.float64) + (0 if b is None else b)
    np.testing.assert_allclose(layer.forward(x), want, rtol=1e-4, atol=1e-4 * np.sqrt(k))


def test_images_are_refused_and_keep_their_matmul(tmp_path):
    """A sample of rank 3 is an image (internal layout (h, w, c)): a dense map over its channels is a
    1x1 convolution, so Dense refuses it, and ONNX's MatMul over an image's last axis (its width)
    stays a MatMul."""
    with pytest.raises(nc.NncompError, match=r"not an image"):
        Dense(rand((3, 4))).output_shape((2, 5, 4))
    with pytest.raises(nc.NncompError, match=r"\(\.\.\., 4\)"):
        Dense(rand((3, 4))).output_shape((7, 5))
    model = graph_model([helper.make_node("MatMul", ["x", "w"], ["y"])], ["n", 2, 3, 5], inits=[init("w", rand((5, 4)))])
    m = check(model, rand((2, 2, 3, 5)), tmp_path)
    assert [n.layer.kind for n in m.nodes] == ["matmul"]


def test_real_recognizer_projections_are_dense_and_compress():
    """The PP-OCRv4 recognizer's attention projections, MLP and CTC head (MatMul on (n, 40, 120))
    load as Dense layers; int8 on them keeps every line ORT reads (shipped model, rendered lines)."""
    pytest.importorskip("onnxruntime")
    from nncomp.bench import real
    m = nc.load(nc.data.real_model_path("ppocr_rec"), input_shape=(3, 48, 320))
    dense = [n.name for n in m.nodes if n.layer.kind == "dense"]
    assert len(dense) == 9 and "matmul" in {n.layer.kind for n in m.nodes}     # q @ k.T stays a MatMul
    x, texts = real.recognizer_inputs(24, seed=3)
    q = nc.quantize(m, layers=dense, calibration=x[:8])
    assert {q[n].layer.describe() for n in dense} == {"int8 w8a8 dynamic uint8"}
    base = real.recognizer_scores(m, x[8:], texts[8:])
    got = real.recognizer_scores(q, x[8:], texts[8:], reference=base)
    assert got["agreement"] >= 15 / 16 and got["line_accuracy"] >= base["line_accuracy"] - 1 / 16


def _onnx_rows_model(tmp):
    """ONNX (torch's export of Linear on a sequence, then flatten): x (n, 7, K) -> MatMul + Add + Relu
    -> Flatten (torch's "chw" order, a plain reshape for a sequence) -> Gemm to 5 outputs."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"]), helper.make_node("Add", ["m1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r"]), helper.make_node("Flatten", ["r"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], transB=1)]
    inits = [init("w1", rand((K, H), 1)), init("b1", rand(H, 2)), init("w2", rand((5, 7 * H), 3)), init("b2", rand(5, 4))]
    return nc.load(save(graph_model(nodes, ["n", 7, K], inits=inits), tmp / "flat.onnx")), rand((16, 7, K), 5)


@pytest.mark.parametrize("source", ["keras", "onnx"])
def test_filter_pruning_through_a_flattened_sequence(tmp_path, source):
    """Neurons of a per-step Dense removed (Keras Dense on Input (28, 28); ONNX MatMul on (n, 7, K)):
    the Flatten after them feeds ``t * c + channel``, so the reader loses those columns at every
    step; without a refit the model computes the original's numbers with those outputs zeroed."""
    from pathlib import Path
    if source == "keras":
        path = Path(__file__).resolve().parent.parent / "data" / "keras" / "rows_dense.h5"
        m, (prod, cons) = nc.load(path), ("row_fc2", "logits")
        x = np.load(path.with_name("dense_ranks.npz"))["x"][:16, ..., 0]
    else:
        (m, x), (prod, cons) = _onnx_rows_model(tmp_path), ("m1", "y")
    layer = m[prod].layer
    co, steps = layer.weight.n_out, m.shapes[prod][0]
    pruned = nc.prune_filters(m, {prod: 0.5})
    gone = np.setdiff1d(np.arange(co), np.argsort(-np.abs(layer.weight.w).sum(1))[:co // 2])
    assert pruned[prod].layer.weight.n_out == co // 2
    assert pruned[cons].layer.weight.n_in == steps * (co - len(gone))
    w0, b0 = layer.weight.w.copy(), layer.bias.copy()
    w0[gone], b0[gone] = 0.0, -1.0                     # relu(-1) = 0: those features read zero
    zeroed = m.replace_layers({prod: layer.replace(weight=w0, bias=b0)})
    np.testing.assert_allclose(pruned(x), zeroed(x), rtol=1e-4, atol=1e-4)


def test_top1_helpers_refuse_sequence_outputs(models):
    """Scores that take the argmax over axis 1 refuse outputs that are not (n, classes) with the
    fix, instead of comparing the argmax over the sequence's steps."""
    from nncomp.compress.sensitivity import sensitivity
    seq, _ = models
    with pytest.raises(nc.NncompError, match=r"classifier"):
        sensitivity(seq, rand((8, 7, K), 3))
    with pytest.raises(nc.NncompError, match=r"classifier"):
        nc.factorize(seq, max_drop=0.01, calibration=rand((16, 7, K), 4))
