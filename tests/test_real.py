"""The real-world PP-OCR models (nncomp/data/real/), their rendered inputs, rapidocr's preprocessing and
the metrics (nncomp.bench.ocr, nncomp.bench.real), with ONNX Runtime as the runner.

The preprocessing and post-processing are checked against what rapidocr-onnxruntime 1.4.4's own code
(OpenCV, pyclipper, shapely) made of the same pixels (data/fixtures/real_rapidocr.npz, written by
tools/make_real_goldens.py); the metric thresholds sit below what ONNX Runtime 1.32 measured here
(classifier 96.1 % on 256 lines: upright 94.5 %, rotated 97.7 %; detector recall 42/44 boxes).
"""
import hashlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import nncomp as nc

pytest.importorskip("PIL", reason="Pillow renders the text lines and pages (the test extra installs it)")
from nncomp.bench import ocr, real  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOLDENS = ROOT / "data" / "fixtures" / "real_rapidocr.npz"
FONT_SHA256 = "abdc775b21b1bc470d50c97e790d276f2054b7504e56e5bd3e64f48d68582322"   # DejaVu Sans 2.37
needs_ort = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                               reason="ONNX Runtime runs the real models (the test extra installs it)")


def _fetch_tool():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import fetch_real_models
    finally:
        sys.path.remove(str(ROOT / "tools"))
    return fetch_real_models


# ----------------------------------------------------------------------------- the files
def test_shipped_files_match_their_pinned_sha256():
    tool = _fetch_tool()
    assert tool.check(nc.data.DATA_DIR / "real") == []
    assert tool.OUT == nc.data.DATA_DIR / "real"
    font = nc.data.real_path("fonts/DejaVuSans.ttf")
    assert hashlib.sha256(font.read_bytes()).hexdigest() == FONT_SHA256
    for name, file in nc.data.REAL_MODELS.items():
        assert nc.data.real_model_path(name).name == file
    with pytest.raises(nc.NncompError, match="ppocr_cls, ppocr_det, ppocr_rec"):
        nc.data.real_model_path("ppocr_v5")


def test_ocr_constants_are_the_config_yaml_values():
    yaml = pytest.importorskip("yaml")
    cfg = yaml.safe_load(nc.data.real_path("config.yaml").read_text())
    det, cls = cfg["Det"], cfg["Cls"]
    assert tuple(cls["cls_image_shape"]) == ocr.CLS_IMAGE_SHAPE and tuple(cls["label_list"]) == ocr.CLS_LABELS
    assert cls["cls_thresh"] == ocr.CLS_THRESH
    assert (det["limit_side_len"], det["limit_type"]) == (ocr.DET_LIMIT_SIDE_LEN, ocr.DET_LIMIT_TYPE)
    assert (tuple(det["mean"]), tuple(det["std"])) == (ocr.DET_MEAN, ocr.DET_STD)
    assert (det["thresh"], det["box_thresh"], det["unclip_ratio"], det["max_candidates"]) == (
        ocr.DET_THRESH, ocr.DET_BOX_THRESH, ocr.DET_UNCLIP_RATIO, ocr.DET_MAX_CANDIDATES)
    assert det["use_dilation"] is True and det["score_mode"] == "fast"
    assert tuple(cfg["Rec"]["rec_img_shape"]) == ocr.REC_IMAGE_SHAPE and cfg["Rec"]["rec_batch_num"] == ocr.REC_BATCH


# ----------------------------------------------------------------------------- rendering
def test_rendering_is_deterministic_per_seed():
    a, la = ocr.text_lines(6, seed=3)
    b, lb = ocr.text_lines(6, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and np.array_equal(la, lb)
    assert list(la) == [0] * 6 + [1] * 6
    assert np.array_equal(a[6], a[0][::-1, ::-1])                      # the rotated copy
    c, _ = ocr.text_lines(6, seed=4)
    assert any(x.shape != y.shape or not np.array_equal(x, y) for x, y in zip(a, c))
    (p1, b1), = ocr.text_pages(1, seed=2)
    (p2, b2), = ocr.text_pages(1, seed=2)
    assert np.array_equal(p1, p2) and np.array_equal(b1, b2)
    assert p1.shape == (640, 640, 3) and p1.dtype == np.uint8 and 5 <= len(b1) <= 9
    ink, outside = p1[:, :, 0] < 128, np.ones((640, 640), bool)
    for x0, y0, x1, y1 in b1:                                          # ink inside every box, none outside
        assert ink[y0:y1, x0:x1].mean() > 0.05
        outside[y0:y1, x0:x1] = False
    assert not ink[outside].any()


# ----------------------------------------------------------------------------- against rapidocr's code
@pytest.fixture(scope="module")
def goldens():
    with np.load(GOLDENS) as d:
        return dict(d)


def _grey(x):
    return np.clip(np.rint(x * 127.5 + 127.5), 0, 255).astype(np.uint8)


def test_cls_preprocessing_matches_rapidocr(goldens):
    lines = [np.repeat(goldens[f"line_{i}"][:, :, None], 3, axis=2) for i in range(16)]
    x = ocr.cls_preprocess(lines)
    assert x.shape == (16, 3, 48, 192) and x.dtype == np.float32
    assert np.array_equal(x[:, 0], x[:, 2])
    diff = np.abs(_grey(x[:, 0]).astype(int) - goldens["cls_u8"])
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    for i, w in enumerate(goldens["cls_width"]):
        assert np.all(x[i, :, :, w:] == 0) and np.any(x[i, :, :, w - 1] != 0)


def test_rec_preprocessing_is_the_classifiers_at_width_320(goldens):
    """rapidocr's recognizer resizes and normalizes as its classifier does (the same resize_norm_img
    steps), padding to 320: lines narrower than 192 give the classifier's pixels, then zeros."""
    lines = [np.repeat(goldens[f"line_{i}"][:, :, None], 3, axis=2) for i in range(16)]
    x192, x320 = ocr.cls_preprocess(lines), ocr.cls_preprocess(lines, ocr.REC_IMAGE_SHAPE)
    assert x320.shape == (16, 3, 48, 320)
    narrow = goldens["cls_width"] < 192
    assert narrow.any()
    assert np.array_equal(x320[narrow, :, :, :192], x192[narrow]) and not x320[narrow, :, :, 192:].any()
    for i, line in enumerate(lines):                 # wider lines keep their aspect up to 320 columns
        w = min(320, int(np.ceil(48 * line.shape[1] / line.shape[0])))
        assert np.all(x320[i, :, :, w:] == 0) and np.any(x320[i, :, :, w - 1] != 0)


def test_rec_lines_fit_the_input_and_are_deterministic():
    a, ta = ocr.rec_lines(12, seed=5)
    b, tb = ocr.rec_lines(12, seed=5)
    assert ta == tb and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(im.shape[1] * 48 <= 320 * im.shape[0] for im in a) and all(t and t == t.strip() for t in ta)
    x, texts = real.recognizer_inputs(4, seed=5)
    assert x.shape == (4, 3, 48, 320) and texts == ta[:4]


def test_ctc_decoding_is_rapidocrs():
    """Greedy CTC as rapidocr's CTCLabelDecode: repeats merged, blanks (0) dropped and separating
    repeats, class k is characters[k - 1], the last class a space; confidence the kept steps' mean."""
    chars = ["a", "b", "c"]                                   # classes: blank a b c space
    steps = [1, 1, 0, 1, 2, 2, 4, 3, 0, 0]                    # a a _ a b b ' ' c _ _
    probs = np.full((2, len(steps), 5), 0.01, np.float32)
    for t, k in enumerate(steps):
        probs[0, t, k] = 0.5 + 0.04 * t
    probs[1, :, 0] = 0.9                                      # all blank: nothing read
    (text, conf), (empty, zero) = ocr.rec_decode(probs, chars)
    assert text == "aab c" and empty == "" and zero == 0.0
    kept = [0, 3, 4, 6, 7]                                    # first of each run, blanks out
    assert conf == pytest.approx(np.mean([0.5 + 0.04 * t for t in kept]), rel=1e-6)
    assert ocr.edit_distance("kitten", "sitting") == 3 and ocr.edit_distance("", "abc") == 3
    assert ocr.edit_distance("abc", "abc") == 0 and ocr.edit_distance("ab", "ba") == 2


def test_det_preprocessing_matches_rapidocr(goldens):
    page = np.repeat(goldens["page"][:, :, None], 3, axis=2)
    assert ocr.det_size(640, 640) == (736, 736) and ocr.det_size(640, 640, limit_side_len=640) == (640, 640)
    assert ocr.det_size(100, 300) == (736, 2208) and ocr.det_size(1000, 1500) == (992, 1504)
    x = ocr.det_preprocess(page)
    assert x.shape == (1, 3, 736, 736) and x.dtype == np.float32
    diff = np.abs(_grey(x[0, 0, :96]).astype(int) - goldens["det_rows_u8"])
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99


@needs_ort
def test_det_boxes_match_rapidocr_postprocessing(goldens):
    page = np.repeat(goldens["page"][:, :, None], 3, axis=2)
    run = real.ort_runner(real.model_path("ppocr_det"), threads=2)
    found, scores = ocr.db_boxes(run(ocr.det_preprocess(page)), page.shape[:2])
    want = goldens["det_boxes"]
    assert len(found) == len(want) == len(goldens["page_truth"]) and min(scores) > ocr.DET_BOX_THRESH
    assert ocr.box_iou(want, found).max(axis=1).min() > 0.85
    assert ocr.matched(goldens["page_truth"], found) == len(found)


def test_db_boxes_unclips_a_rectangle_as_rapidocr():
    prob = np.zeros((1, 1, 64, 128), np.float32)
    prob[0, 0, 20:30, 10:90] = 0.9                         # a 79 x 9 box in minAreaRect's measure
    prob[0, 0, 50:52, 10:20] = 0.9                         # too thin after the 2 x 2 dilation: dropped
    boxes, scores = ocr.db_boxes(prob, (128, 256))         # the source is twice the map's size
    d = 80 * 10 * 1.6 / (2 * 90)                           # dilation grows each side by one pixel
    assert len(boxes) == 1 and scores[0] == pytest.approx(0.9 * 80 * 10 / (81 * 11), rel=1e-6)
    assert boxes[0] == pytest.approx(np.round(np.array([10 - d, 20 - d, 90 + d, 30 + d]) * 2), abs=0)
    assert real.map_iou([prob], [prob]) == 1.0
    other = prob.copy()
    other[0, 0, 20:30, 50:90] = 0
    assert real.map_iou([other], [prob]) == pytest.approx((40 * 10 + 20) / (80 * 10 + 20))


def test_box_matching_is_one_to_one():
    truth = np.array([[0, 0, 10, 10], [20, 0, 30, 10]])
    assert ocr.matched(truth, np.array([[0, 0, 10, 10]])) == 1
    assert ocr.matched(truth, np.array([[0, 0, 10, 10], [1, 0, 11, 10]])) == 1
    assert ocr.matched(truth, np.array([[0, 0, 30, 10]])) == 0          # IoU 1/3 with each
    assert ocr.box_iou(truth, truth).diagonal() == pytest.approx([1.0, 1.0])


# ----------------------------------------------------------------------------- the metrics under ORT
@needs_ort
def test_ort_classifier_accuracy_on_rendered_lines():
    x, labels = real.classifier_inputs()
    s = real.classifier_scores(real.ort_runner(real.model_path("ppocr_cls"), threads=2), x, labels)
    assert s["n"] == 256 and s["probs"].shape == (256, 2)
    assert s["accuracy"] >= 0.93 and s["accuracy_upright"] >= 0.90 and s["accuracy_rotated"] >= 0.93
    assert s["mean_confidence"] >= 0.95


@needs_ort
def test_ort_detector_recall_on_rendered_pages():
    pages = real.detector_inputs()
    run = real.ort_runner(real.model_path("ppocr_det"), threads=2)
    s = real.detector_scores(run, pages)
    assert s["n_truth"] == 44 and s["recall"] >= 0.90 and s["precision"] >= 0.90
    again = real.detector_scores(run, pages[:2], reference={"maps": s["maps"][:2]})
    assert again["map_iou"] == 1.0 and again["max_abs_diff"] == 0.0
    assert real.timing_input("ppocr_det").shape == (1, 3, 640, 640)
    assert real.timing_input("ppocr_cls").shape == (1, 3, 48, 192)


@needs_ort
def test_ort_recognizer_reads_rendered_lines():
    pytest.importorskip("onnx", reason="the recognizer's dictionary is in its ONNX metadata")
    chars = real.characters()
    assert len(chars) == 6623 and all(c in chars for c in "0123456789.Noaz")
    x, texts = real.recognizer_inputs()
    s = real.recognizer_scores(real.ort_runner(real.model_path("ppocr_rec"), threads=2), x, texts, chars=chars)
    assert s["n"] == 96 and s["probs"].shape == (96, 40, 6625)
    assert s["line_accuracy"] >= 0.88 and s["cer"] <= 0.02 and s["mean_confidence"] >= 0.95
    assert real.timing_input("ppocr_rec").shape == (1, 3, 48, 320)


# ----------------------------------------------------------------------------- the bench suite
@needs_ort
@pytest.mark.parametrize("loadable", [False, True])
def test_real_suite_reports_nncomp_or_why_not(loadable, monkeypatch, tmp_path, capsys):
    """A runner that cannot load a file (a build without the ONNX importer) makes a row that says so,
    nothing crashes; a runner that loads (here ORT standing in) gets a time, the metric and the map
    IoU with ORT (nncomp itself: test_nncomp_runs_the_real_models_as_onnx_runtime_does)."""
    from nncomp.bench.__main__ import main
    if loadable:
        monkeypatch.setattr(real, "nncomp_runner", lambda p, **kw: real.ort_runner(p, threads=1))
    else:
        def refuse(path, **kw):
            raise nc.NncompError(f"{path}: not a readable HDF5 file")
        monkeypatch.setattr(real, "nncomp_runner", refuse)
    assert main(["--suite", "real", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    md = (tmp_path / "real.md").read_text()
    import json
    rows = json.loads((tmp_path / "real.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["ppocr_cls", "ppocr_det", "ppocr_rec"]
    assert all(r["ort"]["ms"] > 0 for r in rows)
    if loadable:
        assert rows[0]["nncomp"]["max_abs_diff"] < 1e-5 and rows[1]["nncomp"]["map_iou"] > 0.99
        assert rows[2]["nncomp"]["agreement"] == 1.0 and "lines decoded as ORT does 100.0%" in md
        assert "not loadable" not in md and "map IoU with ORT" in md
    else:
        assert "ppocr_det nncomp: not loadable: NncompError:" in out and "| nncomp | - | not loadable" in md


# ----------------------------------------------------------------------------- nncomp on them
@needs_ort
def test_nncomp_runs_the_real_models_as_onnx_runtime_does():
    """The imported PP-OCR models (MobileNetV3 classifier: depthwise convs, HardSwish, SE blocks;
    DBNet detector: Resize, ConvTranspose, Concat) give ONNX Runtime's numbers on rendered text, at
    their load size and at another one, and the same accuracy and boxes."""
    pytest.importorskip("onnx", reason="the test extra installs onnx")
    path = real.model_path("ppocr_cls")
    ours = real.nncomp_runner(path, input_shape=real.INPUT_SHAPES["ppocr_cls"])
    ort = real.ort_runner(path, threads=1)
    x, labels = real.classifier_inputs(24)
    assert np.abs(ours(x) - ort(x)).max() < 1e-4
    wide = np.ascontiguousarray(np.concatenate([x[:2], x[:2]], axis=3))        # 48 x 384 lines
    assert np.abs(ours(wide) - ort(wide)).max() < 1e-4
    a, b = real.classifier_scores(ours, x, labels), real.classifier_scores(ort, x, labels)
    assert a["accuracy"] == b["accuracy"] and a["accuracy"] >= 0.85

    path = real.model_path("ppocr_det")
    ours = real.nncomp_runner(path, input_shape=real.INPUT_SHAPES["ppocr_det"])
    ort = real.ort_runner(path, threads=1)
    pages = real.detector_inputs(1)
    want = real.detector_scores(ort, pages)
    got = real.detector_scores(ours, pages, reference=want)
    assert got["map_iou"] >= 0.995 and got["max_abs_diff"] < 1e-3
    assert got["recall"] == want["recall"]


@needs_ort
def test_nncomp_reads_text_lines_as_onnx_runtime_does():
    """The PP-OCRv4 recognizer (SVTR-LCNet: its attention blocks split a (batch, n, 3, heads, d) tensor
    after a Transpose that moves the batch axis, onnx_axes.Moved) decodes every line to ORT's text."""
    pytest.importorskip("onnx", reason="the test extra installs onnx")
    path = real.model_path("ppocr_rec")
    ours = real.nncomp_runner(path, input_shape=real.INPUT_SHAPES["ppocr_rec"])
    ort = real.ort_runner(path, threads=1)
    x, texts = real.recognizer_inputs(24, seed=1)
    want = real.recognizer_scores(ort, x, texts)
    got = real.recognizer_scores(ours, x, texts, chars=real.characters(path), reference=want)
    assert got["agreement"] == 1.0 and got["max_abs_diff"] < 5e-3 and got["line_accuracy"] >= 0.8
    narrow = np.ascontiguousarray(x[:3, :, :, :160])          # another width, as rapidocr's batches vary
    assert np.abs(ours(narrow) - ort(narrow)).max() < 1e-4


def test_three_bit_sharing_of_the_classifier_keeps_its_predictions():
    """k-means sharing at 3 bits with calibration on a real network (PP-OCR's direction classifier,
    an ONNX export with depthwise and pointwise convolutions): the codes chosen with their rounding
    errors spread over the other weights (codes.assign_codes) keep over 95% of its predictions on
    512 unseen lines (97.5% on 256 calibration lines, 98.8% on 512); the centroids refit alone keep
    91.0% and 91.8% (Zen 3)."""
    m = nc.load(str(real.model_path("ppocr_cls")), input_shape=real.INPUT_SHAPES["ppocr_cls"])
    cal, _ = real.classifier_inputs(128, seed=0)
    x, _ = real.classifier_inputs(256, seed=1)
    shared = nc.share(m, 3, calibration=cal)
    assert np.mean(shared(x).argmax(1) == m(x).argmax(1)) > 0.95
