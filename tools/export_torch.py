"""Write a PyTorch model as an HDF5 state_dict plus an ``nncomp-arch`` v1 architecture.

Copy this file (or just ``export``) into your own project; it needs torch, numpy and h5py on your
side and nothing from nncomp.  See formats.md, sections 3 and 4.

    from export_torch import export
    export(model, "model.h5", input_shape=(1, 28, 28))            # flat keys: /features.0.weight
    export(model, "model.h5", input_shape=(784,), nested=True)      # nested:    /features/0/weight

What the file holds
-------------------
* one float32 dataset per ``state_dict`` key (BatchNorm's int64 ``num_batches_tracked`` is kept, as
  a plain ``h5py`` dump would keep it; readers ignore it), flat or nested on the dots;
* the root attribute ``architecture``: the JSON of ``nncomp-arch`` v1, stored as a FIXED-LENGTH byte
  string (``np.bytes_``).  h5py turns a Python ``str`` into a variable-length string, which the
  nncomp reader refuses; if you write the attribute yourself, write ``np.bytes_(json.encode())``.

How the architecture is found
-----------------------------
The module is traced with ``torch.fx.symbolic_trace`` and each graph node is mapped to one layer:
Conv2d, Linear, BatchNorm2d, ReLU / F.relu / torch.relu, ReLU6 / F.relu6 / Hardtanh(0, 6), SiLU,
GELU (the exact form; the tanh form is written and refused on import), Sigmoid, Tanh, Hardswish,
MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1) / F.adaptive_avg_pool2d(x, 1) / x.mean((2, 3)),
Flatten / torch.flatten / x.flatten / x.view(x.size(0), -1), and ``+`` / torch.add / ``+=``.
Dropout and Identity are dropped (their consumers read their input; dropout is off in eval).
A module layer is named by its qualified name (``features.0``); a function layer by its fx node
name (``add``, ``flatten_1``).  Anything else raises ``ValueError`` naming the node.
"""
import json
import operator

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

__all__ = ["export"]


def _pair(v):
    return [int(i) for i in v] if isinstance(v, (tuple, list)) else [int(v), int(v)]


def _module_layer(mod, qualname, keys):
    """(type, hyper-parameters, params) for one called module, or None for a dropped module."""
    p = lambda *roles: {r: f"{qualname}.{r}" for r in roles if f"{qualname}.{r}" in keys}
    if isinstance(mod, (nn.Dropout, nn.Dropout2d, nn.Identity)):
        return None
    if isinstance(mod, nn.Conv2d):
        pad = mod.padding
        if isinstance(pad, str):  # "valid" / "same" (stride 1 only, as PyTorch allows)
            if pad == "same" and any((d * (k - 1)) % 2 for k, d in zip(mod.kernel_size, mod.dilation)):
                raise ValueError(f"{qualname}: padding='same' with an even effective kernel is asymmetric; "
                                 "nncomp-arch v1 conv2d padding is symmetric")
            pad = [0, 0] if pad == "valid" else [d * (k - 1) // 2 for k, d in zip(mod.kernel_size, mod.dilation)]
        hp = dict(in_channels=mod.in_channels, out_channels=mod.out_channels,
                  kernel_size=_pair(mod.kernel_size), stride=_pair(mod.stride), padding=_pair(pad),
                  dilation=_pair(mod.dilation), groups=mod.groups, bias=mod.bias is not None,
                  padding_mode=mod.padding_mode)
        return "conv2d", hp, p("weight", "bias")
    if isinstance(mod, nn.Linear):
        hp = dict(in_features=mod.in_features, out_features=mod.out_features, bias=mod.bias is not None)
        return "linear", hp, p("weight", "bias")
    if isinstance(mod, nn.BatchNorm2d):
        if not mod.affine or not mod.track_running_stats:
            raise ValueError(f"{qualname}: BatchNorm2d needs affine=True and track_running_stats=True "
                             "(nncomp-arch v1 stores weight, bias, running_mean, running_var)")
        hp = dict(num_features=mod.num_features, eps=float(mod.eps),
                  momentum=None if mod.momentum is None else float(mod.momentum))
        return "batchnorm2d", hp, p("weight", "bias", "running_mean", "running_var")
    if isinstance(mod, nn.ReLU6) or (isinstance(mod, nn.Hardtanh) and (mod.min_val, mod.max_val) == (0.0, 6.0)):
        return "relu6", {}, {}
    if isinstance(mod, nn.ReLU):
        return "relu", {}, {}
    for cls, kind in ((nn.SiLU, "silu"), (nn.Sigmoid, "sigmoid"), (nn.Tanh, "tanh"), (nn.Hardswish, "hardswish")):
        if isinstance(mod, cls):
            return kind, {}, {}
    if isinstance(mod, nn.GELU):
        return "gelu", dict(approximate=mod.approximate), {}
    if isinstance(mod, nn.MaxPool2d):
        if mod.return_indices:
            raise ValueError(f"{qualname}: MaxPool2d(return_indices=True) is not supported")
        hp = dict(kernel_size=_pair(mod.kernel_size), stride=_pair(mod.stride or mod.kernel_size),
                  padding=_pair(mod.padding), dilation=_pair(mod.dilation), ceil_mode=bool(mod.ceil_mode))
        return "maxpool2d", hp, {}
    if isinstance(mod, nn.AvgPool2d):
        if mod.divisor_override is not None:
            raise ValueError(f"{qualname}: AvgPool2d(divisor_override=...) is not supported")
        # ceil_mode / count_include_pad go beyond the v1 table; they carry PyTorch's semantics exactly.
        hp = dict(kernel_size=_pair(mod.kernel_size), stride=_pair(mod.stride or mod.kernel_size),
                  padding=_pair(mod.padding), ceil_mode=bool(mod.ceil_mode),
                  count_include_pad=bool(mod.count_include_pad))
        return "avgpool2d", hp, {}
    if isinstance(mod, nn.AdaptiveAvgPool2d):
        if _pair(mod.output_size) != [1, 1]:
            raise ValueError(f"{qualname}: AdaptiveAvgPool2d({mod.output_size}) is not supported; only output size 1")
        return "global_avgpool2d", dict(keepdims=True), {}
    if isinstance(mod, nn.Flatten):
        if mod.end_dim != -1 or mod.start_dim < 1:
            raise ValueError(f"{qualname}: Flatten(start_dim={mod.start_dim}, end_dim={mod.end_dim}) is not "
                             "supported; only start_dim >= 1, end_dim=-1")
        return "flatten", dict(start_dim=int(mod.start_dim)), {}
    raise ValueError(f"{qualname}: module {type(mod).__name__} cannot be expressed in nncomp-arch v1")


def _arg(node, i, name, default):
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _shape(n):
    tm = n.meta.get("tensor_meta") if isinstance(n, fx.Node) else None
    return tuple(tm.shape) if tm is not None and hasattr(tm, "shape") else None


def _function_layer(node):
    """(type, hyper-parameters, tensor inputs) for a call_function / call_method node; None = drop."""
    t, x = node.target, node.args[0] if node.args else None
    if t in (F.dropout, F.dropout2d, "contiguous"):
        return None, {}, [x]
    if t in (operator.add, operator.iadd, torch.add, "add", "add_"):
        if _arg(node, 2, "alpha", 1) != 1 or not all(isinstance(a, fx.Node) for a in node.args[:2]):
            raise ValueError(f"{node.name}: only tensor + tensor is supported (no constants, no alpha)")
        return "add", {}, list(node.args[:2])
    if t in (F.relu, torch.relu, "relu", "relu_"):
        return "relu", {}, [x]
    for fns, kind in (((F.silu, "silu"), "silu"), ((torch.sigmoid, F.sigmoid, "sigmoid"), "sigmoid"),
                      ((torch.tanh, F.tanh, "tanh"), "tanh"), ((F.hardswish,), "hardswish")):
        if t in fns:
            return kind, {}, [x]
    if t is F.gelu:
        return "gelu", dict(approximate=_arg(node, 1, "approximate", "none")), [x]
    if t is F.relu6 or (t is F.hardtanh and (_arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0)) == (0, 6)):
        return "relu6", {}, [x]
    if t in (torch.flatten, "flatten"):
        start, end = _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)
        if start < 1 or end not in (-1, len(_shape(x)) - 1):
            raise ValueError(f"{node.name}: flatten(start_dim={start}, end_dim={end}) is not supported; "
                             "use start_dim >= 1 (dim 0 is the batch) and end_dim=-1")
        return "flatten", dict(start_dim=int(start)), [x]
    if t in ("view", "reshape", torch.reshape):
        src, out = _shape(x), _shape(node)
        s = len(out) - 1
        if src and out and s >= 1 and src[:s] == out[:s] and out[s] == int(np.prod(src[s:])):
            return "flatten", dict(start_dim=s), [x]
        raise ValueError(f"{node.name}: {t} from {src} to {out} is not a flatten; nncomp-arch v1 has no reshape")
    if t in (torch.mean, "mean"):
        dim, keep = _arg(node, 1, "dim", None), _arg(node, 2, "keepdim", False)
        nd = len(_shape(x))
        dims = {d % nd for d in (dim if isinstance(dim, (tuple, list)) else [dim])} if dim is not None else None
        if nd == 4 and dims == {2, 3}:
            return "global_avgpool2d", dict(keepdims=bool(keep)), [x]
        raise ValueError(f"{node.name}: mean over dims {dim} is not supported; only (2, 3) of an NCHW tensor")
    if t is F.adaptive_avg_pool2d:
        if _pair(_arg(node, 1, "output_size", None)) != [1, 1]:
            raise ValueError(f"{node.name}: adaptive_avg_pool2d only with output size 1")
        return "global_avgpool2d", dict(keepdims=True), [x]
    raise ValueError(f"{node.name}: {node.op} {getattr(t, '__name__', t)!r} cannot be expressed in nncomp-arch v1")


def _architecture(module, input_shape, name):
    gm = fx.symbolic_trace(module)
    keys = set(module.state_dict().keys())
    modes = {m: m.training for m in gm.modules()}
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros((2, *input_shape)))  # batch 2: the batch dim stays visible
    finally:
        for m, training in modes.items():
            m.train(training)

    produced = {}          # fx node -> layer name ("input" for the placeholder)
    shape_only = set()     # x.size(0) / x.shape nodes: only allowed as arguments of view/reshape
    used, layers, placeholders = {"input"}, [], []

    def tensor_input(n, user):
        if not isinstance(n, fx.Node) or n not in produced:
            raise ValueError(f"{user.name}: input {n!r} is not a tensor produced by a supported layer")
        return produced[n]

    def unique(base):
        out, k = base, 1
        while out in used:
            out, k = f"{base}_{k}", k + 1
        used.add(out)
        return out

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            placeholders.append(node)
            if len(placeholders) > 1:
                raise ValueError(f"forward takes several inputs ({[p.name for p in placeholders]}); only one supported")
            produced[node] = "input"
            continue
        if node.op == "output":
            out = node.args[0]
            if not isinstance(out, fx.Node):
                raise ValueError(f"the model returns {type(out).__name__}; only a single tensor is supported")
            outputs = [tensor_input(out, node)]
            continue
        if node.op == "get_attr":
            raise ValueError(f"{node.name}: a tensor attribute ({node.target}) used in forward is not supported")
        if node.target in ("size", "dim") or (node.target is getattr and node.args[1] == "shape") \
                or (node.target is operator.getitem and node.args[0] in shape_only):
            shape_only.add(node)
            continue
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            spec = _module_layer(mod, node.target, keys)
            if len(node.args) != 1 or node.kwargs:
                raise ValueError(f"{node.name}: module {node.target} called with extra arguments")
            inputs, base = [node.args[0]], node.target
            if spec is None:
                produced[node] = tensor_input(node.args[0], node)
                continue
            ltype, hp, params = spec
        else:
            ltype, hp, inputs = _function_layer(node)
            base, params = node.name, {}
            if ltype is None:
                produced[node] = tensor_input(inputs[0], node)
                continue
        layer = {"name": unique(base), "type": ltype, "inputs": [tensor_input(i, node) for i in inputs], **hp}
        if params:
            layer["params"] = params
        layers.append(layer)
        produced[node] = layer["name"]

    layout = {1: "NC", 3: "NCHW"}.get(len(input_shape))
    if layout is None:
        raise ValueError(f"input_shape {input_shape} must be (features,) or (C, H, W), without the batch dim")
    return {"format": "nncomp-arch", "version": 1, "model": name or type(module).__name__,
            "framework": "pytorch", "framework_version": torch.__version__,
            "input": {"name": "input", "shape": [int(s) for s in input_shape], "layout": layout, "dtype": "float32"},
            "outputs": outputs, "layers": layers}


def export(module, path, input_shape, *, nested=False, name=None):
    """Write ``module.state_dict()`` to ``path`` (HDF5) with an ``nncomp-arch`` v1 ``architecture`` attribute.

    input_shape is one sample's shape without the batch dim: ``(C, H, W)`` or ``(features,)``.
    Floating-point tensors are written as float32.  Returns the architecture dict.
    """
    arch = _architecture(module, tuple(input_shape), name)
    text = json.dumps(arch, separators=(",", ":"))  # ensure_ascii: the bytes are ASCII = UTF-8
    big = len(text) > 60000  # an attribute over 64 KiB needs the HDF5 1.8 object header format
    with h5py.File(path, "w", libver=("v108", "latest") if big else None) as f:
        for key, t in module.state_dict().items():
            a = t.detach().cpu().numpy()
            if a.dtype.kind == "f":
                a = a.astype(np.float32)
            f.create_dataset(key.replace(".", "/") if nested else key, data=a)
        f.attrs["architecture"] = np.bytes_(text.encode("utf-8"))  # fixed-length, never variable-length
    return arch
