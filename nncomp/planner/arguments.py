"""The arguments of ``nc.optimize``, checked once (errors say what was expected, what came and the fix)."""
import numpy as np

from ..checks import check_choice, check_number, check_seed
from ..errors import CompressionParameterError
from .candidates import METHODS

__all__ = ["OBJECTIVES", "MIN_SAMPLES", "check_arguments", "check_confidence", "metric_name"]

OBJECTIVES = ("latency", "size", "energy")
MIN_SAMPLES = 12       # a quarter for the search and a quarter held out need at least 3 each


def check_arguments(model, calibration, labels, budget, batch, objective, methods, n_jobs, seed, metric=None):
    from ..compress.calibration import check_calibration, check_model
    check_model(model, "optimize")
    budget = check_number(budget, "budget", low=0, method="optimize",
                          fix="budget is the points of accuracy you accept to lose, e.g. 0.5")
    batch = check_number(batch, "batch", integer=True, low=1, method="optimize")
    check_choice(objective, "objective", OBJECTIVES, method="optimize")
    check_seed(seed, method="optimize")
    if methods is None:
        methods = METHODS
    if isinstance(methods, str):
        methods = [methods]
    bad = [m for m in methods if not isinstance(m, str) or m not in METHODS]
    if bad or not list(methods):
        raise CompressionParameterError(f"optimize(): methods must be a non-empty list of names from "
                                        f"{list(METHODS)}; got {methods!r}. Drop {bad}, or pass methods=None "
                                        "for all")
    if n_jobs is not None:
        check_number(n_jobs, "n_jobs", integer=True, low=-64, method="optimize",
                     fix="None (in turn), a number of jobs, or -1 for one per core")
        if n_jobs == 0:
            raise CompressionParameterError("optimize(): n_jobs=0 runs nothing; pass None, a positive number or -1")
    if calibration is None:
        raise CompressionParameterError("optimize() needs calibration inputs (a few thousand training samples in "
                                        f"the model's layout, shape (n, {', '.join(map(str, model.input_shape))}))")
    x = check_calibration(calibration, model, "optimize")
    if x.shape[0] < MIN_SAMPLES:
        raise CompressionParameterError(f"optimize(): calibration has {x.shape[0]} samples; expected at least "
                                        f"{MIN_SAMPLES} (half fit, a quarter searched, a quarter held out); pass more")
    if metric is None:
        out = model.shapes_for(model.internal_input_shape)[model.outputs[0]]
        if len(out) != 1:
            raise CompressionParameterError(
                f"optimize(): top-1 scoring (metric=None) needs a classifier's output, (n, classes); this model "
                f"returns per-sample shape {tuple(out)} (internal layout). Pass metric= one that fits it: "
                "nncomp.planner.metrics.ctc() for (n, steps, classes) sequences, map_iou() for probability maps, "
                "cosine for any output, or your own function (outputs, reference) -> score")
    if metric is not None and not callable(metric):
        raise CompressionParameterError(f"optimize(): metric must be a function (outputs, reference) -> score, "
                                        f"higher is better; got {type(metric).__name__}. Pass metric=None to "
                                        "score top-1 accuracy or agreement")
    if labels is not None and metric is not None:
        y = np.asarray(labels)
        if y.ndim < 1 or y.shape[0] != x.shape[0]:
            raise CompressionParameterError(f"optimize(): with a metric, labels are its reference values, one per "
                                            f"calibration sample: {x.shape[0]} along the first axis; got shape "
                                            f"{y.shape}. Pass labels=None to compare with the original model's outputs")
        labels = y
    elif labels is not None:
        y = np.asarray(labels)
        if y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
            raise CompressionParameterError(f"optimize(): labels must be {x.shape[0]} integer class indices, one per "
                                            f"calibration sample; got {y.dtype} {y.shape}. Pass labels=None to "
                                            "score agreement with the original model")
        labels = y
    return x, labels, float(budget), int(batch), tuple(dict.fromkeys(methods))


def check_confidence(confidence):
    """``confidence`` as a float in [0.5, 1) (the held-out check's one-sided level)."""
    return check_number(confidence, "confidence", low=0.5, high=1, high_open=True, method="optimize",
                        fix="the held-out check's confidence level, e.g. 0.8 (0.5: the measured drop alone)")


def metric_name(metric, labels):
    """The plan's name of what the budget counts: a metric's function name, else top-1 accuracy
    (labels) or agreement with the original model."""
    if metric is not None:
        return getattr(metric, "__name__", type(metric).__name__)
    return "accuracy" if labels is not None else "agreement"
