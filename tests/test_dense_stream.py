"""The weight-streaming dense product (nncomp/kernels/dense_stream.py) against its NumPy twin, and
as the dense layers' step for large weights at small batches."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import nncomp as nc
import reference as ref
from conftest import check_dense_product, random_epilogue
from graph_reference import graph_reference
from nncomp.kernels import dense_stream as S
from nncomp.model import Node

F32 = np.float32
_KERNELS = {False: S.stream_gemm, True: S.stream_gemm_parallel}


def _run(w, x, bias, epi, kc, parts, parallel=True):
    n, k = x.shape
    co = w.shape[0]
    scale, shift, res, lo, hi, act = epi
    xs, os_ = S.work_shapes(n, k, co)
    out = np.full((n, co), np.nan, F32)
    # work arrays full of NaN: the kernel must not read what it did not write
    xt = np.full(xs, np.nan, F32)
    _KERNELS[parallel](w, x, bias, scale, shift, res, lo, hi, act, F32(0.2), F32(0.5), kc, parts,
                       xt, np.full(os_, np.nan, F32), out)
    # the samples' padding lanes zeroed: a work buffer's old denormals there slowed every
    # multiply-add of the tiles (fc7 at 3 samples 80 ms against 2.4)
    assert not xt[:, n:].any()
    return out


@given(co=st.integers(1, 70), k=st.integers(1, 300), n=st.integers(2, 140), kc=st.integers(1, 320),
       parts=st.integers(1, 3), with_bias=st.booleans(), affine=st.booleans(), add=st.booleans(),
       clip=st.sampled_from([None, (0.0, np.inf), (0.0, 6.0)]), act=st.sampled_from([0, 2, 3, 4]),
       parallel=st.booleans(), seed=st.integers(0, 2**31))
def test_stream_gemm_matches_reference(co, k, n, kc, parts, with_bias, affine, add, clip, act, parallel, seed):
    """Every batch (one to three groups of 64 samples, the last one partial), block size and split
    against the twin: the sums within float32 rounding of the kernel's fused multiply-adds (bound
    from the sum of |terms|), the epilogue's own float32 steps after them."""
    check_dense_product(lambda w, x, bias, epi: _run(w, x, bias, epi, kc, parts, parallel), ref.stream_gemm,
                        np.random.default_rng(seed), co, k, n, with_bias, affine, add, clip, act)


@given(co=st.integers(1, 40), k=st.integers(1, 200), n=st.integers(2, 130), seed=st.integers(0, 2**31))
def test_a_samples_result_does_not_depend_on_its_batch(co, k, n, seed):
    """One fused multiply-add per feature, in feature order, whatever the batch, the sample's place
    in it, the block size and the split: the same bits for a sample computed among others."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((co, k)).astype(F32)
    x = rng.standard_normal((n, k)).astype(F32)
    epi = random_epilogue(rng, 0, co, False, False, None, 0)
    bias = rng.standard_normal(co).astype(F32)
    whole = _run(w, x, bias, epi, k, 2)
    order = rng.permutation(n)
    shuffled = _run(w, x[order], bias, epi, int(rng.integers(1, k + 1)), 3, parallel=False)
    assert np.array_equal(shuffled.view(np.int32), whole[order].view(np.int32))
    pair = _run(w, x[:2], bias, epi, int(rng.integers(1, k + 1)), 1)
    assert np.array_equal(pair.view(np.int32), whole[:2].view(np.int32))


@pytest.fixture
def streamed(monkeypatch):
    """Dense layers of any size take the streaming step at 2 .. STREAM_MAX_BATCH samples (the
    blocked kernel's size limit set to nothing)."""
    monkeypatch.setattr("nncomp.layers.conv_blocked.BLOCKED_MAX_WEIGHT_BYTES", 0)
    monkeypatch.setattr("nncomp.layers.conv_blocked.BLOCKED_WIDE_MAX_INPUTS", 0)


def test_dense_layers_run_the_streaming_step_with_their_epilogues(streamed):
    """A model of dense layers (bias or none, ReLU, ReLU6 and a residual add fused into them): the
    few-sample step serves 2 .. 4 samples and the streaming step 5 .. 128 (the rules without
    probes), the fused steps give the unfused layers' bits and the float64 reference graph's
    numbers; one sample keeps the mat-vec, 200 the BLAS product."""
    rng = np.random.default_rng(3)
    f32 = lambda *s: rng.standard_normal(s).astype(F32)  # noqa: E731
    nodes = [Node("fc1", nc.Dense(f32(40, 30), f32(40)), ("input",)), Node("r1", nc.ReLU(), ("fc1",)),
             Node("fc2", nc.Dense(f32(40, 40), None), ("r1",)), Node("add", nc.Add(), ("fc2", "r1")),
             Node("r2", nc.ReLU(6.0), ("add",)), Node("fc3", nc.Dense(f32(5, 40), f32(5)), ("r2",))]
    model = nc.Model(nodes, input_shape=(30,), input_layout="NC")
    for n in (1, 2, 4, 5, 17, 64, 65, 128, 200):
        x = rng.standard_normal((n, 30)).astype(F32)
        got = model(x)
        values = {"input": x}
        for node in model.nodes:
            values[node.name] = node.layer.forward(*(values[s] for s in node.inputs))
        assert np.array_equal(got, values["fc3"]), n
        want = graph_reference(model, x)["fc3"]
        assert np.allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max()), n
        steps = [getattr(s, "__qualname__", "") for s, _, _ in model._plan((30,), n, model.outputs).steps]
        assert steps.count("Dense._streamed.<locals>.few_step") == (3 if 2 <= n <= 4 else 0), (n, steps)
        assert steps.count("Dense._streamed.<locals>.step") == (3 if 5 <= n <= 128 else 0), (n, steps)


def test_large_dense_weights_stream_at_small_batches():
    """Without any patch: a weight over the blocked kernel's limit (4.2 MB) runs the few-sample
    step at 2 .. 4 samples, streams at 5 .. 128, and matches NumPy's product."""
    rng = np.random.default_rng(4)
    w, b = rng.standard_normal((1030, 1024)).astype(F32), rng.standard_normal(1030).astype(F32)
    model = nc.Model([Node("fc", nc.Dense(w, b), ("input",))], input_shape=(1024,), input_layout="NC")
    for n, kind in ((3, "few_step"), (100, "step")):
        x = rng.standard_normal((n, 1024)).astype(F32)
        want = x.astype(np.float64) @ w.T.astype(np.float64) + b
        assert np.allclose(model(x), want, rtol=1e-4, atol=1e-4)
        steps = [getattr(s, "__qualname__", "") for s, _, _ in model._plan((1024,), n, model.outputs).steps]
        assert steps == [f"Dense._streamed.<locals>.{kind}"], steps

