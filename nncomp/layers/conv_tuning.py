"""Winograd (F(2x2, 3x3) or F(4x4, 3x3); F(2x2, 5x5) for a 5x5 layer) or the blocked kernel for a
convolution, measured on this CPU (nncomp/tuning.py).

All three compute a 3x3 stride-1 layer of 16+ channels, and which is faster depends on the CPU and
the shape: 16->16 channels at 28x28 and 64 images tied on a Xeon with AMX (1.04 against 1.05 ms),
where F(2x2, 3x3) ran 0.83-0.96x the blocked kernel's speed on Zen 4, and 32->32 at 14x14 took 0.70x
the blocked kernel's time on the Xeon. So where the built-in rule picks one and the layer can run
others (a dense weight), the first plan for the shape times them on it and keeps the fastest, per CPU.
"""
import numpy as np

from .. import tuning
from ..kernels import _jit
from ..matrices import DenseMatrix

# Candidates where the built-in rule picks one of them: F(4x4, 3x3) ran 16->16 channels at 28x28
# (64 images, 2 threads) 0.78-0.83x F(2x2, 3x3)'s time, 32->32 at 14x14 (partial tiles) 0.97x, 64->64
# at 56x56 0.68-0.79x (AMD EPYC Zen 3, kernel A/B in one process).
CANDIDATES = ("winograd4", "winograd", "blocked")


def measured_choice(layer, shape, n, algo, prepare):
    """``algo`` (the rule's choice for Conv2D ``layer`` on ``n`` samples of ``shape``), or the fastest
    of the :data:`CANDIDATES` the layer can run where ``algo`` is one of them and there are two or
    more; where the layer can run Winograd but the rule chose another algorithm (a weight over
    BLOCKED_MAX_WEIGHT_BYTES on few output pixels: VGG-16's conv4_2 at batch 1 took the shifted GEMM,
    25.9 ms, where F(2x2, 3x3) ran 14.4 on a Zen 3), that algorithm against the candidates.
    ``prepare(layer, shape, n, algorithm)`` builds a step (nncomp.layers.conv_algorithms.prepare)."""
    names = tuple(a for a in CANDIDATES if a in layer.algorithms)
    if "winograd" in names and algo not in names:
        names += (algo,)
    if algo not in names or len(names) < 2 or not isinstance(layer.weight, DenseMatrix):
        return algo

    def make():
        x = np.random.default_rng(0).standard_normal((n, *shape), dtype=np.float32)
        steps = {a: prepare(layer, shape, n, a) for a in names}
        return {a: (lambda s=s: s(x)) for a, s in steps.items()}
    key = (*shape, layer.out_channels, *layer.kernel_size, *layer.stride, *layer.dilation, *layer.padding, n,
           _jit.num_threads())
    return tuning.choose("conv-3x3-algorithm", key, names, algo, make)
