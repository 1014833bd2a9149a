"""Small ONNX graphs for the importer's tests, built with onnx.helper, and the ORT comparison."""
from pathlib import Path

import numpy as np
import pytest

import nncomp as nc

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ONNX_DIR = ROOT / "data" / "onnx"
_FLOAT = TensorProto.FLOAT


def init(name, arr):
    """An initializer from a NumPy array (float32 or int64)."""
    arr = np.asarray(arr)
    return numpy_helper.from_array(arr.astype(np.float32 if arr.dtype.kind == "f" else np.int64), name)


def graph_model(nodes, in_shape, out_names=("y",), inits=(), opset=13, in_name="x"):
    """A ModelProto reading float input ``x`` of ``in_shape`` (None or a string: a free dim)."""
    inp = helper.make_tensor_value_info(in_name, _FLOAT, list(in_shape))
    outs = [helper.make_tensor_value_info(n, _FLOAT, None) for n in out_names]
    graph = helper.make_graph(list(nodes), "g", [inp], outs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def save(model, path):
    path = Path(path)
    path.write_bytes(model.SerializeToString())
    return path


def run_ort(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: np.asarray(x, np.float32)})
    return out[0] if len(out) == 1 else out


def check(model, x, tmp_path, *, atol=1e-5, rtol=1e-5, name="m.onnx", **load_kw):
    """Load ``model`` with nncomp and compare its output on ``x`` with ONNX Runtime's; the model."""
    path = save(model, tmp_path / name)
    want = run_ort(path, x)
    m = nc.load(path, **load_kw)
    got = m(x)
    if isinstance(want, list):
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, atol=atol, rtol=rtol)
    else:
        assert got.shape == want.shape, (got.shape, want.shape)
        np.testing.assert_allclose(got, want, atol=atol, rtol=rtol)
    return m


def rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
