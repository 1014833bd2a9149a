"""k-means weight sharing (Han et al., Deep Compression, 2016), per layer, 1 to 8 bits.

Each selected layer's weights are clustered by one-dimensional k-means into at most ``2**bits``
centroids (the codebook); each weight is replaced by the code of its nearest centroid. Dense layers
become :class:`~nncomp.matrices.codebook.CodebookMatrix`; pruned CSR layers share only their
surviving weights and become :class:`~nncomp.matrices.csr_codebook.CSRCodebookMatrix`.

Exact rules:

- **k**: ``min(2**bits, distinct values)``. A layer with at most ``2**bits`` distinct values is
  reproduced exactly (a constant layer gets a one-entry codebook, an all-zero layer ``[0.0]``).
- **exact zeros** (a pruned layer stored dense): when a layer holds zeros and non-zeros, 0.0 keeps a
  codebook entry of its own and the non-zeros share the other ``2**bits - 1``, so sparsity survives.
- **initialisation** as in Deep Compression: ``"linear"`` (evenly spaced between min and max),
  ``"density"`` (evenly spaced quantiles of the weights' distribution), ``"random"`` (distinct weights
  drawn at random, seeded by ``seed``). Then Lloyd iterations (kernels/kmeans.py), with empty
  clusters re-seeded deterministically; never NaN centroids.
- **error non-increasing in bits**: the result for ``bits`` is the best (smallest squared error) of
  Lloyd from the initialisation, Lloyd from the ``bits - 1`` solution with every cluster split in
  two, and the ``bits - 1`` solution itself, so more bits never give a larger error.
- layers with more than ``MAX_FIT`` weights fit their centroids on ``MAX_FIT`` weights drawn with a
  generator seeded by ``seed`` (every weight is still coded by its nearest centroid).

With ``calibration`` data, the centroids are refit by least squares on the layer outputs (a layer's
output is linear in its centroids), together with a bias correction, layer by layer on the compressed
model's own activations (nncomp's forward-only stand-in for Deep Compression's centroid fine-tuning).
Entries equal to 0.0 stay 0.0. A refit is kept only if it lowers the layer's error on that data.
Each layer also tries its codes chosen anew from its float weights (least squares on the same data
first), one input at a time with every rounding error spread over the weights not yet rounded
(:func:`nncomp.compress.codes.assign_codes`, GPTQ's rule on the k-means grid), then the same
centroid refit, and keeps the version with the smaller error. k-means alone places the codes by
the weights' values, blind to which inputs move together; on PP-OCR's direction classifier at 3
bits (256 calibration lines) the shared model kept 91.0% of the float model's predictions with the centroid refit alone and 97.5%
with the codes re-chosen (tests/test_real.py); on LeNet-300-100 pruned to 10%, 2-bit codes on fc1
then lost no more test accuracy than 3-bit ones (nncomp/planner/allocation.py).
"""
import dataclasses

import numpy as np

from ..checks import check_seed
from ..coding.index import choose_index_bits, index_dtype
from ..errors import CompressionParameterError
from ..kernels import codebook as CK
from ..kernels import kmeans as KM
from ..matrices import DenseMatrix
from ..matrices.codebook import CodebookMatrix, check_bits
from ..matrices.csr import CSRMatrix
from ..matrices.csr_codebook import CSRCodebookMatrix
from .calibration import check_calibration, check_model, layerwise, row_bias, select_layers
from . import codes as assignment

INITS = ("linear", "density", "random")
MAX_FIT = 1 << 22          # weights used to fit the centroids of one layer
MAX_ITER = 1000            # Lloyd iterations per run (each costs k binary searches)
MAX_REFIT_IN = 8192        # calibration refit needs an (n_in, n_in) covariance: larger layers skip it
FEW_ROWS = 4               # fewer calibration rows per input: refit_model judges on held-out rows


def _init(init, v, c, k, rng):
    if init == "linear":
        return np.linspace(v[0], v[-1], k)
    if init == "density":
        cdf = np.cumsum(c) / c.sum()
        return v[np.minimum(np.searchsorted(cdf, (np.arange(k) + 0.5) / k), v.size - 1)]
    return np.sort(v[rng.choice(v.size, k, replace=False, p=c / c.sum())])


def _nearest(v, cent):
    """Index of the nearest of the sorted float64 ``cent`` for sorted ``v`` (ties: lower)."""
    j = np.clip(np.searchsorted(cent, v), 1, max(cent.size - 1, 1))
    if cent.size == 1:
        return np.zeros(v.size, np.int64)
    return np.where(np.abs(v - cent[j - 1]) <= np.abs(cent[j] - v), j - 1, j)


def _split(v, c, s0, s1, cent, k):
    """Split every cluster of ``cent`` at its centroid, then add farthest values up to ``k`` centroids."""
    bounds = np.concatenate([[0], np.searchsorted(v, 0.5 * (cent[1:] + cent[:-1]), side="right"), [v.size]])
    new = []
    for j in range(cent.size):
        a, b = bounds[j], bounds[j + 1]
        t = np.clip(np.searchsorted(v, cent[j], side="right"), a, b)
        for lo, hi in ((a, t), (t, b)):
            if hi > lo:
                new.append((s1[hi] - s1[lo]) / (s0[hi] - s0[lo]))
    new = np.unique(np.asarray(new))[:k]
    while new.size < k:
        d = np.abs(v - new[_nearest(v, new)])
        new = np.sort(np.append(new, v[int(np.argmax(d))]))
    return new


def _codebook32(cent, keep_zero):
    cb = np.asarray(cent, np.float32)
    return np.sort(np.append(cb, np.float32(0))) if keep_zero else np.sort(cb)


def _sse(v32, c, cb):
    codes = np.empty(v32.size, np.uint8)
    KM.kmeans_assign(v32, cb, codes)
    return float((c * (v32.astype(np.float64) - cb[codes]) ** 2).sum())


def kmeans_codebook(w, bits, *, init="linear", seed=0):
    """Share finite weights ``w`` (any shape) in at most ``2**bits`` values (rules in the module doc).

    Returns
    -------
    codebook : ndarray of float32, shape (k,), ascending, k <= 2**bits
    codes : ndarray of uint8, shape w.shape: the nearest codebook entry of each weight
    """
    bits = check_bits(bits)
    if init not in INITS:
        raise CompressionParameterError(f"init must be one of {INITS}, got {init!r}")
    w = np.asarray(w, np.float32)
    flat = w.reshape(-1)
    if flat.size == 0:
        return np.zeros(1, np.float32), np.zeros(w.shape, np.uint8)
    rng = np.random.default_rng(seed)
    nonzero = flat != 0
    keep_zero = bool(nonzero.any() and not nonzero.all())
    pts = flat[nonzero] if keep_zero else flat
    if pts.size > MAX_FIT:
        pts = pts[rng.integers(0, pts.size, MAX_FIT)]
    v32, cnt = np.unique(pts, return_counts=True)
    v, c = v32.astype(np.float64), cnt.astype(np.float64)
    s0 = np.concatenate([[0.0], np.cumsum(c)])
    s1 = np.concatenate([[0.0], np.cumsum(c * v)])
    best_cent, best_sse = None, np.inf
    for b in range(1, bits + 1):
        k = 2 ** b - keep_zero
        if v.size <= k:
            best_cent = v
            break
        runs = [_init(init, v, c, k, rng)] + ([] if best_cent is None else [_split(v, c, s0, s1, best_cent, k)])
        cands = []
        for cent in runs:
            cent = np.sort(np.asarray(cent, np.float64))
            KM.kmeans_lloyd(v, s0, s1, cent, MAX_ITER)
            cands.append(cent)
        if best_cent is not None:
            cands.append(best_cent)
        errs = [_sse(v32, c, _codebook32(cent, keep_zero)) for cent in cands]
        i = int(np.argmin(errs))
        best_cent, best_sse = cands[i], errs[i]
    cb = _codebook32(best_cent, keep_zero)
    codes = np.empty(flat.size, np.uint8)
    KM.kmeans_assign(flat, cb, codes)
    return cb, codes.reshape(w.shape)


def share_matrix(m, bits, *, init="linear", seed=0, sparse=None):
    """One weight Matrix shared: Dense -> CodebookMatrix, CSR (or ``sparse=True`` with zeros) -> CSR codebook."""
    if isinstance(m, CSRMatrix):
        cb, codes = kmeans_codebook(m.data, bits, init=init, seed=seed)
        out = CSRCodebookMatrix(codes, m.indices.astype(index_dtype(m.shape[1])), m.indptr.astype(np.int64),
                                cb, bits, m.shape, 8)
        return dataclasses.replace(out, index_bits=choose_index_bits(out.positions()))
    w = m.to_dense()
    if sparse and not w.all():
        pos = np.flatnonzero(w)
        cb, codes = kmeans_codebook(w.reshape(-1)[pos], bits, init=init, seed=seed)
        return CSRCodebookMatrix.from_positions(pos, codes, cb, bits, w.shape, choose_index_bits(pos))
    cb, codes = kmeans_codebook(w, bits, init=init, seed=seed)
    return CodebookMatrix.from_codes(codes, cb, bits)


def shareable(layer):
    """A layer whose weights k-means sharing can code: dense or CSR, not grouped."""
    return isinstance(layer.weight, (DenseMatrix, CSRMatrix)) and getattr(layer, "groups", 1) == 1


def bits_for(bits, model, names, method="share"):
    """``{name: bits}`` from an int or a dict keyed by layer names and/or the kinds "dense", "conv"."""
    if not isinstance(bits, dict):
        b = check_bits(bits, f"{method}(): bits")
        return {n: b for n in names}
    kinds = {"dense": "dense", "conv2d": "conv", "conv": "conv", "conv_transpose2d": "conv"}
    unknown = [k for k in bits if k not in ("dense", "conv") and k not in {n.name for n in model.nodes}]
    if unknown:
        raise CompressionParameterError(f"{method}(): bits keys {unknown} are neither layer names nor "
                                        "'dense'/'conv'")
    out = {}
    for n in names:
        key = n if n in bits else kinds.get(model[n].layer.kind)
        if key not in bits:
            raise CompressionParameterError(f"{method}(): no bits for layer {n!r}; add it or a "
                                            f"{kinds.get(model[n].layer.kind)!r} entry")
        out[n] = check_bits(bits[key], f"{method}(): bits[{key!r}]")
    return out


def _codes_of(m):
    return m.unpacked_codes() if isinstance(m, CodebookMatrix) else m.codes


def _moments(x, y, centred):
    """``(xm, ym, cov, p)``: float64 means of a layer's calibration inputs ``x`` and target outputs
    ``y`` (zeros unless ``centred``: a layer with a bias), ``cov = xc^T xc`` and ``p = xc^T yc`` of
    the rows less those means."""
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    xm, ym = (x64.mean(0), y64.mean(0)) if centred else (np.zeros(x.shape[1]), np.zeros(y.shape[1]))
    xc, yc = x64 - xm, y64 - ym
    return xm, ym, xc.T @ xc, xc.T @ yc


def _sq_error(mat, bias, x, target):
    """Squared error of ``x @ mat.T + bias`` (float64) against ``target``."""
    out = mat.apply(x).astype(np.float64) + (bias if bias is not None else 0.0)
    return float(((out - target) ** 2).sum())


def refit_codebook(layer, x, y, ref_bias, moments=None):
    """Least-squares centroids (and bias) so that ``layer(x) ~= y + ref_bias``; the better of old/new.

    ``x`` ``(r, n_in)`` float32 are the layer's inputs in the compressed model, ``y`` ``(r, n_out)`` the
    reference layer's outputs before bias; ``moments``: :func:`_moments` of them, when the caller
    refits several layers on the same rows.
    """
    m = layer.weight
    n_out, n_in = m.shape
    if n_in > MAX_REFIT_IN:
        return layer
    has_bias = layer.bias is not None
    xm, ym, cov, p = _moments(x, y, has_bias) if moments is None else moments
    k = m.codebook.size
    g = np.zeros((k, k))
    codes = _codes_of(m)
    if isinstance(m, CodebookMatrix):
        CK.codebook_gram(codes, cov, k, g)
        h = np.bincount(codes.reshape(-1), p.T.reshape(-1), minlength=k)
    else:
        CK.csr_codebook_gram(codes, m.indices, m.indptr, cov, k, g)
        rows = np.repeat(np.arange(n_out), np.diff(m.indptr))
        h = np.bincount(codes, p[m.indices.astype(np.int64), rows], minlength=k)
    free = np.flatnonzero(m.codebook != 0)
    cb = m.codebook.astype(np.float64)
    lam = 1e-9 * max(np.trace(g) / k, 1e-300)
    gf = g[np.ix_(free, free)] + lam * np.eye(free.size)
    try:
        cb[free] = np.linalg.solve(gf, h[free] + lam * cb[free])
    except np.linalg.LinAlgError:
        return layer
    if not np.isfinite(cb).all() or np.abs(cb).max() > np.finfo(np.float32).max:
        return layer
    new_m = dataclasses.replace(m, codebook=cb.astype(np.float32))
    target = y.astype(np.float64) + (ref_bias if ref_bias is not None else 0.0)
    new_b = None
    if has_bias:
        new_b = (ref_bias if ref_bias is not None else layer.bias).astype(np.float64) + ym - \
            new_m.apply(xm[None].astype(np.float32))[0]
        new_b = new_b.astype(np.float32)
    if _sq_error(new_m, new_b, x, target) <= _sq_error(m, layer.bias, x, target):
        return layer.replace(weight=new_m, bias=new_b) if has_bias else layer.replace(weight=new_m)
    return layer


def refit_model(reference, start, x, names, seed=0, weights=None):
    """Refit the codebooks of ``names`` in ``start`` to the outputs of ``reference`` on ``x``.

    Each layer takes the better of its centroids and bias refit alone (:func:`refit_codebook`) and,
    with the float weights it was shared from (the layers of ``weights``, default ``reference``), its
    codes re-chosen with the rounding errors spread over the other weights
    (:func:`nncomp.compress.codes.assign_codes`) and then refit the same way. Better means a smaller
    output error on the layer's calibration rows; where there are fewer than ``FEW_ROWS`` rows per
    input, the two are fit on 3/4 of the rows and judged on the other quarter (the assignment can
    overfit rows it has too few of), and the winner is then fit on all of them.
    """
    weights = reference if weights is None else weights

    def coded(layer, w, x_rows, y_rows, ref_bias, moments):
        """The codes re-chosen by the assignment, then the centroid refit (None: no assignment)."""
        other = None if w is None else assignment.assigned(layer, w, x_rows, y_rows, ref_bias)
        return None if other is None else refit_codebook(other, x_rows, y_rows, ref_bias, moments)

    def candidates(layer, w, x_rows, y_rows, ref_bias):
        moments = _moments(x_rows, y_rows, layer.bias is not None)      # the same rows for both refits
        return (refit_codebook(layer, x_rows, y_rows, ref_bias, moments),
                coded(layer, w, x_rows, y_rows, ref_bias, moments))

    def refit(name, layer, x_rows, y_rows):
        ref_bias = row_bias(reference[name].layer)
        if layer.weight.shape[1] > MAX_REFIT_IN:
            return layer
        w = weights[name].layer.weight
        w = w.to_dense().astype(np.float64) if w.shape == layer.weight.shape else None
        target = y_rows.astype(np.float64) + (0.0 if ref_bias is None else ref_bias)

        def better(alone, other, rows):
            if other is None or (_sq_error(other.weight, other.bias, x_rows[rows], target[rows])
                                 >= _sq_error(alone.weight, alone.bias, x_rows[rows], target[rows])):
                return alone
            return other
        r, n_in = x_rows.shape
        if w is None or r >= FEW_ROWS * (n_in + 1):
            return better(*candidates(layer, w, x_rows, y_rows, ref_bias), slice(None))
        order = np.random.default_rng([int(seed), r, n_in]).permutation(r)
        judge, fit = order[:r // 4], order[r // 4:]
        alone, other = candidates(layer, w, x_rows[fit], y_rows[fit], ref_bias)
        if better(alone, other, judge) is alone:
            return refit_codebook(layer, x_rows, y_rows, ref_bias)
        # the winner, the assignment, fit on every row (the centroid refit alone should it fail there)
        other = coded(layer, w, x_rows, y_rows, ref_bias, _moments(x_rows, y_rows, layer.bias is not None))
        return refit_codebook(layer, x_rows, y_rows, ref_bias) if other is None else other
    return layerwise(reference, x, names, refit, seed=seed, start=start)


def share(model, bits=5, *, init="linear", layers=None, calibration=None, seed=0, sparse=None):
    """Share the weights of a model's Dense and Conv2D layers through per-layer k-means codebooks.

    Parameters
    ----------
    model : Model
    bits : int or dict
        Code width, 1..8: one int for every layer, or a dict keyed by layer names and/or the kinds
        ``"dense"`` and ``"conv"`` (Deep Compression used ``{"conv": 8, "dense": 5}``).
    init : {"linear", "density", "random"}
        Centroid initialisation (Deep Compression found linear best).
    layers : list of str, optional
        Layers to share (default: every Dense, Conv2D and ConvTranspose2D layer with dense or CSR weights; grouped
        convolutions are left alone).
    calibration : ndarray, optional
        Inputs in the model's layout (training data, a few hundred samples): refit the centroids and
        biases by least squares on the layer outputs.
    seed : int
        Seeds the random initialisation and the subsampling of large layers.
    sparse : bool, optional
        True: layers with zeros keep only their non-zeros (CSR codebook), as Deep Compression stores
        pruned layers. Default: CSR layers become CSR codebooks, dense layers dense codebooks.

    Returns
    -------
    Model
        A new model; ``model`` is not modified.
    """
    check_model(model, "share")
    if init not in INITS:
        raise CompressionParameterError(f"share(): init must be one of {INITS}, got {init!r}")
    check_seed(seed, method="share")
    if sparse not in (None, True, False):
        raise CompressionParameterError(f"share(): sparse must be None, True or False, got {sparse!r}")
    x = check_calibration(calibration, model, "share")
    names = select_layers(model, layers, "share", accept=shareable)
    per_layer = bits_for(bits, model, names)
    new = {}
    for i, name in enumerate(names):
        layer = model[name].layer
        w = layer.weight
        data = w.data if isinstance(w, CSRMatrix) else w.w
        if not np.isfinite(data).all():
            raise CompressionParameterError(f"share(): layer {name!r} holds NaN or Inf weights")
        m = share_matrix(w, per_layer[name], init=init, seed=[int(seed), i], sparse=sparse)
        new[name] = layer.replace(weight=m)
    out = model.replace_layers(new)
    if x is not None:
        out = refit_model(model, out, x, names, seed=int(seed))
    return out
