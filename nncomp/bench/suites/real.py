"""Real-world models nobody here trained: PP-OCR's text-direction classifier
(``ch_ppocr_mobile_v2.0_cls_infer.onnx``), the PP-OCRv4 text detector (``ch_PP-OCRv4_det_infer.onnx``)
and text recognizer (``ch_PP-OCRv4_rec_infer.onnx``, SVTR-LCNet: a convolutional backbone, two
attention blocks, a CTC head), from rapidocr-onnxruntime 1.4.4, on text lines and pages rendered with DejaVu Sans (nncomp.bench.ocr,
seed 0), run by ONNX Runtime float32 and by nncomp (``nc.load`` of the same file) side by side.

- **metric**: the classifier's accuracy on 128 upright lines and their 180-degree copies (labels as
  rapidocr decodes them); the detector's box recall at IoU >= 0.5 against the rendered line boxes on
  6 pages (640 x 640, preprocessed as rapidocr's config.yaml says: resized to 736 x 736), after
  rapidocr's DB post-processing with its unclip; for nncomp also the IoU of its binarized map
  (prob > 0.3) with ORT's and the largest probability difference; the recognizer's exact-line
  accuracy and character error rate on 96 lines (1-3 words or numbers, up to 320 / 48 as wide as
  high), greedy CTC-decoded with the model's own dictionary as rapidocr does, and for nncomp the lines
  decoded as ORT decodes them.
- **time**: batch 1 at a fixed size (the classifier 3 x 48 x 192, the detector 3 x 640 x 640, the
  recognizer 3 x 48 x 320), the
  runtimes alternating in blocks of BLOCK calls after a SETTLE_S (nncomp.bench.timing) untimed pause;
  medians. ORT runs with the suite's intra-op threads, sequentially, spinning off (as every peer table).

A runtime that cannot load or run a model gets the row "not loadable: <error>" instead of numbers.

    python -m nncomp.bench --suite real        # writes bench/out/real.json, real.md
"""
import os

import numpy as np

from ..timing import SETTLE_S, alternate, header, warm

THREADS = os.cpu_count() or 1
PARTS = ("cls", "det", "rec")
QUICK_PARTS = PARTS
BLOCK = 4


def _metric(name, run, data, reference=None):
    from .. import real
    if name == "ppocr_cls":
        s = real.classifier_scores(run, *data)
        if reference is not None:
            s["max_abs_diff"] = float(np.abs(s["probs"] - reference["probs"]).max())
        return s
    if name == "ppocr_rec":
        return real.recognizer_scores(run, *data, reference=reference)
    return real.detector_scores(run, data, reference=reference)


def _public(scores):
    return {k: v for k, v in scores.items() if k not in ("probs", "maps", "texts")}


def _nncomp(name, data, ort_scores):
    """nncomp's runner and metric, or ``(None, {"error": ...})`` when it cannot load or run the model."""
    from .. import real
    path = real.model_path(name)
    try:
        run = real.nncomp_runner(path, input_shape=real.INPUT_SHAPES[name])
        return run, _public(_metric(name, run, data, ort_scores))
    except Exception as e:  # noqa: BLE001 - every failure becomes the row's "not loadable" cell
        text = f"{type(e).__name__}: {e}".replace(str(path), path.name)     # no machine's folders in tables
        return None, {"error": text.splitlines()[0][:300]}


def run(result, opts):
    import numba

    from .. import peers, real
    try:
        peers.require_ort()
        import PIL  # noqa: F401 - renders the inputs
    except Exception as e:  # noqa: BLE001 - ONNX Runtime and Pillow are optional
        result["error"] = f"ONNX Runtime or Pillow unavailable: {e}"
        return
    threads = numba.get_num_threads()
    result["threads"] = threads
    rows = result.setdefault("rows", [])
    for part in opts.parts:
        name = f"ppocr_{part}"
        if part == "cls":
            data = real.classifier_inputs(16 if opts.quick else real.CLS_LINES)
        elif part == "rec":
            data = real.recognizer_inputs(12 if opts.quick else real.REC_LINES)
        else:
            data = real.detector_inputs(1 if opts.quick else real.DET_PAGES)
        ort = real.ort_runner(real.model_path(name), threads=threads)
        ort_scores = _metric(name, ort, data)
        nc_run, nc_scores = _nncomp(name, data, ort_scores)
        x1 = real.timing_input(name)
        contenders = {"ort": lambda: ort(x1)}
        if nc_run is not None:
            contenders["nncomp"] = lambda: nc_run(x1)
        for fn in contenders.values():     # untimed calls first, as vs_ort does
            warm(fn)
        t = alternate(contenders, repeat=opts.repeats(8 if part == "det" else 12, quick=2), block=BLOCK,
                      settle=SETTLE_S)
        row = {"model": name, "file": real.model_path(name).name, "input": list(x1.shape),
               "ort": {"ms": t["ort"]["median_ms"], **_public(ort_scores)},
               "nncomp": {"ms": t["nncomp"]["median_ms"], **nc_scores} if "nncomp" in t else nc_scores}
        rows.append(row)
        opts.say(_line(row, "ort"))
        opts.say(_line(row, "nncomp"))


def _metric_text(model, cell):
    if "error" in cell:
        return f"not loadable: {cell['error']}"
    if model == "ppocr_cls":
        text = (f"accuracy {cell['accuracy']:.1%} (upright {cell['accuracy_upright']:.1%}, "
                f"rotated {cell['accuracy_rotated']:.1%}, n {cell['n']})")
    elif model == "ppocr_rec":
        text = f"lines read exactly {cell['line_accuracy']:.1%}, CER {cell['cer']:.2%} (n {cell['n']})"
        if "agreement" in cell:
            text += f", lines decoded as ORT does {cell['agreement']:.1%}"
    else:
        text = f"box recall {cell['recall']:.1%} ({cell['n_matched']}/{cell['n_truth']}), precision {cell['precision']:.1%}"
    if "map_iou" in cell:
        text += f", map IoU with ORT {cell['map_iou']:.4f}"
    if "max_abs_diff" in cell:
        text += f", max |diff| {cell['max_abs_diff']:.1e}"
    return text


def _line(row, who):
    cell = row[who]
    ms = f"{cell['ms']:.2f} ms  " if "ms" in cell else ""
    return f"{row['model']} {who}: {ms}{_metric_text(row['model'], cell)}"


def markdown(result):
    lines = header(f"# Real-world models: PP-OCR under ONNX Runtime and nncomp ({result.get('threads', '?')} threads)",
                   result)
    if "error" in result:
        return "\n".join(lines + [result["error"], ""])
    lines += ["| model | input (batch 1) | runtime | median ms | metric |", "|---|---|---|---:|---|"]
    for r in result.get("rows", []):
        for who in ("ort", "nncomp"):
            cell = r[who]
            ms = f"{cell['ms']:.2f}" if "ms" in cell else "-"
            lines.append(f"| {r['model']} | {'x'.join(map(str, r['input']))} | {who} | {ms} | "
                         f"{_metric_text(r['model'], cell)} |")
    lines += ["", "ORT: ONNX Runtime float32, CPU. The metric runs every input of the suite; the time is batch 1 at "
              "the input shown. Inputs and metrics: nncomp.bench.real and nncomp.bench.ocr; models: "
              "data/real/README.md.", ""]
    return "\n".join(lines)
