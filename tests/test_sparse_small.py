"""Compressed dense layers as one compiled step: the one-sample sparse kernels with their bias and
epilogue, the bias-and-epilogue kernel after the other formats' products, and plans that fuse
them giving the unfused layers' own bits."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import nncomp as nc
import reference as ref
from graph_reference import graph_reference
from nncomp.kernels import codebook_vpermps as V, sparse_small as K
from nncomp.matrices.codebook import CodebookMatrix
from nncomp.matrices.csr import CSRMatrix
from nncomp.matrices.csr_codebook import CSRCodebookMatrix
from nncomp.matrices.csr_int8 import CSRInt8Matrix
from nncomp.matrices.int8 import Int8Matrix
from nncomp.model import Node

F32 = np.float32


def _epilogue(rng, co, affine, add, clip):
    scale, shift = ((rng.standard_normal(co).astype(F32), rng.standard_normal(co).astype(F32))
                    if affine else (np.zeros(0, F32),) * 2)
    res = rng.standard_normal((1, co)).astype(F32) if add else np.zeros((0, co), F32)
    lo, hi = (F32(v) for v in (clip or (-np.inf, np.inf)))
    return scale, shift, res, lo, hi


@given(co=st.integers(1, 70), k=st.integers(1, 300), density=st.floats(0.0, 1.0), codebook=st.booleans(),
       affine=st.booleans(), add=st.booleans(), clip=st.sampled_from([None, (0.0, np.inf), (0.0, 6.0)]),
       act=st.sampled_from([0, 2, 3, 4]), seed=st.integers(0, 2**31))
def test_sparse_gemv_epilogue_matches_reference(co, k, density, codebook, affine, add, clip, act, seed):
    """The one-sample CSR and CSR-codebook kernels (serial and parallel, gathering their input or
    not, empty rows included) against their twins: the sums within float32 rounding of the
    reassociated order, NaN inputs propagating to the rows that read them."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((co, k)).astype(F32) * (rng.random((co, k)) < density)
    x = rng.standard_normal(k).astype(F32)
    bias = rng.standard_normal(co).astype(F32)
    scale, shift, res, lo, hi = _epilogue(rng, co, affine, add, clip)
    alpha, beta = F32(0.2), F32(0.5)
    perm = rng.permutation(k) if seed % 2 else np.zeros(0, np.int64)
    if codebook:
        cb = rng.standard_normal(32).astype(F32)
        codes = rng.integers(0, 32, (co, k))
        w = np.where(w != 0, cb[codes], F32(0))
        m = CSRCodebookMatrix.from_positions(np.flatnonzero(w), codes.reshape(-1)[np.flatnonzero(w)], cb, 5, (co, k))
        arrays = ((m.codes, m.codebook), m.indices, m.indptr)
    else:
        m = CSRMatrix.from_dense(w) if w.any() else CSRMatrix.from_dense(np.eye(co, k, dtype=F32))
        w = m.to_dense()
        arrays = (m.data, m.indices, m.indptr)
    kernels = (K.csr_gemv_epilogue, K.csr_gemv_epilogue_parallel)
    want = ref.csr_gemv_epilogue(*arrays, x, perm, bias, scale, shift, res, lo, hi, act, alpha, beta)
    mag = (np.abs(w) @ np.abs(x) + np.abs(bias)) * (np.abs(scale) if affine else 1) + 1
    for kern in kernels:
        got = np.full((1, co), np.nan, F32)
        kern(*arrays, x, perm, bias, scale, shift, res, lo, hi, act, alpha, beta, got)
        assert np.all(np.abs(got - want) <= 4 * k * np.finfo(F32).eps * mag)
    j = rng.integers(0, k)
    x[j] = np.nan
    got = np.zeros((1, co), F32)
    kernels[0](*arrays, x, perm, bias, scale, shift, res, F32(-np.inf), F32(np.inf), 0, alpha, beta, got)
    reads = w[:, np.argsort(perm)[j] if perm.shape[0] else j] != 0
    assert np.isnan(got[0, reads]).all() and not np.isnan(got[0, ~reads]).any()


@pytest.mark.skipif(not V.HAVE_AVX512, reason="the register codebook kernels need AVX-512")
@given(co=st.integers(1, 30), k=st.integers(1, 100), wide=st.booleans(), affine=st.booleans(), add=st.booleans(),
       clip=st.sampled_from([None, (0.0, np.inf), (0.0, 6.0)]), act=st.sampled_from([0, 2, 3, 4]),
       seed=st.integers(0, 2**31))
def test_codebook_gemv_epilogue_matches_reference(co, k, wide, affine, add, clip, act, seed):
    """The one-sample codebook kernel (serial and parallel, its input gathered or not, padded to
    the codes' width) gives its twin's bits: the codebook contract's sums, then the bias and the
    layers' own epilogue."""
    rng = np.random.default_rng(seed)
    bits = 5 if wide else 4
    cb = rng.standard_normal(2 ** bits).astype(F32)
    m = CodebookMatrix.from_codes(rng.integers(0, 2 ** bits, (co, k)), cb, bits)
    x = rng.standard_normal(k).astype(F32)
    bias = rng.standard_normal(co).astype(F32)
    scale, shift, res, lo, hi = _epilogue(rng, co, affine, add, clip)
    perm = rng.permutation(k) if seed % 2 else np.zeros(0, np.int64)
    arrays = m.single_sample_kernel()[0]            # codes, the codebook padded for the registers, wide
    want = ref.codebook_gemv_epilogue(*arrays, x, perm, bias, scale, shift, res, lo, hi, act,
                                      F32(0.2), F32(0.5))
    for kern in (V.codebook_gemv_epilogue, V.codebook_gemv_epilogue_parallel):
        got = np.full((1, co), np.nan, F32)
        kern(*arrays, x, perm, bias, scale, shift, res, lo, hi, act, F32(0.2), F32(0.5), got)
        assert np.array_equal(got.view(np.int32), want.view(np.int32))


@given(m=st.integers(0, 9), c=st.integers(1, 20), with_bias=st.booleans(), affine=st.booleans(), add=st.booleans(),
       clip=st.sampled_from([None, (0.0, np.inf), (0.0, 6.0)]), act=st.sampled_from([0, 2, 3, 4]),
       seed=st.integers(0, 2**31))
def test_bias_epilogue_rows_matches_reference(m, c, with_bias, affine, add, clip, act, seed):
    """Bias, epilogue and activation in one call: bit for bit the layers' own float32 sequence
    (NaN and -0.0 included), serial and parallel."""
    rng = np.random.default_rng(seed)
    y = (rng.standard_normal((m, c)) * 8).astype(F32)
    if y.size:
        y.flat[rng.integers(0, y.size, 2)] = [np.nan, -0.0]
    bias = rng.standard_normal(c).astype(F32) if with_bias else np.zeros(0, F32)
    scale, shift, _, lo, hi = _epilogue(rng, c, affine, False, clip)
    res = rng.standard_normal((m, c)).astype(F32) if add else np.zeros((0, c), F32)
    want = ref.bias_epilogue_rows(y, bias, scale, shift, res, lo, hi, act, F32(0.2), F32(0.5))
    for kern in (K.bias_epilogue_rows, K.bias_epilogue_rows_parallel):
        got = y.copy()
        kern(got, bias, scale, shift, res, lo, hi, act, F32(0.2), F32(0.5))
        assert np.array_equal(got.view(np.int32), want.view(np.int32))


def _formats(w, rng):
    """``w`` in every compressed format a dense layer can hold."""
    w = w * (rng.random(w.shape) < 0.2)
    csr = CSRMatrix.from_dense(w)
    codes = rng.integers(0, 16, w.shape)
    cb = rng.standard_normal(16).astype(F32)
    pos = np.flatnonzero(w)
    return {"csr": csr, "csr_codebook": CSRCodebookMatrix.from_positions(pos, codes.reshape(-1)[pos], cb, 4, w.shape),
            "codebook": CodebookMatrix.from_codes(codes, cb, 4),
            "int8": Int8Matrix.from_float(w), "int8_float": Int8Matrix.from_float(w, activations="float"),
            "csr_int8": CSRInt8Matrix.from_csr(csr, activations="float")}


@pytest.mark.parametrize("fmt", ["csr", "csr_codebook", "codebook", "int8", "int8_float", "csr_int8"])
@pytest.mark.parametrize("order", ["chw", "hwc"])
def test_compressed_dense_steps_equal_the_unfused_layers_at_every_batch(fmt, order):
    """Dense layers whose weights are compressed: at one sample the CSR formats' compiled mat-vec
    (a flatten before it gathered in its order), at other batches the format's product and one
    bias-and-epilogue call, give the layers' own bits with epilogues fused or not, and the float64
    reference graph's numbers."""
    rng = np.random.default_rng(5)
    f32 = lambda *s: rng.standard_normal(s).astype(F32)  # noqa: E731
    w1, w2, w3 = (_formats(w, rng)[fmt] for w in (f32(40, 5 * 4 * 6), f32(20, 40), f32(3, 20)))
    nodes = [Node("c1", nc.Conv2D(f32(6, 9 * 3), f32(6), in_channels=3, kernel_size=3, padding=1)),
             Node("r1", nc.ReLU(), ("c1",)), Node("flat", nc.Flatten(order), ("r1",)),
             Node("fc1", nc.Dense(w1, f32(40)), ("flat",)), Node("r2", nc.ReLU(6.0), ("fc1",)),
             Node("fc2", nc.Dense(w2, None), ("r2",)), Node("fc3", nc.Dense(w3, f32(3)), ("fc2",))]
    model = nc.Model(nodes, input_shape=(3, 5, 4), input_layout="NCHW")
    for n in (1, 2, 17, 70):
        x = rng.random((n, 3, 5, 4)).astype(F32)
        got = model(x)
        unfused = _node_by_node(model, x)
        assert np.array_equal(got, unfused["fc3"]), n
        if not fmt.startswith("int8"):       # quantized activations: the reference is float
            want = graph_reference(model, x)["fc3"]
            assert np.allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max()), n
        kinds = [layer.describe() for _, layer in model._plan((5, 4, 3), n, model.outputs).layers]
        assert "dense+relu" in " ".join(kinds) or "flatten+dense+relu" in kinds, kinds
        if n == 1 and (fmt in ("csr", "csr_codebook") or fmt == "codebook" and V.HAVE_AVX512):
            assert "flatten+dense+relu" in kinds
            steps = [getattr(s, "__qualname__", "") for s, _, _ in model._plan((5, 4, 3), n, model.outputs).steps]
            assert steps.count("single_sample_step.<locals>.step") == 3, steps


def _node_by_node(model, x):
    x = model.check_input(x)
    values = {"input": np.ascontiguousarray(x.transpose(0, 2, 3, 1))}
    for node in model.nodes:
        values[node.name] = node.layer.forward(*(values[s] for s in node.inputs))
    return values
