"""The real-world models (PP-OCR's text-direction classifier, PP-OCRv4 text detector and text
recognizer, shipped in ``nncomp/data/real/``) on real inputs, under a runner: ONNX Runtime (the
reference) or nncomp.

A *runner* is a callable ``run(x) -> y``: NCHW float32 batch in, the model's first output in ONNX's
layout out (the classifier: ``(n, 2)`` probabilities; the detector: ``(n, 1, H, W)`` probabilities;
the recognizer: ``(n, 40, 6625)`` per time step class probabilities).
:func:`ort_runner` and :func:`nncomp_runner` make one from a model path; :func:`classifier_scores`,
:func:`detector_scores` and :func:`recognizer_scores` measure a runner on the inputs of
:func:`classifier_inputs`, :func:`detector_inputs` and :func:`recognizer_inputs` (rendered and
preprocessed by :mod:`nncomp.bench.ocr`).

    from nncomp.bench import real
    x, labels = real.classifier_inputs()
    real.classifier_scores(real.ort_runner(real.model_path("ppocr_cls")), x, labels)["accuracy"]
"""
import functools

import numpy as np

from ..data import real_model_path as model_path
from . import ocr

MODELS = ("ppocr_cls", "ppocr_det", "ppocr_rec")
CLS_LINES, CLS_SEED = 128, 0         # 128 upright lines and their 180-degree copies
DET_PAGES, DET_SEED = 6, 0
REC_LINES, REC_SEED = 96, 0
TIMING_SIZE = 640                    # the detector is timed on a page at 640 x 640 (no resize)
# the per-sample input shape each model is loaded with (ONNX order; all leave height and width free)
INPUT_SHAPES = {"ppocr_cls": (3, 48, 192), "ppocr_det": (3, TIMING_SIZE, TIMING_SIZE),
                "ppocr_rec": ocr.REC_IMAGE_SHAPE}

__all__ = ["MODELS", "model_path", "ort_runner", "nncomp_runner", "classifier_inputs", "detector_inputs",
           "recognizer_inputs", "classifier_scores", "detector_scores", "recognizer_scores", "characters",
           "map_iou", "timing_input"]


def ort_runner(path, *, threads=None, spin=False):
    """ONNX Runtime (CPU, float32) running the ONNX file ``path``: ``run(x) -> first output``.

    ``threads``: intra-op threads (default: Numba's current count, as every peer table); sequential
    execution and spinning off as in :func:`nncomp.bench.peers.ort_session`.
    """
    import numba

    from .peers import ort_session
    sess = ort_session(str(path), threads=threads or numba.get_num_threads(), spin=spin)
    name = sess.get_inputs()[0].name

    def run(x):
        return sess.run(None, {name: np.ascontiguousarray(x, np.float32)})[0]
    return run


def nncomp_runner(path, *, input_shape=None):
    """nncomp running the ONNX file ``path``: ``nc.load(path, input_shape=...)``, a Model callable on
    NCHW float32 batches (other sizes than ``input_shape`` too: both models leave height and width
    free) that returns the model's output in ONNX's layout. Raises what ``nc.load`` raises when it
    cannot read the file."""
    import nncomp as nc
    model = nc.load(str(path), input_shape=input_shape)

    def run(x):
        y = model(np.ascontiguousarray(x, np.float32))
        return y[0] if isinstance(y, (tuple, list)) else y
    run.model = model
    return run


def classifier_inputs(n=CLS_LINES, *, seed=CLS_SEED):
    """``(x, labels)``: ``2n`` rendered lines preprocessed as rapidocr does, ``(2n, 3, 48, 192)`` float32,
    the ``n`` upright first; labels int64, 0 upright and 1 rotated by 180 degrees."""
    lines, labels = ocr.text_lines(n, seed=seed)
    return ocr.cls_preprocess(lines), labels


def detector_inputs(n=DET_PAGES, *, seed=DET_SEED, limit_side_len=ocr.DET_LIMIT_SIDE_LEN):
    """``n`` rendered 640 x 640 pages preprocessed as rapidocr's config says (resized to 736 x 736):
    a list of ``(x (1, 3, H, W) float32, page (h, w), truth boxes (k, 4))``."""
    return [(ocr.det_preprocess(page, limit_side_len=limit_side_len), page.shape[:2], boxes)
            for page, boxes in ocr.text_pages(n, seed=seed)]


def recognizer_inputs(n=REC_LINES, *, seed=REC_SEED):
    """``(x, texts)``: ``n`` rendered lines (:func:`nncomp.bench.ocr.rec_lines`) preprocessed as rapidocr
    does, ``(n, 3, 48, 320)`` float32, and the text drawn on each."""
    lines, texts = ocr.rec_lines(n, seed=seed)
    return ocr.cls_preprocess(lines, ocr.REC_IMAGE_SHAPE), texts


def characters(path=None):
    """The recognizer's dictionary: its ONNX ``character`` metadata split into lines, as rapidocr
    reads it (``str.splitlines``), as a tuple. Needs the ``onnx`` package. Read once per file (the
    suite scores two runtimes; parsing the 10.9 MB model each time cost ~0.3 s)."""
    return _characters(str(path or model_path("ppocr_rec")))


@functools.lru_cache(maxsize=4)
def _characters(path):
    import onnx
    model = onnx.load(path, load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    return tuple(meta["character"].splitlines())


def timing_input(name, *, seed=0):
    """The batch-1 input a model is timed on: one preprocessed line ``(1, 3, 48, 192)`` for the classifier
    (``(1, 3, 48, 320)`` for the recognizer), a page at ``TIMING_SIZE`` x ``TIMING_SIZE``
    ``(1, 3, 640, 640)`` for the detector."""
    if name == "ppocr_cls":
        return classifier_inputs(1, seed=seed)[0][:1]
    if name == "ppocr_rec":
        return recognizer_inputs(1, seed=seed)[0][:1]
    page, _ = ocr.render_page(np.random.default_rng(seed), size=TIMING_SIZE)
    return ocr.det_preprocess(page, limit_side_len=TIMING_SIZE)


def classifier_scores(run, x, labels, *, batch=16):
    """The classifier's accuracy under ``run`` (labels decoded as rapidocr does: argmax of "0", "180").

    Returns a dict: ``accuracy``, ``accuracy_upright``, ``accuracy_rotated``, ``mean_confidence``
    (of the predicted label) and ``probs`` (n, 2) float32.
    """
    probs = np.concatenate([np.asarray(run(x[i:i + batch]), np.float32) for i in range(0, len(x), batch)])
    pred, conf = ocr.cls_decode(probs)
    ok = pred == labels
    return {"accuracy": float(ok.mean()), "accuracy_upright": float(ok[labels == 0].mean()),
            "accuracy_rotated": float(ok[labels == 1].mean()), "mean_confidence": float(conf.mean()),
            "n": int(len(labels)), "probs": probs}


def recognizer_scores(run, x, texts, *, chars=None, reference=None, batch=ocr.REC_BATCH):
    """The recognizer's accuracy under ``run``: each line decoded as rapidocr does
    (:func:`nncomp.bench.ocr.rec_decode` with the model's dictionary ``chars``, default
    :func:`characters`), against the text drawn.

    Returns a dict: ``line_accuracy`` (lines read exactly), ``cer`` (character error rate: edit
    distance over the drawn characters, all lines pooled), ``mean_confidence``, ``n``, ``texts`` (the
    decoded ones) and ``probs``; with ``reference`` (another call's result, e.g. ONNX Runtime's) also
    ``agreement`` (lines decoded to the same text) and ``max_abs_diff`` of the probabilities.
    """
    chars = characters() if chars is None else chars
    probs = np.concatenate([np.asarray(run(x[i:i + batch]), np.float32) for i in range(0, len(x), batch)])
    read = ocr.rec_decode(probs, chars)
    got = [t for t, _ in read]
    out = {"line_accuracy": float(np.mean([a == b for a, b in zip(got, texts)])),
           "cer": sum(ocr.edit_distance(a, b) for a, b in zip(got, texts)) / max(sum(map(len, texts)), 1),
           "mean_confidence": float(np.mean([c for _, c in read])), "n": len(texts), "texts": got,
           "probs": probs}
    if reference is not None:
        out["agreement"] = float(np.mean([a == b for a, b in zip(got, reference["texts"])]))
        out["max_abs_diff"] = float(np.abs(probs - reference["probs"]).max())
    return out


def detector_scores(run, pages, *, reference=None, iou=0.5):
    """The detector's box recall under ``run`` on ``pages`` (:func:`detector_inputs`).

    Boxes come from :func:`nncomp.bench.ocr.db_boxes` (rapidocr's DB post-processing, unclip included);
    a truth box counts as found when a box matches it one-to-one at IoU >= ``iou``. With ``reference``
    (another call's result, e.g. ONNX Runtime's), also ``map_iou``: the IoU of the two binarized maps
    (``prob > 0.3``) over all pages, and ``max_abs_diff`` of the probabilities.

    Returns a dict: ``recall``, ``precision``, ``n_truth``, ``n_found``, ``n_matched``, ``maps`` (the
    probability maps, for a later ``reference``) and, with ``reference``, ``map_iou``, ``max_abs_diff``.
    """
    maps, n_truth, n_found, n_matched = [], 0, 0, 0
    for x, src_hw, truth in pages:
        prob = np.asarray(run(x), np.float32)
        found, _ = ocr.db_boxes(prob, src_hw)
        maps.append(prob)
        n_truth, n_found, n_matched = n_truth + len(truth), n_found + len(found), n_matched + ocr.matched(truth, found, iou=iou)
    out = {"recall": n_matched / max(n_truth, 1), "precision": n_matched / max(n_found, 1), "n_truth": n_truth,
           "n_found": n_found, "n_matched": n_matched, "maps": maps}
    if reference is not None:
        out["map_iou"] = map_iou(maps, reference["maps"])
        out["max_abs_diff"] = max(float(np.abs(a - b).max()) for a, b in zip(maps, reference["maps"]))
    return out


def map_iou(maps, reference, *, thresh=ocr.DET_THRESH):
    """IoU of the binarized maps (``prob > thresh``) of two runs, summed over all pages (1.0 when both are
    empty): the planner's :func:`nncomp.planner.metrics.map_iou` over the pages' pixels pooled."""
    from ..planner.metrics import map_iou as pooled
    pairs = list(zip(maps, reference))
    if not pairs:
        return 1.0
    return pooled(thresh)(*(np.concatenate([np.ravel(m[k]) for m in pairs]) for k in (0, 1)))
