"""``python -m nncomp.bench``: every method alone and combined on the shipped models, plus the layer suite.

With no arguments: the four PyTorch models shipped with nncomp (``nncomp.data.DATA_DIR``) on the 1,000 test digits (every recipe of
:data:`nncomp.bench.suite.RECIPES`, the dense engine, and the peers when installed), then the VGG-16
layer suite, then the real-world PP-OCR models (``--suite real``: real.json, real.md); a table on the
terminal, and JSON, CSV, Markdown and (with matplotlib) PNG plots in ``bench/out/``. ``--quick`` runs a
few rows on LeNet-300-100 and two small layers in seconds (CI; no real-world models).
``--suite NAME`` runs one method's tables instead (:mod:`nncomp.bench.suites`: dense, conv_algos,
quant, codebook, sparse, sparse_int8, lowrank, vs_ort, real). The options are parsed in
:mod:`nncomp.bench.args` (shared with the ``nncomp`` command). See bench/README.md for every column.
"""
import os
import sys
import time
from pathlib import Path

from .args import fail, parse_args


def default_out():
    """``bench/out`` of the checkout nncomp runs from, else ``bench/out`` under the current folder."""
    from ..data import CHECKOUT_DIR
    return CHECKOUT_DIR / "bench" / "out" if CHECKOUT_DIR is not None else Path("bench") / "out"


def out_folder(text):
    """``--out`` as a path, ``{cpu}`` replaced by this CPU's results folder (``bench/results/{cpu}``)."""
    if text and "{cpu}" in text:
        from .cpu import cpu_record
        text = text.replace("{cpu}", cpu_record()["results_folder"])
    return Path(text) if text else default_out()


def main(argv=None):
    """Entry point; ``argv=None`` reads sys.argv and first restarts without the OpenBLAS overrides."""
    if argv is None:
        from .timing import reexec_without_openblas_overrides
        reexec_without_openblas_overrides()
    return run(parse_args(sys.argv[1:] if argv is None else argv))


def run(args):
    """Run the suite ``args`` name (parsed by :func:`nncomp.bench.args.parse_args`); returns 0."""
    out = out_folder(args.out)
    if args.suite not in ("all", "models", "layers"):
        from .suites import run_suite
        run_suite(args.suite, args, out)
        return 0
    import numpy as np

    from ..errors import NncompError
    from . import layers, peers, plots, report, suite
    from .roofline import machine_limits
    from .timing import SETTLE_S, Budget, machine_info, set_threads

    start = time.perf_counter()
    threads = set_threads(args.threads or os.cpu_count() or 1, peers=not args.no_peers)
    settle, spinners = (SETTLE_S, ()) if args.settle is None else (args.settle, None)
    say = lambda s: print(s, flush=True)  # noqa: E731
    with_peers = not args.no_peers and (args.method_list is None or "peers" in args.method_list)

    paths = [Path(p) for p in args.model] if args.model else suite.model_paths(
        suite.QUICK_MODELS if args.quick else suite.MODELS, keras=args.keras)
    if args.data:
        try:
            with np.load(args.data) as d:
                if "x" not in d:
                    fail(f"{args.data}: the .npz needs an array 'x' (and 'y' for accuracy)")
        except (OSError, ValueError) as e:
            fail(f"cannot read {args.data}: {e}")

    result = {"command": " ".join(["python -m nncomp.bench"] + list(sys.argv[1:])),
              "machine": machine_info(), "peers": peers.versions() if not args.no_peers else {},
              "settings": {"quick": args.quick, "batches": list(args.batches),
                           "layer_batches": list(args.layer_batches),
                           "threads": threads, "repeat": args.repeat, "block": 4, "settle_s": settle,
                           "settle_after": "every block" if spinners is None else "NumPy / torch blocks",
                           "calibration_samples": suite.CALIBRATION_SAMPLES,
                           "methods": args.method_list or "all", "peers": with_peers},
              "seeds": {"data_split": 20261128, "calibration": f"the first {suite.CALIBRATION_SAMPLES} training "
                        "digits", "methods": "each method's default seed (0)", "layer_weights": 0,
                        "layer_inputs": 1},
              "loadavg_start": list(os.getloadavg()), "phase_s": {}, "models": [], "layers": [], "plots": {}}
    say(f"nncomp.bench: {threads} threads, peers: "
        + (", ".join(f"{k} {v}" for k, v in result["peers"].items()) if with_peers else "off")
        + f"; output {out}")
    if os.getloadavg()[0] > threads:
        say(f"warning: load average {os.getloadavg()[0]:.1f} > {threads} threads: other processes share the cores, "
            "and multi-threaded timings will be noisy")

    if args.suite in ("all", "layers"):
        say("measuring the roofline limits (DRAM read, sgemm) ...")
        t0 = time.perf_counter()
        result["limits"] = machine_limits(quick=args.quick)
        result["phase_s"]["limits"] = time.perf_counter() - t0
        lim = result["limits"]
        say(f"  DRAM read {lim['bandwidth_GBps']:.1f} GB/s, sgemm {lim['sgemm_GFLOPs']:.0f} GFLOP/s")

    recipes = suite.selected(suite.RECIPES, args.method_list, args.quick)
    shapes = layers.QUICK_SHAPES if args.quick else layers.SHAPES
    layer_s = 1.0 if args.quick else 6.0
    weights = (len(paths) * (1 + len(recipes) + 4 * with_peers) * len(args.batches) * (args.suite != "layers")
               + len(shapes) * len(args.layer_batches) * layer_s * (args.suite != "models"))
    budget = Budget(args.budget - (time.perf_counter() - start), weights) if args.budget else None
    result["settings"]["budget_s"] = args.budget
    if args.suite in ("all", "models"):
        for path in paths:
            say(f"model {path} ...")
            t0 = time.perf_counter()
            try:
                rows = suite.run_model(path, recipes=recipes, batches=args.batches, repeat=args.repeat,
                                       threads=threads, with_peers=with_peers, data=args.data,
                                       max_seconds=1.0, settle=settle, spinners=spinners,
                                       max_samples=200 if args.quick else None, progress=say,
                                       phases=result["phase_s"], budget=budget)
            except (NncompError, OSError, KeyError) as e:
                fail(f"{path}: {e}")
            result["models"] += rows
            result["phase_s"][f"model {rows[0]['model']}"] = time.perf_counter() - t0

    if args.suite in ("all", "layers"):
        lrecipes = layers.LAYER_RECIPES
        if args.method_list:
            lrecipes = [r for r in lrecipes if not r.needs or set(r.needs) & set(args.method_list)]
        t0 = time.perf_counter()
        result["layers"], capped = layers.run_layer_suite(
            shapes=shapes, batches=args.layer_batches, threads=threads, repeat=args.repeat,
            limits=result.get("limits"), recipes=lrecipes, max_seconds=layer_s,
            settle=settle, every_block=spinners is None, progress=say, budget=budget)
        if capped:
            result["limits"] = capped

    if result["layers"]:
        result["phase_s"]["layers"] = time.perf_counter() - t0
    if args.suite == "all" and not (args.quick or args.model):     # ~10 s: the real-world models
        from .suites import run_suite
        t0 = time.perf_counter()
        run_suite("real", args, out)
        result["phase_s"]["real (real.md)"] = time.perf_counter() - t0
    result["wall_s"] = time.perf_counter() - start
    result["loadavg_end"] = list(os.getloadavg())
    if not args.no_plots and result["models"]:
        t0 = time.perf_counter()
        result["plots"] = plots.plot_all(result["models"], out)
        result["phase_s"]["plots"] = time.perf_counter() - t0
    report.write_all(result, out)
    if result["models"]:
        say("\n" + report.text_table(*report.model_table(result["models"])))
    if result["layers"]:
        say("\n" + report.text_table(*report.layer_table(result["layers"])))
    say(f"\nwall time {result['wall_s']:.1f} s; wrote {out}/result.json, models.csv, layers.csv, report.md"
        + (f" and {len(result['plots'])} plots" if result["plots"] else
           ("" if plots.available() else " (plots: matplotlib not installed)")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
