"""PyTorch ``state_dict`` files written with h5py, with an ``nncomp-arch`` v1 architecture.

The architecture is the JSON string of the root attribute ``architecture`` (written by
``tools/export_torch.py``) or is passed separately. Datasets are found flat (``/features.0.weight``)
or nested on dots (``/features/0/weight``). Weights are converted once, here, to nncomp's layout:
Linear ``(out, in)`` as is; Conv2d OIHW to ``(O, kh*kw*I/groups)`` with patch columns (kh, kw, c).
"""
import json

import numpy as np

from ..errors import CorruptModelFileError, NncompError, UnsupportedModelError
from ..layers import (GELU, Add, AvgPool2D, BatchNorm, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D,
                      HardSwish, MaxPool2D, ReLU, Sigmoid, SiLU, Softmax, Unary)
from ..model import INPUT, Model, Node
from .safe import parse_json

ARCH_VERSION = 1


def parse_architecture(arch, path=None):
    """The nncomp-arch dict from a dict, a JSON string or None; checks format and version."""
    if isinstance(arch, (str, bytes)):
        arch = parse_json(arch.decode() if isinstance(arch, bytes) else arch, path, "architecture")
    if not isinstance(arch, dict) or arch.get("format") != "nncomp-arch":
        raise UnsupportedModelError(path, "architecture", "expected an nncomp-arch JSON object "
                                    "({\"format\": \"nncomp-arch\", \"version\": 1, ...})")
    if arch.get("version") != ARCH_VERSION:
        raise UnsupportedModelError(path, "architecture", f"nncomp-arch version {arch.get('version')!r}; "
                                    f"this nncomp reads version {ARCH_VERSION}")
    return arch


class _Builder:
    def __init__(self, f, arch):
        self.f, self.arch, self.path = f, arch, f.path

    def key(self, spec, role, required=True):
        params = spec.get("params") or {}
        key = params.get(role)
        if key is None:
            if required:
                raise CorruptModelFileError(self.path, spec.get("name"), f"layer has no '{role}' parameter")
            return None
        for name in (str(key), str(key).replace(".", "/")):
            if self.f.has(name):
                return name
        raise CorruptModelFileError(self.path, "/" + str(key), f"dataset for {spec.get('name')}.{role} is missing "
                                    "(looked for flat and nested names)")

    def tensor(self, spec, role, shape=None, required=True):
        name = self.key(spec, role, required)
        if name is None:
            return None
        arr = self.f.read(name)
        if shape is not None and arr.shape != tuple(shape):
            raise CorruptModelFileError(self.path, "/" + name, f"shape {arr.shape} does not match the "
                                        f"architecture's {tuple(shape)} (PyTorch layout)")
        return arr

    def layer(self, spec):
        kind = spec.get("type")
        build = getattr(self, "_" + str(kind), None)
        if build is None:
            raise UnsupportedModelError(self.path, spec.get("name"), f"layer type {kind!r} is not supported; "
                                        f"supported: {sorted(k[1:] for k in dir(self) if k.startswith('_') and not k.startswith('__'))}")
        return build(spec)

    def _linear(self, s):
        n_in, n_out = int(s["in_features"]), int(s["out_features"])
        w = self.tensor(s, "weight", (n_out, n_in))
        b = self.tensor(s, "bias", (n_out,)) if s.get("bias", True) else None
        return Dense(w, b)

    def _conv2d(self, s):
        cin, cout, g = int(s["in_channels"]), int(s["out_channels"]), int(s.get("groups", 1))
        kh, kw = _two(s["kernel_size"])
        if s.get("padding_mode", "zeros") != "zeros":
            raise UnsupportedModelError(self.path, s["name"], f"padding_mode {s['padding_mode']!r}; only 'zeros'")
        w = self.tensor(s, "weight", (cout, cin // max(g, 1), kh, kw))
        b = self.tensor(s, "bias", (cout,)) if s.get("bias", True) else None
        dil = _two(s.get("dilation", 1))
        pad = s.get("padding", 0)
        if pad == "valid":
            pad = (0, 0, 0, 0)
        elif pad == "same":
            th, tw = dil[0] * (kh - 1), dil[1] * (kw - 1)
            pad = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        else:
            ph, pw = _two(pad)
            pad = (ph, ph, pw, pw)
        mat = np.ascontiguousarray(w.transpose(0, 2, 3, 1).reshape(cout, -1))
        return Conv2D(mat, b, in_channels=cin, kernel_size=(kh, kw), stride=_two(s.get("stride", 1)),
                      padding=pad, dilation=dil, groups=g)

    def _batchnorm2d(self, s):
        n = int(s["num_features"])
        gamma = self.tensor(s, "weight", (n,), required=False)
        beta = self.tensor(s, "bias", (n,), required=False)
        return BatchNorm(np.ones(n, np.float32) if gamma is None else gamma,
                         np.zeros(n, np.float32) if beta is None else beta,
                         self.tensor(s, "running_mean", (n,)), self.tensor(s, "running_var", (n,)),
                         eps=float(s.get("eps", 1e-5)))

    def _relu(self, s):
        return ReLU()

    def _relu6(self, s):
        return ReLU(6.0)

    def _sigmoid(self, s):
        return Sigmoid()

    def _silu(self, s):
        return SiLU()

    def _hardswish(self, s):
        return HardSwish()

    def _tanh(self, s):
        return Unary("tanh")

    def _gelu(self, s):
        if s.get("approximate", "none") != "none":
            raise UnsupportedModelError(self.path, s.get("name"), f"gelu approximate={s.get('approximate')!r} is not "
                                        "supported (the tanh form); the exact form (approximate='none') is")
        return GELU()

    def _maxpool2d(self, s):
        k = _two(s["kernel_size"])
        ph, pw = _two(s.get("padding", 0))
        return MaxPool2D(k, _two(s.get("stride") or k), (ph, ph, pw, pw), _two(s.get("dilation", 1)),
                         bool(s.get("ceil_mode", False)))

    def _avgpool2d(self, s):
        k = _two(s["kernel_size"])
        ph, pw = _two(s.get("padding", 0))
        if s.get("divisor_override") is not None:
            raise UnsupportedModelError(self.path, s["name"], "avgpool2d divisor_override is not supported")
        return AvgPool2D(k, _two(s.get("stride") or k), (ph, ph, pw, pw), bool(s.get("ceil_mode", False)),
                         bool(s.get("count_include_pad", True)))

    def _global_avgpool2d(self, s):
        return GlobalAvgPool2D(bool(s.get("keepdims", False)))

    def _flatten(self, s):
        if int(s.get("start_dim", 1)) != 1 or int(s.get("end_dim", -1)) != -1:
            raise UnsupportedModelError(self.path, s["name"], "flatten supports start_dim=1, end_dim=-1 only")
        return Flatten("chw")

    def _add(self, s):
        return Add()

    def _dropout(self, s):
        return Dropout()

    def _softmax(self, s):
        return Softmax()


def _two(v):
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise NncompError(f"expected a pair, got {v!r}")
        return (int(v[0]), int(v[1]))
    return (int(v), int(v))


def build_model(f, arch):
    """Build a Model from an open SafeFile and a parsed nncomp-arch dict."""
    path = f.path
    try:
        inp = arch["input"]
        layout = inp.get("layout", "NCHW" if len(inp["shape"]) == 3 else "NC")
        b = _Builder(f, arch)
        nodes = []
        for spec in arch["layers"]:
            if not isinstance(spec, dict) or "name" not in spec:
                raise CorruptModelFileError(path, "architecture", f"layer entry {spec!r:.80} has no name")
            inputs = [INPUT if i == inp.get("name", INPUT) else i for i in spec.get("inputs", [INPUT])]
            nodes.append(Node(str(spec["name"]), b.layer(spec), tuple(inputs)))
        return Model(nodes, input_shape=inp["shape"], input_layout=layout,
                     outputs=arch.get("outputs") or None, name=arch.get("model", "model"))
    except NncompError as e:
        if hasattr(e, "path"):
            raise
        raise CorruptModelFileError(path, "architecture", str(e)) from None
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptModelFileError(path, "architecture", f"malformed nncomp-arch ({type(e).__name__}: {e})") from None


def load_torch(f, architecture=None):
    """Load a state-dict file (open SafeFile) with its architecture (attribute or argument)."""
    if architecture is None:
        architecture = f.attr("/", "architecture", allow_vlen=True)
        if architecture is None:
            raise UnsupportedModelError(f.path, None, "no architecture: pass architecture= (an nncomp-arch "
                                        "JSON string or dict) or write the file with tools/export_torch.py")
    elif not isinstance(architecture, (str, bytes, dict)):
        raise NncompError(f"architecture must be an nncomp-arch dict or JSON string, got {type(architecture).__name__}")
    if isinstance(architecture, dict):
        architecture = json.loads(json.dumps(architecture))
    return build_model(f, parse_architecture(architecture, f.path))
