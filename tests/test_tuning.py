"""Kernel choices measured per CPU (nncomp/tuning.py): the probe, its file, and the dense layers' use."""
import json

import numpy as np
import pytest

import nncomp as nc
from nncomp import tuning
from nncomp.kernels import blas
from nncomp.model import Node


@pytest.fixture
def probing(tmp_path, monkeypatch):
    """Probing on, its files in a fresh folder, nothing remembered from other tests."""
    monkeypatch.setenv(tuning.ENV, "on")
    monkeypatch.setenv(tuning.CACHE_ENV, str(tmp_path))
    tuning.forget()
    yield tmp_path
    tuning.forget()


def _timed(durations, calls):
    """Candidates that take ``durations[name]`` seconds of a fake clock, counting their calls."""
    now = [0.0]

    def make(name):
        def run():
            calls[name] = calls.get(name, 0) + 1
            now[0] += durations[name]
        return run
    return {k: make(k) for k in durations}, (lambda: now[0])


def test_the_fastest_candidate_is_chosen_once_and_kept_in_this_cpus_file(probing):
    calls = {}
    cands, clock = _timed({"a": 2.0, "b": 1.0, "c": 1.5}, calls)
    assert tuning.choose("demo", (3, 4), "abc", "a", lambda: cands, clock=clock) == "b"
    assert calls == {k: 1 + tuning.CALLS for k in "abc"}      # a warm-up call, then the timed ones
    path = tuning.cache_file()
    assert path.parent == probing and json.loads(path.read_text()) == {"demo:3,4": "b"}
    assert tuning.choose("demo", (3, 4), "abc", "a", lambda: cands, clock=clock) == "b" and calls["a"] == 1 + tuning.CALLS
    tuning.forget()                 # a new process: the file answers, nothing runs
    assert tuning.choose("demo", (3, 4), "abc", "a", lambda: cands, clock=clock) == "b" and calls["b"] == 1 + tuning.CALLS
    cands2, clock2 = _timed({"a": 1.0, "b": 2.0}, calls)
    assert tuning.choose("demo", (5,), "ab", "b", lambda: cands2, clock=clock2) == "a"       # another shape: its own entry
    assert json.loads(path.read_text()) == {"demo:3,4": "b", "demo:5": "a"}


def test_fast_candidates_get_more_timed_rounds(probing):
    """Candidates whose round of calls takes under ROUND_SECONDS are timed in more rounds (up to
    MAX_CALLS): three calls each of a 10 ms layer decided on a noisy host by chance."""
    calls = {}
    cands, clock = _timed({"a": 0.02, "b": 0.01}, calls)
    assert tuning.choose("demo", (1,), "ab", "a", lambda: cands, clock=clock) == "b"
    rounds = max(tuning.CALLS, min(tuning.MAX_CALLS, int(tuning.ROUND_SECONDS / 0.03)))
    assert rounds > tuning.CALLS and calls == {"a": 1 + rounds, "b": 1 + rounds}


def test_fast_candidates_are_timed_in_blocks_of_calls(probing):
    """A sample of a candidate whose call takes under SAMPLE_SECONDS is a block of calls (a single
    call of 1-2 ms is one timer reading on a noisy host), the first round's single calls included."""
    calls = {}
    cands, clock = _timed({"a": 0.002, "b": 0.001}, calls)
    assert tuning.choose("demo", (1,), "ab", "a", lambda: cands, clock=clock) == "b"
    block = min(tuning.MAX_BLOCK, int(tuning.SAMPLE_SECONDS / 0.001))
    rounds = max(tuning.CALLS, min(tuning.MAX_CALLS, int(tuning.ROUND_SECONDS / (block * 0.003))))
    assert block > 1 and calls == {k: 1 + 1 + (rounds - 1) * block for k in "ab"}


def test_the_default_stays_unless_beaten_by_the_margin(probing):
    cands, clock = _timed({"a": 1.0, "b": 0.97}, {})
    assert tuning.choose("demo", (1,), "ab", "a", lambda: cands, clock=clock) == "a"
    cands, clock = _timed({"a": 1.0, "b": 0.9}, {})
    assert tuning.choose("demo", (2,), "ab", "a", lambda: cands, clock=clock) == "b"
    with pytest.raises(ValueError, match="not a candidate"):
        tuning.choose("demo", (3,), "ab", "z", lambda: cands, clock=clock)


def test_probing_off_takes_the_default_and_runs_nothing(monkeypatch):
    monkeypatch.setenv(tuning.ENV, "off")
    calls = {}
    cands, clock = _timed({"a": 2.0, "b": 1.0}, calls)
    assert not tuning.enabled() and tuning.choose("demo", (1,), "ab", "a", lambda: cands, clock=clock) == "a" and calls == {}


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"demo:7": "evil"}', '{"demo:7": 3}'])
def test_a_bad_file_is_ignored_and_replaced(probing, content):
    """The file is untrusted: unreadable, the wrong type, or naming a non-candidate: measured again."""
    path = tuning.cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    calls = {}
    cands, clock = _timed({"a": 2.0, "b": 1.0}, calls)
    assert tuning.choose("demo", (7,), "ab", "a", lambda: cands, clock=clock) == "b" and calls["a"] == 1 + tuning.CALLS
    assert json.loads(path.read_text())["demo:7"] == "b"
    assert not list(probing.glob("*.tmp"))


def test_an_unwritable_folder_keeps_the_choice_in_memory(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv(tuning.ENV, "on")
    monkeypatch.setenv(tuning.CACHE_ENV, str(blocker / "sub"))      # a folder under a file: cannot exist
    tuning.forget()
    cands, clock = _timed({"a": 2.0, "b": 1.0}, {})
    assert tuning.choose("demo", (1,), "ab", "a", lambda: cands, clock=clock) == "b"
    tuning.forget()


def _model(rng):
    w, b = rng.standard_normal((40, 30)).astype(np.float32), rng.standard_normal(40).astype(np.float32)
    return nc.Model([Node("fc", nc.Dense(w, b), ("input",)), Node("r", nc.ReLU(), ("fc",))],
                    input_shape=(30,), input_layout="NC"), w, b


def _steps(model, n):
    return [getattr(s, "__qualname__", "") for s, _, _ in model._plan((30,), n, model.outputs).steps]


@pytest.mark.parametrize("n, winner", [(9, "stream"), (9, "blas"), (9, "kn"), (3, "few"), (3, "stream"), (3, "blas"),
                                      (3, "kn")])
def test_dense_layers_run_the_product_their_probe_chose(probing, monkeypatch, n, winner):
    """A large dense weight (the blocked kernel's limits set to nothing) at a small batch: the probe
    times the streaming product (and at up to dense_few.MAX_BATCH samples the few-sample mat-vecs)
    against BLAS (the weight as stored, and transposed: "kn", where the kernels can call BLAS) on the
    layer's shape and the plan runs the winner, with the same numbers either way."""
    monkeypatch.setattr("nncomp.layers.conv_blocked.BLOCKED_MAX_WEIGHT_BYTES", 0)
    monkeypatch.setattr("nncomp.layers.conv_blocked.BLOCKED_WIDE_MAX_INPUTS", 0)
    if winner == "kn" and not blas.direct():
        pytest.skip("the kernels cannot call NumPy's BLAS here")
    seen = []
    names = {"stream", "blas"} | ({"few"} if n <= 8 else set()) | ({"kn"} if blas.direct() else set())

    def fake(decision, shape, candidate_names, default, make, **kw):
        candidates = make()
        assert decision == "dense-stream" and set(candidates) == set(candidate_names) == names
        assert default == ("few" if n <= 4 else "stream")
        for run in candidates.values():
            run()                           # every candidate runs on the layer's shape
        seen.append(shape)
        return winner
    monkeypatch.setattr(tuning, "choose", fake)
    model, w, b = _model(np.random.default_rng(1))
    x = np.random.default_rng(2).standard_normal((n, 30)).astype(np.float32)
    got = model(x)
    assert seen and seen[0][:3] == (40, 30, n)
    steps = _steps(model, n)
    assert ("Dense._streamed.<locals>.step" in steps) == (winner == "stream")
    assert ("Dense._streamed.<locals>.few_step" in steps) == (winner == "few")
    assert ("Dense._streamed.<locals>.kn.<locals>.kn_step" in steps) == (winner == "kn")
    assert np.allclose(got, np.maximum(x.astype(np.float64) @ w.T + b, 0), rtol=1e-5, atol=1e-5)


def test_a_real_probe_writes_its_choice_and_the_model_is_right(probing, monkeypatch):
    monkeypatch.setattr("nncomp.layers.conv_blocked.BLOCKED_MAX_WEIGHT_BYTES", 0)
    monkeypatch.setattr("nncomp.layers.conv_blocked.BLOCKED_WIDE_MAX_INPUTS", 0)
    model, w, b = _model(np.random.default_rng(3))
    x = np.random.default_rng(4).standard_normal((5, 30)).astype(np.float32)
    assert np.allclose(model(x), np.maximum(x.astype(np.float64) @ w.T + b, 0), rtol=1e-5, atol=1e-5)
    entries = json.loads(tuning.cache_file().read_text())
    assert [k for k in entries if k.startswith("dense-stream:40,30,5,")] and set(entries.values()) <= {"few", "stream", "blas", "kn"}


@pytest.mark.parametrize("winner", ["winograd4", "winograd", "blocked"])
def test_convolutions_run_the_algorithm_their_probe_chose(probing, monkeypatch, winner):
    """A 3x3 layer Winograd (F(2x2, 3x3), F(4x4, 3x3)) and the blocked kernel can run: the probe
    builds and runs the three on the layer's shape, and the plan (with a fused ReLU) runs the winner,
    with the same numbers."""
    from nncomp.layers import conv_algorithms as convolution
    rng = np.random.default_rng(5)
    w, b = rng.standard_normal((16, 9 * 16)).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    layer = nc.Conv2D(w, b, in_channels=16, kernel_size=3, padding=1)
    assert convolution.rule(layer, (6, 6, 16), 3) == "winograd4"
    seen = []

    def fake(decision, shape, names, default, make, **kw):
        candidates = make()
        assert decision == "conv-3x3-algorithm" and set(candidates) == set(names) == {"winograd4", "winograd", "blocked"}
        for run in candidates.values():
            run()
        seen.append(shape)
        return winner
    monkeypatch.setattr(tuning, "choose", fake)
    model = nc.Model([Node("c", layer, ("input",)), Node("r", nc.ReLU(), ("c",))], input_shape=(16, 6, 6),
                     input_layout="NCHW")
    x = rng.standard_normal((3, 16, 6, 6)).astype(np.float32)
    got = model(x)
    assert seen and seen[0][:4] == (6, 6, 16, 16)
    steps = [getattr(s, "__qualname__", "") for s, _, _ in model._plan((6, 6, 16), 3, model.outputs).steps]
    assert steps == [f"{winner.rstrip('4')}_step.<locals>.run"], steps
    import reference as ref
    want = np.maximum(ref.conv2d_nhwc(x.transpose(0, 2, 3, 1), w.reshape(16, 3, 3, 16).transpose(0, 3, 1, 2), b,
                                      (1, 1), (1, 1, 1, 1), (1, 1), 1), 0).transpose(0, 3, 1, 2)
    assert np.allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_large_weight_the_rule_keeps_off_winograd_is_measured_against_it(probing, monkeypatch):
    """Where the rule takes another algorithm for a layer that can run Winograd (a weight over
    BLOCKED_MAX_WEIGHT_BYTES on few output pixels), the probe times that algorithm against the
    Winograd ones, and the plan runs the winner with the same numbers."""
    from nncomp.layers import conv_algorithms as convolution, conv_blocked
    monkeypatch.setattr(conv_blocked, "BLOCKED_MAX_WEIGHT_BYTES", 0)
    rng = np.random.default_rng(9)
    w = rng.standard_normal((16, 9 * 16)).astype(np.float32)
    layer = nc.Conv2D(w, None, in_channels=16, kernel_size=3, padding=1)
    rule = convolution.rule(layer, (6, 6, 16), 1)
    assert rule not in ("winograd", "winograd4", "blocked") and "winograd" in layer.algorithms
    seen = []

    def fake(decision, shape, names, default, make, **kw):
        seen.append((default, set(names), set(make())))
        return "winograd"
    monkeypatch.setattr(tuning, "choose", fake)
    assert convolution.choose(layer, (6, 6, 16), 1) == "winograd"
    assert seen == [(rule, {"winograd4", "winograd", rule}, {"winograd4", "winograd", rule})]
    x = rng.standard_normal((1, 6, 6, 16)).astype(np.float32)
    np.testing.assert_array_equal(convolution.prepare(layer, (6, 6, 16), 1)(x),
                                  convolution.prepare(layer, (6, 6, 16), 1, "winograd")(x))


def test_a_real_convolution_probe_writes_its_choice(probing):
    rng = np.random.default_rng(6)
    layer = nc.Conv2D(rng.standard_normal((16, 9 * 16)).astype(np.float32), None, in_channels=16, kernel_size=3,
                      padding=1)
    model = nc.Model([Node("c", layer, ("input",))], input_shape=(16, 8, 8), input_layout="NCHW")
    model(rng.standard_normal((2, 16, 8, 8)).astype(np.float32))
    entries = json.loads(tuning.cache_file().read_text())
    keys = [k for k in entries if k.startswith("conv-3x3-algorithm:8,8,16,16,3,3,1,1,1,1,1,1,1,1,2,")]
    assert keys and entries[keys[0]] in ("winograd4", "winograd", "blocked")


def test_a_probe_runs_its_candidates_as_a_pass_runs_its_steps(probing, monkeypatch):
    """The probe calls every candidate inside the one-OpenBLAS-thread scope, as a model's pass does:
    at OpenBLAS's own thread count its threads spun after each BLAS call and slowed the candidate
    timed next (fc6 at 32 samples chose BLAS, 45 ms a pass, over the streamed product's 23 ms)."""
    from nncomp.kernels import blas
    scopes, real = [], blas.plan_nt

    def plan(m, w):
        mul = real(m, w)

        def spied(x):
            scopes.append(type(blas.ONE_THREAD)._depth)
            return mul(x)
        return spied
    monkeypatch.setattr(blas, "plan_nt", plan)
    rng = np.random.default_rng(5)
    w = rng.standard_normal((1030, 1024)).astype(np.float32)      # over the blocked kernel's 4.2 MB
    model = nc.Model([Node("fc", nc.Dense(w), ("input",))], input_shape=(1024,), input_layout="NC")
    model(rng.standard_normal((100, 1024)).astype(np.float32))
    assert len(scopes) >= 1 + tuning.CALLS and set(scopes) == {1}
