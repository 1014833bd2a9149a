"""nc.optimize, the planner: budget on held-out data, never slower than dense, exact and greedy search,
the plan saved with the model, the latency cache, argument errors. Real MNIST digits, shipped models;
few candidates and short timings (module constants patched) so the file runs in about a minute."""
import itertools

import numpy as np
import pytest

import nncomp as nc
from nncomp.planner import Planner, allocation, candidates, latency, search
from nncomp.planner.jobs import HeldOut
from nncomp.planner.optimize import split
from nncomp.planner.table import LatencyTable

N_CALIB = 800


@pytest.fixture(autouse=True)
def quick(monkeypatch, tmp_path):
    """Short timings and a cache in the test's own folder."""
    monkeypatch.setenv(latency.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(latency, "TARGET_S", 0.01)
    monkeypatch.setattr(latency, "MIN_CALLS", 4)
    monkeypatch.setattr(candidates, "GRID", {**candidates.GRID, "prune": (0.9,), "prune_int8": (0.9,),
                                             "share": (5,), "prune_share": ((0.9, 5),), "factorize": (4.0,)})
    monkeypatch.setattr(allocation, "SPARSITIES", (0.9,))     # objective "size": one global allocation
    monkeypatch.setattr(allocation, "BITS", (4,))


@pytest.fixture(scope="module")
def lenet300():
    model = nc.load(nc.data.model_path("lenet300"))
    x, y = nc.data.mnist("train", layout="NC")
    return model, x[:N_CALIB], y[:N_CALIB]


class TableTimer:
    """Injected timing: candidates and the final check read fixed numbers, no clock (the chosen model
    with one layer set back to dense, ``-name``, is a bit slower than the chosen one)."""

    def __init__(self, candidate_ms=0.5, chosen_ms=2.0, dense_ms=1.0):
        self.candidate_ms, self.chosen_ms, self.dense_ms = candidate_ms, chosen_ms, dense_ms
        self.calls = 0

    def measure(self, models, x, effort=1):
        self.calls += len(models)
        return {k: self.dense_ms if k == "dense" else self.chosen_ms if k == "chosen" else
                self.chosen_ms + 0.1 if k.startswith("-") else self.candidate_ms for k in models}


def heldout_drop(original, result, x, y, seed=0):
    """Points lost on the held-out quarter, recomputed here from the split rule."""
    held = split(x.shape[0], seed)[2]
    ref = y[held] if y is not None else original(x[held]).argmax(axis=1)
    return 100 * (np.mean(original(x[held]).argmax(1) == ref) - np.mean(result(x[held]).argmax(1) == ref))


def test_budget_holds_on_heldout_part_lenet300(lenet300):
    model, x, y = lenet300
    out = nc.optimize(model, x, labels=y, budget=0.5, batch=1, methods=["prune", "quantize", "factorize"])
    plan = out.plan
    assert heldout_drop(model, out, x, y) <= 0.5 + 1e-9
    assert plan.heldout_drop == pytest.approx(heldout_drop(model, out, x, y))
    assert plan.heldout_drop <= plan.heldout_bound <= 0.5 + 1e-9 and plan.confidence == 0.8
    assert plan.metric == "accuracy" and plan.batch == 1
    # one choice per layer of the original; the second pass (nncomp/planner/stacking.py) may add int8
    # to the two factors of a layer the first pass factorized ("fc1/v" and "fc1"), as timings decide
    names = [c.layer for c in plan.layers]
    assert names[:3] == ["fc1", "fc2", "fc3"]
    lowrank = {c.layer for c in plan.layers[:3] if c.candidate.startswith("lowrank")}
    assert all(n in lowrank or (n.endswith("/v") and n[:-2] in lowrank) for n in names[3:]), plan.layers
    assert plan.measured_ms <= plan.dense_ms        # the planner's own final measurement decided
    assert out is not model and model.plan is None
    assert {r[1] for r in plan.table} >= {"dense", "csr90", "int8-static", "lowrank/4"}


def test_budget_as_agreement_without_labels_lenet5():
    model = nc.load(nc.data.model_path("lenet5"))
    x = nc.data.mnist("train")[0][:400]
    out = nc.optimize(model, x, budget=1.0, batch=4, methods=["quantize"])
    assert out.plan.metric == "agreement" and out.plan.baseline_score == 1.0
    assert heldout_drop(model, out, x, None) <= 1.0 + 1e-9


def test_never_slower_than_dense_the_final_measurement_decides(lenet300):
    model, x, y = lenet300
    # every candidate looks 2x faster alone, but the chosen model measures slower than dense
    slow = Planner(timer=TableTimer(candidate_ms=0.5, chosen_ms=1.5), cache=False)
    out = slow.run(model, x, labels=y, budget=100.0, methods=["quantize"])
    assert all(c.candidate == "dense" for c in out.plan.layers)
    assert sorted(out.plan.reverted) == ["fc1", "fc2", "fc3"] and "returning the dense model" in str(out.plan)
    assert out.plan.measured_ms == out.plan.dense_ms
    np.testing.assert_array_equal(out(x[:5]), model(x[:5]))
    # the same table with a faster final measurement keeps the choice
    fast = Planner(timer=TableTimer(candidate_ms=0.5, chosen_ms=0.6), cache=False)
    out = fast.run(model, x, labels=y, budget=100.0, methods=["quantize"])
    assert all(c.candidate != "dense" for c in out.plan.layers)
    assert out.plan.predicted_ms == pytest.approx(1.0 - 3 * 0.5)    # dense + the three deltas


class LuckyTableTimer(TableTimer):
    """Candidates look faster in the table only: measured again (effort > 1) they gain nothing."""

    def measure(self, models, x, effort=1):
        out = super().measure(models, x, effort)
        return {k: (self.dense_ms if effort > 1 and k != "chosen" else v) for k, v in out.items()}


def test_chosen_entries_are_measured_again_before_the_final_choice(lenet300):
    model, x, y = lenet300
    planner = Planner(timer=LuckyTableTimer(candidate_ms=0.5, chosen_ms=0.6), cache=False)
    out = planner.run(model, x, labels=y, budget=100.0, methods=["quantize"])
    assert planner.reconfirmed >= 3          # the luckiest entries, then the next ones, ...
    assert all(c.candidate == "dense" for c in out.plan.layers) and not out.plan.reverted
    assert "measured again" in str(out.plan)


class InteractionTimer(TableTimer):
    """The chosen three-layer model measures slower than dense, but without fc2 it is fastest."""

    fixed = False

    def measure(self, models, x, effort=1):
        out = super().measure(models, x, effort)
        if "-fc2" in models:
            self.fixed = True
            return {k: 0.4 if k == "-fc2" else 1.5 if k.startswith("-") else v for k, v in out.items()}
        return {k: 0.4 if k == "chosen" and self.fixed else v for k, v in out.items()}


def test_final_measurement_sets_back_the_layer_that_makes_the_whole_slower(lenet300):
    model, x, y = lenet300
    out = Planner(timer=InteractionTimer(candidate_ms=0.5, chosen_ms=1.5), cache=False).run(
        model, x, labels=y, budget=100.0, methods=["quantize"])
    assert [c.candidate == "dense" for c in out.plan.layers] == [False, True, False]
    assert out.plan.reverted == ("fc2",) and "fc2 set back to dense" in str(out.plan)


class SetBackTimer(TableTimer):
    """The chosen three layers measure ``chosen_ms``, faster than dense; without fc2, 0.4 ms (the
    fastest); without another, a bit slower than chosen (InteractionTimer: the three slower than dense)."""

    def measure(self, models, x, effort=1):
        out = super().measure(models, x, effort)
        return {k: 0.4 if k == "-fc2" else v for k, v in out.items()}


@pytest.mark.parametrize("chosen_ms", [0.6, 1.5])
def test_a_choice_the_final_measurement_changed_is_checked_again(lenet300, monkeypatch, chosen_ms):
    """Setting a layer back to dense changes what the other layers' refits were fit to, so the
    final measurement's choice is held out again; where it fails, the verified choice is returned
    if it measured faster than dense, else the dense model (PP-LCNet's plan had lost a point over
    its budget this way)."""
    model, x, y = lenet300
    real = HeldOut.holds

    def holds(self, m, budget):
        if m["fc2"].layer.weight.format == "dense" and m["fc1"].layer.weight.format != "dense":
            return False            # the choice without fc2 is over the budget
        return real(self, m, budget)
    monkeypatch.setattr(HeldOut, "holds", holds)
    timer = (SetBackTimer if chosen_ms < 1.0 else InteractionTimer)(candidate_ms=0.5, chosen_ms=chosen_ms)
    out = Planner(timer=timer, cache=False).run(model, x, labels=y, budget=100.0, methods=["quantize"])
    assert "fc2 set back to dense" in str(out.plan) and "failed the held-out check" in str(out.plan)
    if chosen_ms < 1.0:
        assert all(c.candidate != "dense" for c in out.plan.layers) and not out.plan.reverted
        assert out.plan.measured_ms == pytest.approx(chosen_ms)
    else:
        assert all(c.candidate == "dense" for c in out.plan.layers)
        np.testing.assert_array_equal(out(x[:5]), model(x[:5]))


def test_no_gain_means_dense(lenet300):
    model, x, y = lenet300
    out = Planner(timer=TableTimer(candidate_ms=1.0, chosen_ms=1.0), cache=False).run(
        model, x, labels=y, budget=100.0, methods=["quantize"])
    assert all(c.candidate == "dense" for c in out.plan.layers)


def brute(options, budget):
    layers = list(options)
    best = None
    for combo in itertools.product(*(range(len(options[l])) for l in layers)):
        ch = dict(zip(layers, combo))
        cost, drop = search.total(options, ch)
        if drop <= budget + 1e-12 and (best is None or cost < best[0] - 1e-12):
            best = (cost, ch)
    return best


def test_milp_and_greedy_agree_on_a_small_exact_case():
    options = {"fc1": [(0, 0), (-3.0, 0.2), (-5.0, 0.6)], "fc2": [(0, 0), (-2.0, 0.1), (-2.5, 0.5)],
               "fc3": [(0, 0), (0.5, 0.0)]}
    exact = search.exact(options, 0.7)
    assert exact == search.greedy(options, 0.7) == {"fc1": 2, "fc2": 1, "fc3": 0}
    assert search.total(options, exact)[0] == brute(options, 0.7)[0]


def test_milp_is_exact_and_greedy_never_better_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(30):
        options = {f"l{i}": [(0.0, 0.0)] + [(float(-rng.uniform(0, 5)), float(rng.uniform(0, 1)))
                                           for _ in range(rng.integers(1, 4))] for i in range(3)}
        budget = float(rng.uniform(0, 1.5))
        exact, greedy = search.exact(options, budget), search.greedy(options, budget)
        assert search.total(options, exact)[0] == pytest.approx(brute(options, budget)[0])
        assert search.total(options, greedy)[1] <= budget + 1e-9
        assert search.total(options, greedy)[0] >= search.total(options, exact)[0] - 1e-9


def test_repair_reverts_most_harmful_first():
    calls = []

    def holds(ch):
        calls.append(dict(ch))
        return ch["b"] == 0
    choice, reverted = search.repair({"a": 1, "b": 2, "c": 0}, holds, lambda ch: ["b", "a"])
    assert choice == {"a": 1, "b": 0, "c": 0} and reverted == ["b"]


def test_plan_round_trips_through_save_and_load(lenet300, tmp_path):
    model, x, y = lenet300
    out = Planner(timer=TableTimer(chosen_ms=0.6), cache=False).run(model, x, labels=y, budget=100.0,
                                                                     methods=["quantize"])
    path = tmp_path / "opt.h5"
    nc.save(out, path)
    back = nc.load(path)
    assert back.plan == out.plan
    text = str(back.plan)
    assert "fc1" in text and "int8" in text and "speedup" in text
    np.testing.assert_array_equal(back(x[:8]), out(x[:8]))
    nc.save(model, tmp_path / "plain.h5")
    assert nc.load(tmp_path / "plain.h5").plan is None


def test_latency_cache_is_reused(lenet300, tmp_path):
    model, x, y = lenet300
    first = Planner()
    a = first.run(model, x, labels=y, budget=0.5, methods=["quantize"])
    assert first.measured == 9 and (tmp_path / "cache" / latency.CACHE_FILE).exists()
    assert first.reconfirmed >= sum(c.candidate != "dense" for c in a.plan.layers)
    second = Planner()
    b = second.run(model, x, labels=y, budget=0.5, methods=["quantize"])
    assert second.measured == 0
    assert [r[2] for r in a.plan.table] == [r[2] for r in b.plan.table]


def test_size_objective_makes_the_file_smaller_within_budget(lenet300):
    model, x, y = lenet300
    # confidence 0.5, the measured drop: on 200 held-out digits the 0.8 bound of a single disagreement
    # is 0.9 points (the bound itself: test_heldout_bound_is_the_paired_upper_confidence_bound)
    out = Planner(timer=TableTimer(), cache=False).run(model, x, labels=y, budget=0.5, objective="size",
                                                       methods=["share", "prune_share"], confidence=0.5)
    plan = out.plan
    assert plan.bytes < plan.dense_bytes / 4 and plan.predicted_ms is None
    assert heldout_drop(model, out, x, y) <= 0.5 + 1e-9
    from nncomp.bench.sizes import saved_size
    assert saved_size(out.with_nodes(out.nodes), huffman=True).file_bytes == plan.bytes   # without the plan


def test_size_objective_takes_a_verified_global_allocation_and_saves_its_plan(lenet300, tmp_path):
    """Deep Compression's global allocation, built jointly, beats the per-layer codebooks: the file as
    nc.save writes it (plan included) is much smaller, the budget holds on the held-out quarter, and
    the model and its plan come back from the file."""
    model, x, y = lenet300
    out = Planner(timer=TableTimer(), cache=False).run(model, x, labels=y, budget=2.0, objective="size",
                                                       methods=["share"], confidence=0.5)
    plan = out.plan
    assert plan.search.startswith("global allocation global90+codebook4")
    assert {c.method for c in plan.layers} == {"deep_compression"}
    # the grid's allocation with every layer at 4 bits, or with fc1 (79% of the kept weights) at 3
    lower = {"fc1"} if plan.search.startswith("global allocation global90+codebook4 (fc1 at 3)") else set()
    assert all(f"codebook {3 if c.layer in lower else 4}-bit" in c.format for c in plan.layers)
    assert plan.layers[0].candidate.startswith("csr9")
    assert heldout_drop(model, out, x, y) <= 2.0 + 1e-9
    assert plan.heldout_drop == pytest.approx(heldout_drop(model, out, x, y))
    assert {("*", "global90+codebook4"), ("*", "global90+codebook4 (fc1 at 3)")} <= {r[:2] for r in plan.table}
    from nncomp.bench.sizes import saved_size
    assert saved_size(out.with_nodes(out.nodes), huffman=True).file_bytes == plan.bytes < plan.dense_bytes / 20
    path = tmp_path / "small.h5"
    nc.save(out, path, huffman=True)
    assert path.stat().st_size < plan.dense_bytes / 15          # what the user gets: the plan included
    back = nc.load(path)
    assert back.plan == plan
    np.testing.assert_array_equal(back(x[:16]), out(x[:16]))
    # a budget no allocation holds on the search part: the per-layer codebooks (or dense) again
    out0 = Planner(timer=TableTimer(), cache=False).run(model, x, labels=y, budget=0.0, objective="size",
                                                        methods=["share"])
    assert not out0.plan.search.startswith("global") and heldout_drop(model, out0, x, y) <= 1e-9


def test_allocations_smallest_verified_file_first():
    def alloc(s, nbytes, drop):
        return allocation.Allocation(s, 4, nbytes, drop, model=s)
    allocs = [alloc(0.8, 300, 0.1), alloc(0.9, 200, 0.3), alloc(0.95, 100, 0.9), alloc(0.92, 150, 0.4)]
    verified = []

    def holds(m):
        verified.append(m)
        return m != 0.92
    won, refused = allocation.choose_allocation(allocs, 0.5, holds)
    assert won.sparsity == 0.9 and refused == ["global92+codebook4"] and verified == [0.92, 0.9]
    assert allocation.choose_allocation(allocs, 0.5, holds, below=150)[0] is None
    assert allocation.choose_allocation(allocs, 0.05, holds) == (None, [])
    won, refused = allocation.choose_allocation(allocs, 1.0, lambda m: False)
    assert won is None and len(refused) == min(allocation.TRIES, 4)


def test_allocation_search_goes_from_the_sparsest_and_stops_early(monkeypatch):
    """One job per sparsity, the sparsest first; it stops at the first verified allocation, or when a
    sparsity's files are all no smaller than ``below`` (lower ones only keep more weights)."""
    levels = []

    def level(model, names, s, x_fit, searched, seed):      # files shrink with sparsity; above 90% over budget
        levels.append(s)
        return [allocation.Allocation(s, b, int(1000 * (1 - s)) + b, 0.9 if s > 0.9 else 0.2, model=(s, b))
                for b in (4, 5)]
    monkeypatch.setattr(allocation, "build_level", level)
    monkeypatch.setattr(allocation, "SPARSITIES", (0.8, 0.85, 0.9, 0.94))
    verified = []

    def holds(m):
        verified.append(m)
        return m != (0.9, 4)
    won, built, refused = allocation.search(None, [], None, None, 0, None, 0.5, holds, below=10**6)
    # (0.9, 4) fails the held-out check: its sibling (0.9, 5) is not verified, the next sparsity is
    assert (won.sparsity, won.bits) == (0.85, 4) and levels == [0.94, 0.9, 0.85] and len(built) == 6
    assert refused == ["global90+codebook4"] and verified == [(0.9, 4), (0.85, 4)]
    levels.clear()
    won, built, refused = allocation.search(None, [], None, None, 0, None, 0.5, holds, below=60)
    assert won is None and levels == [0.94] and refused == []          # 64 and 65 bytes: none can be < 60
    levels.clear()
    batches = []
    monkeypatch.setattr(allocation, "run_jobs", lambda jobs, n_jobs: batches.append(len(jobs)) or
                        [fn(*args) for fn, args in jobs])
    won, _, _ = allocation.search(None, [], None, None, 0, 2, 0.5, holds, below=10**6)     # n_jobs: all at once
    assert (won.sparsity, won.bits) == (0.85, 4) and levels == [0.94, 0.9, 0.85, 0.8] and batches == [4]


def test_size_screen_builds_only_candidates_that_can_beat_the_bound(lenet300):
    from nncomp.planner import sizing
    from nncomp.io.native import file_bytes
    model, x, _ = lenet300
    cands = {n: candidates.candidates_for(n, ["share", "prune_share"]) for n in ("fc1", "fc2", "fc3")}
    dense = file_bytes(model, huffman=True)
    notes = []
    proxies, wanted = sizing.screen(model, cands, x[:64], 0, dense, dense, notes)
    assert len(proxies) == 6 and wanted == {c for cs in cands.values() for c in cs[1:]} and not notes
    delta = {k: candidates.size_delta(model, {k[0]: p}, dense) for k, p in proxies.items()}
    least = {n: min(d for k, d in delta.items() if k[0] == n) for n in cands}
    bound = dense + sum(least.values()) + 1000            # only ~1 kB over the smallest combination
    proxies, wanted = sizing.screen(model, cands, x[:64], 0, dense, bound, notes)
    room = 1000 + sizing.SLACK * bound
    assert wanted == {cands[n][j] for (n, j), d in delta.items() if d - least[n] < room}
    assert cands["fc1"][1] not in wanted and cands["fc1"][2] in wanted      # fc1 codebook5 is 100 kB larger
    assert notes and notes[0].startswith(f"{6 - len(wanted)} candidates not built")


def test_jobs_through_joblib_give_the_same_plan(lenet300):
    joblib = pytest.importorskip("joblib")
    model, x, y = lenet300
    runs = []
    for n_jobs in (None, 2):
        with joblib.parallel_config(backend="threading"):
            runs.append(Planner(timer=TableTimer(chosen_ms=0.6), cache=False).run(
                model, x, labels=y, budget=0.5, methods=["quantize", "share"], n_jobs=n_jobs).plan)
    assert runs[0].layers == runs[1].layers and runs[0].table == runs[1].table


@pytest.mark.parametrize("kw, words", [
    ({"budget": -0.5}, ["budget", "-0.5"]),
    ({"objective": "speed"}, ["objective", "latency", "size"]),
    ({"methods": ["prune", "magic"]}, ["magic", "prune_int8"]),
    ({"batch": 0}, ["batch"]),
    ({"labels": np.zeros(5, np.int64)}, ["labels", str(N_CALIB)]),
    ({"labels": np.zeros(N_CALIB, np.float32)}, ["labels", "integer"]),
    ({"n_jobs": 0}, ["n_jobs"]),
    ({"confidence": 1.0}, ["confidence", "0.8"]),
    ({"confidence": 0.3}, ["confidence", "0.5"]),
])
def test_bad_arguments_raise_nncomp_errors(lenet300, kw, words):
    model, x, y = lenet300
    with pytest.raises(nc.NncompError) as e:
        nc.optimize(model, x, **kw)
    for w in words:
        assert w in str(e.value)


def test_bad_calibration_raises(lenet300):
    model, x, _ = lenet300
    with pytest.raises(nc.NncompError, match="expected input of shape"):
        nc.optimize(model, x.reshape(-1, 28, 28))
    with pytest.raises(nc.NncompError, match="at least 12"):
        nc.optimize(model, x[:5])
    with pytest.raises(nc.NncompError, match="calibration"):
        nc.optimize(model, None)


def test_search_on_a_dask_cluster_gives_the_same_plan(lenet300):
    """Candidates built and scored by two worker processes of a dask LocalCluster (joblib's dask
    backend), latency measured here: the same plan as in-process."""
    joblib = pytest.importorskip("joblib")
    distributed = pytest.importorskip("dask.distributed")
    model, x, y = lenet300
    kw = dict(labels=y, budget=0.5, methods=["quantize"])
    here = Planner(timer=TableTimer(chosen_ms=0.6), cache=False).run(model, x, **kw).plan
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client, distributed.get_task_stream(client) as tasks:
        with joblib.parallel_config(backend="dask"):
            there = Planner(timer=TableTimer(chosen_ms=0.6), cache=False).run(model, x, n_jobs=2, **kw).plan
        assert len(client.scheduler_info()["workers"]) == 2
    assert len({t["worker"] for t in tasks.data}) >= 1 and len(tasks.data) >= 3     # a job per layer, remote
    assert there.layers == here.layers and there.table == here.table
    assert there.heldout_score == here.heldout_score


def test_energy_estimate_follows_the_documented_model(lenet300):
    from nncomp.planner import energy
    model, x, _ = lenet300
    e = energy.energy(model, batch=1, llc_bytes=1 << 30)
    macs = 784 * 300 + 300 * 100 + 100 * 10
    assert e["compute_pj"] == pytest.approx(macs * (3.7 + 0.9))
    assert e["memory_pj"] == pytest.approx(model.nbytes / 4 * 5.0) and not e["dram"]
    assert energy.energy(model, batch=1, llc_bytes=1000)["memory_pj"] == pytest.approx(model.nbytes / 4 * 640.0)
    assert energy.energy(model, batch=64, llc_bytes=1 << 30)["memory_pj"] == pytest.approx(e["memory_pj"] / 64)
    q = nc.quantize(model, layers=["fc1"], activations="dynamic", calibration=x[:64])    # integer arithmetic
    eq = energy.energy(q, batch=1, llc_bytes=1 << 30)
    assert eq["compute_pj"] == pytest.approx((macs - 784 * 300) * 4.6 + 784 * 300 * 0.3)
    w = nc.quantize(model, layers=["fc1"], weights_only=True)       # decoded to float arithmetic
    assert energy.energy(w, batch=1, llc_bytes=1 << 30)["compute_pj"] == pytest.approx(e["compute_pj"])


def test_energy_objective_lowers_the_estimate_within_budget(lenet300):
    model, x, y = lenet300
    out = Planner(timer=TableTimer(), cache=False).run(model, x, labels=y, budget=0.5, objective="energy",
                                                       methods=["prune", "quantize"])
    plan = out.plan
    assert plan.objective == "energy" and plan.predicted_ms is None
    assert plan.energy_pj < plan.dense_energy_pj and any(c.candidate != "dense" for c in plan.layers)
    assert heldout_drop(model, out, x, y) <= 0.5 + 1e-9
    assert "estimated (Horowitz 45 nm model, not measured)" in str(plan)
    assert nc.OptimizationPlan.from_json(plan.to_json()) == plan


def test_run_modes_and_timing_in_the_dense_models_mode():
    from nncomp.planner import modes
    vgg = nc.load(nc.data.model_path("vgg_small"))
    lenet300 = nc.load(nc.data.model_path("lenet300"))
    assert modes.run_mode(lenet300, 1, threads=2) == "serial" and modes.run_mode(vgg, 1, threads=1) == "serial"
    assert modes.run_mode(vgg, 64, threads=2) == "measured"        # parts or parallel kernels, as measured
    x = nc.data.for_model(vgg, "train")[0][:64]
    dyn = nc.quantize(vgg, layers=["features.3"], activations="dynamic", calibration=x)
    assert modes.run_mode(dyn, 64, threads=2) == "parallel"        # results depend on the cut: run whole
    for mode in ("serial", "parts", "parallel"):
        np.testing.assert_allclose(modes.in_mode(vgg, mode, 64, threads=2)(x), vgg(x), rtol=1e-4, atol=1e-4)

    class Ways:         # injected: the dense model is fastest in batch parts
        def measure(self, calls, x, effort=1):
            return {k: {"serial": 3.0, "parts": 1.0, "parallel": 2.0}[k] for k in calls}
    if __import__("numba").get_num_threads() >= 2:
        assert modes.concrete_mode(vgg, x, Ways()) == "parts"
        assert LatencyTable(vgg, x, Ways(), None).timing == "parts"
    assert modes.concrete_mode(lenet300, x[:1].reshape(1, -1), Ways()) == "serial"     # its own mode


@pytest.mark.skipif(__import__("numba").get_num_threads() < 2, reason="batch parts need two threads")
def test_candidates_that_change_the_run_mode_are_left_out():
    vgg = nc.load(nc.data.model_path("vgg_small"))
    x, y = nc.data.for_model(vgg, "train")
    out = Planner(timer=TableTimer(chosen_ms=0.6), cache=False).run(vgg, x[:200], labels=y[:200], budget=100.0,
                                                                     batch=64, methods=["quantize"])
    assert "would change how the model runs a batch of 64 (the dense model's mode: measured)" in str(out.plan)
    assert all(c.candidate != "int8-dynamic" for c in out.plan.layers)
    assert any(c.candidate != "dense" for c in out.plan.layers)
    assert {r[2] for r in out.plan.table if r[1] == "int8-dynamic"} == {None}      # never timed


def test_cached_entries_give_the_same_milliseconds_when_their_dense_times_differ(lenet300, tmp_path):
    """Each cached entry keeps the dense time of its own measurement (a confirmed entry: of its
    confirmation); a later table reads them all against the first run's reference dense time, so
    the same cache gives the same milliseconds whatever entry it happens to read first."""
    from nncomp.planner.latency import LatencyCache
    from nncomp.planner.table import LatencyTable
    model, x, _ = lenet300

    class Drifting:          # every measurement's dense time 1 ms later; a candidate 0.8x dense
        def __init__(self):
            self.t = 1.0

        def measure(self, models, xb, effort=1):
            self.t += 1.0
            return {k: self.t * (1.0 if k == "dense" else 0.8) for k in models}

    patches = {f"k{i}": ("fc1", (model["fc1"],)) for i in range(3)}
    cache = LatencyCache(tmp_path)
    first = LatencyTable(model, x[:1], Drifting(), cache)
    first.measure({k: patches[k] for k in ("k0", "k1")})
    first.measure({"k0": patches["k0"]}, effort=3)          # confirmed later, at another dense time
    first.measure({"k2": patches["k2"]})
    want = {k: first.delta(k) for k in patches}
    second = LatencyTable(model, x[:1], Drifting(), cache)
    second.measure(dict(patches))
    assert second.measured == 0 and {k: second.delta(k) for k in patches} == pytest.approx(want)


def top1_agreement(outputs, reference):
    """A user's metric that is the planner's own agreement score, written out."""
    return float(np.mean(outputs.argmax(axis=1) == reference.argmax(axis=1)))


def map_iou(outputs, reference):
    """A detector-style score: IoU of the maps binarized at 0.5 (DBNet's post-processing thresholds its map)."""
    a, b = outputs > 0.5, reference > 0.5
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def test_a_metric_that_is_agreement_gives_the_agreement_plan(lenet300):
    model, x, _ = lenet300
    kw = dict(budget=0.5, batch=1, methods=["quantize", "prune"])
    plain = Planner(timer=TableTimer(chosen_ms=0.6), cache=False).run(model, x, **kw).plan
    out = Planner(timer=TableTimer(chosen_ms=0.6), cache=False).run(model, x, metric=top1_agreement, **kw)
    assert out.plan.metric == "top1_agreement" and plain.metric == "agreement"
    assert [(c.layer, c.candidate) for c in out.plan.layers] == [(c.layer, c.candidate) for c in plain.layers]
    assert out.plan.heldout_drop == pytest.approx(plain.heldout_drop)


def test_a_model_that_is_not_a_classifier_plans_within_its_metric():
    """A map-producing network (a detector's head: convolutions to one sigmoid channel) has no top-1;
    with a metric the planner scores candidates by it, and the held-out quarter keeps the budget."""
    from nncomp import layers as L
    from nncomp.model import Node
    rng = np.random.default_rng(5)
    f32 = lambda *s: (rng.standard_normal(s) / np.sqrt(s[-1])).astype(np.float32)  # noqa: E731
    nodes = [Node("c1", nc.Conv2D(f32(16, 9), np.zeros(16, np.float32), in_channels=1, kernel_size=3, padding=1)),
             Node("r1", nc.ReLU(), ("c1",)),
             Node("c2", nc.Conv2D(f32(16, 9 * 16), np.zeros(16, np.float32), in_channels=16, kernel_size=3, padding=1),
                  ("r1",)),
             Node("r2", nc.ReLU(), ("c2",)),
             Node("head", nc.Conv2D(f32(1, 16), np.zeros(1, np.float32), in_channels=16), ("r2",)),
             Node("prob", L.Sigmoid(), ("head",))]
    model = nc.Model(nodes, input_shape=(1, 16, 16), input_layout="NCHW")
    x = nc.data.mnist("train")[0][:200, :, 6:22, 6:22]
    # random weights put the map near 0.5, where rounding flips pixels: int8 weights on the head lost
    # 1.9 points with F(2x2, 3x3) in c2 and 2.2 with F(4x4, 3x3)
    budget = 3.0
    out = Planner(timer=TableTimer(chosen_ms=0.6), cache=False).run(model, np.ascontiguousarray(x), budget=budget,
                                                                    metric=map_iou, methods=["quantize", "prune"])
    assert out.plan.metric == "map_iou" and out(x[:2]).shape == model(x[:2]).shape
    held = split(x.shape[0], 0)[2]
    drop = 100 * (map_iou(model(x[held]), model(x[held])) - map_iou(out(x[held]), model(x[held])))
    assert drop <= budget + 1e-9 and out.plan.heldout_drop == pytest.approx(drop)
    assert any(c.candidate != "dense" for c in out.plan.layers)      # something was chosen, not only dense
    with pytest.raises(nc.NncompError, match="metric must be a function"):
        nc.optimize(model, x, metric="iou")
    with pytest.raises(nc.NncompError, match=r"needs a classifier's output.*\(16, 16, 1\)"):
        nc.optimize(model, x)                      # top-1 of a map: refused before any forward pass
    with pytest.raises(nc.NncompError, match="reference values"):
        nc.optimize(model, x, metric=map_iou, labels=np.zeros((7, 1, 16, 16), np.float32))
    with pytest.raises(nc.NncompError, match="one finite number"):
        nc.optimize(model, x, metric=lambda out, ref: out.mean(axis=(1, 2, 3)))     # a score per sample


def test_big_layers_hold_at_least_half_of_the_kept_weights(lenet300):
    model, x, _ = lenet300
    pruned = nc.prune(model, sparsity=0.9, storage="csr")
    names = ["fc1", "fc2", "fc3"]
    assert allocation.big_layers(pruned, names) == ("fc1",)          # 79% of the survivors
    even = nc.prune(model, sparsity={"fc1": 0.99, "fc2": 0.9, "fc3": 0.1}, storage="csr")   # 2,352 / 3,000 / 900
    assert allocation.big_layers(even, names) == ("fc1", "fc2")
    a = allocation.Allocation(0.9, 4, 100, 0.1, model=None, lower=("fc1",))
    assert a.label == "global90+codebook4 (fc1 at 3)" and a.bits_of("fc1") == 3 and a.bits_of("fc2") == 4


class Logits:
    """A 'model' answering fixed predictions (one-hot logits) for the samples it is given, by index."""

    def __init__(self, predictions):
        self.predictions = np.asarray(predictions)

    def __call__(self, x):
        idx = np.asarray(x, np.int64).ravel()
        return np.eye(10, dtype=np.float32)[self.predictions[idx]]


def test_heldout_bound_is_the_paired_upper_confidence_bound():
    """The held-out check's bound on top-1: the paired difference's mean plus z standard errors, from
    the samples where the two models disagree; 0.5 confidence: the drop itself."""
    from statistics import NormalDist

    from nncomp.planner.jobs import HeldOut
    n = 1000
    y = np.arange(n) % 10
    x = np.arange(n)
    base = y.copy()
    base[:20] = (y[:20] + 1) % 10               # the original misses 20
    worse = y.copy()
    worse[10:40] = (y[10:40] + 1) % 10          # the model misses 30, 10 of them the original's too
    for confidence in (0.5, 0.8, 0.95):
        judge = HeldOut(Logits(base), x, y, confidence)
        assert judge.score == pytest.approx(0.98)
        drop, bound = judge.drop(Logits(worse))
        d = (base == y).astype(float) - (worse == y)       # +1 on 20..39, -1 on 0..9 (both miss 10..19)
        assert drop == pytest.approx(100 * d.mean()) and drop == pytest.approx(1.0)
        z = NormalDist().inv_cdf(confidence)
        assert bound == pytest.approx(drop + 100 * z * d.std(ddof=1) / np.sqrt(n))
        assert judge.holds(Logits(worse), bound + 1e-6) and not judge.holds(Logits(worse), bound - 1e-3)
        assert judge.drop(Logits(base)) == (0.0, 0.0)      # no disagreement, no doubt
    # a measured drop within 0.5 points whose bound is not: refused at 0.8, accepted at 0.5
    close = y.copy()
    close[20:44] = (y[20:44] + 1) % 10       # misses 24 the original got, gets the 20 it missed: 0.4 points
    assert HeldOut(Logits(base), x, y, 0.5).holds(Logits(close), 0.5)
    assert not HeldOut(Logits(base), x, y, 0.8).holds(Logits(close), 0.5)


def test_heldout_bound_of_a_metric_is_a_seeded_paired_bootstrap():
    from nncomp.planner import metrics
    from nncomp.planner.jobs import HeldOut, Target
    rng = np.random.default_rng(1)
    maps = rng.random((40, 8, 8)).astype(np.float32)
    noisy = maps + rng.normal(0, 0.2, maps.shape).astype(np.float32)

    class Maps:
        def __init__(self, values):
            self.values = values

        def __call__(self, x):
            return self.values[np.asarray(x, np.int64)]

    x = np.arange(40)
    ref = Target(maps, metrics.map_iou(0.5))
    judge = HeldOut(Maps(maps), x, ref, 0.8, seed=3)
    drop, bound = judge.drop(Maps(noisy))
    assert judge.score == 1.0 and drop == pytest.approx(100 * (1 - metrics.map_iou(0.5)(noisy, maps)))
    assert bound > drop            # resamples with the worse maps weigh more
    again = HeldOut(Maps(maps), x, ref, 0.8, seed=3).drop(Maps(noisy))
    assert again == (drop, bound)
    assert HeldOut(Maps(maps), x, ref, 0.5).drop(Maps(noisy)) == (drop, drop)
