"""The planner's filter-pruning candidates: channel-group patches, the search keeping a pruned group
and the layers it reshapes apart, the held-out check ruling options out, and joint builds of several
groups (real MNIST digits, shipped CNNs; injected timings, no clock)."""
import dataclasses
import itertools

import numpy as np
import pytest

import nncomp as nc
from nncomp.errors import CompressionParameterError
from nncomp.matrices.int8 import Int8Matrix
from nncomp.planner import Planner, candidates, latency, search
from nncomp.planner.optimize import split

from test_optimize import TableTimer, heldout_drop


@pytest.fixture(autouse=True)
def quick(monkeypatch, tmp_path):
    monkeypatch.setenv(latency.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(latency, "TARGET_S", 0.01)
    monkeypatch.setattr(latency, "MIN_CALLS", 4)


@pytest.fixture(scope="module")
def resnet():
    model = nc.load(nc.data.model_path("resnet_small"))
    x, y = nc.data.mnist("train")
    return model, x[:400], y[:400]


def test_group_patches_are_prune_filters_on_one_group(resnet):
    """Each group candidate's patch, composed into the model, is ``prune_filters`` on that group with
    the same refit (bit for bit); it holds exactly the nodes whose layers changed, and the weighted
    ones among them are kept apart from their own candidates."""
    model, x, _ = resnet
    groups = candidates.group_candidates(model, candidates.METHODS)
    assert set(groups) == {candidates.GROUP + n for n in ("layer1.conv1", "layer1.conv2", "layer2.conv1",
                                                         "layer2.conv2", "layer3.conv1", "layer3.conv2")}
    assert candidates.group_candidates(model, ["prune"]) == {}
    table = {n: [(None, None, 0.0)] for n in candidates.weighted_layers(model)}
    fit = x[:64]
    for key, cands in groups.items():
        assert [c.label for c in cands] == ["dense", "filters25", "filters50"]
        for c in cands[1:]:
            patch = candidates.build_patch(model, c, fit)
            direct = nc.prune_filters(model, {c.settings["layer"]: c.settings["ratio"]}, calibration=fit)
            old = {n.name: n.layer for n in model.nodes}
            assert {p.name for p in patch} == {n.name for n in direct.nodes if not _same(old[n.name], n.layer)}
            np.testing.assert_array_equal(candidates.compose(model, {key: patch})(x[:16]), direct(x[:16]))
        table[key] = [(cands[0], None, 0.0)] + [(c, candidates.build_patch(model, c, None), None) for c in cands[1:]]
    pairs = set(candidates.exclusive(model, table))
    assert (candidates.GROUP + "layer2.conv1", "layer2.conv2") in pairs          # its consumer
    assert (candidates.GROUP + "layer3.conv2", "fc") in pairs                    # through the Add and the pool
    assert (candidates.GROUP + "layer2.conv2", "layer2.downsample.0") in pairs   # tied by the Add
    assert not any(a.startswith(candidates.GROUP) and b.startswith(candidates.GROUP) for a, b in pairs)
    assert (candidates.GROUP + "layer2.conv1", "layer3.conv1") not in pairs


def _same(a, b):
    """Whether two layers are equal field by field (weights by value): an unchanged node."""
    if type(a) is not type(b):
        return False
    for f in dataclasses.fields(a):
        u, v = getattr(a, f.name), getattr(b, f.name)
        if hasattr(u, "to_dense"):
            u, v = u.to_dense(), v.to_dense()
        if isinstance(u, np.ndarray) or isinstance(v, np.ndarray):
            if not (isinstance(u, np.ndarray) and isinstance(v, np.ndarray) and u.shape == v.shape
                    and np.array_equal(u, v)):
                return False
        elif u != v:
            return False
    return True


def test_compose_refuses_two_patches_on_one_node(resnet):
    model, _, _ = resnet
    groups = candidates.group_candidates(model, candidates.METHODS)
    a = candidates.build_patch(model, groups[candidates.GROUP + "layer2.conv1"][1], None)
    b = candidates.build_patch(model, candidates.Candidate("layer2.conv2", "codebook5", "share", {"bits": 5}), None)
    with pytest.raises(CompressionParameterError, match="layer2.conv2"):
        candidates.compose(model, {candidates.GROUP + "layer2.conv1": a, "layer2.conv2": b})


def brute(options, budget, exclusive):
    best = None
    layers = list(options)
    for combo in itertools.product(*(range(len(options[l])) for l in layers)):
        ch = dict(zip(layers, combo))
        if any(ch[a] and ch[b] for a, b in exclusive):
            continue
        cost, drop = search.total(options, ch)
        if drop <= budget + 1e-12 and (best is None or cost < best[0] - 1e-12):
            best = (cost, ch)
    return best


def test_exact_and_greedy_keep_exclusive_pairs_apart():
    rng = np.random.default_rng(1)
    for _ in range(40):
        options = {f"l{i}": [(0.0, 0.0)] + [(float(-rng.uniform(0, 5)), float(rng.uniform(0, 0.6)))
                                           for _ in range(rng.integers(1, 3))] for i in range(4)}
        pairs = [p for p in itertools.combinations(options, 2) if rng.uniform() < 0.4]
        budget = float(rng.uniform(0, 2))
        exact, greedy = search.exact(options, budget, pairs), search.greedy(options, budget, pairs)
        for ch in (exact, greedy):
            assert not any(ch[a] and ch[b] for a, b in pairs)
            assert search.total(options, ch)[1] <= budget + 1e-9
        assert search.total(options, exact)[0] == pytest.approx(brute(options, budget, pairs)[0])
        assert search.total(options, greedy)[0] >= search.total(options, exact)[0] - 1e-9


def test_settle_rules_out_a_refused_option_and_searches_again():
    """The check refuses layer a's strongest option: settle takes its milder one (and b), where the
    repair loop alone would have set a back to dense."""
    options = {"a": [(0, 0), (-5.0, 0.2), (-3.0, 0.2)], "b": [(0, 0), (-2.0, 0.2)], "c": [(0, 0), (-4.5, 0.45)]}
    pairs = [("a", "c")]
    ruled, calls = set(), []

    def holds(ch):
        calls.append(dict(ch))
        return ch["a"] != 1

    choice, used, notes, reverted = search.settle(options, 0.5, pairs, holds, lambda ch: ["a", "b"], ruled)
    assert choice == {"a": 2, "b": 1, "c": 0} and ruled == {("a", 1)} and reverted == []
    assert calls == [{"a": 1, "b": 1, "c": 0}, {"a": 2, "b": 1, "c": 0}]
    repaired, back = search.repair(calls[0], holds, lambda ch: ["a", "b"])
    assert repaired == {"a": 0, "b": 1, "c": 0} and back == ["a"]


def test_settle_falls_back_to_repair_after_its_rounds(monkeypatch):
    monkeypatch.setattr(search, "SETTLE_ROUNDS", 1)
    options = {"a": [(0, 0), (-5.0, 0.2), (-3.0, 0.2)], "b": [(0, 0), (-2.0, 0.2)]}
    choice, _, _, reverted = search.settle(options, 0.5, (), lambda ch: ch["a"] == 0, lambda ch: ["a", "b"], set())
    assert choice == {"a": 0, "b": 1} and reverted == ["a"]


def test_optimize_prunes_filters_jointly_within_budget():
    """With every candidate timed faster than dense (injected), the search takes filter pruning of
    several groups; the returned model is ``prune_filters`` of those groups in one call with the
    fitting part's refit, and the held-out budget holds."""
    model = nc.load(nc.data.model_path("vgg_small"))
    x, y = nc.data.mnist("train")
    x, y = x[:600], y[:600]
    out = Planner(timer=TableTimer(chosen_ms=0.6), cache=False).run(model, x, labels=y, budget=1.0,
                                                                     methods=["prune_filters"])
    picked = {c.settings["layer"]: c.settings["ratio"] for c in out.plan.layers if c.method == "prune_filters"}
    assert len(picked) >= 2 and all(c.layer.startswith(candidates.GROUP) for c in out.plan.layers
                                    if c.method == "prune_filters")
    assert all(c.candidate == "dense" for c in out.plan.layers if not c.layer.startswith(candidates.GROUP))
    fit = x[split(x.shape[0], 0)[0]]
    joint = nc.prune_filters(model, picked, calibration=fit, seed=0)
    np.testing.assert_array_equal(out(x[:32]), joint(x[:32]))
    assert heldout_drop(model, out, x, y) <= 1.0 + 1e-9
    assert out.plan.bytes < out.plan.dense_bytes
    text = str(out.plan)
    assert "filters:" in text and ("filters25" in text or "filters50" in text)


def brute_pairs(options, budget, pairs):
    best = None
    layers = list(options)
    for combo in itertools.product(*(range(len(options[l])) for l in layers)):
        ch = dict(zip(layers, combo))
        cost, drop = search.total(options, ch, pairs)
        if drop <= budget + 1e-12 and (best is None or cost < best[0] - 1e-12):
            best = (cost, ch)
    return best


def test_exact_search_counts_pair_interactions():
    """Pair costs (a chain's shared layer saved once, not twice) make the additive optimum wrong; the
    exact search with them is the brute-force optimum of the cost with them, greedy never better."""
    options = {"a": [(0, 0), (-3.0, 0.1)], "b": [(0, 0), (-3.0, 0.1)], "c": [(0, 0), (-2.0, 0.1)]}
    pairs = {(("a", 1), ("b", 1)): 2.5}
    assert search.exact(options, 0.2) in ({"a": 1, "b": 1, "c": 0},)
    assert search.exact(options, 0.2, pairs=pairs) in ({"a": 1, "b": 0, "c": 1}, {"a": 0, "b": 1, "c": 1})
    assert search.total(options, {"a": 1, "b": 1, "c": 0}, pairs) == (-3.5, pytest.approx(0.2))
    rng = np.random.default_rng(2)
    for _ in range(40):
        options = {f"l{i}": [(0.0, 0.0)] + [(float(-rng.uniform(0, 5)), float(rng.uniform(0, 0.6)))
                                           for _ in range(rng.integers(1, 3))] for i in range(4)}
        pairs = {((a, i), (b, j)): float(rng.uniform(-1, 3)) for a, b in itertools.combinations(options, 2)
                 for i in range(1, len(options[a])) for j in range(1, len(options[b])) if rng.uniform() < 0.5}
        budget = float(rng.uniform(0, 2))
        exact, greedy = search.exact(options, budget, pairs=pairs), search.greedy(options, budget, pairs=pairs)
        assert search.total(options, exact, pairs)[0] == pytest.approx(brute_pairs(options, budget, pairs)[0])
        assert search.total(options, greedy, pairs)[1] <= budget + 1e-9
        assert search.total(options, greedy, pairs)[0] >= search.total(options, exact, pairs)[0] - 1e-9


class JointTimer:
    """Injected timing by shapes: a model's time is the sum over its weighted layers of their weight
    counts (a layer with half its inputs and half its outputs costs a quarter), so the joint entry of
    two chained groups differs from the sum of theirs."""

    def __init__(self):
        self.timed = []

    def measure(self, models, x, effort=1):
        self.timed += list(models)
        return {k: 1e-4 * sum(int(np.prod(n.layer.weight.shape)) for n in _model(m).nodes
                              if getattr(n.layer, "weight", None) is not None) for k, m in models.items()}


def _model(fn):
    return fn if hasattr(fn, "nodes") else fn.__self__ if hasattr(fn, "__self__") else fn.model


def test_chained_groups_are_timed_together_and_the_prediction_holds(monkeypatch):
    """VGG-small's channel groups form a chain (each group's consumer produces the next group): their
    joint entries are timed, and with a timer whose cost is each layer's inputs x outputs (where the
    additive table alone is wrong) the prediction of a choice with chained groups is its measured time."""
    from nncomp.planner import interactions
    for where in ("table", "modes"):    # modes: where one sample's run mode is measured (AVX2 CPUs)
        monkeypatch.setattr(f"nncomp.planner.{where}.in_mode", lambda model, mode, batch, threads=None: model)
    measured = []
    real = interactions.measure

    def spy(*args, **kw):
        measured.append(real(*args, **kw))
        return measured[-1]
    monkeypatch.setattr(interactions, "measure", spy)
    model = nc.load(nc.data.model_path("vgg_small"))
    x, y = nc.data.mnist("train")
    out = Planner(timer=JointTimer(), cache=False).run(model, x[:600], labels=y[:600], budget=100.0,
                                                       methods=["prune_filters"])
    groups = candidates.group_candidates(model, ["prune_filters"])
    built = {k: [(c, candidates.build_patch(model, c, None), 0.0) for c in cs] for k, cs in groups.items()}
    pairs = interactions.overlapping(built, candidates.weighted_layers(model))
    g = candidates.GROUP
    assert (g + "features.3", g + "features.7") in pairs and (g + "features.0", g + "features.7") not in pairs
    timed = {(a, b) for (a, _), (b, _) in measured[0]}     # pairs of options worth choosing (2% faster)
    assert len(measured) == 1 and (g + "features.3", g + "features.7") in timed and timed <= set(pairs)
    picked = [c.layer for c in out.plan.layers if c.method == "prune_filters"]
    assert any((a in picked and b in picked) for a, b in pairs)
    assert out.plan.predicted_ms == pytest.approx(out.plan.measured_ms, rel=1e-6)


def test_savings_within_the_timing_noise_are_not_spent_on():
    """A saving less than SIGNIFICANCE standard errors below zero (as the timer reports them) costs
    nothing in the search; the measured delta itself is kept for the plan's table."""
    from nncomp.planner.latency import Timer
    from nncomp.planner.table import LatencyTable

    class Spread:
        def measure(self, calls, x, effort=1):
            self.spread = {"dense": 0.0, "noisy": 0.04, "clear": 0.01}
            return {k: {"dense": 1.0, "noisy": 0.95, "clear": 0.90}[k] for k in calls}

    model = nc.load(nc.data.model_path("lenet300"))
    x = nc.data.mnist("train", layout="NC")[0][:1]
    lat = LatencyTable(model, x, Spread(), None)
    lat.measure({"noisy": ("fc1", (model["fc1"],)), "clear": ("fc2", (model["fc2"],))}, screen=False)
    deltas = {"fc1": [0.0, lat.delta("noisy")], "fc2": [0.0, lat.delta("clear")]}
    assert deltas["fc1"][1] == pytest.approx(-0.05) and deltas["fc2"][1] == pytest.approx(-0.10)
    costs = lat.costs(deltas, {("fc1", 1): "noisy", ("fc2", 1): "clear"})
    assert costs == {"fc1": [0.0, 0.0], "fc2": [0.0, pytest.approx(-0.10)]}
    timer = Timer(target_s=0.001, min_calls=6)
    timer.measure({"a": lambda v: v + 1, "b": lambda v: v * 2}, x)
    assert timer.spread["a"] == 0.0 and timer.spread["b"] >= 0.0


class ContentTimer:
    """Injected timing from what a model holds: 1 ms, 0.3 less when fc1 lost filters, 0.1 less per
    int8 layer (so int8 pays on a filter-pruned layer too)."""

    def measure(self, models, x, effort=1):
        def ms(m):
            nodes = {n.name: n.layer for n in _model(m).nodes}
            int8 = sum(isinstance(getattr(layer, "weight", None), Int8Matrix) for layer in nodes.values())
            return 1.0 - 0.3 * (nodes["fc1"].weight.shape[0] < 300) - 0.1 * int8
        return {k: ms(m) for k, m in models.items()}


@pytest.mark.parametrize("labelled", [True, False])
def test_second_pass_quantizes_the_layers_filter_pruning_reshaped(labelled, monkeypatch):
    """The first pass keeps filter pruning and int8 on the layers it reshapes apart; the second pass
    (nncomp/planner/stacking.py) puts int8 on them within the rest of the budget, and the plan holds
    both passes' choices, its times from a last measurement against the original model."""
    monkeypatch.setattr("nncomp.planner.table.in_mode", lambda model, mode, batch, threads=None: model)
    model = nc.load(nc.data.model_path("lenet300"))
    x, y = nc.data.mnist("train", layout="NC")
    x, y = x[:800], y[:800]
    labels = y if labelled else None
    said = []
    out = Planner(timer=ContentTimer(), cache=False, progress=lambda step, m: said.append(m)).run(
        model, x, labels=labels, budget=2.0, methods=["prune_filters", "quantize"])
    assert sum(m.startswith("second pass") for m in said) == Planner.STEPS
    plan = out.plan
    chosen = {c.layer: c for c in plan.layers if c.candidate != "dense"}
    assert chosen["filters:fc1"].method == "prune_filters"
    assert {n for n, c in chosen.items() if c.method == "quantize"} == {"fc1", "fc2", "fc3"}
    fc1 = {n.name: n.layer for n in out.nodes}["fc1"]
    assert isinstance(fc1.weight, Int8Matrix) and fc1.weight.shape[0] < 300
    assert "then int8 on the result" in plan.search
    assert plan.dense_ms == pytest.approx(1.0) and plan.measured_ms == pytest.approx(0.4)
    assert plan.heldout_drop == pytest.approx(heldout_drop(model, out, x, labels))
    assert heldout_drop(model, out, x, labels) <= 2.0 + 1e-9
    assert plan.heldout_drop <= plan.heldout_bound <= 2.0 + 1e-9      # both passes, against the original
    assert any(r[0].endswith("(2nd pass)") for r in plan.table)


def test_second_pass_is_dropped_when_both_passes_together_may_break_the_budget(monkeypatch):
    """The second pass verifies its int8 against the first pass's model; its result is then checked
    against the original with the whole budget (the two losses together): where that bound is over
    the budget, the first pass's model is returned."""
    from nncomp.planner.jobs import HeldOut

    class Doubtful(HeldOut):
        def drop(self, model):
            return super().drop(model)[0], 99.0
    monkeypatch.setattr("nncomp.planner.table.in_mode", lambda model, mode, batch, threads=None: model)
    monkeypatch.setattr("nncomp.planner.stacking.HeldOut", Doubtful)
    model = nc.load(nc.data.model_path("lenet300"))
    x, y = nc.data.mnist("train", layout="NC")
    said = []
    out = Planner(timer=ContentTimer(), cache=False, progress=lambda step, m: said.append(m)).run(
        model, x[:800], labels=y[:800], budget=2.0, methods=["prune_filters", "quantize"])
    assert sum(m.startswith("second pass") for m in said) == Planner.STEPS     # it ran, and was dropped
    assert "then int8" not in out.plan.search
    assert any(c.method == "prune_filters" for c in out.plan.layers)
    assert not any(r[0].endswith("(2nd pass)") for r in out.plan.table)


def test_no_second_pass_without_a_structural_choice_or_the_quantize_method(monkeypatch):
    monkeypatch.setattr("nncomp.planner.table.in_mode", lambda model, mode, batch, threads=None: model)
    model = nc.load(nc.data.model_path("lenet300"))
    x, y = nc.data.mnist("train", layout="NC")
    out = Planner(timer=ContentTimer(), cache=False).run(model, x[:800], labels=y[:800], budget=2.0,
                                                        methods=["quantize"])
    assert "then int8" not in out.plan.search
    out = Planner(timer=ContentTimer(), cache=False).run(model, x[:800], labels=y[:800], budget=2.0,
                                                        methods=["prune_filters"])
    assert "then int8" not in out.plan.search
    assert any(c.method == "prune_filters" for c in out.plan.layers)
