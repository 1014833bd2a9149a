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




def test_the_ort_peer_leaves_subnormals_to_the_caller():
    """The ORT peer runs with session.set_denormal_as_zero, which sets flush-to-zero on the caller's
    thread when the process's first such session is made (in CI it broke hypothesis in later tests):
    the peer restores the caller's floating-point environment after creating and running a session,
    so NumPy (and nncomp) keep computing subnormals. The restoring itself is checked by setting
    MXCSR's FTZ and DAZ bits inside kept_float_env (glibc on x86-64)."""
    import ctypes
    import platform

    from nncomp.bench import fpenv
    model = nc.load(nc.data.model_path("lenet5"))
    tiny = np.full(8, 1e-39, np.float32)
    run = peers.ort_model(model, threads=2)
    run(np.zeros((1, *model.input_shape), np.float32))
    assert (tiny * np.float32(1.0) == tiny).all()
    if fpenv._LIBC is None or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("no glibc fenv on x86-64 here")
    with fpenv.kept_float_env():
        env = ctypes.create_string_buffer(fpenv._ENV_BYTES)
        fpenv._LIBC.fegetenv(env)
        mxcsr = int.from_bytes(env.raw[28:32], "little") | 0x8040         # FTZ | DAZ (glibc fenv_t.__mxcsr)
        env.raw = env.raw[:28] + mxcsr.to_bytes(4, "little") + env.raw[32:]
        fpenv._LIBC.fesetenv(env)
        assert (tiny * np.float32(1.0) == 0).all()
    assert (tiny * np.float32(1.0) == tiny).all()
