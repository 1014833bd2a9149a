"""ONNX operators with arithmetic -> nncomp layers (convolutions, dense, pools, norms, activations,
element-wise and reductions), as a mixin of :class:`nncomp.io.onnx_ops.Importer`.

Layout rules (see nncomp/layers/tensor.py and onnx_patterns.py): a 4-D ONNX tensor is an NHWC image
inside; every other rank keeps ONNX's axis order; the batch axis is never touched. Constant operands
are moved to the internal layout with :func:`internal_constant`, axes with :func:`internal_axis`.
"""
import numpy as np

from .. import layers as L
from ..errors import NncompError
from ..layers.base import same_pads
from .onnx_fold import resolve
from .onnx_patterns import TO_INTERNAL, Patterns, internal_axis, internal_constant

UNARY = {"Sqrt": "sqrt", "Exp": "exp", "Log": "log", "Neg": "neg", "Abs": "abs", "Reciprocal": "reciprocal",
         "Tanh": "tanh", "Erf": "erf"}
BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow", "Max": "max", "Min": "min"}
REDUCE = {"ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "max", "ReduceMin": "min"}
# a global pool over (H, W), whichever branch's layers are present
_POOLS = {"mean": "GlobalAvgPool2D", "max": "GlobalMaxPool2D"}


def _two(v, default):
    v = list(v) if v else [default, default]
    if len(v) != 2:
        raise NncompError(f"expected two values (2-D window), got {v}")
    return tuple(int(a) for a in v)


def _scalar(v, what):
    v = np.asarray(resolve(v)[0], np.float64)
    if v.size != 1:
        raise NncompError(f"{what} must be one value, got shape {v.shape}")
    return float(v.reshape(-1)[0])


class NeuralOps(Patterns):
    """Handlers ``op_<OpType>(node, attrs, ins)`` returning the node's output values."""

    # ------------------------------------------------------------------ windows
    def _window(self, node, attrs, x, kernel):
        strides, dil = _two(attrs.ints("strides"), 1), _two(attrs.ints("dilations"), 1)
        p = attrs.ints("pads") or [0, 0, 0, 0]
        if len(p) != 4 or min(p) < 0:
            raise NncompError(f"pads {p}: expected 4 values >= 0 for a 2-D window")
        pads, same = (p[0], p[2], p[1], p[3]), False
        auto = attrs.str("auto_pad", "NOTSET")
        h, w, _ = self.shape(x)
        if auto == "VALID":
            pads = (0, 0, 0, 0)
        elif auto == "SAME_UPPER":
            pads, same = same_pads((h, w), kernel, strides, dil), True
        elif auto == "SAME_LOWER":
            t, b, l, r = same_pads((h, w), kernel, strides, dil)
            pads = (b, t, r, l)
            if strides != (1, 1):
                self.bind_size("auto_pad SAME_LOWER with a stride")
        elif auto != "NOTSET":
            raise NncompError(f"auto_pad {auto!r} is not an ONNX value")
        return strides, pads, dil, same

    def _image(self, node, x):
        if x.rank != 4:
            raise NncompError(f"{node.op_type} supports 2-D images (4-D tensors) only, got rank {x.rank}")
        return x

    def op_Conv(self, node, attrs, ins):
        x, w, b = self._image(node, self.act(ins[0])), self.const(ins[1]), self.const(ins, 2)
        if w.ndim != 4:
            raise NncompError(f"Conv weight of shape {w.shape}: only 2-D convolutions are supported")
        o, _, kh, kw = w.shape
        stride, pads, dil, same = self._window(node, attrs, x, (kh, kw))
        mat = np.ascontiguousarray(w.transpose(0, 2, 3, 1).reshape(o, -1))
        layer = L.Conv2D(mat, b, in_channels=self.shape(x)[2], kernel_size=(kh, kw), stride=stride, padding=pads,
                         dilation=dil, groups=attrs.int("group", 1), same=same)
        return self.add(node, layer, [x])

    def op_ConvTranspose(self, node, attrs, ins):
        x, w, b = self._image(node, self.act(ins[0])), self.const(ins[1]), self.const(ins, 2)
        if attrs.ints("output_shape") or attrs.str("auto_pad", "NOTSET") != "NOTSET" or w.ndim != 4:
            raise NncompError("ConvTranspose: only 2-D with explicit pads (no output_shape, no auto_pad)")
        p = attrs.ints("pads") or [0, 0, 0, 0]
        layer = L.ConvTranspose2D.from_onnx_weight(
            w, bias=b, stride=_two(attrs.ints("strides"), 1), padding=(p[0], p[2], p[1], p[3]),
            output_padding=_two(attrs.ints("output_padding"), 0), dilation=_two(attrs.ints("dilations"), 1),
            groups=attrs.int("group", 1))
        return self.add(node, layer, [x])

    def _pool(self, node, attrs, ins, cls, **extra):
        x = self._image(node, self.act(ins[0]))
        if len(node.output) > 1 and node.output[1]:
            raise NncompError(f"{node.op_type} with an indices output is not supported")
        kernel = _two(attrs.ints("kernel_shape"), 1)
        stride, pads, dil, same = self._window(node, attrs, x, kernel)
        if dil != (1, 1):
            extra["dilation"] = dil
        return self.add(node, cls(kernel, stride, pads, ceil_mode=bool(attrs.int("ceil_mode", 0)), same=same,
                                  **extra), [x])

    def op_MaxPool(self, node, attrs, ins):
        return self._pool(node, attrs, ins, L.MaxPool2D)

    def op_AveragePool(self, node, attrs, ins):
        return self._pool(node, attrs, ins, L.AvgPool2D, count_include_pad=bool(attrs.int("count_include_pad", 0)))

    def op_GlobalAveragePool(self, node, attrs, ins):
        return self.add(node, L.GlobalAvgPool2D(keepdims=True), [self._image(node, self.act(ins[0]))])

    def op_GlobalMaxPool(self, node, attrs, ins):
        return self.add(node, L.GlobalMaxPool2D(keepdims=True), [self._image(node, self.act(ins[0]))])

    # ------------------------------------------------------------------ dense
    def _dense(self, node, x, w, bias):
        """Dense on a rank-2 activation ``x`` with weight ``w`` (out, in); a Flatten of an image
        right before it (read by nothing else) becomes a plain reshape and ``w``'s columns move."""
        if x.rank != 2:
            raise NncompError(f"{node.op_type} with a constant weight needs a 2-D input, got rank {x.rank}")
        flat = self.flattened.get(x.node)
        if flat is not None and self.readers[x.tensor] == 1:
            h, w_, c = flat
            w = np.ascontiguousarray(w.reshape(w.shape[0], c, h, w_).transpose(0, 2, 3, 1).reshape(w.shape[0], -1))
            if h * w_ > 1:
                self.fix_shape(x.node, L.Flatten("hwc"))
        return self.add(node, L.Dense(np.ascontiguousarray(w, np.float32), bias), [x])

    def op_Gemm(self, node, attrs, ins):
        x, b = self.act(ins[0]), self.const(ins[1])
        if attrs.int("transA", 0) or b.ndim != 2:
            raise NncompError("Gemm with transA=1 or a non-2-D B is not supported")
        w = (b if attrs.int("transB", 0) else b.T) * np.float32(attrs.float("alpha", 1.0))
        c = self.const(ins, 2)
        if c is not None:
            c = np.asarray(c, np.float32) * np.float32(attrs.float("beta", 1.0))
            if c.size not in (1, w.shape[0]) or (c.ndim == 2 and c.shape[0] != 1):
                raise NncompError(f"Gemm bias C of shape {c.shape} is not a per-output vector")
            c = np.broadcast_to(c.reshape(-1), (w.shape[0],)).copy()
        return self._dense(node, x, w, c)

    def op_MatMul(self, node, attrs, ins):
        if not self.is_act(ins[1]):
            x, w = self.act(ins[0]), np.asarray(self.const(ins[1]), np.float32)
            if w.ndim != 2:
                raise NncompError(f"MatMul with a constant of shape {w.shape}: only a 2-D constant is supported")
            if x.rank == 2:
                return self._dense(node, x, np.ascontiguousarray(w.T), None)
            if x.rank != 4:         # sequences (n, ..., k): a dense layer over the last axis
                return self.add(node, L.Dense(np.ascontiguousarray(w.T)), [x])
            return self.add(node, L.MatMul(w), [x])         # an image's last ONNX axis (its width)
        return self.add(node, L.MatMul(), [self.act(ins[0]), self.act(ins[1])])

    def op_BatchNormalization(self, node, attrs, ins):
        x = self.act(ins[0])
        if x.rank not in (2, 4) or (len(node.output) > 1 and any(node.output[1:])):
            raise NncompError("BatchNormalization: inference form on 2-D or 4-D tensors only")
        gamma, beta, mean, var = (self.const(ins, i) for i in (1, 2, 3, 4))
        return self.add(node, L.BatchNorm(gamma, beta, mean, var, eps=attrs.float("epsilon", 1e-5)), [x])

    def op_LayerNormalization(self, node, attrs, ins):
        x = self.act(ins[0])
        axis = attrs.int("axis", -1) % x.rank
        if x.rank == 4 and axis != 1:
            raise NncompError("LayerNormalization of an image is supported over (C, H, W) only (axis=1)")
        if len(node.output) > 1 and any(node.output[1:]):
            raise NncompError("LayerNormalization with mean / inv_std_dev outputs is not supported")
        scale, bias = (None if v is None else internal_constant(v, x.rank) for v in (self.const(ins, 1),
                                                                                      self.const(ins, 2)))
        layer = L.LayerNorm(internal_axis(axis, x.rank) if x.rank != 4 else 0, scale, bias,
                                    epsilon=attrs.float("epsilon", 1e-5))
        return self.add(node, layer, [x])

    # ------------------------------------------------------------------ activations
    def op_Relu(self, node, attrs, ins):
        return self.add(node, L.ReLU(), [self.act(ins[0])])

    def op_Clip(self, node, attrs, ins):
        lo, hi = (self.const(ins, i) for i in (1, 2))
        lo = attrs.float("min", -np.inf) if lo is None else _scalar(lo, "Clip min")
        hi = attrs.float("max", np.inf) if hi is None else _scalar(hi, "Clip max")
        if lo == 0 and hi in (6.0, np.inf):
            layer = L.ReLU(None if hi == np.inf else 6.0)
        else:
            layer = L.Clip(lo, hi)
        x = self.act(ins[0])
        out = self.add(node, layer, [x])
        made = self.origin.get(x.node, (None,))
        if (lo, hi) == (0, 6) and made[0] == "add" and made[2] == 3:
            self.origin[out[0].node] = ("relu6+3", made[1])
        return out

    def op_LeakyRelu(self, node, attrs, ins):
        return self.add(node, L.LeakyReLU(attrs.float("alpha", 0.01)), [self.act(ins[0])])

    def op_Sigmoid(self, node, attrs, ins):
        x = self.act(ins[0])
        out = self.add(node, L.Sigmoid(), [x])
        self.origin[out[0].node] = ("sigmoid", x.node)
        return out

    def op_HardSigmoid(self, node, attrs, ins):
        alpha, beta = attrs.float("alpha", 0.2), attrs.float("beta", 0.5)
        x = self.act(ins[0])
        out = self.add(node, L.HardSigmoid(alpha, beta), [x])
        if abs(alpha - 1 / 6) < 1e-7 and beta == 0.5:
            self.origin[out[0].node] = ("hardsigmoid", x.node)
        return out

    def op_HardSwish(self, node, attrs, ins):
        return self.add(node, L.HardSwish(), [self.act(ins[0])])

    def op_Softmax(self, node, attrs, ins):
        x = self.act(ins[0])
        axis = attrs.int("axis", -1 if self.opset >= 13 else 1) % x.rank
        if self.opset < 13 and axis != x.rank - 1:
            raise NncompError(f"Softmax at opset {self.opset} over axes {axis}.. (flattened) is not supported")
        a = internal_axis(axis, x.rank)
        layer = L.Softmax() if a == len(self.shape(x)) - 1 else L.Softmax(axis=a)
        return self.add(node, layer, [x])

    def op_Unary(self, node, attrs, ins):
        x = self.act(ins[0])
        out = self.add(node, L.Unary(UNARY[node.op_type]), [x])
        if node.op_type == "Sqrt":
            self.origin[out[0].node] = ("sqrt", x.node)
        made = self.origin.get(x.node, ())
        if node.op_type == "Erf" and made[:1] == ("x/sqrt2",):
            self.origin[out[0].node] = ("erf(x/sqrt2)", made[1])
        return out

    # ------------------------------------------------------------------ element-wise and reductions
    def op_Binary(self, node, attrs, ins):
        if len(ins) != 2:
            raise NncompError(f"{node.op_type} with {len(ins)} inputs: only two are supported")
        op = BINARY[node.op_type]
        a, b = ins
        if self.is_act(a) and self.is_act(b):
            a, b = self.act(a), self.act(b)
            if a.rank != b.rank:
                raise NncompError(f"{node.op_type} of activations of ranks {a.rank} and {b.rank}")
            if op == "add" and self.shape(a) == self.shape(b):
                return self.add(node, L.Add(), [a, b])
            found = self.binary_of_activations(node, op, a, b)
            if found is not None:
                return found
            out = self.add(node, L.Binary(op), [a, b])
            self.note_binary(out[0], op, (a, b))
            return out
        first = not self.is_act(a)
        x, c = (self.act(b), self.const(a)) if first else (self.act(a), self.const(b))
        c = np.asarray(resolve(c)[0], np.float32)
        found = self.binary_with_constant(node, op, x, c, first)
        if found is not None:
            return found
        out = self.add(node, L.Binary(op, constant=internal_constant(c, x.rank), constant_first=first), [x])
        self.note_binary(out[0], op, x, c, first)
        return out

    def op_Reduce(self, node, attrs, ins):
        x = self.act(ins[0])
        axes = [int(a) for a in resolve(self.const(ins, 1))[0]] if len(ins) > 1 and ins[1] else attrs.ints("axes")
        keep = bool(attrs.int("keepdims", 1))
        if not axes:
            if attrs.int("noop_with_empty_axes", 0):
                return [x]
            raise NncompError(f"{node.op_type} over all axes includes the batch axis")
        onnx_axes = sorted({a % x.rank for a in axes})
        internal = [internal_axis(a, x.rank) for a in onnx_axes]
        op = REDUCE[node.op_type]
        if x.rank == 4 and onnx_axes == [2, 3] and op in ("mean", "max"):
            layer = getattr(L, _POOLS[op])(keepdims=keep)
            return self.add(node, layer, [x])
        out = self.add(node, L.Reduce(op, tuple(internal), keepdims=keep), [x])
        if op == "mean" and keep:
            self.origin[out[0].node] = ("mean", x.node, tuple(sorted(internal)))
        if x.rank == 4 and not keep:
            kept = [a for a in (1, 2, 3) if a not in onnx_axes]         # ONNX order of what is left
            inside = sorted(kept, key=lambda a: TO_INTERNAL[a - 1])    # the order Reduce leaves them in
            perm = tuple(inside.index(a) for a in kept)
            if perm != tuple(range(len(perm))):
                return self.add(node, L.Transpose(perm), out, suffix="order")
        return out

    def op_Resize(self, node, attrs, ins):
        x = self._image(node, self.act(ins[0]))
        if node.op_type == "Upsample":
            scales, sizes = self.const(ins, 1), None
        else:
            scales, sizes = self.const(ins, 2), self.const(ins, 3)
        for bad, ok in (("exclude_outside", 0), ("antialias", 0)):
            if attrs.int(bad, 0) != ok:
                raise NncompError(f"Resize with {bad}={attrs.int(bad)} is not supported")
        if attrs.str("keep_aspect_ratio_policy", "stretch") != "stretch" or attrs.ints("axes"):
            raise NncompError("Resize with axes or a keep_aspect_ratio_policy is not supported")
        mode = attrs.str("mode", "nearest")
        kw = dict(mode=mode, coordinate_mode=attrs.str("coordinate_transformation_mode", "half_pixel"),
                  nearest_mode=attrs.str("nearest_mode", "round_prefer_floor"),
                  cubic_coeff_a=attrs.float("cubic_coeff_a", -0.75))
        if node.op_type == "Upsample":
            kw["coordinate_mode"] = "asymmetric"
            kw["nearest_mode"] = "floor"
        h, w, c = self.shape(x)
        if sizes is not None and np.size(sizes):
            sizes, dims = resolve(sizes)
            if any(d.node != x.node or d.axis != i for i, d in enumerate(dims)):
                self.bind_size("a Resize to sizes computed from the input size")
            sizes = [int(v) for v in np.asarray(sizes).reshape(-1)]
            if len(sizes) != 4 or sizes[1] != c:
                raise NncompError(f"Resize sizes {sizes}: expected (N, C, H, W) keeping N and C")
            return self.add(node, L.Resize(size=(sizes[2], sizes[3]), **kw), [x])
        s = [float(v) for v in np.asarray(scales, np.float64).reshape(-1)]
        if len(s) != 4 or s[:2] != [1.0, 1.0]:
            raise NncompError(f"Resize scales {s}: expected (1, 1, sh, sw)")
        return self.add(node, L.Resize(scale=(s[2], s[3]), **kw), [x])
