"""Plan-only: a squeeze-and-excitation block's channel scaling folded into the convolution after it.

MobileNetV3 and EfficientNet multiply a map by one value per sample and channel (``x * s``, ``s``
of shape (1, 1, c) per sample) and feed the product only to a 1x1 convolution. The product need
not be written: ``conv(x * s) = conv_{w * s}(x)``, each sample's weight rows (one per tap and
input channel) scaled by its channel values (nncomp/kernels/conv_blocked.per_image_weight), then
the blocked kernel with a weight per image. The plan asks the multiply to fuse its reader
(:meth:`nncomp.layers.arith.Binary.fuse`); it then runs one step instead of two, and the map's
write and read are saved (MobileNetV3-Small at batch 8: the channel products were ~9% of a pass).
It pays where a sample's weight is no larger than its map (``kh*kw*c*co <= h*w*c``; the 7x7 layers
of 576 channels keep the product). Each output is rounded once more or less than the product's:
``x * (w * s)`` against ``(x * s) * w``.
"""
from ..matrices import DenseMatrix
from .base import Layer
from .conv_algorithms import choose
from .conv_blocked import blocked_step
from .fused import epilogue_args


def scaled_conv(binary, conv, n, shapes):
    """The :class:`ScaledConv` for ``binary`` (a two-input multiply of per-sample ``shapes``) read
    only by ``conv``, or None where the fold does not apply or pay."""
    from .conv import Conv2D
    if binary.op != "mul" or binary.constant is not None or len(shapes) != 2 or not isinstance(conv, Conv2D):
        return None
    if len(shapes[0]) == 3 and tuple(shapes[1]) == (1, 1, shapes[0][-1]):
        order = "map first"
    elif len(shapes[1]) == 3 and tuple(shapes[0]) == (1, 1, shapes[1][-1]):
        order = "vector first"
    else:
        return None
    shape = shapes[0] if order == "map first" else shapes[1]
    layer = conv.for_input(shape)
    if layer.depthwise or layer.groups != 1 or not isinstance(layer.weight, DenseMatrix) or layer.weight_b is None:
        return None
    h, w, c = shape
    if layer.weight.n_in * layer.weight_b[0].shape[1] > h * w * c or choose(layer, shape, n) != "blocked":
        return None
    return ScaledConv(binary, layer, tuple(shapes), order)


class ScaledConv(Layer):
    """``conv(map * vector)`` (``binary`` the multiply) in one blocked-kernel step, then in-place
    ``ops`` as :class:`nncomp.layers.fused.Fused` holds them (the kernel's epilogue only)."""

    kind = "fused"

    def __init__(self, binary, conv, shapes, order, ops=()):
        self.binary, self.conv, self.shapes, self.order, self.ops = binary, conv, shapes, order, ops
        self.map_shape = shapes[0] if order == "map first" else shapes[1]
        self.out_shape = conv.shape_of(self.map_shape)
        self.n_inputs = 2 + sum(m for _, m, _ in ops)

    @property
    def parts(self):
        return (self.binary, self.conv) + tuple(layer for _, _, layer in self.ops)

    def output_shape(self, *shapes):
        return self.out_shape

    def prepare(self, n, *shapes):
        oh, ow, _ = self.out_shape
        epilogue = epilogue_args(self.ops) if self.ops else None
        return blocked_step(self.conv, self.map_shape, n, oh, ow, epilogue, scaled=self.order)

    def fuse(self, successor, n, *shapes):
        op = successor.epilogue(n, self.out_shape)
        if op is None:
            return None
        ops = self.ops + ((op, successor.n_inputs - 1, successor),)
        if epilogue_args(ops) is None:
            return None
        return ScaledConv(self.binary, self.conv, self.shapes, self.order, ops)

    def macs(self, *shapes):
        return self.conv.macs(self.map_shape)

    def describe(self):
        return "+".join(layer.kind for layer in self.parts)

    def __repr__(self):
        return f"ScaledConv({self.describe()})"
