"""Low-rank factorization: truncated SVD for dense layers, Jaderberg's scheme 2 for convolutions.

A factorized layer becomes two ordinary layers, so either can be pruned or quantized further:

- ``Dense`` of rank r: node ``<name>/v`` = Dense(V ``(r, n_in)``, no bias), then node ``<name>`` =
  Dense(U ``(n_out, r)``, bias). Consumers keep reading ``<name>``.
- ``Conv2D`` k x k, scheme ``"jaderberg"`` (Jaderberg et al. 2014, scheme 2): ``<name>/v`` = a
  ``(kh, 1)`` conv into K channels (the vertical stride, padding and dilation), then ``<name>`` = a
  ``(1, kw)`` conv into the N outputs (the horizontal stride, padding and dilation, and the bias).
- ``Conv2D``, scheme ``"channel"`` (or ``"svd"``): ``<name>/v`` = the same k x k conv into K channels,
  then ``<name>`` = a 1 x 1 conv (the SVD of the weight matrix ``(N, kh*kw*C)``).
- ``ConvTranspose2D``: ``<name>/v`` = a 1 x 1 conv into K channels, then ``<name>`` = the same
  transposed convolution over K input channels (the SVD of its matrix ``(kh*kw*N, C)``), by filter
  reconstruction even with calibration data (its bias is per channel, not per weight row, so the
  data fit's per-row intercept has no place to go).

Without calibration data the factors come from the closed-form filter reconstruction (truncated SVD,
Eckart-Young optimal in the Frobenius norm). With calibration data each layer is fitted, in order, to
the original layer's outputs on the partly factorized model's own activations: dense and channel
factors by reduced-rank ridge regression (whiten by the input covariance, truncate, unwhiten, in
closed form, bias corrected), scheme-2 filters as in :mod:`lowrank_conv`. Where a layer's only
consumer is a BatchNorm, output channels are weighted by its scale (the error the next layer sees).
How the ranks are chosen (rank, energy, speedup, global allocation) is in :mod:`lowrank_rank`.
"""

import math

import numpy as np

from ..checks import check_choice, check_number, check_seed
from ..errors import CompressionParameterError
from ..layers import BatchNorm, Conv2D, ConvTranspose2D, Dense
from ..matrices import DenseMatrix
from ..model import Node
from . import lowrank_conv as lc
from .calibration import check_calibration, check_model, inputs_of, n_rows_of, rows_of, sample_rows, select_layers
from .lowrank_rank import allocate, check_keys, check_speedup, rank_for_speedup, ranks, rel_tail

SCHEMES = ("auto", "svd", "jaderberg", "channel")
ALLOCATIONS = ("global", "uniform")
# Data reconstruction of a layer with more inputs than this would need a Gram matrix too large.
MAX_DATA_INPUTS = 8192
# Calibration rows (samples, or output pixels of a conv) used per layer.
MAX_ROWS = 32768


class _Plan:
    """One layer to factorize: its scheme, cost model and spectrum."""

    def __init__(self, model, name, scheme):
        node = model[name]
        self.name, self.layer, self.scheme = name, node.layer, scheme
        self.shape = model.shapes[node.inputs[0]]
        self.w = np.asarray(self.layer.weight.to_dense(), np.float32)
        if not np.isfinite(self.w).all():
            raise CompressionParameterError(f"factorize(): layer {name!r} has NaN or Inf weights; an SVD of "
                                            "them is undefined. Repair or exclude the layer (layers=)")
        self.orig = self.layer.macs(self.shape)
        n_out, n_in = self.w.shape
        if isinstance(self.layer, Dense):
            self.max_rank, self.unit = min(n_out, n_in), n_in + n_out
        elif isinstance(self.layer, ConvTranspose2D):        # one matrix row per input pixel
            self.max_rank, self.unit = min(n_out, n_in), self.shape[0] * self.shape[1] * (n_in + n_out)
        else:
            h, w, c = self.shape
            oh, ow, _ = self.layer.output_shape(self.shape)
            kh, kw = self.layer.kernel_size
            if scheme == "jaderberg":
                self.max_rank, self.unit = min(kh * c, n_out * kw), oh * w * kh * c + oh * ow * kw * n_out
            else:
                self.max_rank, self.unit = min(n_out, n_in), oh * ow * (n_in + n_out)
        self.gain = _bn_gain(model, name)
        self.spectrum = None

    def macs(self, rank):
        return rank * self.unit


def _bn_gain(model, name):
    """|scale| of a BatchNorm that is the layer's only consumer (floored), or None."""
    cons = model.consumers(name)
    if len(cons) != 1 or not isinstance(model[cons[0]].layer, BatchNorm) or name in model.outputs:
        return None
    g = np.abs(model[cons[0]].layer.scale_shift[0].astype(np.float64))
    top = g.max(initial=0.0)
    return None if not top > 0 else np.maximum(g, 1e-3 * top)


# ------------------------------------------------------------------ validation
def _accept(scheme):
    def ok(layer):
        if isinstance(layer, Dense):
            return True
        if isinstance(layer, ConvTranspose2D):
            return layer.groups == 1 and scheme != "jaderberg"
        kh, kw = layer.kernel_size
        return layer.groups == 1 and (kh > 1 and kw > 1 if scheme == "jaderberg" else kh * kw > 1)
    return ok


def _check_named(model, names, scheme):
    for name in names:
        layer = model[name].layer
        if isinstance(layer, ConvTranspose2D) and layer.groups != 1:
            raise CompressionParameterError(
                f"factorize(): {name!r} is a grouped transposed convolution (groups={layer.groups}); "
                "leave it out of layers=")
        if isinstance(layer, Conv2D):
            kh, kw = layer.kernel_size
            if layer.groups != 1:
                raise CompressionParameterError(
                    f"factorize(): {name!r} is a grouped or depthwise convolution (groups={layer.groups}); "
                    "its filters are already small: leave it out of layers=")
            if scheme == "jaderberg" and (kh == 1 or kw == 1):
                raise CompressionParameterError(
                    f"factorize(): {name!r} has a {kh}x{kw} kernel; scheme 'jaderberg' needs kh, kw > 1. "
                    "Use scheme='channel' for it, or leave it out of layers=")
        if f"{name}/v" in model.shapes:
            raise CompressionParameterError(f"factorize(): the model already has a node {name + '/v'!r}")


# ------------------------------------------------------------------ data
def _rows(layer, x, rows):
    """The layer's input rows (samples, or conv patches) at sorted indices ``rows`` (None: all)."""
    if isinstance(layer, Dense) or rows is None:
        return np.asarray(rows_of(layer, x, rows), np.float32)
    n = x.shape[0]
    per = int(np.prod(layer.output_shape(x.shape[1:])[:2]))
    step = max(1, (64 << 20) // max(1, per * layer.weight.n_in * 4))
    parts = []
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        lo, hi = np.searchsorted(rows, [i0 * per, i1 * per])
        if hi > lo:
            parts.append(rows_of(layer, x[i0:i1], rows[lo:hi] - i0 * per))
    return np.concatenate(parts)



def _pair(plan, first, second, bias):
    """The two layers that replace the plan's layer."""
    f32 = lambda a: DenseMatrix(np.ascontiguousarray(a, np.float32))  # noqa: E731
    bias = None if bias is None else np.asarray(bias, np.float32)
    layer, k = plan.layer, first.shape[0]
    if isinstance(layer, Dense):
        return Dense(f32(first)), Dense(f32(second), bias)
    if isinstance(layer, ConvTranspose2D):
        return Conv2D(f32(first), None, in_channels=layer.in_channels, kernel_size=(1, 1)), layer.replace(weight=f32(second))
    if plan.scheme == "channel":
        return (layer.replace(weight=f32(first), bias=None),
                Conv2D(f32(second), bias, in_channels=k, kernel_size=(1, 1)))
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    t, bo, le, ri = layer.padding
    return (Conv2D(f32(first), None, in_channels=layer.in_channels, kernel_size=(kh, 1), stride=(sh, 1),
                   padding=(t, bo, 0, 0), dilation=(dh, 1)),
            Conv2D(f32(second), bias, in_channels=k, kernel_size=(1, kw), stride=(1, sw),
                   padding=(0, 0, le, ri), dilation=(1, dw)))


def _split(model, name, first, second):
    nodes = []
    for n in model.nodes:
        if n.name == name:
            nodes += [Node(f"{name}/v", first, n.inputs), Node(name, second, (f"{name}/v",))]
        else:
            nodes.append(n)
    return model.with_nodes(nodes)


def _build(model, plans, ranks, x, data, rows, iterations, seed):
    """Factorize the plans' layers in order (data reconstruction on the model's own activations)."""
    out = model
    for k, p in enumerate(plans):
        if ranks[p.name] is None:
            continue
        d = None
        if x is not None and p.name in data:
            first = all(ranks[q.name] is None for q in plans[:k])
            cur = data[p.name][0] if first else _rows(p.layer, inputs_of(out, x, [p.name])[p.name], rows[p.name])
            d = (cur, data[p.name][1])
        out = _split(out, p.name, *_pair(p, *lc.plan_factors(p, ranks[p.name], d, iterations, seed)))
    return out


def _within_budget(model, plans, x, x_score, data, rows, max_drop, iterations, seed, steps=7):
    """The cheapest global allocation whose top-1 agreement on ``x_score`` loses at most ``max_drop``.

    Bisects the whole-selection speedup (geometrically) with cheap fits (no alternating refits),
    then refits the chosen ranks fully; if that loses more, the cheap fit is returned.
    """
    first = lambda y: y[0] if isinstance(y, tuple) else y  # noqa: E731
    ref = first(model(x_score))
    if ref.ndim != 2 or ref.shape[1] < 2:
        raise CompressionParameterError(
            f"factorize(): max_drop needs a classifier (outputs (n, classes)); this model gives {ref.shape}")
    top = ref.argmax(axis=1)
    loss = lambda m: 1.0 - float(np.mean(first(m(x_score)).argmax(axis=1) == top))  # noqa: E731
    lo, hi = 1.0, 0.999 * sum(p.orig for p in plans) / sum(p.macs(1) for p in plans)
    best = None
    for _ in range(steps):
        if not hi > lo * 1.01:
            break
        mid = math.sqrt(lo * hi)
        ranks = allocate(plans, mid)
        cand = _build(model, plans, ranks, x, data, rows, 0, seed)
        if loss(cand) <= max_drop:
            lo, best = mid, (ranks, cand)
        else:
            hi = mid
    if best is None:
        return model
    if iterations and any(p.scheme == "jaderberg" for p in plans):
        full = _build(model, plans, best[0], x, data, rows, iterations, seed)
        if loss(full) <= max_drop:
            return full
    return best[1]


# ------------------------------------------------------------------ public
def factorize(model, *, rank=None, energy=None, speedup=None, max_drop=None, layers=None, calibration=None,
              scheme="auto", allocation="global", iterations=3, seed=0):
    """Replace Dense, Conv2D and ConvTranspose2D layers by products of two thinner layers.

    Give exactly one of ``rank``, ``energy``, ``speedup`` or ``max_drop``.

    Parameters
    ----------
    model : Model
    rank : int or dict {name: int}, optional
        Rank of every selected layer, or per layer (a dict also selects the layers): the inner width
        r of a dense pair, the number K of intermediate channels of a conv pair. In [1, min(m, n)] of
        the factorized matrix: ``(n_out, n_in)``; ``(kh*C, N*kw)`` for scheme 2; ``(N, kh*kw*C)`` for
        the channel scheme.
    energy : float in (0, 1], optional
        Per layer, the smallest rank keeping this fraction of the squared singular values (of the
        data-whitened spectrum when ``calibration`` is given).
    speedup : float > 1 or dict {name: float}, optional
        Target factor by which multiply-adds shrink: for the whole selection (``allocation="global"``:
        ranks go where they remove the most relative error per MAC, and a layer that would not get
        cheaper stays as it is), for each layer alike (``allocation="uniform"``), or per layer (dict).
    max_drop : float in [0, 1], optional
        Accuracy budget (needs ``calibration``): the largest whole-selection speedup, allocated as
        above, whose top-1 agreement with the original model drops by at most this fraction
        (0.01 = one point) on the last quarter of the calibration inputs, held out (the layers are
        fitted on the first three quarters). Returns the model unchanged if no speedup fits.
    layers : str, list of str or dict, optional
        Nodes to factorize. Default: every Dense layer, every non-grouped conv whose kernel is
        larger than 1 x 1 (k x k for scheme 2) and every non-grouped transposed conv (not under
        scheme ``"jaderberg"``). Grouped/depthwise convs are refused by name, and so
        are 1 x k / k x 1 convs under scheme ``"jaderberg"``.
    calibration : array_like, optional
        Inputs in the model's layout. Given: data reconstruction (see the module notes) and
        data-aware spectra; otherwise filter reconstruction.
    scheme : {"auto", "svd", "jaderberg", "channel"}
        How convolutions are split (dense layers always use the SVD): ``"jaderberg"`` k x 1 then 1 x k;
        ``"channel"`` (``"svd"`` alike) k x k into K channels then 1 x 1; ``"auto"``: scheme 2 for k x k
        convs, except that with ``speedup`` each conv takes the scheme whose spectrum loses less
        relative energy at that speedup (1 x 1 convs named in ``layers`` use the channel scheme).
    allocation : {"global", "uniform"}
        How a scalar ``speedup`` is spread over the layers (see ``speedup``).
    iterations : int >= 0
        Alternating refits of scheme-2 filters in data reconstruction.
    seed : int
        Seeds the subsample of calibration rows (at most 32,768 per layer).

    Returns
    -------
    Model
        A new model; node ``<name>/v`` (first factor, no bias) feeds node ``<name>`` (second factor
        and the bias), so consumers and outputs are unchanged.
    """
    check_model(model, "factorize")
    if not isinstance(scheme, str) or scheme not in SCHEMES:
        raise CompressionParameterError(f"factorize(): scheme must be one of {SCHEMES}, got {scheme!r}")
    given = [k for k, v in (("rank", rank), ("energy", energy), ("speedup", speedup), ("max_drop", max_drop))
             if v is not None]
    if len(given) != 1:
        raise CompressionParameterError(
            f"factorize(): give exactly one of rank=, energy=, speedup=, max_drop=; got {given or 'none'}")
    if max_drop is not None:
        max_drop = check_number(max_drop, "max_drop", low=0, high=1, method="factorize")
    if max_drop is not None and calibration is None:
        raise CompressionParameterError("factorize(): max_drop needs calibration= inputs to measure the drop on")
    check_choice(allocation, "allocation", ALLOCATIONS, method="factorize")
    iterations = check_number(iterations, "iterations", integer=True, low=0, method="factorize")
    check_seed(seed, method="factorize")
    if energy is not None:
        energy = check_number(energy, "energy", low=0, high=1, low_open=True, method="factorize")
    if speedup is not None and not isinstance(speedup, dict):
        speedup = check_speedup(speedup)
    if not isinstance(rank, (dict, type(None))):
        check_number(rank, "rank", integer=True, low=1, method="factorize", fix="or a dict {name: int}")
    x = check_calibration(calibration, model, "factorize")
    x_score = None
    if max_drop is not None:
        if x.shape[0] < 8:
            raise CompressionParameterError(f"factorize(): max_drop needs at least 8 calibration samples "
                                            f"(a quarter is held out to score), got {x.shape[0]}")
        x, x_score = x[:x.shape[0] - x.shape[0] // 4], x[x.shape[0] - x.shape[0] // 4:]
    per_layer = rank if isinstance(rank, dict) else speedup if isinstance(speedup, dict) else None
    if per_layer is not None and layers is None:
        layers = list(per_layer)
    names = select_layers(model, layers, "factorize", accept=_accept(scheme) if layers is None else None)
    if not names:
        raise CompressionParameterError("factorize(): no Dense, (non-grouped, k x k) Conv2D or ConvTranspose2D "
                                        "layer selected")
    _check_named(model, names, scheme)
    check_keys(per_layer, names, "rank" if isinstance(rank, dict) else "speedup")

    def conv_scheme(layer):
        kh, kw = layer.kernel_size
        return "jaderberg" if scheme in ("auto", "jaderberg") and kh > 1 and kw > 1 else "channel"

    plans = [_Plan(model, n, "svd" if isinstance(model[n].layer, (Dense, ConvTranspose2D)) else conv_scheme(model[n].layer))
             for n in names]
    if x is not None:
        for p in plans:
            if p.scheme != "jaderberg" and p.w.shape[1] > MAX_DATA_INPUTS:
                raise CompressionParameterError(
                    f"factorize(): layer {p.name!r} has {p.w.shape[1]} inputs; data reconstruction is "
                    f"limited to {MAX_DATA_INPUTS}. Factorize it without calibration (layers=)")
    data, rows = {}, {}
    if x is not None:
        ref_in = inputs_of(model, x, names)
        for p in plans:
            if isinstance(p.layer, ConvTranspose2D):        # filter reconstruction (module notes)
                continue
            rows[p.name] = sample_rows(n_rows_of(p.layer, ref_in[p.name]), seed, MAX_ROWS)
            patches = _rows(p.layer, ref_in[p.name], rows[p.name])
            data[p.name] = (patches, p.layer.weight.apply(patches))
        del ref_in
    if scheme == "auto" and (speedup is not None or max_drop is not None):
        for i, p in enumerate(plans):
            if p.scheme == "jaderberg":
                alt = _Plan(model, p.name, "channel")
                target = 2.0 if speedup is None else speedup[p.name] if isinstance(speedup, dict) else speedup
                errs = []
                for q in (p, alt):
                    q.spectrum = lc.plan_spectrum(q, data.get(q.name))
                    errs.append(rel_tail(q.spectrum)[rank_for_speedup(q, target)])
                plans[i] = p if errs[0] <= errs[1] else alt
    for p in plans:
        if p.spectrum is None and (energy is not None or max_drop is not None
                                   or (speedup is not None and not isinstance(speedup, dict))):
            p.spectrum = lc.plan_spectrum(p, data.get(p.name))

    if max_drop is not None:
        return _within_budget(model, plans, x, x_score, data, rows, float(max_drop), iterations, seed)
    return _build(model, plans, ranks(plans, rank, energy, speedup, allocation), x, data, rows, iterations, seed)
