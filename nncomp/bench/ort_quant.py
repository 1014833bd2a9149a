"""ONNX Runtime's own quantization of a graph, for the int8 contenders of :func:`nncomp.bench.peers.ort_model`:
dynamic (int8 weights, activations quantized per call) or static QDQ (activation ranges from calibration data)."""
import contextlib
import logging
import os
import tempfile
import warnings

import numpy as np

__all__ = ["quantize_graph"]


def quantize_graph(data, mode, ops, calibration=None):
    """The serialized graph ``data`` quantized by ``onnxruntime.quantization``: ``mode`` "dynamic"
    (``quantize_dynamic``, int8 weights) or "static" (``quantize_static`` in QDQ format: per-channel
    int8 weights, uint8 activations, ORT's x86 default pairing, ranges from ``calibration``, inputs in
    the model's layout fed 32 at a time), on the node types ``ops``; 7-bit weights where the CPU lacks
    VNNI (:func:`reduce_range`); returns the new graph's bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "f.onnx"), os.path.join(tmp, "q.onnx")
        with open(src, "wb") as fh:
            fh.write(data)
        with _quiet():
            if mode == "static":
                _quantize_static(src, dst, calibration, ops)
            else:
                from onnxruntime.quantization import QuantType, quantize_dynamic
                quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=list(ops),
                                 reduce_range=reduce_range())
        with open(dst, "rb") as fh:
            return fh.read()


def _quantize_static(src, dst, calibration, ops):
    """ORT's static QDQ quantization of the graph file ``src`` into ``dst`` (see :func:`quantize_graph`)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    if calibration is None or len(calibration) == 0:
        raise ValueError("ORT static int8 needs calibration inputs")
    name = onnx.load(src).graph.input[0].name
    parts = [np.ascontiguousarray(calibration[i:i + 32], np.float32) for i in range(0, len(calibration), 32)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.left = iter(parts)

        def get_next(self):
            part = next(self.left, None)
            return None if part is None else {name: part}

    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=list(ops),
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    reduce_range=reduce_range())


def reduce_range():
    """Whether ORT's int8 weights keep 7 bits, as ORT's quantization guide asks on x86 without VNNI
    (AVX2, AVX-512F alone: ``vpmaddubsw`` adds two u8 x s8 products in int16 and saturates; on an AMD
    EPYC Zen 3, LeNet-5's logits came 17% off with 8 bits). With VNNI (``vpdpbusd`` sums in int32) or
    off x86, the full 8 bits. The host's own features, whatever target Numba compiles for: ORT's
    kernels are chosen by the host."""
    import platform
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    try:
        import llvmlite.binding as llvm
        host = {k for k, v in llvm.get_host_cpu_features().items() if v}
    except Exception:  # noqa: BLE001 - unknown host: ORT's default
        return False
    return not ({"avx512vnni", "avxvnni"} & host)


@contextlib.contextmanager
def _quiet():
    """Silence the peers' advice printed through ``logging`` and ``warnings``."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)
