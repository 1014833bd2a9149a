"""Tiny ONNX graphs of one operator, run in ONNX Runtime: the oracle of the ONNX layers' tests."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def run(op, args, attrs=None, opset=17):
    """Output of one ``op`` node on ``args``: arrays (graph inputs), ``("const", array)``
    (initializers) or None (an omitted optional input)."""
    names, inputs, inits = [], [], []
    for k, a in enumerate(args):
        if a is None:
            names.append("")
            continue
        name = f"a{k}"
        names.append(name)
        if isinstance(a, tuple):
            inits.append(numpy_helper.from_array(np.asarray(a[1]), name))
        else:
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, a.shape))
    node = helper.make_node(op, names, ["y"], **(attrs or {}))
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {f"a{k}": a for k, a in enumerate(args) if a is not None and not isinstance(a, tuple)}
    return sess.run(None, feed)[0]


def nhwc(x):
    return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 3, 1))
