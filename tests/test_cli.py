"""The command line: python -m nncomp info | compress | eval | bench, and its one-line errors (exit 2)."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import nncomp as nc
from nncomp import cli

LENET300 = str(nc.data.model_path("lenet300"))
LENET5 = str(nc.data.model_path("lenet5"))
HAS_QUANTIZE = importlib.util.find_spec("nncomp.compress.quantization") is not None


def run_main(argv, capsys):
    """``(exit code, stdout, stderr)`` of cli.main(argv) in this process."""
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code, err):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("nncomp: error: ") or ": error: " in lines[0]


def test_info_prints_the_summary(capsys):
    code, out, err = run_main(["info", LENET5], capsys)
    assert code == 0 and err == ""
    assert "Model 'lenet5'" in out and "features.0" in out and "total: 1,724,320 bytes" in out


@pytest.mark.parametrize("argv", [
    [], ["frobnicate"], ["info"], ["info", "a", "b"], ["compress", LENET300],  # no -o
    ["compress", LENET300, "-o", "x.h5", "--prune", "abc"], ["compress", LENET300, "-o", "x.h5", "--share", "2.5"],
    ["eval", LENET300, "--batch", "0"], ["eval", LENET300, "--batch", "x"], ["eval", LENET300, "--repeat", "0"],
    ["compress", LENET300, "-o", "x.h5"],  # nothing to do
    ["compress", LENET300, "-o", "x.h5", "--quantize", "int4"],
    ["bench", "--batch", "0"], ["bench", "--methods", "nope"], ["bench", "--threads", "0"],
    ["bench", "--data", "d.npz"], ["bench", "--model", "/no/such/model.h5"], ["bench", "--frob"],
    ["bench", "--suite", "nope"], ["bench", "--suite", "sparse", "--parts", "nope"], ["bench", "--parts", "fc6"],
    ["bench", "--budget", "-1"],
])
def test_bad_arguments_exit_2_with_one_line(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(argv, capsys)
    assert_one_line_error(code, err)


def test_unreadable_files_exit_2_with_one_line(capsys, tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not a model\n" * 100)
    truncated = tmp_path / "cut.h5"
    truncated.write_bytes(open(LENET5, "rb").read()[:5000])
    for argv in (["info", str(tmp_path / "missing.h5")], ["info", str(text)], ["info", str(tmp_path)],
                 ["info", str(truncated)], ["eval", str(text)],
                 ["compress", str(text), "-o", str(tmp_path / "o.h5"), "--quantize", "weights"]):
        code, _, err = run_main(argv, capsys)
        assert_one_line_error(code, err)


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root reads any file")
def test_permission_denied_exits_2(capsys, tmp_path):
    p = tmp_path / "locked.h5"
    p.write_bytes(open(LENET300, "rb").read())
    p.chmod(0)
    code, _, err = run_main(["info", str(p)], capsys)
    assert_one_line_error(code, err)


def test_eval_reports_accuracy_and_speed(capsys, tmp_path):
    code, out, _ = run_main(["eval", LENET300, "--repeat", "2", "--batch", "1,8"], capsys)
    assert code == 0
    assert "accuracy 96.70%" in out and "batch 1:" in out and "batch 8:" in out
    x, y = nc.data.mnist("test", layout="NC")
    np.savez(tmp_path / "d.npz", x=x[:50], y=y[:50])
    code, out, _ = run_main(["eval", LENET300, "--data", str(tmp_path / "d.npz"), "--repeat", "1", "--batch", "1"],
                            capsys)
    model = nc.load(LENET300)
    want = 100 * float((model(x[:50]).argmax(1) == y[:50]).mean())
    assert code == 0 and f"accuracy {want:.2f}%" in out and "50 samples" in out


def test_eval_bad_data_files_exit_2(capsys, tmp_path):
    np.savez(tmp_path / "nox.npz", y=np.zeros(3))
    np.savez(tmp_path / "shape.npz", x=np.zeros((3, 5), np.float32))
    np.savez(tmp_path / "labels.npz", x=np.zeros((3, 784), np.float32), y=np.zeros(4))
    (tmp_path / "junk.npz").write_text("junk")
    for name in ("nox.npz", "shape.npz", "labels.npz", "junk.npz", "missing.npz"):
        code, _, err = run_main(["eval", LENET300, "--data", str(tmp_path / name), "--batch", "1",
                                 "--repeat", "1"], capsys)
        assert_one_line_error(code, err)


def test_eval_digits_that_do_not_fit_the_model_exit_2(capsys, tmp_path):
    m = nc.Model([nc.Node("fc", nc.Dense(np.ones((2, 3), np.float32)))], input_shape=(3,), input_layout="NC")
    nc.save(m, tmp_path / "tiny.h5")
    code, _, err = run_main(["eval", str(tmp_path / "tiny.h5")], capsys)
    assert_one_line_error(code, err)


def _recipe_files(tmp_path, steps_json, steps_toml):
    (tmp_path / "r.json").write_text(json.dumps({"calibration": 64, "steps": steps_json}))
    (tmp_path / "r.toml").write_text("calibration = 64\n" + steps_toml)
    return tmp_path / "r.json", tmp_path / "r.toml"


@pytest.mark.skipif(not HAS_QUANTIZE, reason="quantization has not landed")
def test_compress_with_options_and_recipes(capsys, tmp_path):
    out = tmp_path / "q.h5"
    code, text, _ = run_main(["compress", LENET300, "-o", str(out), "--quantize", "weights"], capsys)
    assert code == 0 and "wrote" in text
    q = nc.load(out)
    dense = nc.load(LENET300)
    x = nc.data.mnist("test", layout="NC")[0][:100]
    assert q.nbytes < dense.nbytes / 3
    assert np.array_equal(q(x), nc.quantize(dense, weights_only=True)(x))
    rj, rt = _recipe_files(tmp_path, [{"method": "quantize", "weights_only": True}],
                           '[[steps]]\nmethod = "quantize"\nweights_only = true\n')
    calib = nc.data.mnist("train", layout="NC")[0][:64]
    want = nc.quantize(dense, weights_only=True, calibration=calib)(x)
    for recipe in (rj, rt):
        code, _, err = run_main(["compress", LENET300, "-o", str(out), "--recipe", str(recipe)], capsys)
        assert code == 0, err
        assert np.array_equal(nc.load(out)(x), want)


@pytest.mark.parametrize("content", [
    "{not json", json.dumps({"steps": []}), json.dumps({"steps": [{"method": "explode"}]}),
    json.dumps({"steps": [{"method": "quantize", "calibration": 5}]}), json.dumps({"steps": [], "x": 1}),
    json.dumps({"steps": [{"method": "quantize"}], "calibration": -1}),
    json.dumps({"steps": [{"method": "quantize"}], "huffman": "yes"}), json.dumps(["quantize"]),
])
def test_bad_recipes_exit_2(content, capsys, tmp_path):
    (tmp_path / "r.json").write_text(content)
    code, _, err = run_main(["compress", LENET300, "-o", str(tmp_path / "o.h5"), "--recipe",
                             str(tmp_path / "r.json")], capsys)
    assert_one_line_error(code, err)
    assert not (tmp_path / "o.h5").exists()


def test_bad_toml_recipe_and_options_with_recipe_exit_2(capsys, tmp_path):
    (tmp_path / "r.toml").write_text("steps = [ broken")
    out = str(tmp_path / "o.h5")
    for argv in (["compress", LENET300, "-o", out, "--recipe", str(tmp_path / "r.toml")],
                 ["compress", LENET300, "-o", out, "--recipe", str(tmp_path / "missing.toml")],
                 ["compress", LENET300, "-o", out, "--recipe", str(tmp_path / "r.toml"), "--quantize", "weights"],
                 ["compress", LENET300, "-o", str(tmp_path / "no" / "dir.h5"), "--quantize", "weights"]):
        code, _, err = run_main(argv, capsys)
        assert_one_line_error(code, err)


@pytest.mark.skipif(not HAS_QUANTIZE, reason="quantization has not landed")
def test_rejected_method_parameters_exit_2(capsys, tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"steps": [{"method": "quantize", "bits": 4}]}))
    (tmp_path / "k.json").write_text(json.dumps({"steps": [{"method": "quantize", "colour": "red"}]}))
    for recipe in ("r.json", "k.json"):
        code, _, err = run_main(["compress", LENET300, "-o", str(tmp_path / "o.h5"), "--recipe",
                                 str(tmp_path / recipe)], capsys)
        assert_one_line_error(code, err)


def test_python_dash_m_entry_point(tmp_path):
    """The real entry point: a bad file gives exit code 2 and one line on stderr."""
    env = dict(os.environ, NNCOMP_KEEP_OPENBLAS_ENV="1")
    r = subprocess.run([sys.executable, "-m", "nncomp", "info", str(tmp_path / "none.h5")], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""
    r = subprocess.run([sys.executable, "-m", "nncomp", "info", LENET300], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0 and "lenet300" in r.stdout


@pytest.fixture
def calib_npz(tmp_path, monkeypatch):
    """400 training digits of LeNet-300 (x, y) in an .npz; short timings, a cache of the test's own."""
    from nncomp.planner import latency
    monkeypatch.setenv(latency.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(latency, "TARGET_S", 0.01)
    monkeypatch.setattr(latency, "MIN_CALLS", 4)
    x, y = nc.data.mnist("train", layout="NC")
    path = tmp_path / "calib.npz"
    np.savez(path, x=x[:400], y=y[:400])
    return path


def test_optimize_saves_the_model_with_its_plan_and_prints_it(capsys, tmp_path, calib_npz):
    out = tmp_path / "fast.h5"
    code, stdout, err = run_main(["optimize", LENET300, "--budget", "1", "--batch", "1", "--calib", str(calib_npz),
                                  "--methods", "quantize", "--confidence", "0.9", "-o", str(out)], capsys)
    assert code == 0, err
    assert "Optimization plan: objective latency, budget 1 points of accuracy, batch 1" in stdout
    assert "fc1" in stdout and f"wrote {out}" in stdout
    assert "[1/4] timing 9 candidates of 3 layers at batch 1" in err and "[4/4]" in err
    back = nc.load(out)
    assert back.plan is not None and back.plan.budget == 1.0 and str(back.plan) in stdout
    assert back.plan.confidence == 0.9 and back.plan.heldout_bound <= 1.0


@pytest.mark.parametrize("extra", [
    ["--budget", "-0.5"], ["--methods", "quantize,magic"], ["--objective", "speed"], ["--batch", "0"],
    ["--calibration", "0"], ["--calib", "WRONG"], ["--calib", "NOLABELS_SHORT"], ["--metric", "nope"],
    ["--metric", "map-iou:x"], ["--confidence", "1.5"],
])
def test_optimize_bad_input_exits_2_with_one_line(extra, capsys, tmp_path, calib_npz):
    x = np.load(calib_npz)["x"]
    np.savez(tmp_path / "wrong.npz", x=x.reshape(-1, 28, 28), y=np.zeros(len(x), np.int64))   # not (n, 784)
    np.savez(tmp_path / "short.npz", x=x[:5])
    extra = [{"WRONG": str(tmp_path / "wrong.npz"), "NOLABELS_SHORT": str(tmp_path / "short.npz")}.get(e, e)
             for e in extra]
    argv = ["optimize", LENET300, "-o", str(tmp_path / "o.h5"), "--methods", "quantize"]
    if "--calib" not in extra:
        argv += ["--calib", str(calib_npz)]
    code, _, err = run_main(argv + extra, capsys)
    assert_one_line_error(code, err)
    assert not (tmp_path / "o.h5").exists()


def test_a_file_with_free_input_dims_takes_the_input_shape_or_its_data(capsys, tmp_path):
    """A real ONNX file whose input leaves height and width free (the PP-OCR classifier): the size
    comes from --input-shape or from the data given; without either, one line naming the option."""
    path = str(nc.data.real_model_path("ppocr_cls"))
    code, out, err = run_main(["info", path], capsys)
    assert_one_line_error(code, err)
    assert "--input-shape" in err
    code, out, err = run_main(["info", path, "--input-shape", "3,48,192"], capsys)
    assert code == 0 and "MACs per sample" in out
    for bad in ("3,x", "3,0,192", ""):
        code, out, err = run_main(["info", path, "--input-shape", bad], capsys)
        assert_one_line_error(code, err)
    code, out, err = run_main(["info", path, "--input-shape", "3,48"], capsys)     # wrong rank for the model
    assert_one_line_error(code, err)
    x = np.random.default_rng(0).random((4, 3, 48, 96), dtype=np.float32)
    np.savez(tmp_path / "lines.npz", x=x)
    code, out, err = run_main(["eval", path, "--data", str(tmp_path / "lines.npz"), "--batch", "1", "--repeat", "2"],
                              capsys)
    assert code == 0 and "4 samples" in out
    want = nc.load(path, input_shape=(3, 48, 96))
    assert f"{want.macs:,} MACs per sample" in out


def test_optimize_with_a_named_metric(capsys, tmp_path, calib_npz):
    """--metric cosine: the budget counts the outputs' cosine similarity with the original model's
    (the labels in the .npz are class labels, not its reference), and the plan names it."""
    out = tmp_path / "fast.h5"
    code, stdout, err = run_main(["optimize", LENET300, "--budget", "1", "--calib", str(calib_npz), "--metric",
                                  "cosine", "--methods", "quantize", "-o", str(out)], capsys)
    assert code == 0, err
    assert "budget 1 points of cosine" in stdout
    plan = nc.load(out).plan
    assert plan.metric == "cosine" and plan.heldout_drop <= 1 + 1e-9
