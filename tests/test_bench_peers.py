"""ONNX Runtime as the benchmark's contender: float32, and ORT's own dynamic and static (QDQ) int8."""
import numpy as np
import pytest

import nncomp as nc

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from nncomp.bench import ort_quant, peers  # noqa: E402


@pytest.fixture(scope="module")
def lenet5():
    model = nc.load(nc.data.model_path("lenet5"))
    x, y = nc.data.mnist("train")
    return model, x[:256], y[:256]


def test_ort_float32_and_int8_contenders_compute_the_model(lenet5):
    model, x, y = lenet5
    ref = model(x[:64])
    f32 = peers.ort_model(model, threads=1)
    np.testing.assert_allclose(f32(x[:64]), ref, atol=1e-4)
    for kw in ({"int8": True}, {"int8": "static", "calibration": x}):
        q = peers.ort_model(model, threads=1, int8_ops=("MatMul", "Conv"), **kw)
        out = q(x[:64])
        assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()             # int8, not float
        assert np.mean(out.argmax(1) == ref.argmax(1)) >= 0.95
        assert np.abs(out - ref).max() > 1e-5                               # really quantized
        assert q.onnx_bytes < 0.5 * f32.onnx_bytes


def test_ort_static_int8_is_qdq_with_per_channel_weights_and_needs_calibration(lenet5):
    model, x, _ = lenet5
    data = peers.onnx_model(model).SerializeToString()
    g = onnx.load_from_string(ort_quant.quantize_graph(data, "static", ("MatMul", "Conv"), x[:64])).graph
    ops = [n.op_type for n in g.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and "Conv" in ops
    weights = {i.name: i for i in g.initializer}
    per_channel = [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in weights
                   and weights[n.input[1]].dims and weights[n.input[1]].dims[0] > 1]
    assert per_channel                                                       # a scale per output channel
    with pytest.raises(ValueError, match="calibration"):
        ort_quant.quantize_graph(data, "static", ("Conv",), None)
