"""A whole model run through the NumPy references in float64, node by node (no plans, no fusion).

The reference for the engine's planned, fused passes at any input size: each layer kind is computed
from its definition (tests/reference.py for convolutions and pools).
"""
import numpy as np

import reference as ref
import nncomp as nc


def layer_reference(layer, xs):
    """One layer on float64 internal-layout inputs."""
    x = xs[0]
    if isinstance(layer, nc.Conv2D):
        w = layer.weight.to_dense().reshape(layer.out_channels, *layer.kernel_size, -1).transpose(0, 3, 1, 2)
        return ref.conv2d_nhwc(x, w, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    if isinstance(layer, nc.MaxPool2D):
        oh, ow, _ = layer.output_shape(x.shape[1:])
        return ref.maxpool_nhwc(x, *layer.kernel_size, *layer.stride, layer.padding[0], layer.padding[2],
                                *layer.dilation, oh, ow)
    if isinstance(layer, nc.AvgPool2D):
        oh, ow, _ = layer.output_shape(x.shape[1:])
        t, b, l, r = layer.padding
        return ref.avgpool_nhwc(x, *layer.kernel_size, *layer.stride, t, l, b, r, layer.count_include_pad, oh, ow)
    if isinstance(layer, nc.GlobalAvgPool2D):
        return x.mean(axis=(1, 2), keepdims=layer.keepdims)
    if isinstance(layer, nc.BatchNorm):
        return (x - layer.mean) / np.sqrt(layer.var.astype(np.float64) + layer.eps) * layer.gamma + layer.beta
    if isinstance(layer, nc.ReLU):
        y = np.maximum(x, 0)
        return y if layer.max_value is None else np.minimum(y, layer.max_value)
    activation = _activation(layer, x)
    if activation is not None:
        return activation
    if isinstance(layer, nc.layers.Binary):
        c = layer.constant
        if c is None:       # per-sample shapes right-aligned: ones after the batch axis
            rank = max(v.ndim for v in xs)
            a, b = (v.reshape(v.shape[:1] + (1,) * (rank - v.ndim) + v.shape[1:]) for v in xs)
        else:
            a, b = (c, x) if layer.constant_first else (x, c)
        return {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "pow": np.power,
                "max": np.maximum, "min": np.minimum}[layer.op](a, b)
    if isinstance(layer, nc.layers.GlobalMaxPool2D):
        return x.max(axis=(1, 2), keepdims=layer.keepdims)
    if isinstance(layer, nc.Add):
        return sum(xs)
    if isinstance(layer, nc.Flatten):
        if x.ndim == 4 and layer.order == "chw":
            x = x.transpose(0, 3, 1, 2)
        return x.reshape(len(x), -1)
    if isinstance(layer, nc.Dense):
        y = x @ layer.weight.to_dense().T.astype(np.float64)
        return y if layer.bias is None else y + layer.bias
    if isinstance(layer, nc.ZeroPad2D):
        t, b, l, r = layer.padding
        return np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    if isinstance(layer, nc.Dropout):
        return x
    if isinstance(layer, nc.Softmax):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    raise AssertionError(f"no reference for layer kind {layer.kind}")


def _activation(layer, x):
    """The element-wise activations from their definitions (float64), or None for other layers."""
    L = nc.layers
    if isinstance(layer, L.Sigmoid):
        return 1 / (1 + np.exp(-x))
    if isinstance(layer, L.HardSigmoid):
        return np.clip(layer.alpha * x + layer.beta, 0, 1)
    if isinstance(layer, L.HardSwish):
        return x * np.clip(x / 6 + 0.5, 0, 1)
    if isinstance(layer, L.LeakyReLU):
        return np.where(x >= 0, x, layer.alpha * x)
    if isinstance(layer, L.Clip):
        return np.minimum(np.maximum(x, layer.low), layer.high)
    return None


def graph_reference(model, x):
    """Every node's float64 value (internal layout) for model-layout input ``x``."""
    x = np.asarray(x, np.float64)
    values = {"input": x.transpose(0, 2, 3, 1) if model.input_layout == "NCHW" else x}
    for node in model.nodes:
        values[node.name] = layer_reference(node.layer, [values[s] for s in node.inputs])
    return values
