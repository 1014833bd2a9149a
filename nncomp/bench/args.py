"""Command-line parsing shared by ``nncomp`` (nncomp/cli.py) and ``python -m nncomp.bench``.

Errors are one line on stderr (``prog: error: ...``) and exit code 2.
"""
import argparse
import os
import sys

USAGE_EXAMPLES = """examples:
  python -m nncomp.bench                          # the default suite (< 5 minutes on 2 cores)
  python -m nncomp.bench --quick --out /tmp/b     # seconds
  python -m nncomp.bench --model m.h5 --data d.npz --methods prune,quantize
  python -m nncomp.bench --suite sparse           # one method's tables into bench/out/sparse.md
  python -m nncomp.bench --suite sparse --out 'bench/results/{cpu}'   # ... into this CPU's results folder
"""


def one_line(text):
    return " ".join(str(text).split())


def fail(message, prog="nncomp"):
    """Print ``prog: error: message`` on one line to stderr and exit with code 2."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)
    raise SystemExit(2)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (no usage block), exit code 2."""

    def error(self, message):
        fail(message, self.prog)


def positive_ints(text, what, n=None):
    """``"1,64"`` -> ``(1, 64)``; ValueError naming ``what`` unless ``n`` (or any) positive integers."""
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{what} must be comma-separated positive integers, got {text!r}") from None
    if not vals or min(vals) < 1 or (n is not None and len(vals) != n):
        raise ValueError(f"{what} must be {n or 'one or more'} positive integers, got {text!r}")
    return vals


def build_parser(prog="python -m nncomp.bench"):
    from .suites import SUITES
    p = OneLineParser(prog=prog, description="Benchmark every nncomp method on real models and layers.",
                      epilog=USAGE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=("all", "models", "layers", *SUITES), default="all",
                   help="all (default: models and layers), models, layers, or one method's suite: "
                   + ", ".join(SUITES))
    p.add_argument("--quick", action="store_true", help="a few rows, small layers, few repeats: seconds")
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
                   "(default: all cores; a method's suite: its own default, e.g. 2 then 1)")
    p.add_argument("--repeat", type=int, default=None, help="timed calls per contender and measurement, "
                   "in blocks of 4 (default 8; quick 4); each measurement stops after 1 s (layers: 6 s)")
    p.add_argument("--parts", metavar="LIST", help="a method's suite: the parts to run (default: all; "
                   "e.g. --suite lowrank --parts accuracy)")
    p.add_argument("--budget", type=float, default=None, metavar="S", help="seconds the default run aims "
                   "for: each measurement stops sooner when compressing and timing run behind (default 200; "
                   "0: every measurement takes up to 1 s, layers 6 s)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default bench/out); "
                   "{cpu} in it becomes this CPU's folder name, e.g. bench/results/{cpu} -> bench/results/amd-epyc-zen4")
    p.add_argument("--keras", action="store_true", help="also run the Keras models shipped with nncomp")
    p.add_argument("--no-peers", action="store_true", help="skip torch and ONNX Runtime")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--settle", type=float, default=None, metavar="S", help="untimed pause before every block "
                   "of calls (default: 0.15 s, only after a contender whose threads spin: NumPy's BLAS, torch)")
    return p


def parse_args(argv):
    from .suite import METHOD_NAMES
    from .suites import SUITES, parts_of
    p = build_parser()
    a = p.parse_args(argv)
    try:
        a.batches = positive_ints(a.batch or "1,64", "--batch")
        if len(a.batches) > 2:
            raise ValueError(f"--batch takes one or two sizes (latency, throughput), got {a.batch!r}")
        a.layer_batches = positive_ints(a.layer_batch or ("1,8" if a.quick else "1,32"), "--layer-batch")
    except ValueError as e:
        p.error(str(e))
    if a.threads is not None and a.threads < 1:
        p.error(f"--threads must be >= 1, got {a.threads}")
    if a.settle is not None and not (0 <= a.settle <= 10):
        p.error(f"--settle must be in [0, 10] seconds, got {a.settle}")
    if a.repeat is not None and a.repeat < 1:
        p.error(f"--repeat must be >= 1, got {a.repeat}")
    if a.budget is not None and a.budget < 0:
        p.error(f"--budget must be >= 0 seconds, got {a.budget}")
    a.budget = (0 if a.quick else 200.0) if a.budget is None else a.budget
    a.suite_repeat = a.repeat
    a.repeat = a.repeat or (4 if a.quick else 8)
    a.method_list = None
    if a.methods:
        a.method_list = [m.strip() for m in a.methods.split(",") if m.strip()]
        bad = [m for m in a.method_list if m not in METHOD_NAMES]
        if bad:
            p.error(f"--methods: unknown {bad}; choose from {','.join(METHOD_NAMES)}")
    a.part_list = None
    if a.parts:
        if a.suite not in SUITES:
            p.error(f"--parts goes with a method's suite ({', '.join(SUITES)}), not --suite {a.suite}")
        a.part_list = [s.strip() for s in a.parts.split(",") if s.strip()]
        known = parts_of(a.suite)
        bad = [s for s in a.part_list if s not in known]
        if bad or not a.part_list:
            p.error(f"--parts: unknown {bad or a.parts!r} for --suite {a.suite}; choose from {','.join(known)}")
    if a.data and not a.model:
        p.error("--data needs --model (the shipped models use the shipped digits)")
    for path in (a.model or []) + ([a.data] if a.data else []):
        if not os.path.isfile(path):
            p.error(f"cannot read {path}: no such file")
        if not os.access(path, os.R_OK):
            p.error(f"cannot read {path}: permission denied")
    return a
