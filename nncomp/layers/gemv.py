"""One sample through a weight matrix of any format: its compiled mat-vec kernel with the bias and
an epilogue inside (nncomp/kernels/ per format), the step a Dense layer runs at batch 1 and a 1x1
convolution of a 1 x 1 map (nncomp/layers/conv.py) too."""
import numpy as np

from ..errors import InputError
from ..kernels import _jit

_NONE = np.zeros(0, np.float32)
NO_PERM = np.zeros(0, np.int64)
NO_EPILOGUE = (None, None, False, -np.inf, np.inf, None)      # nncomp.layers.fused.epilogue_args' form of none


def epilogue_vectors(epilogue, co):
    """``(scale, shift, lo, hi, act, alpha, beta)`` as the epilogue kernels take them, for an
    ``epilogue`` of nncomp.layers.fused.epilogue_args and ``co`` outputs (empty vectors: none)."""
    scale, shift, _, lo, hi, act = epilogue
    scale, shift = (_NONE, _NONE) if scale is None or not scale.shape[0] else (
        np.ascontiguousarray(np.broadcast_to(scale, (co,))), np.ascontiguousarray(np.broadcast_to(shift, (co,))))
    code, alpha, beta = act or (0, np.float32(0.0), np.float32(0.0))
    return scale, shift, np.float32(lo), np.float32(hi), code, alpha, beta


def single_sample_step(weight, bias, epilogue=NO_EPILOGUE, perm=None):
    """The step ``(x[, res]) -> (1, n_out)`` of one sample ``x`` (any shape of ``n_in`` values, gathered
    by ``perm`` when given) through ``weight``'s mat-vec kernel, plus ``bias`` (or None) and
    ``epilogue`` (with its residual ``res``); None where the format has no such kernel."""
    found = weight.single_sample_kernel()
    if found is None:
        return None
    arrays, kernels, work = found
    co, perm = weight.n_out, NO_PERM if perm is None else perm
    bias = np.zeros(co, np.float32) if bias is None else bias
    scale, shift, lo, hi, code, alpha, beta = epilogue_vectors(epilogue, co)
    no_res = np.zeros((0, co), np.float32)
    kern = _jit.pick(kernels, work)

    def step(x, res=None):
        out = np.empty((1, co), np.float32)
        if kern(*arrays, x.reshape(-1), perm, bias, scale, shift, no_res if res is None else res.reshape(1, co),
                lo, hi, code, alpha, beta, out):      # an int8 kernel's count of NaN or Inf inputs
            raise InputError(f"{weight.describe()} layer {weight.shape}: input holds NaN or Inf "
                             "values; quantized layers refuse them")
        return out
    step.blas = False
    return step
