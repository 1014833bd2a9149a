"""nc.load on ONNX files: the shipped models' exports, each operator against ONNX Runtime, layouts,
shape folding at every input size, opsets, detection, and compression of imported models.

The hostile ONNX files are in test_hostile.py.
"""
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nncomp as nc
from onnx_graphs import ONNX_DIR, ROOT, check, graph_model, helper, init, rand, run_ort, save

MODELS = ["lenet300", "lenet5", "vgg_small", "resnet_small"]
# another input size each model takes (None: only its own)
OTHER_SIZE = {"lenet300": None, "lenet5": (1, 30, 30), "vgg_small": (1, 31, 29), "resnet_small": (1, 36, 40),
              "torch_misc": (3, 24, 20)}


def digits(name, n):
    x, _ = nc.data.mnist("test")
    x = x[:n].reshape((n, 784) if name == "lenet300" else (n, 1, 28, 28))
    return np.ascontiguousarray(x, np.float32)


# ------------------------------------------------------------------ the shipped models
@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("name", MODELS)
def test_shipped_models_match_torch_and_ort(name, opset):
    path = ONNX_DIR / f"{name}.op{opset}.onnx"
    m = nc.load(path)
    logits = np.load(nc.data.model_path(name).with_suffix(".logits.npy"))
    for n in (1, 7):
        x = digits(name, n)
        y = m(x)
        np.testing.assert_allclose(y, run_ort(path, x), atol=1e-4, rtol=0)
        np.testing.assert_allclose(y, logits[:n], atol=1e-4, rtol=0)
    size = OTHER_SIZE[name]
    if size is not None:      # the exports fix H x W for ONNX Runtime; the h5 import follows torch at any size
        x = np.random.default_rng(1).random((3,) + size, dtype=np.float32)
        np.testing.assert_allclose(m(x), nc.load(nc.data.model_path(name))(x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("opset", [13, 18])
def test_layer_zoo_export(opset):
    path = ONNX_DIR / f"torch_misc.op{opset}.onnx"
    m = nc.load(path)
    x = np.load(ROOT / "data" / "fixtures" / "torch_misc.input.npy")
    np.testing.assert_allclose(m(x), np.load(ROOT / "data" / "fixtures" / "torch_misc.logits.npy"), atol=1e-4)
    x = rand((2,) + OTHER_SIZE["torch_misc"])
    np.testing.assert_allclose(m(x), nc.load(ROOT / "data" / "fixtures" / "torch_misc.h5")(x), atol=1e-4)


def test_imported_model_is_built_from_ordinary_layers():
    m = nc.load(ONNX_DIR / "resnet_small.op13.onnx")
    kinds = [n.layer.kind for n in m.nodes]
    assert kinds.count("add") == 3 and "conv2d" in kinds and kinds[-1] == "dense"
    assert m.input_layout == "NCHW" and m.input_shape == (1, 28, 28)
    assert nc.load(ONNX_DIR / "lenet300.op13.onnx").input_layout == "NC"


@pytest.mark.parametrize("method", ["prune", "quantize", "share", "factorize", "deep_compression"])
def test_compression_of_an_imported_model_and_native_save(method, tmp_path):
    m = nc.load(ONNX_DIR / "vgg_small.op13.onnx")
    x = digits("vgg_small", 64)
    kw = {"prune": dict(sparsity=0.5), "quantize": {}, "share": dict(bits=5), "factorize": dict(energy=0.95),
          "deep_compression": dict(sparsity=0.6)}[method]
    c = getattr(nc, method)(m, **kw)
    assert any(n.layer.weight is not None and n.layer.weight.format != "dense" for n in c.nodes) or method == "factorize"
    agree = (c(x).argmax(1) == m(x).argmax(1)).mean()
    assert agree > 0.9
    path = tmp_path / "c.h5"
    nc.save(c, path)
    np.testing.assert_array_equal(nc.load(path)(x), c(x))


def test_saved_import_reloads_without_onnx(tmp_path):
    path = tmp_path / "m.h5"
    nc.save(nc.load(ONNX_DIR / "resnet_small.op18.onnx"), path)
    code = ("import sys; sys.modules['onnx'] = None; sys.modules['onnxruntime'] = None\n"
            "import numpy as np, nncomp as nc\n"
            f"m = nc.load({str(path)!r}); print(m(np.ones((2, 1, 28, 28), np.float32)).shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(2, 10)"


def test_missing_onnx_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(nc.NncompError, match=r"pip install nncomp\[onnx\]"):
        nc.load(ONNX_DIR / "lenet5.op13.onnx")


# ------------------------------------------------------------------ detection and opsets
def test_detected_by_content_not_suffix(tmp_path):
    onnx_bytes = (ONNX_DIR / "lenet300.op13.onnx").read_bytes()
    (tmp_path / "weights.bin").write_bytes(onnx_bytes)
    assert nc.load(tmp_path / "weights.bin").input_shape == (784,)
    assert nc.load(str(tmp_path / "weights.bin").encode()).input_shape == (784,)
    h5 = tmp_path / "really_hdf5.onnx"
    h5.write_bytes(nc.data.model_path("lenet300").read_bytes())
    assert [n.layer.kind for n in nc.load(h5).nodes] == [n.layer.kind for n in nc.load(nc.data.model_path("lenet300")).nodes]


def test_old_opset_is_upgraded(tmp_path):
    w = rand((4, 3, 3, 3))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    check(graph_model(nodes, ["n", 3, 8, 8], inits=[init("w", w)], opset=9), rand((2, 3, 8, 8)), tmp_path, atol=1e-5)


def test_newer_opset_is_refused_with_the_fix(tmp_path):
    model = graph_model([helper.make_node("Relu", ["x"], ["y"])], [1, 4], opset=22)
    with pytest.raises(nc.UnsupportedModelError, match="opset_version=21"):
        nc.load(save(model, tmp_path / "m.onnx"))


def test_unsupported_ops_are_all_listed_before_weights_are_read(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("NonMaxSuppression", ["a"], ["b"], name="nms1"),
             helper.make_node("TopK", ["b", "k"], ["y", "i"], name="top"),
             helper.make_node("NonMaxSuppression", ["y"], ["z"], name="nms2")]
    # the initializer's data is broken: refusing the ops must come first
    bad = init("k", np.array([3]))
    bad.raw_data = b"\x00"
    model = graph_model(nodes, [1, 4], out_names=("z",), inits=[bad])
    with pytest.raises(nc.UnsupportedModelError) as e:
        nc.load(save(model, tmp_path / "m.onnx"))
    msg = str(e.value)
    assert "NonMaxSuppression" in msg and "nms1" in msg and "nms2" in msg and "TopK" in msg


def test_a_100_node_unsupported_model_is_refused_fast(tmp_path):
    nodes = [helper.make_node("Relu" if i % 2 else "Einsum", [f"v{i}"], [f"v{i + 1}"], equation="i->i")
             for i in range(100)]
    model = graph_model(nodes, [1, 4], out_names=("v100",), in_name="v0")
    path = save(model, tmp_path / "m.onnx")
    with pytest.raises(nc.UnsupportedModelError):
        nc.load(path)
    t = time.perf_counter()
    with pytest.raises(nc.UnsupportedModelError):
        nc.load(path)
    assert time.perf_counter() - t < 0.1


def test_free_dims_need_input_shape(tmp_path):
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    path = save(graph_model(nodes, ["n", 3, "h", "w"]), tmp_path / "m.onnx")
    with pytest.raises(nc.NncompError, match="input_shape"):
        nc.load(path)
    m = nc.load(path, input_shape=(3, 8, 8))
    x = rand((2, 3, 10, 6))
    np.testing.assert_array_equal(m(x), run_ort(path, x))


# ------------------------------------------------------------------ shapes folded per input size
def test_view_batch_minus_one_works_at_every_size(tmp_path):
    """x.view(x.size(0), -1) after a global pool: Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
             helper.make_node("Shape", ["p"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
             helper.make_node("Concat", ["n1", "m1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["p", "shape"], ["y"])]
    inits = [init("zero", np.array(0)), init("ax", np.array([0])), init("m1", np.array([-1]))]
    model = graph_model(nodes, ["n", 5, "h", "w"], inits=inits)
    m = check(model, rand((2, 5, 6, 7)), tmp_path, input_shape=(5, 6, 7))
    assert not any(n.layer.kind == "fixed_shape" for n in m.nodes)
    path = tmp_path / "m.onnx"
    for shape in [(3, 5, 9, 4), (1, 5, 2, 2)]:
        x = rand(shape)
        np.testing.assert_allclose(m(x), run_ort(path, x), atol=1e-6)


def test_reshape_from_own_dims_keeps_any_size(tmp_path):
    """Reshape to (N, C, H*W)-style targets built from Shape slices: dims of the input itself."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Slice", ["s", "a", "b"], ["nc"]),
             helper.make_node("Concat", ["nc", "m1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    inits = [init("a", np.array([0])), init("b", np.array([2])), init("m1", np.array([-1]))]
    model = graph_model(nodes, ["n", 3, "h", "w"], inits=inits)
    m = check(model, rand((2, 3, 4, 5)), tmp_path, input_shape=(3, 4, 5))
    x = rand((1, 3, 7, 2))
    np.testing.assert_array_equal(m(x), run_ort(tmp_path / "m.onnx", x))


def test_shape_arithmetic_binds_the_model_to_its_size(tmp_path):
    """A target computed with arithmetic on dims (H*W) holds for the nominal size only: other sizes
    are refused, never computed wrong."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "i2"], ["h"], axis=0),
             helper.make_node("Gather", ["s", "i3"], ["w"], axis=0),
             helper.make_node("Mul", ["h", "w"], ["hw"]),
             helper.make_node("Unsqueeze", ["hw", "ax"], ["hw1"]),
             helper.make_node("Concat", ["z", "m1", "hw1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    inits = [init("i2", np.array(2)), init("i3", np.array(3)), init("ax", np.array([0])),
             init("z", np.array([0])), init("m1", np.array([-1]))]
    m = check(graph_model(nodes, ["n", 3, "h", "w"], inits=inits), rand((2, 3, 4, 5)), tmp_path, input_shape=(3, 4, 5))
    with pytest.raises(nc.InputError):
        m(rand((1, 3, 5, 4)))


@pytest.mark.parametrize("foreign", [1, 2])
def test_one_size_read_from_another_value_keeps_any_size(tmp_path, foreign):
    """A Reshape whose target takes one size from another value's Shape (attention blocks: the
    sequence length) infers it from the element count at every input size; two such sizes bind the
    model to its load size (refused elsewhere, never computed wrong)."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Shape", ["r"], ["s"]),
             helper.make_node("Gather", ["s", "i1"], ["n"], axis=0),
             helper.make_node("Gather", ["s", "i2"], ["c"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]), helper.make_node("Unsqueeze", ["c", "ax"], ["c1"]),
             helper.make_node("Concat", ["z", "n1", *(["c1"] if foreign == 2 else ["c0"])], ["shape"], axis=0),
             helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Reshape", ["t", "shape"], ["y"])]
    inits = [init("i1", np.array(1)), init("i2", np.array(2)), init("ax", np.array([0])), init("z", np.array([0])),
             init("c0", np.array([6]))]
    model = graph_model(nodes, ["b", "n", 6], inits=inits)
    m = check(model, rand((2, 5, 6)), tmp_path, input_shape=(5, 6))
    other = rand((3, 9, 6))
    if foreign == 1:
        np.testing.assert_allclose(m(other), run_ort(save(model, tmp_path / "o.onnx"), other), rtol=1e-6)
    else:
        with pytest.raises(nc.InputError):
            m(other)


def test_constant_node_forms(tmp_path):
    nodes = [helper.make_node("Constant", [], ["a"], value_float=2.0),
             helper.make_node("Constant", [], ["b"], value_floats=[1.0, -1.0, 0.5]),
             helper.make_node("Constant", [], ["sh"], value_ints=[-1, 3]),
             helper.make_node("Constant", [], ["w"], value=helper.make_tensor("w", 1, [3, 3], rand(9).tolist())),
             helper.make_node("Reshape", ["x", "sh"], ["r"]),
             helper.make_node("MatMul", ["r", "w"], ["m"]),
             helper.make_node("Add", ["m", "m"], ["y"])]
    check(graph_model(nodes, ["n", 3]), rand((4, 3)), tmp_path)


# ------------------------------------------------------------------ operators (core)
@settings(max_examples=12)
@given(k=st.integers(1, 3), s=st.integers(1, 2), d=st.integers(1, 2), g=st.sampled_from([1, 2, 4]),
       pad=st.sampled_from(["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]), p=st.integers(0, 2),
       hw=st.tuples(st.integers(5, 9), st.integers(5, 9)), bias=st.booleans())
def test_conv_attributes(tmp_path_factory, k, s, d, g, pad, p, hw, bias):
    cin, cout = 4, 8
    d = 1 if pad.startswith("SAME") else d          # ONNX Runtime has no dilated SAME convolutions
    w = rand((cout, cin // g, k, k), 1)
    attrs = dict(strides=[s, s], dilations=[d, d], group=g, kernel_shape=[k, k])
    if pad == "NOTSET":
        attrs["pads"] = [p, 0, p, 1]
    else:
        attrs["auto_pad"] = pad
    ins = ["x", "w"] + (["b"] if bias else [])
    inits = [init("w", w)] + ([init("b", rand(cout, 2))] if bias else [])
    model = graph_model([helper.make_node("Conv", ins, ["y"], **attrs)], ["n", cin, *hw], inits=inits)
    check(model, rand((2, cin) + hw, 3), tmp_path_factory.mktemp("conv"), atol=1e-4)


@pytest.mark.parametrize("trans_b,alpha,beta,c_shape", [(0, 1.0, 1.0, (5,)), (1, 0.5, 2.0, (1, 5)), (1, 1.0, 1.0, None)])
def test_gemm(tmp_path, trans_b, alpha, beta, c_shape):
    b = rand((5, 6) if trans_b else (6, 5), 1)
    ins, inits = ["x", "b"], [init("b", b)]
    if c_shape:
        ins.append("c")
        inits.append(init("c", rand(c_shape, 2)))
    node = helper.make_node("Gemm", ins, ["y"], transB=trans_b, alpha=alpha, beta=beta)
    m = check(graph_model([node], ["n", 6], inits=inits), rand((3, 6)), tmp_path)
    assert m.nodes[0].layer.kind == "dense"


def test_matmul_constant_and_between_activations(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]),
             helper.make_node("Reshape", ["a", "s1"], ["p"]), helper.make_node("Reshape", ["a", "s2"], ["q"]),
             helper.make_node("MatMul", ["p", "q"], ["y"])]
    inits = [init("w", rand((6, 12), 1)), init("s1", np.array([0, 3, 4])), init("s2", np.array([0, 4, 3]))]
    m = check(graph_model(nodes, ["n", 6], inits=inits), rand((2, 6)), tmp_path, atol=1e-4)
    assert [n.layer.kind for n in m.nodes].count("dense") == 1 and m.nodes[-1].layer.kind == "matmul"


def test_matmul_of_a_sequence_with_a_constant(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("Transpose", ["a"], ["t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["t", "v"], ["y"])]
    inits = [init("w", rand((6, 4), 1)), init("v", rand((5, 3), 2))]
    m = check(graph_model(nodes, ["n", 5, 6], inits=inits), rand((2, 5, 6)), tmp_path, atol=1e-5)
    nc.save(m, tmp_path / "native.h5")
    np.testing.assert_array_equal(nc.load(tmp_path / "native.h5")(rand((3, 5, 6))), m(rand((3, 5, 6))))


def test_batchnorm_relu_clip_pools(tmp_path):
    c = 4
    nodes = [helper.make_node("BatchNormalization", ["x", "g", "b", "mu", "var"], ["bn"], epsilon=1e-3),
             helper.make_node("Clip", ["bn", "lo", "hi"], ["r6"]),
             helper.make_node("MaxPool", ["r6"], ["mp"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                              ceil_mode=1),
             helper.make_node("AveragePool", ["mp"], ["ap"], kernel_shape=[2, 2], pads=[1, 0, 1, 0],
                              count_include_pad=0),
             helper.make_node("Relu", ["ap"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["y"])]
    inits = [init("g", rand(c, 1)), init("b", rand(c, 2)), init("mu", rand(c, 3)), init("var", np.abs(rand(c, 4))),
             init("lo", np.array(0.0)), init("hi", np.array(6.0))]
    m = check(graph_model(nodes, ["n", c, 11, 9], inits=inits), rand((2, c, 11, 9), 5) * 4, tmp_path, atol=1e-5)
    relu6 = [n.layer for n in m.nodes if n.layer.kind == "relu"][0]
    assert relu6.max_value == 6.0


@pytest.mark.parametrize("first", [False, True])
def test_scale_and_shift_after_conv_and_gemm_fold_into_the_weights(tmp_path, first):
    """conv -> Mul(constant) -> Add/Sub/Div(constant), one value or one per channel: no layer left."""
    mul_in = ["s", "c"] if first else ["c", "s"]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", mul_in, ["m"]), helper.make_node("Add", ["m", "t"], ["a"]),
             helper.make_node("Div", ["a", "two"], ["d"]), helper.make_node("Flatten", ["d"], ["f"]),
             helper.make_node("Gemm", ["f", "g"], ["e"], transB=1), helper.make_node("Sub", ["e", "t2"], ["y"])]
    inits = [init("w", rand((4, 3, 3, 3), 1)), init("b", rand(4, 2)), init("s", rand((4, 1, 1), 3)),
             init("t", np.array(0.5)), init("two", np.array(2.0)), init("g", rand((5, 4 * 36), 4)),
             init("t2", rand((1, 5), 5))]
    m = check(graph_model(nodes, ["n", 3, 6, 6], inits=inits), rand((2, 3, 6, 6)), tmp_path, atol=1e-4)
    assert [n.layer.kind for n in m.nodes] == ["conv2d", "fixed_shape", "flatten", "dense"]


def test_a_value_read_under_two_names_keeps_its_producer(tmp_path):
    """GELU as paddle2onnx writes it (PP-OCRv6): conv -> Add(bias) -> Identity -> Identity, then
    ``x / sqrt(2)`` and ``x * (1 + erf(...))`` both read the value under the Identity's name: the
    Div must not fold into the convolution (it did: every PP-OCRv6 output was wrong). A single
    reader behind an Identity still folds."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Add", ["c", "b"], ["a"]),
             helper.make_node("Identity", ["a"], ["i1"]), helper.make_node("Identity", ["i1"], ["i2"]),
             helper.make_node("Div", ["i2", "r2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["e1"]), helper.make_node("Mul", ["i2", "e1"], ["g"]),
             helper.make_node("Mul", ["g", "half"], ["y"])]
    inits = [init("w", rand((4, 3, 1, 1), 1)), init("b", rand((1, 4, 1, 1), 2)), init("r2", np.array(np.sqrt(2.0))),
             init("one", np.array(1.0)), init("half", np.array(0.5))]
    check(graph_model(nodes, ["n", 3, 5, 5], inits=inits), rand((2, 3, 5, 5)) * 3, tmp_path, atol=1e-5)
    single = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Identity", ["c"], ["i"]),
              helper.make_node("Mul", ["i", "s"], ["y"])]
    m = check(graph_model(single, ["n", 3, 5, 5], inits=[init("w", rand((4, 3, 1, 1), 1)), init("s", np.array(3.0))]),
              rand((2, 3, 5, 5)), tmp_path, name="single.onnx")
    assert [n.layer.kind for n in m.nodes] == ["conv2d"]


@pytest.mark.parametrize("scale", ["div", "mul"])
def test_gelu_written_out_is_one_layer(tmp_path, scale):
    """GELU as torch.onnx and paddle2onnx write it, x / sqrt(2) (or x * 1 / sqrt(2)), Erf, + 1, x *,
    * 0.5: one GELU, in the convolution's epilogue; ONNX Runtime's numbers within float32 rounding."""
    r = np.array(np.sqrt(2.0)) if scale == "div" else np.array(1 / np.sqrt(2.0))
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"]),
             helper.make_node("Div" if scale == "div" else "Mul", ["c", "r"], ["d"]),
             helper.make_node("Erf", ["d"], ["e"]), helper.make_node("Add", ["e", "one"], ["e1"]),
             helper.make_node("Mul", ["c", "e1"], ["g"]), helper.make_node("Mul", ["g", "half"], ["y"])]
    inits = [init("w", rand((6, 3, 1, 1), 1)), init("b", rand(6, 2)), init("r", r), init("one", np.array(1.0)),
             init("half", np.array(0.5))]
    m = check(graph_model(nodes, ["n", 3, 5, 5], inits=inits), rand((2, 3, 5, 5)) * 3, tmp_path, atol=2e-6)
    assert [n.layer.kind for n in m.nodes] == ["conv2d", "gelu"]
    assert [layer.describe() for _, layer in m._plan((5, 5, 3), 2, m.outputs).layers] == ["conv2d+gelu"]


@pytest.mark.parametrize("gate_first", [False, True])
def test_silu_written_out_runs_in_the_convolutions_epilogue(tmp_path, gate_first):
    """SiLU as torch.onnx writes it (YOLOv8: Conv, Sigmoid, Mul of the two): one SiLU, fused into the
    convolution's epilogue; ONNX Runtime's numbers within the two sigmoids' difference (up to 2.5e-7,
    times |x|: for x near -15 one gives -2e-6 where the other gives -0.0)."""
    mul_in = ["s", "c"] if gate_first else ["c", "s"]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", mul_in, ["y"])]
    inits = [init("w", rand((8, 3, 3, 3), 1)), init("b", rand(8, 2))]
    m = check(graph_model(nodes, ["n", 3, 6, 6], inits=inits), rand((2, 3, 6, 6)) * 3, tmp_path, atol=1e-5)
    assert [n.layer.kind for n in m.nodes] == ["conv2d", "silu"]
    plan = m._plan((6, 6, 3), 2, m.outputs)
    assert [layer.describe() for _, layer in plan.layers] == ["conv2d+silu"]


def test_residual_add_is_the_add_layer_and_fuses(tmp_path):
    w = rand((3, 3, 1, 1), 1)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Add", ["c", "x"], ["y"])]
    m = check(graph_model(nodes, ["n", 3, 4, 4], inits=[init("w", w)]), rand((2, 3, 4, 4)), tmp_path)
    assert m.nodes[-1].layer.kind == "add"


@settings(max_examples=15)
@given(perm=st.permutations([1, 2, 3]), data=st.data())
def test_transpose_then_flatten_and_reshape_orders(tmp_path_factory, perm, data):
    shape = (2, 3, 4, 5)
    target = data.draw(st.sampled_from([[0, -1], [0, 60], [0, 2, -1], [0, -1, 5, 2], [0, 3, 4, 5], [0, 2, 3, 2, 5]]))
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, *perm]),
             helper.make_node("Reshape", ["t", "s"], ["y"])]
    model = graph_model(nodes, ["n", 3, 4, 5], inits=[init("s", np.array(target))])
    check(model, rand(shape), tmp_path_factory.mktemp("tr"), atol=0)


@settings(max_examples=15)
@given(axes=st.lists(st.integers(1, 3), min_size=1, max_size=3, unique=True), data=st.data())
def test_slice(tmp_path_factory, axes, data):
    shape = (2, 5, 6, 7)
    starts = [data.draw(st.integers(-8, 8)) for _ in axes]
    ends = [data.draw(st.integers(-8, 9)) for _ in axes]
    steps = [data.draw(st.sampled_from([1, 2, -1, -2])) for _ in axes]
    x = rand(shape)
    for a, s0, e, k in zip(axes, starts, ends, steps):
        n = shape[a]
        if len(range(*slice(s0, e, k).indices(n))) == 0 or (k < 0 and e < -n):
            return
    nodes = [helper.make_node("Slice", ["x", "s", "e", "a", "k"], ["y"])]
    inits = [init("s", np.array(starts)), init("e", np.array(ends)), init("a", np.array(axes)), init("k", np.array(steps))]
    check(graph_model(nodes, ["n", 5, 6, 7], inits=inits), x, tmp_path_factory.mktemp("sl"), atol=0)


@pytest.mark.parametrize("opset, axis, sizes", [(11, 1, [2, 4]), (11, 2, None), (13, 1, [1, 2, 3]), (13, 2, None),
                                               (18, 1, None), (18, 3, None), (18, -1, [3, 4])])
def test_split_gives_each_part_as_onnx_runtime_does(tmp_path, opset, axis, sizes):
    """Split (PP-PicoDet's detection head, paddle2onnx) into parts of the given sizes, as an input
    from opset 13 and an attribute before, or equal parts (opset 18: the last one smaller where
    they do not divide), along channels, height or width; then through a 1x1 convolution and a
    flatten, as a head does."""
    parts = len(sizes) if sizes else 3 if opset == 18 else 2
    attrs = {"axis": axis}
    ins = ["x"]
    inits = []
    if sizes and opset >= 13:
        ins.append("sp")
        inits.append(init("sp", np.array(sizes)))
    elif sizes:
        attrs["split"] = sizes
    if opset == 18 and not sizes:
        attrs["num_outputs"] = parts
    names = [f"p{i}" for i in range(parts)]
    nodes = [helper.make_node("Split", ins, names, **attrs),
             helper.make_node("Conv", [names[0], "w"], ["c"]),
             helper.make_node("Flatten", ["c"], ["y0"], axis=1)]
    c0 = sizes[0] if sizes and axis == 1 else 6 // parts + (6 % parts > 0) if axis == 1 else 6
    inits.append(init("w", rand((4, c0, 1, 1), 1)))
    model = graph_model(nodes, ["n", 6, 8, 7], out_names=("y0", *names[1:]), inits=inits, opset=opset)
    x = rand((2, 6, 8, 7), 2)
    m = check(model, x, tmp_path, atol=1e-5)
    assert len(m(x)) == parts and [n.layer.kind for n in m.nodes].count("slice") == parts
    if sizes and opset >= 13:       # sizes that do not add up to the axis: refused, saying so
        bad = list(inits)
        bad[0] = init("sp", np.array([*sizes[:-1], sizes[-1] + 1]))
        path = save(graph_model(nodes, ["n", 6, 8, 7], out_names=("y0", *names[1:]), inits=bad, opset=opset),
                    tmp_path / "bad.onnx")
        with pytest.raises(nc.NncompError, match="add up"):
            nc.load(path)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("pads", [[0, 0, 1, 2, 0, 0, 2, 1], [0, 1, 0, 1, 0, 2, 1, 0]])
def test_pad(tmp_path, mode, pads):
    nodes = [helper.make_node("Pad", ["x", "p", "v"], ["y"], mode=mode)]
    inits = [init("p", np.array(pads)), init("v", np.array(1.5))]
    check(graph_model(nodes, ["n", 3, 4, 5], inits=inits), rand((2, 3, 4, 5)), tmp_path, atol=0)


def test_concat_squeeze_unsqueeze_gather_flatten(tmp_path):
    nodes = [helper.make_node("Concat", ["x", "x"], ["c"], axis=1),                # channels
             helper.make_node("Concat", ["c", "c"], ["c2"], axis=-1),              # width
             helper.make_node("Gather", ["c2", "i"], ["g"], axis=2),               # rows 2, 0 -> rank kept
             helper.make_node("Gather", ["g", "j"], ["g1"], axis=1),               # one channel: rank 3
             helper.make_node("Unsqueeze", ["g1", "ax1"], ["u"]),                  # back to 4-D (N, H, 1, W)
             helper.make_node("Squeeze", ["u", "ax2"], ["sq"]),
             helper.make_node("Flatten", ["u"], ["f"], axis=1),
             helper.make_node("Identity", ["f"], ["y"]),
             helper.make_node("Dropout", ["sq"], ["y2"])]
    inits = [init("i", np.array([2, 0])), init("j", np.array(1)), init("ax1", np.array([2])), init("ax2", np.array([2]))]
    model = graph_model(nodes, ["n", 3, 4, 5], out_names=("y", "y2"), inits=inits)
    m = check(model, rand((2, 3, 4, 5)), tmp_path, atol=0)
    nc.save(m, tmp_path / "native.h5")                          # the structural layers in the native format
    back = nc.load(tmp_path / "native.h5")
    x = rand((3, 3, 4, 5), 1)
    for a, b in zip(back(x), m(x)):
        np.testing.assert_array_equal(a, b)


def test_cast_of_an_activation_truncates(tmp_path):
    nodes = [helper.make_node("Cast", ["x"], ["i"], to=7), helper.make_node("Cast", ["i"], ["y"], to=1)]
    check(graph_model(nodes, ["n", 6]), rand((3, 6)) * 5, tmp_path, atol=0)


def test_softmax_last_axis_and_channels(tmp_path):
    nodes = [helper.make_node("Softmax", ["x"], ["y"], axis=1)]
    check(graph_model(nodes, ["n", 4, 3, 3]), rand((2, 4, 3, 3)), tmp_path, atol=1e-6)


def test_five_d_and_three_d_tensors_use_the_generic_layout(tmp_path):
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Unsqueeze", ["t", "ax"], ["u"]),
             helper.make_node("Unsqueeze", ["u", "ax"], ["y"])]
    m = check(graph_model(nodes, ["n", 3, 5], inits=[init("ax", np.array([1]))]), rand((2, 3, 5)), tmp_path, atol=0)
    assert m.input_layout == "N*"


# ------------------------------------------------------------------ operators from branch layers2
def test_activations_binary_and_se_block(tmp_path):
    c = 4
    nodes = [helper.make_node("LeakyRelu", ["x"], ["a"], alpha=0.1),
             helper.make_node("HardSigmoid", ["a"], ["hs"], alpha=0.2, beta=0.5),
             helper.make_node("GlobalAveragePool", ["hs"], ["p"]),
             helper.make_node("Sigmoid", ["p"], ["s"]),
             helper.make_node("Mul", ["a", "s"], ["se"]),                       # squeeze-and-excitation scaling
             helper.make_node("Sub", ["k", "se"], ["d"]),                       # constant first
             helper.make_node("Div", ["d", "k2"], ["q"]),
             helper.make_node("Pow", ["q", "two"], ["pw"]),
             helper.make_node("Sqrt", ["pw"], ["sq"]),
             helper.make_node("HardSwish", ["sq"], ["y"])]
    inits = [init("k", rand((1, c, 1, 1), 1)), init("k2", np.abs(rand((c, 1, 1), 2)) + 1), init("two", np.array(2.0))]
    check(graph_model(nodes, ["n", c, 5, 6], inits=inits, opset=14), rand((2, c, 5, 6)), tmp_path, atol=1e-5)


@pytest.mark.parametrize("form", ["divide", "hardsigmoid"])
def test_hardswish_spellings_become_one_layer(tmp_path, form):
    if form == "divide":
        nodes = [helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "z", "six"], ["c"]),
                 helper.make_node("Mul", ["x", "c"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])]
    else:
        nodes = [helper.make_node("HardSigmoid", ["x"], ["h"], alpha=1 / 6, beta=0.5),
                 helper.make_node("Mul", ["x", "h"], ["y"])]
    inits = [init("three", np.array(3.0)), init("z", np.array(0.0)), init("six", np.array(6.0))]
    m = check(graph_model(nodes, ["n", 3, 4, 4], inits=inits if form == "divide" else [], opset=14),
              rand((2, 3, 4, 4)) * 4, tmp_path, atol=1e-6)
    assert [n.layer.kind for n in m.nodes] == ["hardswish"]


def test_reductions_layernorm_resize_convtranspose_globalmax(tmp_path):
    c = 4
    nodes = [helper.make_node("ConvTranspose", ["x", "wt", "bt"], ["ct"], strides=[2, 2], pads=[1, 1, 1, 1],
                             output_padding=[1, 1]),
             helper.make_node("Resize", ["ct", "", "sc"], ["rs"], mode="nearest"),
             helper.make_node("Resize", ["rs", "", "sc"], ["rl"], mode="linear", coordinate_transformation_mode="half_pixel"),
             helper.make_node("ReduceMean", ["rl"], ["rm"], axes=[1], keepdims=1),
             helper.make_node("ReduceSum", ["rl", "ax2"], ["rsum"], keepdims=0),
             helper.make_node("GlobalMaxPool", ["rl"], ["gm"]),
             helper.make_node("LayerNormalization", ["rl", "ls", "lb"], ["y"], axis=1, epsilon=1e-5)]
    inits = [init("wt", rand((c, 3, 3, 3), 1)), init("bt", rand(3, 2)), init("sc", np.array([1, 1, 2.0, 2.0])),
             init("ls", rand((3, 1, 1), 3)), init("lb", rand((3, 1, 1), 4)), init("ax2", np.array([2]))]
    model = graph_model(nodes, ["n", c, 3, 4], out_names=("y", "rm", "rsum", "gm"), inits=inits, opset=17)
    check(model, rand((2, c, 3, 4)), tmp_path, atol=1e-4)


def test_softmax_on_any_axis(tmp_path):
    nodes = [helper.make_node("Softmax", ["x"], ["y"], axis=2)]
    check(graph_model(nodes, ["n", 4, 3, 5]), rand((2, 4, 3, 5)), tmp_path, atol=1e-6)


def test_layernorm_spelled_out(tmp_path):
    nodes = [helper.make_node("ReduceMean", ["x"], ["mu"], axes=[-1]), helper.make_node("Sub", ["x", "mu"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["d2"]), helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
             helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["n"]), helper.make_node("Mul", ["n", "g"], ["ng"]),
             helper.make_node("Add", ["ng", "b"], ["y"])]
    inits = [init("two", np.array(2.0)), init("eps", np.array(1e-5)), init("g", rand(8, 1)), init("b", rand(8, 2))]
    m = check(graph_model(nodes, ["n", 5, 8], inits=inits), rand((2, 5, 8)), tmp_path, atol=1e-5)
    assert [n.layer.kind for n in m.nodes] == ["layernorm"]     # scale and shift folded into it


def test_subnormal_weights_load_as_zero(tmp_path):
    """Subnormal weights and biases (trained files hold them: PP-OCRv6's detector) load as zeros,
    every other value unchanged, and the outputs stay ONNX Runtime's; the loader's conversion never
    writes into the caller's array."""
    from nncomp.io.untrusted import convert
    tiny = np.finfo(np.float32).tiny
    w, b = rand((5, 3, 3, 3), 1), rand(5, 2)
    w.flat[::4] = np.float32(tiny / 8) * np.sign(w.flat[::4])       # subnormal, both signs
    b[1] = np.float32(-tiny / 1024)
    before = w.copy()
    flushed = convert(w)
    assert np.array_equal(w, before) and not np.shares_memory(flushed, w)
    assert np.array_equal(flushed, np.where(np.abs(w) < tiny, 0, w)) and (flushed.flat[::4] == 0).all()
    model = graph_model([helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])],
                        (1, 3, 6, 6), inits=[init("w", w), init("b", b)])
    m = check(model, rand((1, 3, 6, 6), 3), tmp_path)
    conv = next(n.layer for n in m.nodes if isinstance(n.layer, nc.Conv2D))
    dense = conv.weight.to_dense()
    assert not ((dense != 0) & (np.abs(dense) < tiny)).any() and conv.bias[1] == 0
    assert np.count_nonzero(dense == 0) == np.count_nonzero(np.abs(w) < tiny)
