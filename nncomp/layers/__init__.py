"""Layers with PyTorch/Keras inference semantics over nncomp's internal layout (images NHWC).

One module per family: ``base`` (Layer, registry, Window geometry, argument helpers), ``dense``,
``conv`` (Conv2D) with ``conv_algorithms`` (how it computes per shape), ``conv_transpose``,
``pooling``, ``resize``, ``normalization``, ``elementwise``, ``activation``, ``arith`` (broadcasting
binary operators, reductions, layer norm), ``shape``, ``tensor`` (any-rank structural ops); ``fused`` holds the plan-only layers a model's plan
builds when a producer absorbs its reader (epilogues, conv + max-pool). See ``base`` for the
protocol every layer follows and docs/architecture.md for where a new kind goes.
"""
from .activation import GELU, Clip, HardSigmoid, HardSwish, LeakyReLU, Sigmoid, SiLU, Unary
from .arith import Binary, LayerNorm, MatMul, Reduce
from .base import LAYERS, Layer, Window
from .conv import Conv2D
from .conv_transpose import ConvTranspose2D
from .dense import Dense
from .elementwise import Add, Dropout, ReLU, Softmax
from .fused import Fused
from .normalization import BatchNorm
from .pooling import AvgPool2D, GlobalAvgPool2D, GlobalMaxPool2D, MaxPool2D
from .resize import Resize
from .shape import Flatten, ZeroPad2D
from .tensor import Cast, Concat, FixedShape, Gather, Pad, Reshape, Slice, Squeeze, Transpose, Unsqueeze

__all__ = ["LAYERS", "Layer", "Window", "Fused", "Dense", "Conv2D", "BatchNorm", "ReLU", "Add", "Softmax",
           "Dropout", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "Flatten", "ZeroPad2D",
           "Sigmoid", "SiLU", "GELU", "HardSigmoid", "HardSwish", "LeakyReLU", "Clip", "Unary", "Binary", "Reduce", "LayerNorm",
           "Resize", "ConvTranspose2D", "GlobalMaxPool2D",
           "Cast", "Concat", "FixedShape", "Gather", "MatMul", "Pad", "Reshape", "Slice", "Squeeze", "Transpose",
           "Unsqueeze"]
