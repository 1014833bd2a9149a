"""``python -m nncomp.bench``: every method alone and combined on the shipped models, plus the layer suite.

With no arguments: the four PyTorch models of ``data/`` on the 1,000 test digits (every recipe of
:data:`nncomp.bench.suite.RECIPES`, the dense engine, and the peers when installed), then the VGG-16
layer suite; a table on the terminal, and JSON, CSV, Markdown and (with matplotlib) PNG plots in
``bench/out/``. ``--quick`` runs a few rows on LeNet-300-100 and two small layers in seconds (CI).
See bench/README.md for every column.
"""
import os
import sys
import time
from pathlib import Path

USAGE_EXAMPLES = """examples:
  python -m nncomp.bench                          # the default suite (< 5 minutes on 2 cores)
  python -m nncomp.bench --quick --out /tmp/b     # seconds
  python -m nncomp.bench --model m.h5 --data d.npz --methods prune,quantize
"""


def default_out():
    from ..data import DATA_DIR
    repo = DATA_DIR.parent
    return repo / "bench" / "out" if (repo / "bench").is_dir() else Path("bench") / "out"


def _ints(text, what, n=None):
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{what} must be comma-separated positive integers, got {text!r}") from None
    if not vals or min(vals) < 1 or (n is not None and len(vals) != n):
        raise ValueError(f"{what} must be {n or 'one or more'} positive integers, got {text!r}")
    return vals


def build_parser(prog="python -m nncomp.bench"):
    from ..cli import OneLineParser
    p = OneLineParser(prog=prog, description="Benchmark every nncomp method on real models and layers.",
                      epilog=USAGE_EXAMPLES, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few rows, small layers, 3 repeats: seconds")
    p.add_argument("--model", action="append", metavar="PATH",
                   help="a model file to benchmark instead of the shipped ones (repeatable)")
    p.add_argument("--data", metavar="NPZ", help="test data for --model: an .npz with x (and y, optional "
                   "x_calib); default: the shipped digits")
    p.add_argument("--methods", metavar="LIST", help="comma-separated methods to run (default: all), e.g. "
                   "prune,quantize,peers")
    p.add_argument("--batch", default=None, metavar="B1,B2", help="latency and throughput batch sizes "
                   "(default 1,64)")
    p.add_argument("--layer-batch", default=None, metavar="LIST", help="layer suite batch sizes (default 1,32)")
    p.add_argument("--threads", type=int, default=None, help="threads for nncomp, BLAS and the peers "
                   "(default: all cores)")
    p.add_argument("--repeat", type=int, default=None, help="timed calls per contender and measurement, "
                   "in blocks of 4 (default 8; quick 4); each measurement stops after 1 s (layers: 6 s)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default bench/out)")
    p.add_argument("--suite", choices=("all", "models", "layers"), default="all")
    p.add_argument("--keras", action="store_true", help="also run the Keras models in data/keras")
    p.add_argument("--no-peers", action="store_true", help="skip torch and ONNX Runtime")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--settle", type=float, default=None, metavar="S", help="untimed pause before each block "
                   "of calls, so that one contender's spinning BLAS threads do not slow the next (default 0.01)")
    return p


def parse_args(argv):
    from .suite import METHOD_NAMES, SETTLE_S
    p = build_parser()
    a = p.parse_args(argv)
    try:
        a.batches = _ints(a.batch or "1,64", "--batch")
        if len(a.batches) > 2:
            raise ValueError(f"--batch takes one or two sizes (latency, throughput), got {a.batch!r}")
        a.layer_batches = _ints(a.layer_batch or ("1,8" if a.quick else "1,32"), "--layer-batch")
    except ValueError as e:
        p.error(str(e))
    if a.threads is not None and a.threads < 1:
        p.error(f"--threads must be >= 1, got {a.threads}")
    if a.settle is not None and not (0 <= a.settle <= 10):
        p.error(f"--settle must be in [0, 10] seconds, got {a.settle}")
    a.settle = a.settle if a.settle is not None else SETTLE_S
    if a.repeat is not None and a.repeat < 1:
        p.error(f"--repeat must be >= 1, got {a.repeat}")
    a.repeat = a.repeat or (4 if a.quick else 8)
    a.method_list = None
    if a.methods:
        a.method_list = [m.strip() for m in a.methods.split(",") if m.strip()]
        bad = [m for m in a.method_list if m not in METHOD_NAMES]
        if bad:
            p.error(f"--methods: unknown {bad}; choose from {','.join(METHOD_NAMES)}")
    if a.data and not a.model:
        p.error("--data needs --model (the shipped models use the shipped digits)")
    for path in (a.model or []) + ([a.data] if a.data else []):
        if not os.path.isfile(path):
            p.error(f"cannot read {path}: no such file")
        if not os.access(path, os.R_OK):
            p.error(f"cannot read {path}: permission denied")
    return a


def main(argv=None):
    """Entry point; ``argv=None`` reads sys.argv and first restarts without the OpenBLAS overrides."""
    if argv is None:
        from .timing import reexec_without_openblas_overrides
        reexec_without_openblas_overrides()
    return run(parse_args(sys.argv[1:] if argv is None else argv))


def run(args):
    import numpy as np

    from ..cli import fail
    from ..errors import NncompError
    from . import layers, peers, plots, report, suite
    from .timing import machine_info, set_threads

    start = time.perf_counter()
    threads = set_threads(args.threads or os.cpu_count() or 1)
    if not args.no_peers:
        peers.set_threads(threads)
    out = Path(args.out) if args.out else default_out()
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
                           "threads": threads, "repeat": args.repeat, "block": 4, "settle_s": args.settle,
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
        result["limits"] = layers.machine_limits(quick=args.quick)
        result["phase_s"]["limits"] = time.perf_counter() - t0
        lim = result["limits"]
        say(f"  DRAM read {lim['bandwidth_GBps']:.1f} GB/s, sgemm {lim['sgemm_GFLOPs']:.0f} GFLOP/s")

    if args.suite in ("all", "models"):
        recipes = suite.selected(suite.RECIPES, args.method_list, args.quick)
        for path in paths:
            say(f"model {path} ...")
            t0 = time.perf_counter()
            try:
                rows = suite.run_model(path, recipes=recipes, batches=args.batches, repeat=args.repeat,
                                       threads=threads, with_peers=with_peers, data=args.data,
                                       max_seconds=1.0, settle=args.settle,
                                       max_samples=200 if args.quick else None, progress=say)
            except (NncompError, OSError, KeyError) as e:
                fail(f"{path}: {e}")
            result["models"] += rows
            result["phase_s"][f"model {rows[0]['model']}"] = time.perf_counter() - t0

    if args.suite in ("all", "layers"):
        shapes = layers.QUICK_SHAPES if args.quick else layers.SHAPES
        lrecipes = layers.LAYER_RECIPES
        if args.method_list:
            lrecipes = [r for r in lrecipes if not r.needs or set(r.needs) & set(args.method_list)]
        t0 = time.perf_counter()
        result["layers"] = layers.run_layer_suite(
            shapes=shapes, batches=args.layer_batches, threads=threads, repeat=args.repeat,
            limits=result.get("limits"), recipes=lrecipes, max_seconds=1.0 if args.quick else 6.0,
            settle=args.settle,
            progress=say)

    if result["layers"]:
        result["phase_s"]["layers"] = time.perf_counter() - t0
    result["wall_s"] = time.perf_counter() - start
    result["loadavg_end"] = list(os.getloadavg())
    if not args.no_plots and result["models"]:
        result["plots"] = plots.plot_all(result["models"], out)
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
