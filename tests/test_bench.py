"""python -m nncomp.bench --quick (the CI smoke run), its outputs, and the pieces behind it.

Speed is never asserted: these tests check that the benchmark runs, that every output holds every
column, and that what it computes (accuracy, agreement, bytes, Pareto fronts, row status) is right.
"""
import csv
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import nncomp as nc
from nncomp.bench import compare as compare_mod
from nncomp.bench import layers, plots, report, roofline, suite, suites, timing
from nncomp.bench.sizes import saved_size
from nncomp.data import DATA_DIR

LENET300 = str(nc.data.model_path("lenet300"))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, NNCOMP_KEEP_OPENBLAS_ENV="1")  # never re-exec with another BLAS setup in tests
    r = subprocess.run([sys.executable, "-m", "nncomp.bench", "--quick", "--out", str(out), "--no-plots"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r.stdout


def test_quick_run_writes_json_csv_markdown_with_every_column(quick_run):
    out, stdout = quick_run
    res = json.loads((out / "result.json").read_text())
    for key in ("machine", "seeds", "settings", "limits", "models", "layers", "wall_s", "columns", "peers"):
        assert key in res
    assert res["machine"]["cpu_flags"] is not None and res["machine"]["versions"]["numpy"] == np.__version__
    assert res["settings"]["quick"] is True and res["settings"]["batches"] == [1, 64]
    assert res["limits"]["bandwidth_GBps"] > 0 and res["limits"]["sgemm_GFLOPs"] > 0
    assert res["models"] and res["layers"]
    for row in res["models"]:
        assert set(suite.COLUMNS) <= set(row)
    for row in res["layers"]:
        assert set(report.LAYER_COLUMNS) <= set(row)
    assert set(res["columns"]["models"]) == set(suite.COLUMNS)
    with open(out / "models.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == suite.COLUMNS and len(rows) == len(res["models"])
    with open(out / "layers.csv") as fh:
        lrows = list(csv.DictReader(fh))
    assert list(lrows[0]) == report.LAYER_COLUMNS and len(lrows) == len(res["layers"])
    md = (out / "report.md").read_text()
    head, _ = report.model_table(res["models"])
    lhead, _ = report.layer_table(res["layers"])
    assert "| " + " | ".join(head[1:]) + " |" in md and "| " + " | ".join(lhead) + " |" in md
    assert "wall time" in stdout and "lenet300" in stdout


def test_quick_run_dense_row_is_the_exact_baseline(quick_run):
    out, _ = quick_run
    res = json.loads((out / "result.json").read_text())
    dense = next(r for r in res["models"] if r["method"] == "dense")
    model = nc.load(LENET300)
    x, y = nc.data.mnist("test", layout="NC")
    assert dense["status"] == "ok"
    assert dense["accuracy"] == pytest.approx(float((model(x[:200]).argmax(1) == y[:200]).mean()))
    assert dense["agreement"] == 1.0 and dense["max_logit_err"] == 0.0
    assert dense["weight_bytes"] == model.nbytes == dense["payload_bytes"]
    assert dense["macs"] == model.macs and dense["compression_ratio"] == 1.0
    for r in res["models"]:
        assert r["status"] == "ok" or r["status"] in ("not available", "not installed") \
            or r["status"].startswith("error: "), r["status"]
        if r["status"] == "ok":
            assert 0 <= r["agreement"] <= 1 and r["latency_ms"] > 0 and r["throughput_sps"] > 0


def test_missing_peers_are_marked_not_installed(quick_run):
    out, _ = quick_run
    res = json.loads((out / "result.json").read_text())
    for peer, method in (("torch", "torch"), ("onnxruntime", "onnxruntime")):
        rows = [r for r in res["models"] if r["method"] == method]
        assert rows
        if importlib.util.find_spec(peer) is None:
            assert all(r["status"] == "not installed" for r in rows)
            assert res["peers"][peer] == "not installed"


def test_missing_methods_are_not_available_and_failing_ones_are_errors(monkeypatch):
    monkeypatch.setitem(nc._LAZY, "fake_method", "nncomp.compress.no_such_module_here")
    with pytest.raises(layers.NotAvailable):
        layers.require(("fake_method",))
    model = nc.load(LENET300)
    x, y = nc.data.mnist("test", layout="NC")
    ctx = suite.Context(model, x[:50], y[:50], x[:20], (1, 4), 2, 0.5, "lenet300")
    row = suite.run_recipe(ctx, suite.Recipe("fake", "s", lambda m, c: m, needs=("fake_method",)))
    assert row["status"] == "not available" and row["accuracy"] is None

    def boom(m, c):
        raise nc.CompressionParameterError("no\nway")
    row = suite.run_recipe(ctx, suite.Recipe("boom", "s", boom))
    assert row["status"] == "error: CompressionParameterError: no way"
    row = suite.run_recipe(ctx, suite.Recipe("identity", "s", lambda m, c: m))
    assert row["status"] == "ok" and row["agreement"] == 1.0 and row["max_logit_err"] == 0.0
    assert row["compression_ratio"] == 1.0 and row["formats"] == "dense"


def test_recipe_table_and_selection():
    labels = [r.label for r in suite.RECIPES]
    assert len(labels) == len(set(labels)), "every recipe row is distinct"
    assert {"prune", "prune_filters", "quantize", "share", "factorize", "deep_compression", "prune + int8",
            "low-rank + int8"} <= {r.method for r in suite.RECIPES}
    quick = suite.selected(suite.RECIPES, None, True)
    assert quick and all(r.quick for r in quick)
    only = suite.selected(suite.RECIPES, ["share"], False)
    assert only and {r.method for r in only} == {"share"} and any(r.calibrated for r in only)


def test_verdict_words():
    assert suite._verdict(4.0, 1.5, 0.9) == "smaller+faster"
    assert suite._verdict(4.0, 1.0, 1.0) == "smaller"
    assert suite._verdict(1.0, 1.0, 1.2) == "faster"
    assert suite._verdict(1.0, 0.5, 0.8) == "neither, slower"


def test_pareto_front():
    pts = [(10, 90), (5, 80), (20, 95), (12, 85), (5, 70)]
    assert plots.pareto(pts, smaller_x_better=True) == [1, 0, 2]
    assert plots.pareto([(2.0, 90), (1.0, 95), (3.0, 80)], smaller_x_better=False) == [1, 0, 2]
    assert plots.pareto([(2.0, 90), (1.0, 95), (3.0, 96)], smaller_x_better=False) == [2]


def test_payload_bytes_count_the_stored_arrays(tmp_path):
    model = nc.load(LENET300)
    saved = saved_size(model)
    assert saved.payload_bytes == model.nbytes < saved.file_bytes
    x = nc.data.mnist("test", layout="NC")[0][:10]
    assert np.array_equal(saved.loaded(x), model(x))
    coded = saved_size(nc.share(model, bits=4), huffman=True)
    assert coded.payload_bytes < model.nbytes / 5


def test_layer_models_and_numpy_baselines_agree_with_the_engine():
    shapes = layers.QUICK_SHAPES
    for name in shapes:
        m = layers.layer_model(name, shapes=shapes)
        x = layers.layer_input(m, 3)
        w, b = m.nodes[0].layer.weight.w, m.nodes[0].layer.bias
        if shapes[name][0] == "dense":
            y = layers.numpy_dense(w, b)(x)
        else:
            y = layers.numpy_conv(w, b, shapes[name][4], shapes[name][5])(x)
        np.testing.assert_allclose(y, m(x), rtol=1e-4, atol=1e-4)
    assert layers.roofline_ms(1e9, 0, {"bandwidth_GBps": 10.0, "sgemm_GFLOPs": 100.0}) == pytest.approx(100.0)
    assert layers.roofline_ms(0, 1e9, {"bandwidth_GBps": 10.0, "sgemm_GFLOPs": 100.0}) == pytest.approx(10.0)
    w = np.arange(1, 21, dtype=np.float32).reshape(4, 5) * np.array([1, -1] * 10, np.float32).reshape(4, 5)
    assert np.count_nonzero(layers.magnitude_prune(w, 0.9)) == 2


def test_compare_positional_x_y_as_in_the_design():
    model = nc.load(LENET300)
    x, y = nc.data.mnist("test", layout="NC")
    x, y = x[:64], y[:64]
    half = model.replace_layers({"fc1": model["fc1"].layer.replace(weight=nc.DenseMatrix(
        model["fc1"].layer.weight.w * np.float32(0.5)))})
    res = nc.compare(model, half, x, y, repeat=2, huffman=False)
    assert len(res) == 2 and res[0]["agreement"] == 1.0 and res[0]["max_logit_err"] == 0.0
    assert res[1]["accuracy"] == pytest.approx(float((half(x).argmax(1) == y).mean()))
    assert res[1]["agreement"] == pytest.approx(float((half(x).argmax(1) == model(x).argmax(1)).mean()))
    assert res[1]["max_logit_err"] == pytest.approx(float(np.abs(half(x).astype(np.float64) - model(x)).max()))
    assert set(res[0]["ms"]) == {1, 64} and res[0]["bytes"] == model.nbytes
    text = repr(res)
    for word in ("bytes", "Huffman bytes", "ms @1", "ms @64", "accuracy", "agreement", "max logit err",
                 "lenet300 #1"):
        assert word in text
    res = nc.compare(model, x=x, batch_sizes=(2,), repeat=1, huffman=False, names=["d"])
    assert res["d"]["accuracy"] is None and set(res["d"]["ms"]) == {2}


@pytest.mark.parametrize("args, kwargs", [
    ((), {}), ((np.zeros((2, 784), np.float32),), {"x": np.zeros((2, 784), np.float32)}),
    (("not a model",), {"x": np.zeros((2, 784), np.float32)}),
    ((), {"x": np.zeros((2, 784), np.float32), "repeat": 0}),
    ((), {"x": np.zeros((2, 784), np.float32), "batch_sizes": (0,)}),
    ((), {"x": np.zeros((2, 784), np.float32), "y": np.zeros(3)}),
    ((), {"x": np.zeros((2, 784), np.float32), "names": ["a", "b"]}),
])
def test_compare_rejects_bad_arguments(args, kwargs):
    model = nc.load(LENET300)
    with pytest.raises(nc.NncompError):
        compare_mod.compare(model, *args, **kwargs)


def test_markdown_tables_escape_pipes():
    md = report.md_table(["a", "b"], [["x|y", "1"]])
    assert "x\\|y" in md and md.count("\n") == 2


def test_model_option_with_data_npz_in_process(tmp_path, capsys):
    """--model PATH --data NPZ through ``python -m nncomp bench`` (the CLI forwards to the benchmark)."""
    from nncomp import cli
    model = nc.load(LENET300)
    x, y = nc.data.mnist("test", layout="NC")
    np.savez(tmp_path / "d.npz", x=x[:40], y=y[:40])
    out = tmp_path / "out"
    code = cli.main(["bench", "--model", LENET300, "--data", str(tmp_path / "d.npz"), "--suite", "models",
                     "--methods", "dense,quantize", "--no-peers", "--no-plots", "--quick", "--batch", "1,4",
                     "--out", str(out)])
    assert code == 0
    res = json.loads((out / "result.json").read_text())
    assert {r["method"] for r in res["models"]} <= {"dense", "quantize"} and res["layers"] == []
    dense = res["models"][0]
    assert dense["accuracy"] == pytest.approx(float((model(x[:40]).argmax(1) == y[:40]).mean()))
    assert res["settings"]["batches"] == [1, 4] and "lenet300" in capsys.readouterr().out


# ------------------------------------------------------------------ the method suites (--suite NAME)
# What each suite's JSON holds besides the machine record, and a line its Markdown must contain.
SUITE_KEYS = {
    "dense": (["rows"], "| case | batch | nncomp |"),
    "conv_algos": (["rows", "rules"], "| shape | batch | MACs | winograd4 | winograd | blocked | im2col | shifted | direct |"),
    "quant": (["speed", "accuracy", "limits"], "## Accuracy on the 1,000 test digits"),
    "codebook": (["speed", "accuracy", "limits"], "## Deep Compression pipeline"),
    "sparse": (["fc6", "fc7", "density_sweep_fc7", "conv3_2", "lenet", "limits"], "## Targets (issues #4, #14) in this run"),
    "sparse_int8": (["fc6", "lenet300"], "| contender | median ms | p90 ms | vs dense | vs csr float32 |"),
    "lowrank": (["speed", "accuracy", "targets", "limits"], "## Accuracy on the 1,000 shipped test digits"),
    "vs_ort": (["rows"], "| model | loop_b1 | loop_b8 |"),
    "real": (["rows"], "| model | input (batch 1) | runtime | median ms | metric |"),
    "optimize": (["rows", "size_rows"], "| model | chosen plan | file bytes dense -> chosen | smaller |"),
}


@pytest.mark.parametrize("name", suites.SUITES)
def test_every_suite_runs_quick_and_writes_its_tables(name, tmp_path, capsys):
    from nncomp.bench.__main__ import main
    assert set(SUITE_KEYS) == set(suites.SUITES)
    torch_needed = name in ("sparse", "lowrank")
    if torch_needed and importlib.util.find_spec("torch") is None:
        pytest.skip("this suite times torch")
    if name in ("vs_ort", "real") and importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("this suite times ONNX Runtime")
    if name == "real" and importlib.util.find_spec("PIL") is None:
        pytest.skip("this suite renders its inputs with Pillow")
    assert main(["--suite", name, "--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / f"{name}.json").read_text())
    keys, line = SUITE_KEYS[name]
    for key in ["machine", "threads", "loadavg_before", "loadavg_after", "seconds", "protocol", "parts", *keys]:
        assert key in res, key
    assert res["quick"] is True and res["machine"]["versions"]["numpy"] == np.__version__
    assert line in (tmp_path / f"{name}.md").read_text()
    assert f"wrote {tmp_path / (name + '.json')}" in capsys.readouterr().out


def test_suite_parts_are_checked_and_picked(tmp_path, capsys):
    from nncomp.bench.__main__ import main
    assert suites.parts_of("quant") == ("speed", "accuracy")
    with pytest.raises(SystemExit):
        main(["--suite", "quant", "--parts", "nope"])
    with pytest.raises(SystemExit):
        main(["--suite", "models", "--parts", "speed"])
    assert "--parts" in capsys.readouterr().err
    assert main(["--suite", "quant", "--quick", "--parts", "accuracy", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "quant.json").read_text())
    assert res["speed"] == [] and res["accuracy"] and res["parts"] == ["accuracy"]


# ------------------------------------------------------------------ the one timing module
def test_alternate_counts_calls_and_pauses_only_after_spinners(monkeypatch):
    order, sleeps = [], []
    monkeypatch.setattr(timing.time, "sleep", sleeps.append)
    t = timing.alternate({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeat=4, block=2,
                         warmup=1, spinners={"a"}, settle=0.5)
    assert order == ["a", "b"] + ["a", "a", "b", "b"] * 2
    assert t["a"]["n"] == t["b"]["n"] == 4 and set(t["a"]) == {"median_ms", "p90_ms", "min_ms", "n"}
    assert sleeps == [0.5, 0.5]                 # after each block of a (a spinner), never after b
    sleeps.clear()
    timing.alternate({"a": lambda: None, "b": lambda: None}, repeat=2, warmup=0)
    assert sleeps == [timing.SETTLE_S] * 3      # spinners=None: before every block but the first


def test_alternate_stops_early_when_medians_are_stable():
    t = timing.alternate({"a": lambda: None}, repeat=400, warmup=0, settle=0, stable=10.0)
    assert 200 <= t["a"]["n"] < 400
    t = timing.alternate({"a": lambda: None}, repeat=40, warmup=0, settle=0)
    assert t["a"]["n"] == 40


def test_roofline_cap_never_leaves_a_cell_over_the_roof():
    limits = {"bandwidth_GBps": 10.2, "sgemm_GFLOPs": 100.0}
    # the Intel machine's case: NumPy's fc6 product read 411 MB in 19.5 ms
    capped = roofline.cap(limits, [("NumPy on fc6", 411e6, 19.5), ("slow", 411e6, 80.0), ("no time", 1e6, None)])
    assert capped["bandwidth_GBps"] == pytest.approx(411e6 / 19.5e-3 / 1e9)
    assert capped["roof_source"] == "NumPy on fc6" and capped["probe_bandwidth_GBps"] == 10.2
    assert 100 * roofline.roofline_ms(411e6, 0, capped) / 19.5 == pytest.approx(100.0)
    assert "the probe read 10.2 GB/s" in roofline.roof_text(capped)
    assert roofline.cap(limits, [])["roof_source"] == "probe" and roofline.roof_text(limits) == "DRAM read 10.2 GB/s"
    assert roofline.probe_bytes() >= 4 * timing.l3_bytes() and timing.l3_bytes() > 0


def test_layer_suite_roofline_stays_under_100_percent():
    # probes that read far too low (as the Intel machine's did): the run's own rates set the roofs
    rows, limits = layers.run_layer_suite(shapes=layers.QUICK_SHAPES, batches=(1, 2), threads=1, repeat=2,
                                          limits={"bandwidth_GBps": 1e-3, "sgemm_GFLOPs": 1e-3},
                                          recipes=layers.LAYER_RECIPES[:1], max_seconds=1.0, progress=lambda s: None)
    timed = [r for r in rows if r["median_ms"]]
    assert timed and limits["roof_source"] != "probe" and limits["sgemm_source"] != "probe"
    for r in timed:
        assert r["weight_bytes"] / (limits["bandwidth_GBps"] * 1e9) * 1e3 <= r["median_ms"] * (1 + 1e-9)
        if r["contender"] in layers.FLOAT32_DENSE:
            assert r["roofline_pct"] <= 100.0 + 1e-9, r


def test_bench_and_cli_share_the_parser_module_without_a_cycle():
    import ast
    import pathlib
    import nncomp.bench.args as args_mod
    from nncomp import cli
    assert cli.OneLineParser is args_mod.OneLineParser and cli.fail is args_mod.fail
    root = pathlib.Path(nc.__file__).parent / "bench"
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.endswith("cli"), f"{path} imports the CLI"
    assert args_mod.positive_ints("1,64", "--batch") == (1, 64)
    with pytest.raises(ValueError, match="--batch"):
        args_mod.positive_ints("0", "--batch")


def test_combinations_reuse_their_base_model_and_give_the_same_outputs():
    model = nc.load(LENET300)
    x, y = nc.data.mnist("test", layout="NC")
    ctx = suite.Context(model, x[:50], y[:50], x[:64], (1, 4), 2, 0.5, "lenet300")
    for calibrated in (False, True):
        combo = next(r for r in suite.RECIPES if r.method == "prune + int8" and r.calibrated == calibrated)
        small, seconds = suite.compressed(ctx, combo)
        base, base_s = ctx.compressed[("prune", "sparsity=0.9", calibrated)]
        c = x[:64] if calibrated else None
        direct = nc.quantize(nc.prune(model, sparsity=0.9, calibration=c), calibration=c)
        assert np.array_equal(small(x[:10]), direct(x[:10])) and seconds >= base_s
        assert suite.compressed(ctx, combo)[0] is small
    plain = next(r for r in suite.RECIPES if (r.method, r.settings, r.calibrated) == ("prune", "sparsity=0.9", False))
    assert suite.compressed(ctx, plain)[0] is ctx.compressed[("prune", "sparsity=0.9", False)][0]


def test_budget_shortens_measurements_only_when_the_run_is_behind():
    b = timing.Budget(100.0, 10)
    assert b.take(1.0, cap=1.0) == 1.0                  # 10 s per measurement available: the cap holds
    late = timing.Budget(0.0, 10, floor=0.2)
    assert late.take(1.0, cap=1.0) == pytest.approx(0.2) and late.take(6.0, cap=6.0) == pytest.approx(1.2)
    tight = timing.Budget(5.0, 10)
    assert 0.2 <= tight.take(1.0, cap=1.0) <= 0.5


def test_lone_calls_alternate_the_contenders_each_after_a_pause(monkeypatch):
    """serving.lone_calls: one untimed call each, then A B A B ..., a pause before every timed call."""
    from nncomp.bench import serving
    order, pauses = [], []
    monkeypatch.setattr(serving.time, "sleep", lambda s: pauses.append(s))
    got = serving.lone_calls({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, calls=3, pause=0.01)
    assert order == ["a", "b"] * 4 and pauses == [0.01] * 6
    assert set(got) == {"a", "b"} and all(v["n"] == 3 and v["median_ms"] >= 0 for v in got.values())
