"""The peers: the same computation in PyTorch (CPU) and ONNX Runtime, given the same threads.

Both are optional. :func:`versions` says which are installed; a builder for a missing peer raises
:class:`PeerUnavailable` (its message is the table cell: ``"not installed"``).

- :func:`torch_model` / :func:`ort_model` run an nncomp :class:`~nncomp.model.Model` (its dense
  weights) as an eager ``torch.nn.Module`` / an ONNX graph, in the model's own input layout, so their
  outputs compare directly with ``model(x)``. ``int8=True`` gives the peers' *dynamic* int8
  quantization: ``torch.ao.quantization.quantize_dynamic`` on every ``nn.Linear`` (torch has no dynamic
  conv), ORT's ``quantize_dynamic`` on every ``MatMul`` (the same layers; convolutions stay float32).
- :func:`torch_csr` and :func:`scipy_csr` multiply by a sparse weight (a dense layer after pruning).

Images run in the peers' native NCHW layout. ONNX Runtime runs sequentially with
``intra_op_num_threads`` threads and, so that its worker threads do not spin into the next contender's
time when contenders alternate, ``session.intra_op.allow_spinning = 0`` (the same passive policy nncomp
gives its own OpenMP pool); pass ``spin=True`` for ORT's default.
"""
import warnings

import numpy as np

from .fpenv import KeptFloatEnv

from ..layers import (Add, AvgPool2D, BatchNorm, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D,
                      MaxPool2D, ReLU, Softmax, ZeroPad2D)

NOT_INSTALLED = "not installed"


class PeerUnavailable(RuntimeError):
    """The peer is not installed or cannot run this model; ``str(e)`` is the table cell."""


def _torch():
    try:
        import torch
    except Exception:  # noqa: BLE001 - any import failure means "not installed"
        raise PeerUnavailable(NOT_INSTALLED) from None
    return torch


def require_ort():
    """The onnxruntime module; PeerUnavailable when onnx or onnxruntime is not installed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except Exception:  # noqa: BLE001
        raise PeerUnavailable(NOT_INSTALLED) from None
    return onnxruntime


def versions():
    """``{"torch": version or "not installed", "onnxruntime": ...}`` without importing more than needed."""
    out = {}
    for name, get in (("torch", _torch), ("onnxruntime", require_ort)):
        try:
            out[name] = get().__version__
        except PeerUnavailable:
            out[name] = NOT_INSTALLED
    return out


def _conv_weight(layer):
    """A Conv2D's weight as ``(c_out, c_in/groups, kh, kw)`` float32 (from its (kh, kw, c) columns)."""
    kh, kw = layer.kernel_size
    w = np.asarray(layer.weight.to_dense(), np.float32)
    return np.array(w.reshape(w.shape[0], kh, kw, -1).transpose(0, 3, 1, 2), np.float32, order="C")


def _rank(model, name):
    return len(model.shapes[name]) + 1


# --------------------------------------------------------------------------------- PyTorch
def torch_model(model, *, int8=False, channels_last=False):
    """The model as an eager ``torch.nn.Module`` in eval mode; returns ``fn(x: ndarray) -> ndarray``.

    ``channels_last``: weights and activations in torch's channels-last memory format; ``fn`` then
    takes NHWC arrays (viewed, not copied, as channels-last NCHW tensors) of a model whose input
    layout is NCHW, and returns its images in channels-last strides.

    Raises PeerUnavailable when torch is missing or a layer has no torch equivalent here.
    """
    torch = _torch()
    from torch import nn
    import torch.nn.functional as F

    mods, plan = nn.ModuleDict(), []
    for i, node in enumerate(model.nodes):
        layer, key = node.layer, f"m{i}"
        if isinstance(layer, Dense):
            lin = nn.Linear(layer.weight.n_in, layer.weight.n_out, bias=layer.bias is not None)
            lin.weight.data = torch.from_numpy(np.array(layer.weight.to_dense(), np.float32))
            if layer.bias is not None:
                lin.bias.data = torch.from_numpy(layer.bias.copy())
            mods[key] = lin
            plan.append((node, key, None))
        elif isinstance(layer, Conv2D):
            t, b, l, r = layer.padding
            sym = t == b and l == r
            conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                             padding=(t, l) if sym else 0, dilation=layer.dilation, groups=layer.groups,
                             bias=layer.bias is not None)
            conv.weight.data = torch.from_numpy(_conv_weight(layer))
            if layer.bias is not None:
                conv.bias.data = torch.from_numpy(layer.bias.copy())
            mods[key] = conv
            plan.append((node, key, None if sym else (l, r, t, b)))
        elif isinstance(layer, BatchNorm):
            n = layer.mean.shape[0]
            bn = (nn.BatchNorm2d if _rank(model, node.name) == 4 else nn.BatchNorm1d)(n, eps=layer.eps)
            for attr, v in (("weight", layer.gamma), ("bias", layer.beta), ("running_mean", layer.mean),
                            ("running_var", layer.var)):
                getattr(bn, attr).data = torch.from_numpy(v.copy())
            mods[key] = bn
            plan.append((node, key, None))
        elif isinstance(layer, AvgPool2D) and (layer.padding[0] != layer.padding[1]
                                               or layer.padding[2] != layer.padding[3]):
            raise PeerUnavailable("unsupported layer (asymmetric avgpool padding)")
        elif isinstance(layer, (ReLU, MaxPool2D, AvgPool2D, GlobalAvgPool2D, Flatten, ZeroPad2D, Add,
                                Softmax, Dropout)):
            plan.append((node, None, None))
        else:
            raise PeerUnavailable(f"unsupported layer ({layer.kind})")

    def run_layer(node, mod, pad, xs):
        layer = node.layer
        if mod is not None:
            x = xs[0] if pad is None else F.pad(xs[0], pad)
            return mod(x)
        x = xs[0]
        if isinstance(layer, ReLU):
            return F.relu(x) if layer.max_value is None else torch.clamp(x, 0.0, float(layer.max_value))
        if isinstance(layer, MaxPool2D):
            t, b, l, r = layer.padding
            if t != b or l != r:
                x = F.pad(x, (l, r, t, b), value=float("-inf"))
                t = l = 0
            return F.max_pool2d(x, layer.kernel_size, layer.stride, (t, l), layer.dilation, layer.ceil_mode)
        if isinstance(layer, AvgPool2D):
            return F.avg_pool2d(x, layer.kernel_size, layer.stride, (layer.padding[0], layer.padding[2]),
                                layer.ceil_mode, layer.count_include_pad)
        if isinstance(layer, GlobalAvgPool2D):
            y = x.mean((2, 3), keepdim=layer.keepdims)
            return y
        if isinstance(layer, Flatten):
            if x.dim() == 4 and layer.order == "hwc":
                x = x.permute(0, 2, 3, 1)
            return x.flatten(1)
        if isinstance(layer, ZeroPad2D):
            t, b, l, r = layer.padding
            return F.pad(x, (l, r, t, b))
        if isinstance(layer, Add):
            y = xs[0] + xs[1]
            for z in xs[2:]:
                y = y + z
            return y
        if isinstance(layer, Softmax):
            return F.softmax(x, dim=1 if x.dim() == 4 else -1)
        return x  # Dropout

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.mods = mods

        def forward(self, x):
            if model.input_layout == "NHWC":
                x = x.permute(0, 3, 1, 2)
            values = {"input": x}
            for node, key, pad in plan:
                values[node.name] = run_layer(node, None if key is None else self.mods[key], pad,
                                              [values[s] for s in node.inputs])
            outs = []
            for o in model.outputs:
                y = values[o]
                if y.dim() == 4 and model.input_layout == "NHWC":
                    y = y.permute(0, 2, 3, 1)
                outs.append(y)
            return outs[0] if len(outs) == 1 else tuple(outs)

    net = Net().eval()
    if int8:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = torch.ao.quantization.quantize_dynamic(net, {nn.Linear}, dtype=torch.qint8)
    if channels_last:
        if model.input_layout != "NCHW":
            raise PeerUnavailable("channels-last torch needs a model with NCHW input")
        net = net.to(memory_format=torch.channels_last)
        return _torch_caller(torch, net, view=lambda t: t.permute(0, 3, 1, 2))
    return _torch_caller(torch, net)


def _torch_caller(torch, fn, view=None):
    def call(x):
        with torch.inference_mode():
            t = torch.from_numpy(x)
            y = fn(t if view is None else view(t))
        return y.numpy() if not isinstance(y, tuple) else tuple(v.numpy() for v in y)
    return call


def torch_csr(w, bias=None):
    """``x @ W.T + b`` with W as a torch CSR tensor (int32 indices); returns ``fn(x) -> ndarray``."""
    torch = _torch()
    import scipy.sparse as sp
    m = sp.csr_matrix(np.asarray(w, np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse invariant checks are implicitly disabled"
        wt = torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int32)),
                                     torch.from_numpy(m.indices.astype(np.int32)),
                                     torch.from_numpy(m.data.astype(np.float32)), size=m.shape)
    b = None if bias is None else torch.from_numpy(np.array(bias, np.float32))

    def fn(x):
        y = torch.mm(wt, x.t().contiguous()).t()
        return y + b if b is not None else y.contiguous()
    return _torch_caller(torch, fn)


def scipy_csr(w, bias=None):
    """``x @ W.T + b`` with W as a scipy.sparse CSR matrix (single-threaded); returns ``fn(x)``."""
    import scipy.sparse as sp
    m = sp.csr_matrix(np.asarray(w, np.float32))
    b = None if bias is None else np.asarray(bias, np.float32)

    def fn(x):
        y = np.ascontiguousarray((m @ x.T).T)
        if b is not None:
            y += b
        return y
    return fn


# --------------------------------------------------------------------------------- ONNX
def onnx_model(model):
    """The model as an ONNX ``ModelProto`` (opset 17; dynamic batch; NCHW inside)."""
    require_ort()
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    counter = [0]

    def const(arr, hint):
        counter[0] += 1
        name = f"{hint}_{counter[0]}"
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def op(kind, inputs, hint, **attrs):
        counter[0] += 1
        out = f"{hint}_{kind}_{counter[0]}"
        nodes.append(helper.make_node(kind, list(inputs), [out], **attrs))
        return out

    names = {"input": "x"}
    if model.input_layout == "NHWC":
        names["input"] = op("Transpose", ["x"], "in", perm=[0, 3, 1, 2])
    for node in model.nodes:
        layer, h = node.layer, node.name.replace(".", "_")
        xs = [names[s] for s in node.inputs]
        rank = _rank(model, node.name)
        if isinstance(layer, Dense):
            y = op("MatMul", [xs[0], const(np.ascontiguousarray(layer.weight.to_dense().T), h + "_w")], h)
            if layer.bias is not None:
                y = op("Add", [y, const(layer.bias, h + "_b")], h)
        elif isinstance(layer, Conv2D):
            t, b, l, r = layer.padding
            ins = [xs[0], const(_conv_weight(layer), h + "_w")]
            if layer.bias is not None:
                ins.append(const(layer.bias, h + "_b"))
            y = op("Conv", ins, h, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                   pads=[t, l, b, r], dilations=list(layer.dilation), group=layer.groups)
        elif isinstance(layer, BatchNorm):
            y = op("BatchNormalization", [xs[0], const(layer.gamma, h + "_g"), const(layer.beta, h + "_b"),
                                          const(layer.mean, h + "_m"), const(layer.var, h + "_v")],
                   h, epsilon=layer.eps)
        elif isinstance(layer, ReLU):
            if layer.max_value is None:
                y = op("Relu", xs, h)
            else:
                y = op("Clip", [xs[0], const(np.float32(0), h + "_lo"),
                                const(np.float32(layer.max_value), h + "_hi")], h)
        elif isinstance(layer, MaxPool2D):
            t, b, l, r = layer.padding
            y = op("MaxPool", xs, h, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                   pads=[t, l, b, r], dilations=list(layer.dilation), ceil_mode=int(layer.ceil_mode))
        elif isinstance(layer, AvgPool2D):
            t, b, l, r = layer.padding
            y = op("AveragePool", xs, h, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                   pads=[t, l, b, r], ceil_mode=int(layer.ceil_mode),
                   count_include_pad=int(layer.count_include_pad))
        elif isinstance(layer, GlobalAvgPool2D):
            y = op("GlobalAveragePool", xs, h)
            if not layer.keepdims:
                y = op("Flatten", [y], h, axis=1)
        elif isinstance(layer, Flatten):
            x = xs[0]
            if model.shapes[node.inputs[0]] and len(model.shapes[node.inputs[0]]) == 3 and layer.order == "hwc":
                x = op("Transpose", [x], h, perm=[0, 2, 3, 1])
            y = op("Flatten", [x], h, axis=1)
        elif isinstance(layer, ZeroPad2D):
            t, b, l, r = layer.padding
            y = op("Pad", [xs[0], const(np.array([0, 0, t, l, 0, 0, b, r], np.int64), h + "_p")], h)
        elif isinstance(layer, Add):
            y = op("Sum", xs, h)
        elif isinstance(layer, Softmax):
            y = op("Softmax", xs, h, axis=1 if rank == 4 else -1)
        elif isinstance(layer, Dropout):
            y = op("Identity", xs, h)
        else:
            raise PeerUnavailable(f"unsupported layer ({layer.kind})")
        names[node.name] = y
    outputs = []
    for i, o in enumerate(model.outputs):
        y = names[o]
        if _rank(model, o) == 4 and model.input_layout == "NHWC":
            y = op("Transpose", [y], "out", perm=[0, 2, 3, 1])
        final = f"y{i}"
        nodes.append(helper.make_node("Identity", [y], [final]))
        outputs.append(helper.make_tensor_value_info(final, TensorProto.FLOAT, None))
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *model.input_shape])
    graph = helper.make_graph(nodes, model.name or "model", [x_info], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                             producer_name="nncomp.bench")


def ort_model(model, *, threads, int8=False, spin=False, serialized=None, int8_ops=("MatMul",), calibration=None):
    """The model run by ONNX Runtime (CPU); returns ``fn(x: ndarray) -> ndarray``.

    ``int8=True`` (or ``"dynamic"``) applies ``onnxruntime.quantization.quantize_dynamic`` (int8
    weights) to ``int8_ops``; ``int8="static"`` applies ``quantize_static`` in QDQ format (per-channel
    int8 weights, uint8 activations: ORT's x86 default pairing) to ``int8_ops`` with activation
    ranges from ``calibration`` (inputs in the model's layout, fed 32 at a time).
    ``fn.onnx_bytes`` is the size of the serialized graph that ORT loaded. ``serialized``: the
    float32 graph of :func:`onnx_model` as bytes, when the caller exported it already (fc6: 411 MB).
    """
    require_ort()
    data = serialized if serialized is not None else onnx_model(model).SerializeToString()
    if int8:
        from .ort_quant import quantize_graph
        data = quantize_graph(data, "static" if int8 == "static" else "dynamic", int8_ops, calibration)
    sess, n_out = ort_session(data, threads=threads, spin=spin), len(model.outputs)
    name = sess.get_inputs()[0].name

    def fn(x):
        ys = sess.run(None, {name: x})
        return ys[0] if n_out == 1 else tuple(ys)
    fn.onnx_bytes = len(data)
    return fn


def ort_session(data, *, threads, spin=False):
    """ORT CPU session of ``data`` (graph bytes or a path): ``threads`` threads, sequential, no spin
    unless ``spin``, subnormal values as zero (``session.set_denormal_as_zero``: off by default in
    ORT; nncomp flushes subnormal weights at load, nncomp/io/untrusted.py flush_subnormal, and ORT's
    own switch is the fair peer: PP-OCRv6's detector 189 -> 56 ms in the loop protocol, Intel Xeon, 2
    threads), the caller's floating-point environment restored after its creation and each run."""
    ort = require_ort()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads), 1
    opts.execution_mode, opts.log_severity_level = ort.ExecutionMode.ORT_SEQUENTIAL, 3
    opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # (that switch sets the caller's FTZ/DAZ bits: kept off this process's other work, .fpenv)
    return KeptFloatEnv(lambda: ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"]))


def torch_bytes(model, int8=False):
    """Weight bytes a peer holds: float32 everywhere; with int8, 1 byte per Dense weight (torch's
    dynamic Linear, ORT's dynamic MatMul) plus a per-tensor scale and zero point."""
    total = 0
    for node in model.nodes:
        layer = node.layer
        for name, t in layer.tensors().items():
            if t is None:
                continue
            if name == "weight":
                n = int(np.prod(t.shape))
                # torch's dynamic int8 Linear: 1 byte per weight plus a per-tensor scale and zero point
                total += n + 8 if int8 and isinstance(layer, Dense) else 4 * n
            else:
                total += int(np.asarray(t).nbytes)
    return total
