"""nncomp: compress trained neural networks and measure what it does to speed, memory and accuracy.

>>> import nncomp as nc
>>> model = nc.load(nc.data.model_path("lenet5"))   # a shipped model, or any file path
>>> x, y = nc.data.mnist("test")
>>> logits = model(x)
"""
from . import data
from .compress.batchnorm import fold_batchnorm
from .errors import (CompressionParameterError, CorruptModelFileError, InputError, ModelFileError,
                     NncompError, UnsafeModelFileError, UnsupportedModelError)
from .io import load, save
from .layers import (Add, AvgPool2D, BatchNorm, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D,
                     MaxPool2D, ReLU, Softmax, ZeroPad2D)
from .matrices import DenseMatrix, Matrix
from .model import Model, Node

__version__ = "0.1.0"

# The compression methods and the comparison live in their own modules, imported on first use.
_LAZY = {
    "prune": "nncomp.compress.pruning",
    "prune_filters": "nncomp.compress.pruning",
    "sensitivity": "nncomp.compress.sensitivity",
    "sparsities_for_budget": "nncomp.compress.sensitivity",
    "quantize": "nncomp.compress.quantization",
    "share": "nncomp.compress.sharing",
    "deep_compression": "nncomp.compress.pipeline",
    "size_report": "nncomp.compress.huffman",
    "factorize": "nncomp.compress.lowrank",
    "compare": "nncomp.bench.compare",
    "optimize": "nncomp.planner",
    "OptimizationPlan": "nncomp.planner",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nncomp' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "load", "save", "data", "fold_batchnorm", *_LAZY,
    "Model", "Node", "Matrix", "DenseMatrix",
    "Dense", "Conv2D", "BatchNorm", "ReLU", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "Flatten",
    "ZeroPad2D", "Add", "Softmax", "Dropout",
    "NncompError", "ModelFileError", "UnsafeModelFileError", "CorruptModelFileError",
    "UnsupportedModelError", "InputError", "CompressionParameterError",
]
