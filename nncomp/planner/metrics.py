"""Named scores for ``nc.optimize(metric=...)`` and ``python -m nncomp optimize --metric NAME``.

A metric is a function ``(outputs, reference) -> float``, higher is better, the budget in points of
100 x it; ``reference`` is the labels given, or the original model's outputs on the same samples.
These cover models that are not classifiers without writing one:

- ``map_iou(thresh)``: the IoU of the two binarized maps ``outputs > thresh`` and ``reference >
  thresh`` over every sample and pixel (1.0 when both are empty): a segmentation or text
  detector's probability map (DBNet's threshold is 0.3).
- ``cosine``: the mean over samples of the cosine similarity of each sample's outputs, flattened, with
  the reference's (1.0 for a sample whose outputs are both zero): any model, as agreement of its
  raw outputs.
- ``ctc(blank)``: the share of samples whose greedy CTC decoding (per time step the class of largest
  output, repeats merged, blanks dropped) is the reference's: a text recognizer or speech model with
  ``(n, steps, classes)`` outputs, scored as whole lines read (or heard) the same.

:func:`named` turns the command line's spelling into one: ``top1`` (None: top-1 accuracy or
agreement), ``map-iou`` or ``map-iou:0.5``, ``cosine``, ``ctc`` or ``ctc:BLANK``.
"""
import numpy as np

from ..checks import check_number
from ..errors import CompressionParameterError

__all__ = ["NAMES", "map_iou", "cosine", "ctc", "named"]

NAMES = ("top1", "map-iou[:THRESH]", "cosine", "ctc[:BLANK]")


def map_iou(thresh=0.3):
    """A metric: the IoU of ``outputs > thresh`` and ``reference > thresh`` (all samples pooled)."""
    thresh = check_number(thresh, "thresh", method="map_iou", fix="pass a finite number, e.g. 0.3")

    def score(outputs, reference):
        a, b = np.asarray(outputs) > thresh, np.asarray(reference) > thresh
        if a.shape != b.shape:
            raise CompressionParameterError(f"map_iou: outputs {a.shape} and reference {b.shape} differ; expected "
                                            "maps of the same shape (labels=None compares with the original model)")
        union = int(np.logical_or(a, b).sum())
        return float(np.logical_and(a, b).sum() / union) if union else 1.0
    score.__name__ = f"map_iou@{thresh:g}"
    return score


def cosine(outputs, reference):
    """The mean over samples of the cosine similarity of their flattened outputs and reference."""
    a = np.asarray(outputs, np.float64).reshape(len(outputs), -1)
    b = np.asarray(reference, np.float64).reshape(len(reference), -1)
    if a.shape != b.shape:
        raise CompressionParameterError(f"cosine: outputs {a.shape} and reference {b.shape} differ (per sample, "
                                        "flattened); expected the same shape")
    dot, na, nb = (a * b).sum(1), np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both = (na == 0) & (nb == 0)
    sim = np.where(both, 1.0, dot / np.maximum(na * nb, 1e-300))
    return float(sim.mean()) if len(sim) else 1.0


def _ctc_sequences(values, blank, what):
    """Per sample the greedy CTC decoding of ``(n, steps, classes)`` outputs, or label sequences given
    as ``(n, length)`` integers padded with negatives."""
    v = np.asarray(values)
    if v.ndim == 3:
        idx = v.argmax(axis=2)
        keep = idx != blank
        keep[:, 1:] &= idx[:, 1:] != idx[:, :-1]
        return [tuple(row[k].tolist()) for row, k in zip(idx, keep)]
    if v.ndim == 2 and v.dtype.kind in "iu":
        return [tuple(row[row >= 0].tolist()) for row in v]
    raise CompressionParameterError(f"ctc: {what} of shape {v.shape} ({v.dtype}); expected (n, steps, classes) "
                                    "outputs, or labels as (n, length) class indices padded with -1")


def ctc(blank=0):
    """A metric: the share of samples whose greedy CTC decoding equals the reference's (labels as
    ``(n, length)`` class indices padded with -1, or the original model's outputs)."""
    blank = check_number(blank, "blank", integer=True, low=0, method="ctc", fix="the blank class index, e.g. 0")

    def score(outputs, reference):
        got = _ctc_sequences(outputs, blank, "outputs")
        want = _ctc_sequences(reference, blank, "reference")
        if len(got) != len(want):
            raise CompressionParameterError(f"ctc: {len(got)} outputs against {len(want)} references; expected "
                                            "one reference per sample")
        return float(np.mean([a == b for a, b in zip(got, want)])) if got else 1.0
    score.__name__ = f"ctc@{blank}"
    return score


def named(spec):
    """The metric the name ``spec`` stands for (None for ``"top1"``)."""
    text = str(spec).strip().lower()
    if text == "top1":
        return None
    if text == "cosine":
        return cosine
    if text == "ctc" or text.startswith("ctc:"):
        _, _, b = text.partition(":")
        if b and not b.isdigit():
            raise CompressionParameterError(f"metric {spec!r}: the blank class after 'ctc:' must be an integer "
                                            ">= 0, e.g. ctc:0")
        return ctc(int(b) if b else 0)
    if text == "map-iou" or text.startswith("map-iou:"):
        _, _, t = text.partition(":")
        try:
            thresh = float(t) if t else 0.3
        except ValueError:
            thresh = float("nan")
        if not np.isfinite(thresh):
            raise CompressionParameterError(f"metric {spec!r}: the threshold after 'map-iou:' must be a finite "
                                            "number, e.g. map-iou:0.3")
        return map_iou(thresh)
    raise CompressionParameterError(f"unknown metric {spec!r}; expected one of {', '.join(NAMES)}")
