"""The latency screen: which candidates are worth building with their refits.

Latency depends on a candidate's formats and shapes, not on its weights' values, so every candidate
is first built as a *proxy* (its formats without the calibration refit, :func:`timed`) and timed in
the dense model's mode (:mod:`.table`); only those at least MIN_GAIN faster than dense are built in
full and scored.

Large models: timing every candidate inside the whole pass costs (candidates) x (warm-up and a few
rounds) x (the pass): the PP-OCRv4 detector at 640 x 640 (about 45 ms a pass, 844 candidates of 48
layers) spent 705 s there, more than the whole planning budget. When that estimate exceeds
LAYER_SCREEN_S, each weighted layer is first timed alone (:func:`alone`): its input taken from one
pass of the dense model, the dense layer and each candidate's patch (one node, two for a factorized
layer) run as one-layer models in the dense model's mode, all alternating
(:class:`~nncomp.planner.latency.Timer`). A candidate whose layer alone does not save LAYER_SHARE of
the saving the planner asks of a whole-model entry (MIN_GAIN of the dense pass) is not timed in the
whole pass; the others are, as for a small model. Fusion only makes the dense layer cheaper in the
whole pass (its bias, activation and neighbours in one kernel), so the screen errs on the side of
timing a candidate, never of dropping one that would have saved time there. (The detector: 17 s
for the 816 candidates of single layers alone, 14 of them then timed in the whole pass.)
"""
import time
from collections import Counter

from ..model import INPUT, Model, Node
from .candidates import build_proxy
from .modes import layer_call
from .table import MIN_GAIN, PROXY_SAMPLES

__all__ = ["LAYER_SCREEN_S", "LAYER_SHARE", "LAYER_EFFORT", "timed", "alone", "whole_cost_s", "one_layer",
           "layer_deltas"]

LAYER_SCREEN_S = 60.0   # estimated seconds of whole-pass timing above which layers are screened alone
LAYER_SHARE = 0.5       # share of the whole-pass saving a candidate's layer must show alone
LAYER_EFFORT = 0.25     # share of the timer's calls for the layer screen
CALLS_EACH = 6          # whole passes per candidate in the whole-model screen (warm-up and brief rounds)


def timed(model, cands, x_fit, seed, lat, notes):
    """``(proxies, wanted)``: the proxies ``{(layer, index): patch or None}`` of ``cands`` (``{layer:
    [dense, candidates...]}``) timed in the dense model's mode (:class:`~nncomp.planner.table.LatencyTable`
    ``lat``; large models screened by their layers alone first, :func:`alone`), and the set of the
    candidates that measured at least MIN_GAIN faster than dense. Candidates that would change the
    model's mode are left out (a note in ``notes``); they stay in the plan's table, never timed."""
    proxies = {}
    for n, cs in cands.items():
        memo = {}
        for j, c in enumerate(cs[1:], 1):
            proxies[n, j] = build_proxy(model, c, x_fit, seed, memo, PROXY_SAMPLES)
    live = {k: p for k, p in proxies.items() if p is not None}
    same = {k: p for k, p in live.items() if lat.eligible(k[0], p)}
    if len(same) < len(live):
        out = Counter(cands[n][j].label for n, j in live if (n, j) not in same)
        notes.append(f"{len(live) - len(same)} candidates would change how the model runs a batch of "
                     f"{lat.batch} (the dense model's mode: {lat.mode}); left out: "
                     + ", ".join(f"{label} ({k} layers)" for label, k in out.items()))
    keys = {k: lat.key(k[0], cands[k[0]][k[1]].label, p) for k, p in same.items()}
    lat.measure({keys[k]: (k[0], p) for k, p in alone(model, same, keys, lat, notes).items()})
    wanted = {cands[n][j] for (n, j), key in keys.items() if lat.delta(key) <= -MIN_GAIN * lat.dense_reference()}
    return live, wanted


def whole_cost_s(n_candidates, dense_ms):
    """Estimated seconds of timing ``n_candidates`` candidates in whole passes of ``dense_ms``."""
    return n_candidates * CALLS_EACH * dense_ms / 1e3


def one_layer(patch, shape):
    """A model of ``patch``'s nodes reading an input of internal per-sample ``shape`` where the patch
    reads the node before it; its output is the patch's last node."""
    names = {p.name for p in patch}
    nodes = [Node(p.name, p.layer, tuple(s if s in names else INPUT for s in p.inputs)) for p in patch]
    layout = {3: "NHWC", 1: "NC"}.get(len(shape), "N*")
    return Model(nodes, input_shape=shape, input_layout=layout, outputs=(patch[-1].name,), name=patch[-1].name)


def layer_deltas(model, patches, xb, timer, mode, effort=LAYER_EFFORT):
    """``{(layer, index): (ms, standard error ms)}``: each patch's difference from the dense layer
    alone at the batch ``xb``, in ``mode`` (:func:`~nncomp.planner.modes.layer_call`); ``timer``
    measures each layer's calls named ``"dense"`` and ``"<layer>/<index>"``.

    ``patches`` is ``{(layer, index): patch}`` for weighted layers of ``model`` (single-input nodes)."""
    layers = sorted({n for n, _ in patches}, key=[m.name for m in model.nodes].index)
    sources = {n: model[n].inputs[0] for n in layers}
    values = model.activations(xb, sorted(set(sources.values())))
    batch, out = xb.shape[0], {}
    for n in layers:
        x = values[sources[n]]
        mine = {f"{n}/{k[1]}": (k, p) for k, p in patches.items() if k[0] == n}
        calls = {"dense": layer_call(one_layer((model[n],), x.shape[1:]), mode, batch)}
        calls.update({name: layer_call(one_layer(p, x.shape[1:]), mode, batch) for name, (_, p) in mine.items()})
        ms = timer.measure(calls, x, effort=effort)
        spread = getattr(timer, "spread", None) or {}
        out.update({k: (ms[name] - ms["dense"], spread.get(name, 0.0)) for name, (k, _) in mine.items()})
    return out


def alone(model, same, keys, lat, notes):
    """The candidates of ``same`` (``{(layer, index): patch}``, table keys ``keys``) to time in whole
    passes (:class:`~nncomp.planner.table.LatencyTable` ``lat``): all of them unless that would take
    over LAYER_SCREEN_S; then a weighted layer's candidates are first timed alone and only those
    saving LAYER_SHARE x MIN_GAIN of the dense pass there go on (the others' entries are their
    layer's difference, :meth:`~nncomp.planner.table.LatencyTable.estimate`); a channel group's
    candidates (several layers) always go on. A note in ``notes`` says what the screen did."""
    known = lat.lookup([keys[k] for k in same])
    todo = {k: p for k, p in same.items() if keys[k] not in known}
    dense_ms = lat.dense_reference()
    cost = whole_cost_s(len(todo), dense_ms)
    if cost <= LAYER_SCREEN_S:
        return same
    start, nodes = time.perf_counter(), {n.name for n in model.nodes}
    found = layer_deltas(model, {k: p for k, p in todo.items() if k[0] in nodes}, lat.xb, lat.timer, lat.timing)
    need = LAYER_SHARE * MIN_GAIN * dense_ms
    out = {k for k, (ms, _) in found.items() if ms > -need}
    for k in out:
        lat.estimate(keys[k], *found[k])
    notes.append(f"timing every candidate in the whole pass ({dense_ms:.1f} ms) was estimated at {cost:.0f} s: "
                 f"the {len(found)} candidates of single layers were timed by their layer alone first "
                 f"({time.perf_counter() - start:.0f} s); {len(found) - len(out)} saved {need:.3f} ms or more "
                 "there and were timed in the whole pass")
    return {k: p for k, p in same.items() if k not in out}
