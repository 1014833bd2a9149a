"""Codebook codes chosen with their rounding errors spread over the other weights (GPTQ, Frantar et
al. 2023, on a k-means grid): what :func:`nncomp.compress.sharing.refit_model` tries besides the
centroid refit, keeping per layer whichever reproduces the layer's outputs better.

k-means places the codes by the weights' values alone, blind to which inputs move together. Here the
weights are rounded one input at a time, most active input first, and each rounding error is
compensated by the weights not yet rounded, through the inverse Gram matrix of the layer's
calibration inputs (a column of ones for the bias, which absorbs its share and is never rounded).
"""
import dataclasses

import numpy as np

from ..matrices import DenseMatrix
from ..matrices.codebook import CodebookMatrix
from ..matrices.csr_codebook import CSRCodebookMatrix
from .pruning import gram_of, refit_rows

__all__ = ["DAMP", "BLOCK", "support", "assign_codes", "assigned"]

DAMP = 0.01      # ridge, times the mean diagonal of the inputs' Gram matrix
BLOCK = 128      # inputs whose rounding errors are spread before the remaining inputs are updated


def support(m, w):
    """Which weights of the shared matrix ``m`` may be non-zero: its CSR structure, or (dense codebook)
    the non-zeros of the float weights ``w`` it was shared from (pruned entries stay 0.0)."""
    if isinstance(m, CSRCodebookMatrix):
        mask = np.zeros(m.shape[0] * m.shape[1], bool)
        mask[m.positions()] = True
        return mask.reshape(m.shape)
    return w != 0 if (w == 0).any() and (w != 0).any() else np.ones(m.shape, bool)


def assign_codes(w, mask, gram, codebook, *, intercept=True, damp=DAMP, block=BLOCK):
    """Codebook values for the weights ``w`` ``(n_out, n_in)`` on ``mask`` chosen one input at a time,
    each rounding error spread over the inputs not yet rounded (GPTQ, Frantar et al. 2023, with a
    codebook for the grid); entries off ``mask`` become 0.0.

    ``gram = (G, B, yy)`` of the layer's calibration inputs with a column of ones
    (:func:`nncomp.compress.pruning.gram_of`), ``w`` holding the weights and, with ``intercept``, a
    last column of bias offsets that takes its share of the errors but is not rounded. Minimises,
    greedily, ``||[X, 1] (w - q)^T||^2``: inputs in order of decreasing ``G_jj`` (the most active
    first), the inverse of ``G + damp * mean(diag G) I`` through its upper Cholesky factor, errors
    spread lazily in blocks of ``block`` inputs. Returns ``q`` like ``w`` (float64), its first ``n_in`` columns codebook values or 0.0.
    """
    n = mask.shape[1]
    size = n + bool(intercept)
    h = np.array(gram[0][:size, :size], np.float64)     # gram[0]'s last row and column: the ones
    d = np.diag(h).copy()
    dead = np.flatnonzero(d[:n] <= 0)
    h[dead, dead] = 1.0                          # an input that is always 0: any rounding costs nothing
    h[np.diag_indices(size)] += damp * max(float(np.mean(np.diag(h))), 1e-30)
    order = np.argsort(-d[:n], kind="stable")
    perm = np.append(order, n) if intercept else order
    try:
        hinv = np.linalg.inv(h[np.ix_(perm, perm)])
        u = np.linalg.cholesky((hinv + hinv.T) / 2).T          # hinv = u.T @ u, u upper
    except np.linalg.LinAlgError:
        return None
    q = np.array(w, np.float64)[:, perm]
    on = mask[:, order]
    grid = np.sort(np.asarray(codebook, np.float64))
    nz = grid[grid != 0] if (grid != 0).any() else grid
    mids = (nz[1:] + nz[:-1]) / 2
    for a in range(0, n, block):
        b = min(a + block, n)
        err = np.zeros((q.shape[0], b - a))
        for i in range(a, b):
            col = q[:, i]
            r = np.where(on[:, i], nz[np.searchsorted(mids, col)], 0.0)
            e = (col - r) / u[i, i]
            q[:, i:b] -= e[:, None] * u[i, i:b][None, :]
            q[:, i] = r
            err[:, i - a] = e
        q[:, b:] -= err @ u[a:b, b:]
    out = np.empty_like(q)
    out[:, perm] = q
    return out


def assigned(layer, w, x, y, ref_bias):
    """``layer`` (a shared layer) with its codes chosen by :func:`assign_codes` from the float
    weights ``w`` (refit by least squares on its support first) and the bias the assignment left,
    its centroids unchanged (the caller refits them: nncomp.compress.sharing.refit_model); None
    where the problem is singular."""
    m = layer.weight
    mask = support(m, w)
    intercept = layer.bias is not None
    gram = gram_of(x, y)
    start = layer.replace(weight=DenseMatrix(np.where(mask, w, 0).astype(np.float32)))
    fit = refit_rows(start, mask, gram, ref_bias, intercept=intercept)
    wb = fit.weight.to_dense().astype(np.float64)
    if intercept:
        off = fit.bias.astype(np.float64) - (0.0 if ref_bias is None else ref_bias.astype(np.float64))
        wb = np.concatenate([wb, off[:, None]], axis=1)
    q = assign_codes(wb, mask, gram, m.codebook, intercept=intercept)
    if q is None or not np.isfinite(q).all():
        return None
    cb = np.sort(m.codebook)
    values = q[:, :m.shape[1]].astype(np.float32)
    if isinstance(m, CSRCodebookMatrix):
        codes = np.searchsorted(cb, values.reshape(-1)[m.positions()]).astype(np.uint8)
        new_m = dataclasses.replace(m, codes=codes, codebook=cb)
    else:
        new_m = CodebookMatrix.from_codes(np.searchsorted(cb, values).astype(np.uint8), cb, m.bits)
    bias = None
    if intercept:
        bias = ((0.0 if ref_bias is None else ref_bias.astype(np.float64)) + q[:, -1]).astype(np.float32)
    return layer.replace(weight=new_m, bias=bias)
