"""The planner's layer screen for large models (nncomp/planner/screen.py): a layer alone computes what
it computes inside the model, in every format; when whole-pass timing would take too long, only the
candidates whose layer alone saves enough are timed in the whole pass, and the rest never reach the
build. Real MNIST digits, shipped models; injected timers (no clock in the assertions)."""
import re

import numpy as np
import pytest

import nncomp as nc
from nncomp.planner import Planner, candidates, latency, screen
from nncomp.planner.modes import layer_call


@pytest.fixture(autouse=True)
def quick(monkeypatch, tmp_path):
    monkeypatch.setenv(latency.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(latency, "TARGET_S", 0.01)
    monkeypatch.setattr(latency, "MIN_CALLS", 4)
    monkeypatch.setattr(candidates, "GRID", {**candidates.GRID, "prune": (0.9,), "factorize": (4.0,)})


@pytest.fixture(scope="module")
def lenet300():
    model = nc.load(nc.data.model_path("lenet300"))
    x, y = nc.data.mnist("train", layout="NC")
    return model, x[:800], y[:800]


@pytest.mark.parametrize("name, methods", [("lenet5", ["prune", "quantize", "factorize"]),
                                           ("resnet_small", ["factorize", "quantize"])])
def test_a_layer_alone_computes_what_it_computes_in_the_model(name, methods):
    model = nc.load(nc.data.model_path(name))
    x = nc.data.for_model(model, "train")[0][:3]
    names = candidates.weighted_layers(model)[:3]
    values = model.activations(x, names + [model[n].inputs[0] for n in names])
    for n in names:
        src = values[model[n].inputs[0]]
        for c in candidates.candidates_for(n, methods):
            patch = (model[n],) if c.method == "dense" else candidates.build_proxy(model, c, x, 0, {}, 3)
            if patch is None:
                continue
            whole = candidates.compose(model, {n: patch}).activations(x, [n])[n]
            for mode in ("serial", "parts", "parallel"):
                got = layer_call(screen.one_layer(patch, src.shape[1:]), mode, 3)(src)
                np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-5, err_msg=f"{n} {c.label} {mode}")


class AloneTimer:
    """Layers timed alone (calls named ``layer/index``): only ``fast``'s candidates save time there.
    Whole passes: every candidate 0.5 ms against dense 1.0, the chosen model 0.6."""

    def __init__(self, fast):
        self.fast, self.whole = fast, []

    def measure(self, calls, x, effort=1):
        if any("/" in k for k in calls):
            return {k: 0.2 if k.split("/")[0] == self.fast else 1.0 for k in calls}
        self.whole += [k for k in calls if k not in ("dense", "chosen") and not k.startswith("-")]
        return {k: 1.0 if k == "dense" else 0.6 if k == "chosen" else 0.7 if k.startswith("-") else 0.5
                for k in calls}


def test_large_models_time_in_the_whole_pass_only_what_their_layer_alone_saves(lenet300, monkeypatch):
    model, x, y = lenet300
    monkeypatch.setattr(screen, "LAYER_SCREEN_S", 0.0)      # as if a pass took seconds
    timer = AloneTimer("fc2")
    out = Planner(timer=timer, cache=False).run(model, x, labels=y, budget=100.0, methods=["quantize", "prune"])
    plan = out.plan
    fc2 = [r for r in plan.table if r[0] == "fc2" and r[1] != "dense"]
    assert 0 < len(set(timer.whole)) <= len(fc2)          # fc2's candidates (briefly, in full, confirmed)
    assert [c.layer for c in plan.layers if c.candidate != "dense"] == ["fc2"]
    assert "timed by their layer alone first" in str(plan)
    assert all(r[4] is None for r in plan.table if r[0] != "fc2" and r[1] != "dense")    # never built
    timer.whole.clear()                                   # small models: every candidate in the whole pass
    monkeypatch.setattr(screen, "LAYER_SCREEN_S", 1e9)
    plan = Planner(timer=timer, cache=False).run(model, x, labels=y, budget=100.0, methods=["quantize", "prune"]).plan
    assert len(timer.whole) >= len([r for r in plan.table if r[1] != "dense" and r[2] is not None])
    assert "alone" not in str(plan)


def test_layer_screen_entries_are_cached_and_reused(lenet300, monkeypatch, tmp_path):
    model, x, y = lenet300
    monkeypatch.setattr(screen, "LAYER_SCREEN_S", 0.0)
    first = AloneTimer("fc1")
    Planner(timer=first, cache=latency.LatencyCache(tmp_path)).run(model, x, labels=y, budget=100.0,
                                                                    methods=["quantize"])
    again = AloneTimer("fc1")
    calls = []
    layer_deltas = screen.layer_deltas
    monkeypatch.setattr(screen, "layer_deltas", lambda *a, **k: calls.append(1) or layer_deltas(*a, **k))
    Planner(timer=again, cache=latency.LatencyCache(tmp_path)).run(model, x, labels=y, budget=100.0,
                                                                    methods=["quantize"])
    assert not calls        # every entry came from the cache: nothing timed alone again


class ManySlowTimer:
    """Every candidate saves time in the table, but in the final measurement setting fc1 or fc2
    back to dense makes the chosen model faster (fc1 most); once both are dense it beats dense."""

    def __init__(self):
        self.rounds = 0

    def measure(self, calls, x, effort=1):
        if "-fc1" in calls:
            self.rounds += 1
            return {k: {"dense": 1.0, "chosen": 1.5, "-fc1": 0.7, "-fc2": 0.72}.get(k, 1.5) for k in calls}
        if "chosen" in calls:
            self.rounds += 1
            return {k: 1.0 if k == "dense" else 0.6 for k in calls}
        return {k: 1.0 if k == "dense" else 0.5 for k in calls}


def test_final_measurement_sets_back_every_layer_that_measured_slower_in_one_round(lenet300):
    model, x, y = lenet300
    timer = ManySlowTimer()
    plan = Planner(timer=timer, cache=False).run(model, x, labels=y, budget=100.0, methods=["quantize"]).plan
    assert [c.layer for c in plan.layers if c.candidate != "dense"] == ["fc3"]
    assert sorted(plan.reverted) == ["fc1", "fc2"] and timer.rounds == 2
    assert "fc1, fc2 set back to dense" in str(plan)


def test_the_layer_screen_runs_with_the_real_timer(monkeypatch):
    """Not injected: the layers alone are timed by the planner's own Timer, in the dense model's mode."""
    model = nc.load(nc.data.model_path("lenet5"))
    x, y = nc.data.for_model(model, "train")
    monkeypatch.setattr(screen, "LAYER_SCREEN_S", 0.0)
    out = Planner(cache=False).run(model, x[:400], labels=y[:400], budget=0.5, methods=["quantize", "factorize"])
    note = next(n for n in out.plan.notes if "timed by their layer alone first" in n)
    screened = int(re.search(r"the (\d+) candidates of single layers", note).group(1))
    # every screened candidate is a row of the first pass; the table also holds a second pass's rows
    # when one ran ("(2nd pass)": a CI run on AVX2, where int8 candidates now win, read 16 screened
    # against 34 rows) and candidates left out of the timing, so the count is a bound
    first = [r for r in out.plan.table if r[1] != "dense" and not r[0].endswith("(2nd pass)")]
    assert 1 <= screened <= len(first)
    assert out.plan.measured_ms <= out.plan.dense_ms


def test_named_metrics():
    from nncomp.planner import metrics
    a = np.array([[[0.9, 0.1], [0.5, 0.2]]])
    b = np.array([[[0.8, 0.4], [0.1, 0.2]]])
    assert metrics.map_iou(0.3)(a, b) == pytest.approx(1 / 3)      # {0,0} and {0,1},{1,0}: 1 of 3 pixels
    assert metrics.map_iou(0.95)(a, b) == 1.0                     # both empty
    assert metrics.named("map-iou:0.95")(a, b) == 1.0 and metrics.named("map-iou").__name__ == "map_iou@0.3"
    assert metrics.named("top1") is None
    x = np.random.default_rng(0).standard_normal((5, 7))
    assert metrics.cosine(x, 3 * x) == pytest.approx(1.0) and metrics.cosine(x, -x) == pytest.approx(-1.0)
    assert metrics.cosine(np.zeros((2, 3)), np.zeros((2, 3))) == 1.0
    for bad in ("nope", "map-iou:x", "map-iou:nan"):
        with pytest.raises(nc.CompressionParameterError):
            metrics.named(bad)
    with pytest.raises(nc.CompressionParameterError):
        metrics.cosine(x, x[:, :3])
    for bad in ("0.3", float("nan"), None):
        with pytest.raises(nc.CompressionParameterError):
            metrics.map_iou(bad)


def test_ctc_metric_compares_greedy_decodings():
    """Greedy CTC: per step the largest class, repeats merged, blanks dropped; a blank between two
    equal classes keeps both. Labels are class sequences padded with -1."""
    from nncomp.planner import metrics

    def steps(*classes, n=5):
        out = np.zeros((len(classes), n))
        out[np.arange(len(classes)), classes] = 1.0
        return out
    a = np.stack([steps(1, 1, 0, 1, 2), steps(0, 3, 3, 3, 0), steps(0, 0, 0, 0, 0)])   # (1 1 2), (3), ()
    b = np.stack([steps(1, 0, 1, 2, 2), steps(3, 0, 0, 0, 0), steps(0, 4, 0, 0, 0)])   # (1 1 2), (3), (4)
    c = metrics.named("ctc")
    assert c(a, a) == 1.0 and c(a, b) == pytest.approx(2 / 3) and c.__name__ == "ctc@0"
    assert c(a, np.array([[1, 1, 2], [3, -1, -1], [-1, -1, -1]])) == 1.0
    assert c(a, np.array([[1, 2, -1], [3, -1, -1], [-1, -1, -1]])) == pytest.approx(2 / 3)   # repeats are not merged in labels
    assert metrics.named("ctc:4")(a, b) == pytest.approx(1 / 3)      # 4 the blank, 0 a class: the first lines agree
    for bad in ("ctc:x", "ctc:-1"):
        with pytest.raises(nc.CompressionParameterError, match="blank"):
            metrics.named(bad)
    with pytest.raises(nc.CompressionParameterError, match="steps, classes"):
        c(a[:, :, 0], a)
    with pytest.raises(nc.CompressionParameterError, match="one reference per sample"):
        c(a, a[:2])
