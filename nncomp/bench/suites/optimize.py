"""The planner (issue 16): ``nc.optimize`` on the shipped LeNets at batch 1 and 64.

Each row plans one model at one batch with a 0.5-point budget on labelled calibration data (the first
CALIB training digits; a quarter of them held out by the planner), then reports what it chose, its
own final measurement against dense (alternating whole calls, medians, at that batch), the table's
prediction error, the file bytes, and the accuracy change on the 1,000 shipped test digits (never
seen by the planner). The latency cache is off: every row measures afresh.

    python -m nncomp.bench --suite optimize      # writes bench/out/optimize.json, optimize.md
"""
import os

import numpy as np

THREADS = os.cpu_count() or 1
PARTS = ("plan",)
QUICK_PARTS = PARTS
MODELS = ("lenet300", "lenet5")
BATCHES = (1, 64)
CALIB = 2000
BUDGET = 0.5


def run(result, opts):
    import nncomp as nc
    from ...planner import Planner
    names, batches = (MODELS[:1], (1,)) if opts.quick else (MODELS, BATCHES)
    methods = ["quantize"] if opts.quick else None
    calib = 400 if opts.quick else CALIB
    rows = result.setdefault("rows", [])
    for name in names:
        model = nc.load(nc.data.model_path(name))
        x, y = nc.data.for_model(model, "train")
        xt, yt = nc.data.for_model(model, "test")
        dense_acc = float(np.mean(model(xt).argmax(1) == yt))
        for b in batches:
            out = Planner(cache=False).run(model, x[:calib], labels=y[:calib], budget=BUDGET, batch=b,
                                           methods=methods)
            plan = out.plan
            row = {"model": name, "batch": b, "chosen": {c.layer: c.candidate for c in plan.layers},
                   "dense_ms": plan.dense_ms, "measured_ms": plan.measured_ms, "predicted_ms": plan.predicted_ms,
                   "speedup": plan.speedup, "prediction_error": plan.prediction_error,
                   "dense_bytes": plan.dense_bytes, "bytes": plan.bytes, "heldout_drop": plan.heldout_drop,
                   "test_accuracy_dense": dense_acc,
                   "test_accuracy": float(np.mean(out(xt).argmax(1) == yt)), "planning_s": plan.planning_s,
                   "search": plan.search, "plan": plan.to_json()}
            row["test_drop_points"] = 100 * (row["test_accuracy_dense"] - row["test_accuracy"])
            rows.append(row)
            opts.say(_line(row))


def _line(r):
    return (f"{r['model']} b{r['batch']}: {r['speedup']:.2f}x ({r['dense_ms']:.4f} -> {r['measured_ms']:.4f} ms, "
            f"predicted {r['predicted_ms']:.4f}), test accuracy {r['test_accuracy_dense']:.3f} -> "
            f"{r['test_accuracy']:.3f}, chosen {r['chosen']}, planned in {r['planning_s']:.0f} s")


def markdown(result):
    m = result["machine"]
    lines = [f"# nc.optimize: the fastest model within {BUDGET} point ({result['threads']} threads)", "",
             f"Machine: {m.get('cpu')}, {m.get('cores', '?')} cores, {m.get('date', '')}; "
             + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()), "",
             (result.get("protocol") or "").split("\n\n")[0], "",
             "| model | batch | chosen per layer | dense ms | chosen ms | speedup | predicted (error) | "
             "bytes | test accuracy | planning s |", "|---" * 10 + "|"]
    for r in result.get("rows", []):
        chosen = ", ".join(f"{k}: {v}" for k, v in r["chosen"].items())
        lines.append(f"| {r['model']} | {r['batch']} | {chosen} | {r['dense_ms']:.4f} | {r['measured_ms']:.4f} | "
                     f"**{r['speedup']:.2f}x** | {r['predicted_ms']:.4f} ({100 * r['prediction_error']:+.1f}%) | "
                     f"{r['dense_bytes']:,} -> {r['bytes']:,} | {r['test_accuracy_dense']:.3f} -> "
                     f"{r['test_accuracy']:.3f} | {r['planning_s']:.0f} |")
    return "\n".join(lines + [""])
