"""The planner (issue 16): ``nc.optimize`` on the shipped models at batch 1 and 64 and on the PP-OCR
classifier (batch 1 and 64), detector (batch 1, budget in points of its map's IoU) and recognizer
(batch 1, budget in points of lines CTC-decoded as the original decodes them; tested on the lines
read exactly), against ONNX Runtime.

Each row plans one model at one batch with a 0.5-point budget on labelled calibration data (the first
CALIB training samples; a quarter of them held out by the planner), then reports what it chose, its
own final measurement against dense (alternating whole calls, medians, at that batch), the table's
prediction error, the file bytes, the accuracy change on the shipped test data (never seen by the
planner) and the planning time (one planner per model: the batch-64 row reuses the candidates the
batch-1 row built, and only measures). The chosen model is then timed again alternating with ONNX
Runtime on the same graph, float32, int8 dynamic (``quantize_dynamic`` of MatMul and Conv) and int8
static (``quantize_static``, QDQ, per-channel weights, activation ranges from the planner's own
calibration data), at the same batch and threads, as the vs_ort suite times whole models
(nncomp.bench.timing.in_loop: blocks of calls after an untimed pause, so that no contender meets
another's spinning threads; the planner's own timer alternates without pauses, fair only among
nncomp's models): ``vs ORT`` is the fastest ORT's time over the chosen model's (above 1: nncomp faster). The latency cache is off: every row measures afresh.

The ``size`` part plans LeNet-300-100 and LeNet-5 with ``objective="size"`` (the same budget, all
SIZE_CALIB shipped training digits as calibration) and reports the chosen plan, the file bytes as
``nc.save(..., huffman=True)`` writes them, without and with the plan the model carries, against
the dense model's file, the test accuracy and the planning time; the targets (issue 16) are 40x
and 35x smaller files within 0.5 point on the test digits.

    python -m nncomp.bench --suite optimize      # writes bench/out/optimize.json, optimize.md
    python -m nncomp.bench --suite optimize --parts size
"""
import contextlib
import dataclasses
import os
import time

import numpy as np

from ..timing import header, in_loop

THREADS = os.cpu_count() or 1
PARTS = ("plan", "size")
QUICK_PARTS = PARTS
MODELS = ("lenet300", "lenet5", "vgg_small", "resnet_small", "ppocr_cls", "ppocr_det", "ppocr_rec")
BATCHES = (1, 64)
# The PP-OCR detector plans at batch 1 only: a batch of 64 pages at 640 x 640 is 3 s a pass and
# several GB of activations, not a serving shape for it.
# The recognizer too: a text line at a time is how OCR pipelines call it (and its plan takes
# minutes per batch).
MODEL_BATCHES = {"ppocr_det": (1,), "ppocr_rec": (1,)}
CALIB = 4000
OCR_LINES = 1024          # PP-OCR classifier: 2 x 1024 rendered lines to plan on (512 held out), 2 x 256 to test
DET_PAGES = 32            # PP-OCR detector: 32 rendered 640 x 640 pages to plan on (8 held out), 8 to test
REC_LINES = 192           # PP-OCR recognizer: 192 rendered lines to plan on (48 held out: a line is 2.1 points, so the
                          # 0.5-point budget allows no changed line; 1,024 lines planned over 30 min), 96 to test
BUDGET = 0.5
INT8_OPS = ("MatMul", "Conv")
SIZE_MODELS = {"lenet300": 40.0, "lenet5": 35.0}     # model: target, times smaller on disk
SIZE_CALIB = 4000


@dataclasses.dataclass
class Case:
    """A model to plan: calibration ``x`` (``y`` its labels, or None), the ``metric`` the planner's
    budget is in (None: top-1), ``test(fn)`` the score of a call on the test data never planned on,
    named ``test_name`` (the table's test column says so unless it is accuracy), and the ONNX
    file's bytes (None: the graph nncomp exports)."""

    model: object
    x: np.ndarray
    y: object
    test: object
    test_name: str = "accuracy"
    metric: object = None
    serialized: bytes = None


def _data(name):
    """The :class:`Case` of model ``name``."""
    import nncomp as nc
    if name.startswith("ppocr"):
        from .. import real
        path = real.model_path(name)
        model = nc.load(str(path), input_shape=real.INPUT_SHAPES[name])
        with open(path, "rb") as fh:
            serialized = fh.read()
        if name == "ppocr_cls":
            x, y = real.classifier_inputs(OCR_LINES, seed=0)
            xt, yt = real.classifier_inputs(OCR_LINES // 4, seed=1)
            return Case(model, x, y, lambda fn: float(np.mean(fn(xt).argmax(1) == yt)), serialized=serialized)
        if name == "ppocr_rec":        # budget in points of lines decoded as the original decodes them
            from ...planner import metrics
            x, _ = real.recognizer_inputs(REC_LINES, seed=0)
            xt, texts = real.recognizer_inputs(seed=1)
            chars = real.characters(path)
            return Case(model, x, None, lambda fn: real.recognizer_scores(fn, xt, texts, chars=chars)["line_accuracy"],
                        "lines read", metrics.ctc(0), serialized)
        size = real.TIMING_SIZE
        x = np.concatenate([p[0] for p in real.detector_inputs(DET_PAGES, seed=0, limit_side_len=size)])
        pages = real.detector_inputs(DET_PAGES // 4, seed=1, limit_side_len=size)
        return Case(model, x, None, lambda fn: real.detector_scores(fn, pages)["recall"], "box recall",
                    real.map_iou, serialized)
    model = nc.load(nc.data.model_path(name))
    x, y = nc.data.for_model(model, "train")
    xt, yt = nc.data.for_model(model, "test")
    return Case(model, x[:CALIB], y[:CALIB], lambda fn: float(np.mean(fn(xt).argmax(1) == yt)))


ORT = {"ort_f32": {}, "ort_int8": {"int8": "dynamic"}, "ort_int8s": {"int8": "static"}}


def _peers(model, serialized, threads, calibration):
    """``({name: fn}, {name: error})`` of ONNX Runtime float32, int8 dynamic and int8 static (QDQ,
    ranges from ``calibration``); a peer that cannot run this graph (or ORT missing) is an error."""
    from .. import peers
    fns, errors = {}, {}
    try:
        data = serialized if serialized is not None else peers.onnx_model(model).SerializeToString()
    except Exception as e:  # noqa: BLE001 - no graph: every ORT column stays empty
        return {}, {k: f"{type(e).__name__}: {e}" for k in ORT}
    for k, kw in ORT.items():
        try:
            fns[k] = peers.ort_model(model, threads=threads, serialized=data, int8_ops=INT8_OPS,
                                     calibration=calibration, **kw)
        except Exception as e:  # noqa: BLE001 - a peer that cannot run this graph leaves its column empty
            errors[k] = f"{type(e).__name__}: {e}"
    return fns, errors


def run(result, opts):
    if "plan" in opts.parts:
        run_plans(result, opts)
    if "size" in opts.parts:
        run_sizes(result, opts)


@contextlib.contextmanager
def _one_allocation(quick):
    """With --quick: one global allocation instead of the grid (seconds, not minutes)."""
    from ...planner import allocation
    grid = allocation.SPARSITIES, allocation.BITS
    if quick:
        allocation.SPARSITIES, allocation.BITS = (0.9,), (4,)
    try:
        yield
    finally:
        allocation.SPARSITIES, allocation.BITS = grid


def run_sizes(result, opts):
    """``objective="size"`` on LeNet-300-100 and LeNet-5 (see the module notes)."""
    import tempfile

    import nncomp as nc

    from ...planner import Planner
    from ...planner.jobs import split
    rows = result.setdefault("size_rows", [])
    for name, target in list(SIZE_MODELS.items())[:1 if opts.quick else None]:
        model = nc.load(nc.data.model_path(name))
        (x, y), (xt, yt) = nc.data.for_model(model, "train"), nc.data.for_model(model, "test")
        n = 400 if opts.quick else SIZE_CALIB
        t0, c0 = time.perf_counter(), time.process_time()
        with _one_allocation(opts.quick):
            out = Planner(cache=False).run(model, x[:n], labels=y[:n], budget=BUDGET, objective="size",
                                           methods=["share"] if opts.quick else None)
        plan, wall, cpu = out.plan, time.perf_counter() - t0, time.process_time() - c0
        part = split(min(n, len(x)), 0)[2]      # the planner's held-out quarter (seed 0)
        before, after = ({k: f(v).argmax(1) for k, v in (("held", x[part]), ("test", xt))} for f in (model, out))
        row = {"model": name, "target": target, "chosen": {c.layer: c.candidate for c in plan.layers},
               "search": plan.search, "dense_bytes": plan.dense_bytes, "bytes": plan.bytes,
               "heldout_drop": plan.heldout_drop, "heldout_bound": plan.heldout_bound, "confidence": plan.confidence,
               "calibration": int(min(n, len(x))),
               "test_accuracy_dense": float(np.mean(before["test"] == yt)),
               "test_accuracy": float(np.mean(after["test"] == yt)),
               "planning_s": wall, "planning_cpu_s": cpu,
               "plan": plan.to_json()}
        with tempfile.TemporaryDirectory() as tmp:       # the file as the user gets it: the plan included
            path = nc.save(out, f"{tmp}/m.h5", huffman=True)
            row["bytes_with_plan"] = os.path.getsize(path)
        row["ratio"], row["ratio_with_plan"] = plan.dense_bytes / plan.bytes, plan.dense_bytes / row["bytes_with_plan"]
        row["test_drop_points"] = 100 * (row["test_accuracy_dense"] - row["test_accuracy"])
        row["disagreements"] = [int(np.sum(before[k] != after[k])) for k in ("held", "test")]
        row["samples"] = [len(part), len(xt)]
        row["heldout_accuracy_dense"] = float(np.mean(before["held"] == y[part]))
        row["met"] = row["ratio"] >= target and row["test_drop_points"] <= BUDGET
        rows.append(row)
        opts.say(f"{name} size: {row['ratio']:.1f}x ({plan.dense_bytes:,} -> {plan.bytes:,} bytes; with the plan "
                 f"{row['ratio_with_plan']:.1f}x), test accuracy {row['test_accuracy_dense']:.3f} -> "
                 f"{row['test_accuracy']:.3f}, {plan.search}, planned in {row['planning_s']:.0f} s")


def run_plans(result, opts):
    import numba

    from ...planner import Planner
    names, batches = (MODELS[:1], (1,)) if opts.quick else (MODELS, BATCHES)
    methods = ["quantize"] if opts.quick else None
    rows = result.setdefault("rows", [])
    threads = numba.get_num_threads()
    for name in names:
        case = _data(name)
        model, x, y = case.model, case.x, case.y
        if opts.quick:
            x, y = x[:400], y if y is None else y[:400]
        dense_acc = case.test(model)
        planner = Planner(cache=False)
        peers, errors = _peers(model, case.serialized, threads, x)
        for b in batches if opts.quick else MODEL_BATCHES.get(name, batches):
            t0, c0 = time.perf_counter(), time.process_time()
            out = planner.run(model, x, labels=y, budget=BUDGET, batch=b, methods=methods, metric=case.metric)
            plan = out.plan
            row = {"model": name, "batch": b, "chosen": {c.layer: c.candidate for c in plan.layers},
                   "dense_ms": plan.dense_ms, "measured_ms": plan.measured_ms, "predicted_ms": plan.predicted_ms,
                   "speedup": plan.speedup, "prediction_error": plan.prediction_error,
                   "dense_bytes": plan.dense_bytes, "bytes": plan.bytes, "heldout_drop": plan.heldout_drop,
                   "heldout_bound": plan.heldout_bound,
                   "metric": plan.metric, "energy_estimate_pj": [plan.dense_energy_pj, plan.energy_pj],
                   "reverted": list(plan.reverted), "search_check": plan.search_check,
                   "test_name": case.test_name, "test_accuracy_dense": dense_acc, "test_accuracy": case.test(out),
                   "planning_s": time.perf_counter() - t0, "planning_cpu_s": time.process_time() - c0,
                   "search": plan.search, "notes": list(plan.notes), "plan": plan.to_json()}
            row["test_drop_points"] = 100 * (row["test_accuracy_dense"] - row["test_accuracy"])
            if errors:
                row["ort_errors"] = errors
            if peers:
                xb = np.ascontiguousarray(x[np.arange(b) % len(x)])
                ms = in_loop({k: (lambda f=f: f(xb)) for k, f in {"chosen": out, **peers}.items()}, b,
                             opts.repeats(32 if b > 8 else 96))
                row.update({"chosen_vs_ort_ms": ms["chosen"], **{f"{k}_ms": ms[k] for k in peers},
                            "vs_ort": min(ms[k] for k in peers) / ms["chosen"]})
            rows.append(row)
            opts.say(_line(row))


def _line(r):
    ort = f", {r['vs_ort']:.2f}x the fastest ORT" if "vs_ort" in r else ""
    return (f"{r['model']} b{r['batch']}: {r['speedup']:.2f}x ({r['dense_ms']:.4f} -> {r['measured_ms']:.4f} ms, "
            f"predicted {r['predicted_ms']:.4f}){ort}, test accuracy {r['test_accuracy_dense']:.3f} -> "
            f"{r['test_accuracy']:.3f}, chosen {_chosen(r)}, planned in {r['planning_s']:.0f} s")


def _chosen(r):
    changed = [f"{k}: {v}" for k, v in r["chosen"].items() if v != "dense"]
    return ", ".join(changed) if changed else "all dense"


def _predicted(r):
    """The prediction of the returned model, or of the search's choice (marked *) when the final
    measurement set layers of it back to dense."""
    if r.get("reverted") and r.get("search_check"):
        p, m = r["search_check"]
        return f"{p:.4f} vs {m:.4f} ({100 * (p - m) / m:+.1f}%)*"
    return f"{r['predicted_ms']:.4f} ({100 * r['prediction_error']:+.1f}%)"


def _cpu(r):
    return f"{r['planning_cpu_s']:.0f}" if "planning_cpu_s" in r else "-"


def _energy(r):
    e = r.get("energy_estimate_pj")
    return f"{e[0] / 1e3:,.1f} -> {e[1] / 1e3:,.1f}" if e and None not in e else "-"


def markdown(result):
    lines = header(f"# nc.optimize: the fastest model within {BUDGET} point ({result['threads']} threads)", result)
    if result.get("rows") or not result.get("size_rows"):
        lines += _latency_markdown(result.get("rows", []))
    if result.get("size_rows"):
        lines += _size_markdown(result["size_rows"])
    return "\n".join(lines + [""])


def _latency_markdown(rows):
    lines = ["| model | batch | chosen (other layers dense) | dense ms | chosen ms | speedup | predicted (error) | "
             "chosen ms beside ORT | ORT f32 ms | ORT int8 dyn. ms | ORT int8 static ms | vs fastest ORT | bytes | energy (estimate) nJ | "
             "test accuracy | planning s (CPU s) |",
             "|---" * 16 + "|"]
    for r in rows:
        ort = " | ".join(f"{r[k + '_ms']:.4f}" if k + "_ms" in r else "-" for k in ("chosen_vs_ort", *ORT))
        ort += f" | **{r['vs_ort']:.2f}x**" if "vs_ort" in r else " | -"
        lines.append(f"| {r['model']} | {r['batch']} | {_chosen(r)} | {r['dense_ms']:.4f} | {r['measured_ms']:.4f} | "
                     f"**{r['speedup']:.2f}x** | {_predicted(r)} | "
                     f"{ort} | {r['dense_bytes']:,} -> {r['bytes']:,} | {_energy(r)} | "
                     f"{r['test_accuracy_dense']:.3f} -> {r['test_accuracy']:.3f}{_test_name(r)} | "
                     f"{r['planning_s']:.0f} ({_cpu(r)}) |")
    lines += ["", "vs fastest ORT: the fastest of ORT float32, int8 dynamic and int8 static (QDQ, the planner's "
              "calibration data), over the chosen model's time, "
              "timed again alternating with them in blocks of calls, each after an untimed 0.15 s pause "
              "(nncomp.bench.timing.in_loop; 'chosen ms beside ORT'), above 1: nncomp faster. The 'chosen ms' "
              "column is the planner's own final measurement (alternating with dense, no pauses). *: the search's choice predicted vs "
              "measured in the final measurement's first round, which then set layers back to dense. The batch-64 "
              "row of each model reuses the candidates built for batch 1 (planning s counts only what that row "
              "did: wall time, and in brackets the process's CPU time on both cores, which a paused process "
              "or a neighbour's load does not inflate). Energy: an estimate "
              "per inference from the Horowitz 45 nm model (nncomp/planner/energy.py), not a measurement.",
              "", f"PP-OCR rows: the classifier plans on 2 x {OCR_LINES:,} rendered text lines (labels: upright "
              f"or rotated), tested on 2 x {OCR_LINES // 4:,} others; the detector on {DET_PAGES} rendered 640 x 640 "
              "pages with the budget in points of the binarized probability map's IoU with the original model's "
              "(``metric=``; no labels), tested by box recall on "
              f"{DET_PAGES // 4} other pages, at batch 1 only."]
    screened = [f"{r['model']} b{r['batch']}: {n}" for r in rows for n in r.get("notes", ()) if "layer alone" in n]
    if screened:
        lines += ["", "Layer screen (nncomp/planner/screen.py): " + "; ".join(screened) + "."]
    return lines


def _test_name(r):
    name = r.get("test_name", "accuracy")
    return "" if name == "accuracy" else f" ({name})"


def _size_markdown(rows):
    lines = ["", f"## objective=\"size\": the smallest file within {BUDGET} point", "",
             "| model | chosen plan | file bytes dense -> chosen | smaller | with the plan | held-out drop (bound) | "
             "test accuracy | disagreements held-out / test | target | planning s (CPU s) |", "|---" * 10 + "|"]
    for r in rows:
        layers = ", ".join(f"{k}: {v}" for k, v in r["chosen"].items())
        lines.append(f"| {r['model']} | {r['search']}: {layers} | {r['dense_bytes']:,} -> {r['bytes']:,} | "
                     f"**{r['ratio']:.1f}x** | {r['bytes_with_plan']:,} ({r['ratio_with_plan']:.1f}x) | "
                     f"{r['heldout_drop']:.2f}{_bound(r)} | {r['test_accuracy_dense']:.3f} -> {r['test_accuracy']:.3f} | "
                     f"{_disagreements(r)} | {r['target']:.0f}x: {'met' if r['met'] else 'missed'} | {r['planning_s']:.0f} ({_cpu(r)}) |")
    return lines + ["", f"Calibration: the first {rows[0]['calibration']:,} training digits (a quarter held out by "
                    "the planner); "
                    "file bytes as nc.save(..., huffman=True) writes them (plan.bytes: without the plan the model "
                    "carries; 'with the plan': the file the user gets from saving the returned model). Test "
                    "accuracy on the 1,000 shipped test digits, never seen by the planner. Bound: the held-out "
                    "drop's one-sided upper bound the budget was checked against (nc.optimize's confidence). "
                    "The shipped models were trained on these training digits: the original is right on "
                    + ", ".join(f"{100 * r['heldout_accuracy_dense']:.1f}% of the held-out ones against "
                                f"{100 * r['test_accuracy_dense']:.1f}% of the test digits ({r['model']})"
                                for r in rows if "heldout_accuracy_dense" in r)
                    + "; compare the chosen model's disagreements with it per sample: calibrated and checked on "
                    "the model's own training data, a post-training check can understate the loss on unseen data."]


def _bound(r):
    return f" ({r['heldout_bound']:.2f})" if r.get("heldout_bound") is not None else ""


def _disagreements(r):
    if "disagreements" not in r:
        return "-"
    (a, b), (na, nb) = r["disagreements"], r["samples"]
    return f"{a} of {na:,} / {b} of {nb:,}"
