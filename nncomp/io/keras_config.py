"""Keras layer configs -> nncomp nodes: the layer-by-layer translation of a ``model_config``.

:class:`LayerTranslator` screens each layer entry (custom or registered classes, ``Lambda``, nested models and
quantized dtype policies are refused: nothing in a file is ever executed), asks the weight source
for the layer's arrays, converts them and appends the nncomp nodes, tracking each node's output
shape. Walking a whole ``model_config`` (Sequential or Functional wiring, topological order) and the
weight sources (legacy ``.h5`` or ``.weights.h5`` groups) are in :mod:`nncomp.io.keras`.

Weights are converted once, here, to nncomp's layout (docs/sources.md): Dense ``(in, out)`` ->
``(out, in)``; Conv2D HWIO -> ``(out, kh*kw*in)`` with patch columns (kh, kw, c); DepthwiseConv2D
``(kh, kw, C, m)`` -> ``(C*m, kh*kw)`` with output channel ``c*m + k``; ``padding="same"`` padded as
TensorFlow/Keras do (the odd pixel at the bottom/right); Flatten in (h, w, c) order.
"""
import math
import re

import numpy as np

from ..errors import CorruptModelFileError, ModelFileError, NncompError, UnsupportedModelError
from ..layers.base import same_pads
from ..layers import (GELU, Add, AvgPool2D, BatchNorm, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D,
                      HardSwish, MaxPool2D, ReLU, Sigmoid, SiLU, Softmax, Unary, ZeroPad2D)
from ..matrices import DenseMatrix
from ..model import INPUT, Node

MODEL_CLASSES = ("Sequential", "Functional", "Model")
IDENTITY = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise", "GaussianDropout")
# Keras's activation names (Keras 3 and tf.keras 2 agree on these: "gelu" is the exact, erf form;
# "hard_sigmoid" is not here: Keras 2's is clip(0.2 x + 0.5), Keras 3's relu6(x + 3) / 6)
ACTIVATIONS = {"linear": None, "relu": ReLU, "relu6": lambda: ReLU(6.0), "softmax": Softmax, "sigmoid": Sigmoid,
               "tanh": lambda: Unary("tanh"), "swish": SiLU, "silu": SiLU, "gelu": GELU, "hard_silu": HardSwish,
               "hard_swish": HardSwish}
FLOAT_POLICIES = ("float32", "float64", "float16", "bfloat16", "mixed_float16", "mixed_bfloat16")


# ------------------------------------------------------------------------------------ weights
def expect(arr, shape, path, name, role):
    if arr is not None and arr.shape != tuple(shape):
        raise CorruptModelFileError(path, name, f"layer {name}: {role} shape {arr.shape} does not match "
                                    f"the architecture {tuple(shape)}")
    return arr


def conv_weight(kernel, k, cin, n_out, groups, depthwise, path, name):
    """A shape-checked Keras conv kernel as a weight matrix: HWIO ``(kh, kw, cin/groups, out)`` ->
    ``(out, kh*kw*cin/groups)``; depthwise ``(kh, kw, C, m)`` -> ``(C*m, kh*kw)``, output ``c*m + k``."""
    shape = (*k, cin, n_out // cin) if depthwise else (*k, cin // groups, n_out)
    kernel = expect(kernel, shape, path, name, "kernel")
    if depthwise:
        return np.ascontiguousarray(kernel.transpose(2, 3, 0, 1).reshape(-1, kernel.shape[0] * kernel.shape[1]))
    return np.ascontiguousarray(kernel.transpose(3, 0, 1, 2).reshape(kernel.shape[3], -1))


def bn_arrays(w, n, path, name):
    """``(gamma, beta, mean, var)`` of a BatchNormalization, shapes checked (gamma 1, beta 0 if absent)."""
    for k, v in w.items():
        expect(v, (n,), path, name, k)
    return (w.get("gamma", np.ones(n, np.float32)), w.get("beta", np.zeros(n, np.float32)),
            w["moving_mean"], w["moving_variance"])


# ------------------------------------------------------------------------------------ layers
def _int(v, what, lo=0):
    if type(v) is not int or not (lo <= v < 2 ** 31):
        raise NncompError(f"{what} must be an int >= {lo}, got {v!r}")
    return v


def _pair(v, what, lo=1):
    if isinstance(v, int) and type(v) is not bool:
        v = [v, v]
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise NncompError(f"{what} must be an int or a pair, got {v!r}")
    return (_int(v[0], what, lo), _int(v[1], what, lo))


def _handler(builder, cls):
    """The builder method for a Keras class name (CamelCase names only: never a private helper)."""
    return getattr(builder, "_" + cls, None) if re.fullmatch(r"[A-Z][A-Za-z0-9]*", cls) else None


def _size_dependent(c, stride):
    """Whether a layer's "same" padding depends on the input size (a stride above 1)."""
    return str(c.get("padding", "valid")).lower() == "same" and max(stride) > 1


class LayerTranslator:
    """Translates Keras layer entries into nncomp nodes (``self.nodes``, output shapes in ``self.shapes``).

    ``src`` is a weight source: ``bind([(name, class)])``, then ``get(name, roles)`` -> {role: array}.
    A supported Keras class ``X`` has a method ``_X(name, config, inputs)`` returning its last node.
    """

    def __init__(self, f, src, input_shape=None):
        self.f, self.path, self.src = f, f.path, src
        self.nodes, self.shapes = [], {}
        self.given = input_shape      # the user's per-sample size for free (None) input dimensions

    def _entry(self, e):
        """``(name, class, config, entry)`` of a layer entry that nncomp can translate."""
        if not isinstance(e, dict) or not isinstance(e.get("config"), dict):
            raise CorruptModelFileError(self.path, "model_config", f"malformed layer entry {str(e)[:80]}")
        cls, c = e.get("class_name"), e["config"]
        name = e.get("name", c.get("name"))
        if not isinstance(name, str) or not name or not isinstance(cls, str):
            raise CorruptModelFileError(self.path, "model_config", f"layer entry without a name or class {str(e)[:80]}")
        module, reg = e.get("module"), e.get("registered_name")
        custom = (module is not None and not re.fullmatch(r"keras(\.src)?\.layers(\.[\w.]+)?", str(module))) \
            or (reg is not None and reg != cls)
        why = "nncomp never executes code from model files"
        if custom:
            raise UnsupportedModelError(self.path, name, f"layer {name!r} of class {cls!r} is a custom class "
                                        f"(module {module!r}, registered_name {reg!r}): {why}")
        if cls != "InputLayer" and _handler(self, cls) is None and cls not in IDENTITY:
            kind = "a nested model" if cls in MODEL_CLASSES else "not supported"
            raise UnsupportedModelError(self.path, name, f"layer {name!r} of class {cls!r} is {kind} ({why}); "
                                        f"supported: {supported_layers()}")
        dtype = c.get("dtype")
        policy = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
        if c.get("quantization_config") is not None or (dtype is not None and policy not in FLOAT_POLICIES):
            raise UnsupportedModelError(self.path, name, f"layer {name!r}: dtype policy {policy!r} / quantized "
                                        "Keras layers are not supported; save the float model")
        return name, cls, c, e

    def _input_shape(self, c):
        shape = c.get("batch_shape", c.get("batch_input_shape"))
        shape = shape[1:] if shape is not None else c.get("shape")
        if isinstance(shape, list) and None in shape and len(shape) == 3 and shape[2] is not None:
            if self.given is None:
                raise UnsupportedModelError(self.path, "model_config", f"input shape {shape!r} has free dimensions: "
                                            "pass input_shape=(h, w, c) to nc.load for the size that summaries and "
                                            "compression use (calls then accept every size the layers fit)")
            if len(self.given) != 3 or any(d is not None and d != g for d, g in zip(shape, self.given)):
                raise UnsupportedModelError(self.path, "model_config", f"input_shape={tuple(self.given)} does not fit "
                                            f"the model's input {shape!r}")
            shape = list(self.given)
        if not isinstance(shape, list) or len(shape) not in (1, 2, 3) or any(type(d) is not int or d < 1 for d in shape):
            raise UnsupportedModelError(self.path, "model_config", f"input shape {shape!r}: nncomp needs a fixed "
                                        "(h, w, c) image, (steps, features) sequence or (features,) vector input")
        self.shapes[INPUT] = tuple(shape)
        return tuple(shape)

    # ----------------------------------------------------------------- layers
    def _layer(self, name, cls, c, inputs):
        if cls in IDENTITY:
            return self.add(name, Dropout(), inputs)
        if cls != "Add" and len(inputs) != 1:
            raise CorruptModelFileError(self.path, name, f"layer {name!r} ({cls}) takes one input, got {len(inputs)}")
        fmt = c.get("data_format")
        if fmt not in (None, "channels_last"):
            raise UnsupportedModelError(self.path, name, f"layer {name!r}: data_format {fmt!r}; only channels_last")
        try:
            return _handler(self, cls)(name, c, inputs)
        except ModelFileError:
            raise
        except KeyError as e:
            raise CorruptModelFileError(self.path, name, f"layer {name!r} ({cls}): config lacks {e}") from None
        except NncompError as e:
            raise CorruptModelFileError(self.path, name, f"layer {name!r} ({cls}): {e}") from None

    def add(self, name, layer, inputs):
        node = "input/layer" if name == INPUT else name
        try:
            self.shapes[node] = tuple(layer.output_shape(*(self.shapes[i] for i in inputs)))
        except NncompError as e:
            raise CorruptModelFileError(self.path, name, f"layer {name!r}: {e}") from None
        self.nodes.append(Node(node, layer, tuple(inputs)))
        return node

    def act(self, name, c, node, own=False):
        """The activation of ``c`` after ``node``: a node ``<name>/<activation>``, or ``<name>`` if ``own``."""
        a = c.get("activation", "linear")
        if isinstance(a, dict) and re.fullmatch(r"keras(\.src)?\.activations(\.\w+)?", str(a.get("module"))):
            a = a.get("config")
        if a is None or a == "linear":
            return node
        if not isinstance(a, str) or a not in ACTIVATIONS:
            raise UnsupportedModelError(self.path, name, f"layer {name!r}: activation {str(a)[:60]!r} is not "
                                        f"supported; supported: {sorted(ACTIVATIONS)}")
        return self.add(name if own else f"{name}/{a}", ACTIVATIONS[a](), [node])

    def _image(self, node, name):
        shape = self.shapes[node]
        if len(shape) != 3:
            raise UnsupportedModelError(self.path, name, f"layer {name!r} needs an (h, w, c) image, got {shape}")
        return shape

    def _pads(self, c, size, k, s, d, name):
        mode = str(c.get("padding", "valid")).lower()
        if mode == "valid":
            return (0, 0, 0, 0)
        if mode != "same":
            raise UnsupportedModelError(self.path, name, f"layer {name!r}: padding {mode!r} is not supported")
        return same_pads(size, k, s, d)     # TensorFlow's rule: the odd pixel goes bottom/right

    def _Dense(self, name, c, inputs):
        shape, units = self.shapes[inputs[0]], _int(c["units"], "units", 1)
        w = self.src.get(name, ["kernel"] + (["bias"] if c.get("use_bias", True) else []))
        kernel = expect(w["kernel"], (shape[-1], units), self.path, name, "kernel")
        bias = expect(w.get("bias"), (units,), self.path, name, "bias")
        weight = DenseMatrix(np.ascontiguousarray(kernel.T))
        # Keras applies Dense to the last axis: features, a sequence's steps, or an image's pixels
        # (channels last, as nncomp stores images: a 1x1 convolution)
        layer = Conv2D(weight, bias, in_channels=shape[-1]) if len(shape) == 3 else Dense(weight, bias)
        return self.act(name, c, self.add(name, layer, inputs))

    def _conv(self, name, c, inputs, kernel, bias, n_out, groups, depthwise, act=True):
        h, w, cin = self._image(inputs[0], name)
        k, s = _pair(c["kernel_size"], "kernel_size"), _pair(c.get("strides", 1), "strides")
        d = _pair(c.get("dilation_rate", 1), "dilation_rate")
        if cin % groups or n_out % groups:
            raise CorruptModelFileError(self.path, name, f"groups={groups} does not divide {cin} and {n_out} channels")
        mat = conv_weight(kernel, k, cin, n_out, groups, depthwise, self.path, name)
        layer = Conv2D(DenseMatrix(mat), expect(bias, (n_out,), self.path, name, "bias"), in_channels=cin,
                       kernel_size=k, stride=s, padding=self._pads(c, (h, w), k, s, d, name), dilation=d, groups=groups,
                       same=_size_dependent(c, s))
        node = self.add(name, layer, inputs)
        return self.act(name, c, node) if act else node

    def _weights(self, name, c, *roles):
        return self.src.get(name, list(roles) + (["bias"] if c.get("use_bias", True) else []))

    def _Conv2D(self, name, c, inputs):
        w = self._weights(name, c, "kernel")
        return self._conv(name, c, inputs, w["kernel"], w.get("bias"), _int(c["filters"], "filters", 1),
                          _int(c.get("groups", 1), "groups", 1), False)

    def _DepthwiseConv2D(self, name, c, inputs):
        cin = self._image(inputs[0], name)[2]
        w = self._weights(name, c, "kernel")
        mult = _int(c.get("depth_multiplier", 1), "depth_multiplier", 1)
        return self._conv(name, c, inputs, w["kernel"], w.get("bias"), cin * mult, cin, True)

    def _SeparableConv2D(self, name, c, inputs):
        """Depthwise (node ``<name>/depthwise``, no bias) then a 1x1 pointwise conv (node ``<name>``)."""
        cin = self._image(inputs[0], name)[2]
        w = self._weights(name, c, "depthwise_kernel", "pointwise_kernel")
        mult = _int(c.get("depth_multiplier", 1), "depth_multiplier", 1)
        dw = self._conv(f"{name}/depthwise", c, inputs, w["depthwise_kernel"], None, cin * mult, cin, True, act=False)
        pw = {"kernel_size": 1, "activation": c.get("activation", "linear")}
        return self._conv(name, pw, [dw], w["pointwise_kernel"], w.get("bias"), _int(c["filters"], "filters", 1), 1, False)

    def _BatchNormalization(self, name, c, inputs):
        shape = self.shapes[inputs[0]]
        axis = c.get("axis", -1)
        axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        if axis not in (-1, len(shape)) or c.get("renorm") or c.get("virtual_batch_size"):
            raise UnsupportedModelError(self.path, name, f"BatchNormalization {name!r}: axis {axis!r}, renorm or "
                                        "virtual batches; only the channel (last) axis is supported")
        eps = c.get("epsilon", 1e-3)
        if type(eps) not in (int, float) or not (0 <= eps < 1e3):
            raise CorruptModelFileError(self.path, name, f"BatchNormalization {name!r}: epsilon {eps!r}")
        roles = (["gamma"] if c.get("scale", True) else []) + (["beta"] if c.get("center", True) else [])
        w = self.src.get(name, roles + ["moving_mean", "moving_variance"])
        return self.add(name, BatchNorm(*bn_arrays(w, shape[-1], self.path, name), eps=float(eps)), inputs)

    def _Activation(self, name, c, inputs):
        return self.act(name, c, inputs[0], own=True)

    def _ReLU(self, name, c, inputs):
        mx, slope, th = c.get("max_value"), c.get("negative_slope", 0.0), c.get("threshold", 0.0)
        if slope != 0 or th != 0:
            raise UnsupportedModelError(self.path, name, f"ReLU {name!r}: negative_slope={slope!r}, threshold={th!r}; "
                                        "only 0 is supported")
        if mx is not None and (type(mx) not in (int, float) or not (0 <= mx < math.inf)):
            raise CorruptModelFileError(self.path, name, f"ReLU {name!r}: max_value {mx!r}")
        return self.add(name, ReLU(None if mx is None else float(mx)), inputs)

    def _Softmax(self, name, c, inputs):
        axis = c.get("axis", -1)
        if axis not in (-1, [-1], len(self.shapes[inputs[0]]), [len(self.shapes[inputs[0]])]):
            raise UnsupportedModelError(self.path, name, f"Softmax {name!r} over axis {axis!r}; only the last axis")
        return self.add(name, Softmax(), inputs)

    def _pool(self, name, c, inputs, cls):
        h, w, _ = self._image(inputs[0], name)
        k = _pair(c.get("pool_size", 2), "pool_size")
        s = _pair(c.get("strides") or list(k), "strides")
        pads = self._pads(c, (h, w), k, s, (1, 1), name)
        same = _size_dependent(c, s)
        if cls is AvgPool2D:  # Keras/TF average only over the pixels inside the image
            return self.add(name, AvgPool2D(k, s, pads, count_include_pad=False, same=same), inputs)
        return self.add(name, MaxPool2D(k, s, pads, same=same), inputs)

    def _MaxPooling2D(self, name, c, inputs):
        return self._pool(name, c, inputs, MaxPool2D)

    def _AveragePooling2D(self, name, c, inputs):
        return self._pool(name, c, inputs, AvgPool2D)

    def _GlobalAveragePooling2D(self, name, c, inputs):
        self._image(inputs[0], name)
        return self.add(name, GlobalAvgPool2D(bool(c.get("keepdims", False))), inputs)

    def _Flatten(self, name, c, inputs):
        return self.add(name, Flatten("hwc"), inputs)

    def _ZeroPadding2D(self, name, c, inputs):
        self._image(inputs[0], name)
        p = c.get("padding", 1)
        if isinstance(p, list) and len(p) == 2 and all(isinstance(v, list) for v in p):
            pads = _pair(p[0], "padding", 0) + _pair(p[1], "padding", 0)
        else:
            (ph, pw) = _pair(p, "padding", 0)
            pads = (ph, ph, pw, pw)
        return self.add(name, ZeroPad2D(pads), inputs)

    def _Add(self, name, c, inputs):
        if len(inputs) < 2:
            raise CorruptModelFileError(self.path, name, f"Add {name!r} needs at least two inputs")
        return self.add(name, Add(), inputs)


def supported_layers():
    """The Keras layer classes nncomp reads."""
    return sorted([k[1:] for k in vars(LayerTranslator) if k[1:2].isupper()] + list(IDENTITY) + ["InputLayer"])
