"""Benchmark output: a terminal table, and JSON, CSV and Markdown files in an output folder.

Every number in these files comes from one run; the JSON also holds the machine (CPU, flags,
versions, threads, BLAS), the measured roofline limits, the seeds and the options of the run.
"""
import csv
import json
import math
import re
from pathlib import Path

from .roofline import roof_text
from .timing import machine_text
from .suite import COLUMNS

LAYER_COLUMNS = ["layer", "shape", "batch", "contender", "kind", "format", "status", "median_ms", "p90_ms",
                 "runs", "time_vs_numpy", "speedup_vs_numpy", "weight_bytes", "gflop", "roofline_ms",
                 "roofline_pct", "rel_err_vs_dense", "build_s"]

# What every column means (bench/README.md repeats this; the JSON carries it too).
COLUMN_DOCS = {
    "model": "model file (data/<model>.h5)",
    "method": "compression method, or 'dense' (nncomp's engine, the baseline), or a peer (torch, onnxruntime)",
    "settings": "the method's settings",
    "calibrated": "whether the method got calibration data (512 training digits) to refit layers",
    "status": "ok, 'not available' (the method has not landed), 'not installed' (peer missing), or the error",
    "formats": "weight formats of the weighted layers after compression",
    "accuracy": "top-1 accuracy on the 1,000 shipped test digits",
    "accuracy_delta": "accuracy minus the dense model's, in percentage points",
    "agreement": "fraction of test digits whose top-1 class equals the dense model's",
    "max_logit_err": "largest |logit - dense logit| over all test digits and classes",
    "weight_bytes": "bytes of weights and parameters held in memory (Model.nbytes)",
    "disk_bytes": "size of the file nc.save writes (HDF5 headers and metadata included); for ONNX Runtime "
                  "the serialized graph",
    "payload_bytes": "bytes of the stored arrays only (headers aside); Huffman-coded where huffman is true",
    "huffman": "whether the file was saved with huffman=True",
    "compression_ratio": "dense weight bytes / payload bytes",
    "memory_ratio": "dense weight bytes / weight bytes in memory",
    "macs": "multiply-adds per sample (nonzero weights for sparse formats)",
    "latency_ms": "median ms of one call at the latency batch (default 1)",
    "latency_p90_ms": "90th percentile of the same",
    "speedup_latency": "dense median / this median at the latency batch, alternating in one loop (>1: faster)",
    "throughput_sps": "samples per second at the throughput batch (default 64)",
    "speedup_throughput": "dense median / this median at the throughput batch (>1: faster)",
    "verdict": "smaller (ratio >= 1.1), faster (speedup >= 1.1 at either batch), both or neither; "
               "', slower' when slower at both",
    "compress_s": "seconds the method took (for peers: building the session)",
}
LAYER_COLUMN_DOCS = {
    "contender": "nncomp format (built with the public method on random weights) or a peer/baseline",
    "median_ms": "median ms per call, contenders alternating; batch-1 calls follow a cache flush",
    "time_vs_numpy": "median / NumPy dense float32's median in the same loop (<1: faster)",
    "speedup_vs_numpy": "NumPy dense median / this median",
    "weight_bytes": "bytes of the weights the contender reads",
    "gflop": "2 x multiply-adds x batch / 1e9",
    "roofline_ms": "max(weight bytes / measured DRAM bandwidth, FLOPs / measured sgemm throughput)",
    "roofline_pct": "roofline_ms / median_ms in percent (100 = at the machine's limit)",
    "rel_err_vs_dense": "||y - y_dense|| / ||y_dense|| against the dense float32 output (random weights)",
    "build_s": "seconds to build the contender (compress the weights, create the session)",
}


def _num(v, digits=3):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def short_formats(text):
    """A compact formats cell: per-layer percentages and notes in brackets dropped, repeats merged
    (``"csr 93% + codebook 5-bit (32 values)+csr 84% + ..."`` -> ``"csr + codebook 5-bit"``)."""
    if not text:
        return ""
    seen = []
    for part in text.split("+"):
        part = re.sub(r"\([^)]*\)", "", part)
        part = re.sub(r"\d+(\.\d+)?%", "", part)
        part = " ".join(part.split())
        if part and part not in seen:
            seen.append(part)
    return " + ".join(seen)


def human_bytes(n):
    if n is None:
        return ""
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return f"{n} B"


def _x(v):
    return "" if v is None else f"{v:.2f}x"


def _pct(v, d=1):
    return "" if v is None else f"{100 * v:.{d}f}%"


def model_table(rows):
    """The model rows as text columns: (header, rows of strings)."""
    head = ["model", "method", "settings", "calib", "formats", "accuracy", "d pts", "agree", "max err",
            "memory", "payload", "ratio", "MACs", "ms b1", "x b1", "/s b64", "x b64", "verdict"]
    out = []
    for r in rows:
        if r["status"] != "ok":
            out.append([r["model"], r["method"], r["settings"], "yes" if r["calibrated"] else "", r["status"]]
                       + [""] * (len(head) - 5))
            continue
        out.append([r["model"], r["method"], r["settings"], "yes" if r["calibrated"] else "",
                    short_formats(r["formats"]),
                    _pct(r["accuracy"]), "" if r["accuracy_delta"] is None else f"{r['accuracy_delta']:+.1f}",
                    _pct(r["agreement"]), _num(r["max_logit_err"], 2), human_bytes(r["weight_bytes"]),
                    human_bytes(r["payload_bytes"]), _x(r["compression_ratio"]),
                    "" if r["macs"] is None else f"{r['macs'] / 1e6:.3g}M", _num(r["latency_ms"]),
                    _x(r["speedup_latency"]), f"{r['throughput_sps']:.0f}", _x(r["speedup_throughput"]),
                    r["verdict"] or ""])
    return head, out


def layer_table(rows):
    """The layer rows pivoted: one line per (layer, contender), one column group per batch size."""
    batches = sorted({r["batch"] for r in rows})
    head = ["layer", "contender", "format", "weights"]
    for b in batches:
        head += [f"ms b{b}", f"vs NumPy b{b}", f"% roof b{b}"]
    head += ["rel err"]
    out, index = [], {}
    for r in rows:
        key = (r["layer"], r["contender"])
        if key not in index:
            index[key] = len(out)
            out.append({"cells": {}, "row": r})
        out[index[key]]["cells"][r["batch"]] = r
    lines = []
    for item in out:
        r = item["row"]
        line = [r["layer"], r["contender"], short_formats(r["format"]), human_bytes(r["weight_bytes"])]
        for b in batches:
            c = item["cells"].get(b)
            if c is None or c["status"] != "ok":
                line += [c["status"] if c else "", "", ""]
            else:
                line += [_num(c["median_ms"]), _x(c["time_vs_numpy"]),
                         "" if c["roofline_pct"] is None else f"{c['roofline_pct']:.0f}%"]
        err = next((c["rel_err_vs_dense"] for c in item["cells"].values() if c["rel_err_vs_dense"] is not None), None)
        line.append("" if err is None else f"{err:.2g}")
        lines.append(line)
    return head, lines


def text_table(head, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)] if rows else [len(h) for h in head]
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])


def md_table(head, rows):
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(path, rows, columns):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        return v.item()
    return v


def markdown(result):
    """The Markdown report of a run."""
    m = result["machine"]
    lim = result.get("limits") or {}
    s = result["settings"]
    lines = ["# nncomp benchmark", "",
             f"{m['date']} · {machine_text(m)} · {m['cores']} cores · threads {s['threads']} · "
             f"wall time {result['wall_s']:.0f} s · load average {result['loadavg_start'][0]:.1f} at the start, "
             f"{result['loadavg_end'][0]:.1f} at the end · `{result['command']}`", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), ""]
    if lim:
        lines += [f"Roofline limits: {roof_text(lim)} (the probe read {human_bytes(lim['bandwidth_bytes'])} "
                  f"with every thread, best of its reads; no cell exceeds the best rate observed in the run), "
                  f"sgemm {lim['sgemm_GFLOPs']:.0f} GFLOP/s ({lim['sgemm_n']}^3).", ""]
    if result.get("models"):
        lines += ["## Models", "",
                  f"Accuracy on the shipped test digits; latency at batch {s['batches'][0]} and throughput at "
                  f"batch {s['batches'][-1]}, each alternating with the dense engine in one loop "
                  f"(speedup = dense time / this time). Calibrated rows use {s['calibration_samples']} "
                  "training digits.", ""]
        by_model = {}
        for r in result["models"]:
            by_model.setdefault(r["model"], []).append(r)
        for name, rows in by_model.items():
            head, body = model_table(rows)
            lines += [f"### {name}", "", md_table(head[1:], [b[1:] for b in body]), ""]
            if result.get("plots", {}).get(name):
                lines += [f"![{name}]({result['plots'][name]})", ""]
    if result.get("layers"):
        lines += ["## Layers (VGG-16 shapes, random weights)", "",
                  "Contenders alternate in one loop per layer and batch; batch-1 calls follow a cache flush. "
                  "'vs NumPy' is time relative to NumPy dense float32 (< 1: faster); '% roof' is the "
                  "roofline time (weight bytes / bandwidth or FLOPs / sgemm throughput, the larger) over the "
                  "measured time.", ""]
        head, body = layer_table(result["layers"])
        lines += [md_table(head, body), ""]
    return "\n".join(lines)


def write_all(result, out):
    """Write ``result.json``, ``models.csv``, ``layers.csv`` and ``report.md`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = _json_safe(result)
    result["columns"] = {"models": COLUMN_DOCS, "layers": LAYER_COLUMN_DOCS}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    write_csv(out / "models.csv", result.get("models") or [], COLUMNS)
    write_csv(out / "layers.csv", result.get("layers") or [], LAYER_COLUMNS)
    (out / "report.md").write_text(markdown(result))
    return out
