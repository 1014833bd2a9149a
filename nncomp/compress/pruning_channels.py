"""Channel spaces of a model graph, for structured (filter) pruning, and the layers left when some
channels of a space are removed.

A channel space is the channel axis that a Dense or non-grouped Conv2D (a *producer*) writes and
that the layers after it carry on (*followers*: BatchNorm, activations, pools, padding, dropout,
Flatten, depthwise convolutions) until Dense/Conv2D layers (*consumers*) read it. An Add ties the
spaces it adds into one. :func:`~nncomp.compress.pruning.prune_filters` chooses the channels to keep
per space; :func:`remove_channels` cuts the producers' rows, the followers' channels and the
consumers' input columns (through flattening in either order).
"""
import math

import numpy as np

from ..layers import (Add, AvgPool2D, BatchNorm, Clip, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D,
                      GlobalMaxPool2D, HardSigmoid, HardSwish, LeakyReLU, MaxPool2D, ReLU, Sigmoid, ZeroPad2D)
from ..matrices import DenseMatrix
from ..model import INPUT

_FOLLOW = (BatchNorm, ReLU, MaxPool2D, AvgPool2D, GlobalAvgPool2D, ZeroPad2D, Dropout, Flatten,
           Sigmoid, HardSigmoid, HardSwish, LeakyReLU, Clip, GlobalMaxPool2D)
_ELEMENTWISE = (ReLU, Dropout, Sigmoid, HardSigmoid, HardSwish, LeakyReLU, Clip)


def prunable(layer):
    """A layer whose weights the pruning methods prune, and that starts a channel space."""
    return isinstance(layer, Dense) or (isinstance(layer, Conv2D) and layer.groups == 1)


def _depthwise_follower(layer):
    return (isinstance(layer, Conv2D) and layer.depthwise and layer.out_channels == layer.in_channels
            and isinstance(layer.weight, DenseMatrix))


def channel_groups(model):
    """Channel spaces: ``{root: {"producers", "followers", "consumers", "frozen"}}``.

    A Dense or non-grouped Conv2D starts a space (its output channels); BatchNorm, activations, pools,
    padding, dropout, flatten and depthwise convolutions carry it on; an Add merges the spaces it
    adds (their channels are tied); the Dense/Conv2D layers reading a space consume it. A space that
    reaches the model input or output, or any other layer, is frozen (it cannot be pruned).
    """
    parent = {}

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    space, info = {INPUT: INPUT}, {}
    parent[INPUT] = INPUT
    info[INPUT] = {"producers": [], "followers": [], "consumers": [], "frozen": "it is the model input"}
    flat = {}
    for node in model.nodes:
        layer, src = node.layer, node.inputs[0]
        if prunable(layer):
            info[find(space[src])]["consumers"].append(node.name)
            parent[node.name] = node.name
            space[node.name] = node.name
            info[node.name] = {"producers": [node.name], "followers": [], "consumers": [], "frozen": None}
            if not isinstance(layer.weight, DenseMatrix):
                info[node.name]["frozen"] = f"{node.name!r} has {layer.weight.format} weights"
            continue
        root = find(space[src])
        if isinstance(layer, Add):
            for other in node.inputs[1:]:
                r2 = find(space[other])
                if r2 != root:
                    parent[r2] = root
                    for key in ("producers", "followers", "consumers"):
                        info[root][key] += info[r2][key]
                    info[root]["frozen"] = info[root]["frozen"] or info[r2]["frozen"]
            info[root]["followers"].append(node.name)
        elif isinstance(layer, _FOLLOW) or _depthwise_follower(layer):
            if src in flat and not isinstance(layer, _ELEMENTWISE):
                info[root]["frozen"] = info[root]["frozen"] or f"{node.name!r} follows a flatten"
            if isinstance(layer, Flatten) or src in flat:
                # (positions, channels) and the order: a sequence (t, c) flattens step by step
                shp = model.shapes[src]
                flat[node.name] = flat.get(src) or ((math.prod(shp[:-1]), shp[-1]), layer.order if len(shp) == 3 else "hwc")
            info[root]["followers"].append(node.name)
        else:
            for other in node.inputs[1:]:      # every space a layer of another kind reads is frozen
                r2 = find(space[other])
                info[r2]["frozen"] = info[r2]["frozen"] or f"{node.name!r} ({layer.kind}) reads it"
            info[root]["frozen"] = info[root]["frozen"] or f"{node.name!r} ({layer.kind}) reads it"
            parent[node.name] = node.name
            info[node.name] = {"producers": [], "followers": [], "consumers": [], "frozen": "not a channel space"}
        space[node.name] = root
    for o in model.outputs:
        r = find(space[o])
        info[r]["frozen"] = info[r]["frozen"] or "it reaches a model output"
    return {r: g for r, g in info.items() if find(r) == r and g["producers"]}, flat


def _columns(model, consumer, keep, flat):
    """Input columns of a consumer's weight that read the kept channels."""
    layer, src = model[consumer].layer, model[consumer].inputs[0]
    if isinstance(layer, Conv2D):
        kh, kw = layer.kernel_size
        c = layer.in_channels
        return (np.arange(kh * kw)[:, None] * c + keep[None, :]).ravel()
    if src in flat:
        (positions, c), order = flat[src]
        pos = np.arange(positions)
        cols = keep[:, None] * positions + pos[None, :] if order == "chw" else pos[:, None] * c + keep[None, :]
        return np.sort(cols.ravel())
    return keep


def remove_channels(model, groups, kept, flat):
    """The layers that replace ``model``'s when space ``root`` keeps channels ``kept[root]``.

    ``groups`` and ``flat`` come from :func:`channel_groups`; ``kept`` maps a root to the sorted
    kept channel indices. Returns ``(new, keep_rows, keep_cols)``: ``{name: new layer}``, and the
    kept output rows of the producers and kept input columns of the consumers (by name).
    """
    new, keep_rows, keep_cols = {}, {}, {}
    for root, keep in kept.items():
        g = groups[root]
        for p in g["producers"]:
            keep_rows[p] = keep
        for f in g["followers"]:
            layer = model[f].layer
            if isinstance(layer, BatchNorm):
                new[f] = layer.replace(**{k: getattr(layer, k)[keep] for k in ("gamma", "beta", "mean", "var")})
            elif isinstance(layer, Conv2D):
                new[f] = layer.replace(weight=DenseMatrix(layer.weight.w[keep]), in_channels=len(keep),
                                       groups=len(keep), bias=None if layer.bias is None else layer.bias[keep])
        for cons in g["consumers"]:
            keep_cols[cons] = _columns(model, cons, keep, flat)
    for n in set(keep_rows) | set(keep_cols):
        layer = model[n].layer
        w, b = layer.weight.w, layer.bias
        rows = keep_rows.get(n, np.arange(w.shape[0]))
        cols = keep_cols.get(n, np.arange(w.shape[1]))
        changes = dict(weight=DenseMatrix(w[np.ix_(rows, cols)]), bias=None if b is None else b[rows])
        if isinstance(layer, Conv2D) and n in keep_cols:
            changes["in_channels"] = len(cols) // (layer.kernel_size[0] * layer.kernel_size[1])
        new[n] = layer.replace(**changes)
    return new, keep_rows, keep_cols
