"""What every method shares: layer selection, calibration data, and layer-wise refitting.

nncomp works post-training and forward-only. Where Deep Compression or Han et al. retrain, nncomp
refits each compressed layer on a few hundred calibration inputs so that its outputs match the
original layer's outputs (layer-wise reconstruction), feeding each layer the *compressed* model's
own activations, so errors of earlier layers are compensated by later ones.
"""
import numpy as np

from ..errors import CompressionParameterError
from ..kernels import _jit
from ..kernels.conv import im2col_nhwc, im2col_nhwc_parallel
from ..layers import Conv2D, ConvTranspose2D, Dense
from ..model import Model

# Rows of the layer-wise least-squares problems are subsampled to at most this many.
MAX_ROWS = 16384


def check_model(model, method):
    if not isinstance(model, Model):
        raise CompressionParameterError(f"{method}() needs an nncomp Model (from nc.load), got {type(model).__name__}")


def check_calibration(calibration, model, method):
    """None, or the calibration batch as float32 in the model's input layout."""
    if calibration is None:
        return None
    try:
        x = model.check_input(calibration)
    except Exception as e:  # InputError with the expected shape
        raise CompressionParameterError(f"{method}(): calibration data: {e}") from None
    if x.shape[0] < 1:
        raise CompressionParameterError(f"{method}(): calibration data is empty; pass at least one sample")
    if not np.isfinite(x).all():
        raise CompressionParameterError(f"{method}(): calibration data holds NaN or Inf")
    return x


# The layers whose weight is a compressible Matrix. A transposed convolution's weight rows are its
# output taps (kh*kw*c_out, c_in) and its input rows the input pixels: it is compressed and refit as
# a matrix like the others, but its bias is per output channel, not per weight row (row_bias).
WEIGHTED = (Dense, Conv2D, ConvTranspose2D)


def select_layers(model, layers, method, kinds=WEIGHTED, accept=None):
    """Names of the nodes a method works on.

    ``layers`` is None (every node of ``kinds`` that ``accept(layer)`` allows), a list of names,
    or a dict ``{name: value}`` (its keys). Unknown names or nodes of the wrong kind are errors.
    """
    ok = lambda layer: isinstance(layer, kinds) and (accept is None or accept(layer))  # noqa: E731
    if layers is None:
        return [n.name for n in model.nodes if ok(n.layer)]
    if isinstance(layers, str):
        layers = [layers]
    names = list(layers)
    by_name = {n.name: n for n in model.nodes}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        choices = [n.name for n in model.nodes if ok(n.layer)]
        raise CompressionParameterError(f"{method}(): unknown layer names {unknown}; choose from {choices}")
    wrong = [n for n in names if not ok(by_name[n].layer)]
    if wrong:
        raise CompressionParameterError(f"{method}(): layers {wrong} cannot be compressed this way "
                                        f"(kinds: {[by_name[n].layer.kind for n in wrong]})")
    order = {n.name: i for i, n in enumerate(model.nodes)}
    return sorted(dict.fromkeys(names), key=order.get)


def inputs_of(model, x, names):
    """Internal-layout inputs of nodes ``names`` when ``model`` runs on ``x`` (model layout), from
    one planned pass that stops after the last of them (:meth:`Model.activations`)."""
    values = model.activations(x, [model[n].inputs[0] for n in names])
    return {n: values[model[n].inputs[0]] for n in names}


def rows_of(layer, x, rows=None):
    """The layer's input as the 2-D matrix its weight multiplies: ``(n_rows, n_in)``.

    For a Conv2D these are image patches (one row per output pixel), for a ConvTranspose2D the
    input pixels; ``rows`` picks a subset.
    """
    if isinstance(layer, (Dense, ConvTranspose2D)):       # samples' (sequences') feature vectors, or pixels
        x = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
        return x if rows is None else x[rows]
    n, h, w, c = x.shape
    layer = layer.for_input((h, w, c))
    oh, ow, _ = layer.shape_of((h, w, c))
    if rows is not None and 2 * len(rows) < n * oh * ow:
        return patch_rows(x, layer.window, oh, ow, rows)
    out = np.empty((n * oh * ow, layer.window.patch * c), np.float32)
    kern = _jit.pick((im2col_nhwc, im2col_nhwc_parallel), out.size)
    kern(np.ascontiguousarray(x), *layer.window.args, oh, ow, 0, n * oh, out)
    return out if rows is None else out[rows]


def patch_rows(x, window, oh, ow, rows):
    """Rows ``rows`` of the patch matrix of ``x`` (n, h, w, c) under ``window``, gathered alone:
    exactly those of the whole matrix (taps ordered kh, kw, c; zeros outside the image), without
    building the other rows (a refit subsamples 16,384 of LeNet-5's 131,072 conv2 patches at 2,048
    calibration samples)."""
    n, h, w, c = x.shape
    kh, kw, sh, sw, top, left, dh, dw = window.args
    b, p = np.divmod(np.asarray(rows, np.int64), oh * ow)
    oy, ox = np.divmod(p, ow)
    iy = (oy * sh - top)[:, None] + np.arange(kh) * dh           # (rows, kh)
    ix = (ox * sw - left)[:, None] + np.arange(kw) * dw          # (rows, kw)
    out = np.asarray(x, np.float32)[b[:, None, None], np.clip(iy, 0, h - 1)[:, :, None],
                                    np.clip(ix, 0, w - 1)[:, None, :]]            # (rows, kh, kw, c)
    out[~(((iy >= 0) & (iy < h))[:, :, None] & ((ix >= 0) & (ix < w))[:, None, :])] = 0.0
    return out.reshape(len(b), kh * kw * c)


def n_rows_of(layer, x):
    """How many rows :func:`rows_of` gives for the batch ``x`` (samples, output or input pixels)."""
    if isinstance(layer, (Dense, ConvTranspose2D)):
        return x.shape[0] * int(np.prod(x.shape[1:-1]))
    return x.shape[0] * int(np.prod(layer.output_shape(x.shape[1:])[:2]))


def has_row_bias(layer):
    """Whether the layer's bias is one value per weight row (not for a transposed convolution: one
    per output channel, which many weight rows share), so that a refit may fit it."""
    return not isinstance(layer, ConvTranspose2D)


def row_bias(layer):
    """The bias a refit may change per weight row: the layer's bias, or None (see has_row_bias)."""
    return layer.bias if has_row_bias(layer) else None


def row_layer(layer):
    """The layer a refit sees: the layer itself, or for a transposed convolution a bias-free Dense
    view of its weight (the refit's new weight goes back into the layer, its bias unchanged)."""
    return Dense(layer.weight) if isinstance(layer, ConvTranspose2D) else layer


def sample_rows(n_rows, seed, max_rows=MAX_ROWS):
    """A sorted, seeded subset of at most ``max_rows`` row indices (None: all rows)."""
    if n_rows <= max_rows:
        return None
    return np.sort(np.random.default_rng(seed).choice(n_rows, max_rows, replace=False))


def layerwise(reference, x, names, refit, *, seed=0, start=None):
    """Refit layers one by one, each on the partially compressed model's own activations.

    Parameters
    ----------
    reference : Model
        The original model: targets are its layers' outputs (before bias) on its own activations.
    x : ndarray
        Calibration batch in the model's input layout.
    names : list of str
        Nodes to refit, in topological order.
    refit : callable ``(name, layer, x_rows, y_rows) -> layer``
        Returns the new layer (``layer`` is :func:`row_layer` of the node's layer) given the compressed model's input rows ``x_rows`` ``(r, n_in)`` and the
        reference layer's target outputs ``y_rows`` ``(r, n_out)`` (``x_ref @ W_ref.T``, no bias).
    start : Model, optional
        The compressed model to refit (default: ``reference``); layers in ``names`` are replaced in turn.

    Returns
    -------
    Model
    """
    model = start if start is not None else reference
    ref_in = inputs_of(reference, x, names)
    for name in names:
        ref_layer = reference[name].layer
        x_ref = ref_in[name]
        rows = sample_rows(n_rows_of(ref_layer, x_ref), seed)
        y_rows = ref_layer.weight.apply(rows_of(ref_layer, x_ref, rows))
        x_cur = inputs_of(model, x, [name])[name]
        layer = model[name].layer
        new = refit(name, row_layer(layer), rows_of(layer, x_cur, rows), y_rows)
        if new.kind != layer.kind:          # a transposed convolution refit through its Dense view
            new = layer.replace(weight=new.weight)
        model = model.replace_layers({name: new})
    return model
