"""Transposes that move the batch axis (attention blocks as exporters write them), against ONNX Runtime."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import nncomp as nc
from onnx_graphs import check, graph_model, helper, init, save

N, C, HEADS = 6, 8, 2
D = C // HEADS


def _attention(take, seed=0):
    """``x`` (batch, N, C) -> one self-attention block as paddle2onnx writes SVTR's (``take`` "slice":
    Slice + Squeeze of the moved axis) or torch.onnx a ``qkv[0], qkv[1], qkv[2]`` (``take`` "gather")."""
    rng = np.random.default_rng(seed)
    inits = [init("wqkv", rng.standard_normal((C, 3 * C)) * 0.3), init("bqkv", rng.standard_normal(3 * C) * 0.1),
             init("shape5", [0, N, 3, HEADS, D]), init("shape3", [0, N, C]), init("scale", np.float32(D ** -0.5)),
             init("wo", rng.standard_normal((C, C)) * 0.3)]
    nodes = [helper.make_node("MatMul", ["x", "wqkv"], ["m"]), helper.make_node("Add", ["m", "bqkv"], ["qkv"]),
             helper.make_node("Reshape", ["qkv", "shape5"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[2, 0, 3, 1, 4])]
    for i, part in enumerate("qkv"):
        if take == "slice":
            inits += [init(f"s{i}", [i]), init(f"e{i}", [i + 1]), init(f"a{i}", [0])]
            nodes += [helper.make_node("Slice", ["t", f"s{i}", f"e{i}", f"a{i}"], [f"{part}1"]),
                      helper.make_node("Squeeze", [f"{part}1"], [part], axes=[0])]
        else:
            inits.append(init(f"i{i}", np.array(i)))
            nodes.append(helper.make_node("Gather", ["t", f"i{i}"], [part], axis=0))
    nodes += [helper.make_node("Mul", ["q", "scale"], ["qs"]),
              helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", ["qs", "kt"], ["att"]), helper.make_node("Softmax", ["att"], ["p"], axis=3),
              helper.make_node("MatMul", ["p", "v"], ["o"]),
              helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ot", "shape3"], ["o3"]), helper.make_node("MatMul", ["o3", "wo"], ["y"])]
    return graph_model(nodes, ["b", N, C], inits=inits, opset=11 if take == "slice" else 13)


@pytest.mark.parametrize("take", ["slice", "gather"])
@pytest.mark.parametrize("batch", [1, 3])
def test_attention_with_the_batch_axis_moved_matches_onnxruntime(tmp_path, take, batch):
    x = np.random.default_rng(batch).standard_normal((batch, N, C)).astype(np.float32)
    m = check(_attention(take), x, tmp_path, input_shape=(N, C))
    # loaded once, the model takes any batch size (no layer ever saw the batch axis moved)
    x5 = np.random.default_rng(5).standard_normal((5, N, C)).astype(np.float32)
    np.testing.assert_allclose(m(x5)[2:3], m(x5[2:3]), rtol=1e-6, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(perm=st.permutations(range(4)).filter(lambda p: p[0] != 0), back=st.permutations(range(4)),
       seed=st.integers(0, 2 ** 16))
def test_a_moved_batch_axis_brought_back_by_a_second_transpose(tmp_path_factory, perm, back, seed):
    """Transpose by ``perm`` (batch moved), then by the permutation that puts the batch first and the
    other axes in ``back``'s order: one Transpose (or none) of the composed permutation."""
    others = [a for a in back if perm[a] != 0]
    second = [perm.index(0)] + others
    x = np.random.default_rng(seed).standard_normal((2, 3, 4, 5)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=list(perm)),
             helper.make_node("Transpose", ["t"], ["u"], perm=second), helper.make_node("Relu", ["u"], ["y"])]
    check(graph_model(nodes, ["b", 3, 4, 5]), x, tmp_path_factory.mktemp("moved"), input_shape=(3, 4, 5))


def test_gather_of_several_indices_keeps_the_axis_and_the_view(tmp_path):
    """Gather of indices [1, 0] on a moved value's non-batch axis keeps it moved; a Transpose brings it back."""
    inits = [init("idx", [1, 0])]
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
             helper.make_node("Gather", ["t", "idx"], ["g"], axis=0),
             helper.make_node("Transpose", ["g"], ["y"], perm=[1, 0, 2])]
    x = np.random.default_rng(0).standard_normal((3, 2, 5)).astype(np.float32)
    check(graph_model(nodes, ["b", 2, 5], inits=inits), x, tmp_path, input_shape=(2, 5))


def _moved_then(tmp_path, *after, inits=(), out="y"):
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]), *after]
    return save(graph_model(nodes, ["b", 2, 5], out_names=(out,), inits=list(inits)), tmp_path / "bad.onnx")


@pytest.mark.parametrize("case", ["relu", "output", "slice batch", "squeeze batch", "gather batch", "squeeze no axes"])
def test_other_uses_of_a_moved_batch_axis_are_refused_by_name(tmp_path, case):
    after, inits, out = [], [], "y"
    if case == "relu":
        after = [helper.make_node("Relu", ["t"], ["y"])]
    elif case == "output":
        out = "t"
    elif case == "slice batch":
        inits = [init("s", [0]), init("e", [1]), init("a", [1])]
        after = [helper.make_node("Slice", ["t", "s", "e", "a"], ["y"])]
    elif case == "squeeze batch":
        after = [helper.make_node("Squeeze", ["t"], ["y"], axes=[1])]
    elif case == "gather batch":
        inits = [init("i", np.array(0))]
        after = [helper.make_node("Gather", ["t", "i"], ["y"], axis=1)]
    else:
        after = [helper.make_node("Squeeze", ["t"], ["y"])]
    path = _moved_then(tmp_path, *after, inits=inits, out=out)
    with pytest.raises(nc.NncompError) as e:
        nc.load(path, input_shape=(2, 5))
    msg = str(e.value)
    assert "batch axis" in msg and ("position 1" in msg or "axes" in msg), msg


def test_a_transpose_that_is_not_a_permutation_is_refused(tmp_path):
    nodes = [helper.make_node("Transpose", ["x"], ["y"], perm=[0, 1, 1])]
    path = save(graph_model(nodes, ["b", 2, 5]), tmp_path / "bad.onnx")
    with pytest.raises(nc.NncompError, match="not a permutation"):
        nc.load(path, input_shape=(2, 5))
