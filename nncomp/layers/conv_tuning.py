"""Winograd or the blocked kernel for a convolution, measured on this CPU (nncomp/tuning.py).

Both compute a 3x3 stride-1 layer of 16+ channels, and which is faster depends on the CPU and the
shape: 16->16 channels at 28x28 and 64 images tied on a Xeon with AMX (1.04 against 1.05 ms), where
Winograd ran 0.83-0.96x the blocked kernel's speed on Zen 4, and 32->32 at 14x14 took 0.70x the
blocked kernel's time on the Xeon. So where the built-in rule picks either one and the layer can run
both (a dense weight), the first plan for the shape times both on it and keeps the faster, per CPU.
"""
import numpy as np

from .. import tuning
from ..kernels import _jit
from ..matrices import DenseMatrix

PAIR = ("winograd", "blocked")


def measured_choice(layer, shape, n, algo, prepare):
    """``algo`` (the rule's choice for Conv2D ``layer`` on ``n`` samples of ``shape``), or the faster of
    :data:`PAIR` where ``algo`` is one of them and the layer can run both; ``prepare(layer, shape, n,
    algorithm)`` builds a step (nncomp.layers.conv_algorithms.prepare)."""
    if algo not in PAIR or not set(PAIR) <= set(layer.algorithms) or not isinstance(layer.weight, DenseMatrix):
        return algo

    def make():
        x = np.random.default_rng(0).standard_normal((n, *shape), dtype=np.float32)
        steps = {a: prepare(layer, shape, n, a) for a in PAIR}
        return {a: (lambda s=s: s(x)) for a, s in steps.items()}
    key = (*shape, layer.out_channels, *layer.kernel_size, *layer.stride, *layer.dilation, *layer.padding, n,
           _jit.num_threads())
    return tuning.choose("conv-winograd-blocked", key, PAIR, algo, make)
