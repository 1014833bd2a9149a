"""Fold inference BatchNorm into the preceding Dense or Conv2D layer."""
import numpy as np

from ..layers import BatchNorm, Conv2D, Dense
from ..matrices import DenseMatrix
from ..model import Node


def fold_batchnorm(model):
    """Fold every BatchNorm into the Dense or Conv2D layer it directly follows.

    A BatchNorm folds when its input is a Dense/Conv2D layer with dense weights whose only consumer
    it is: ``W' = W * s``, ``b' = b * s + t`` (computed in float64). The folded layer keeps the
    the original layer's name and nodes that read the BatchNorm read it instead. Outputs agree with the original model to
    float32 rounding. Returns a new Model.
    """
    by_name = {n.name: n for n in model.nodes}
    folded, rename = {}, {}
    for node in model.nodes:
        prev = by_name.get(node.inputs[0])
        if (isinstance(node.layer, BatchNorm) and prev is not None
                and isinstance(prev.layer, (Dense, Conv2D)) and isinstance(prev.layer.weight, DenseMatrix)
                and model.consumers(prev.name) == [node.name] and prev.name not in model.outputs):
            scale, shift = node.layer.scale_shift
            w = prev.layer.weight.w.astype(np.float64) * scale[:, None]
            b = np.zeros(len(scale)) if prev.layer.bias is None else prev.layer.bias.astype(np.float64)
            layer = prev.layer.replace(weight=DenseMatrix(w.astype(np.float32)),
                                       bias=(b * scale + shift).astype(np.float32))
            folded[prev.name] = layer
            rename[node.name] = prev.name
    nodes = [Node(n.name, folded.get(n.name, n.layer), tuple(rename.get(i, i) for i in n.inputs))
             for n in model.nodes if n.name not in rename]
    return model.with_nodes(nodes, outputs=tuple(rename.get(o, o) for o in model.outputs))
