"""``python -m nncomp`` (or ``nncomp``): info, compress, eval and bench from the shell.

    nncomp info FILE                       the model summary (layers, formats, bytes, MACs)
    nncomp compress FILE -o OUT [options]  apply methods (or a JSON/TOML recipe) and save
    nncomp eval FILE [--data X.npz]        accuracy on the shipped digits (or x, y of an .npz) and speed
    nncomp optimize FILE -o OUT [options]  the fastest (or smallest) model within an accuracy budget
    nncomp bench [options]                 python -m nncomp.bench (see its --help)

Bad arguments, unreadable or invalid files and rejected method parameters end with one line on
stderr (``nncomp: error: ...``) and exit code 2.

A recipe file lists steps run in order, each a method and its keyword arguments::

    # recipe.toml                              // recipe.json
    calibration = 512       # training digits   {"calibration": 512, "huffman": true,
    huffman = true                               "steps": [{"method": "prune", "sparsity": 0.9},
    [[steps]]                                              {"method": "share", "bits": 5}]}
    method = "prune"
    sparsity = 0.9
    [[steps]]
    method = "share"
    bits = 5
"""
import json
import os
import sys

from .bench.args import OneLineParser, fail, positive_ints

METHODS = ("prune", "prune_filters", "factorize", "share", "quantize", "deep_compression")
PROG = "nncomp"


class UsageError(Exception):
    """A bad argument or file: reported in one line, exit code 2."""


# ----------------------------------------------------------------------------- helpers
def _load(path, input_shape=None, data=None):
    """The model in ``path``; its per-sample input size from ``--input-shape``, else from the data
    given for it (``data``: the .npz's x), else the file's (an ONNX file with free dimensions needs one)."""
    import nncomp as nc
    if not os.path.exists(path):
        raise UsageError(f"cannot read {path}: no such file")
    if os.path.isfile(path) and not os.access(path, os.R_OK):
        raise UsageError(f"cannot read {path}: permission denied")
    if input_shape is None and data is not None and data.ndim >= 2:
        input_shape = tuple(int(d) for d in data.shape[1:])
    try:
        return nc.load(path, input_shape=input_shape)
    except nc.NncompError as e:
        if input_shape is None and "input_shape" in str(e):
            raise UsageError(f"{e}; on the command line: --input-shape D,D,.. (or data of that size)") from None
        raise


def _npz(path, need_y=False, any_y=False):
    """``(x, y or None)`` of the .npz at ``path``; ``y`` one label per row of x (``any_y``: any array
    with a row per sample, a metric's reference values)."""
    import numpy as np
    if not os.path.isfile(path):
        raise UsageError(f"cannot read {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as d:
            if "x" not in d.files:
                raise UsageError(f"{path}: the .npz needs an array 'x' (got {d.files})")
            x = np.asarray(d["x"])
            y = np.asarray(d["y"]) if "y" in d.files else None
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - zip/npy errors come in many types
        raise UsageError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    if need_y and y is None:
        raise UsageError(f"{path}: the .npz needs an array 'y' of labels")
    if y is not None and (y.ndim < 1 or y.shape[0] != x.shape[0] or (y.ndim != 1 and not any_y)):
        raise UsageError(f"{path}: 'y' must be {'an array with' if any_y else '1-D with'} one label per row of 'x', "
                         f"got {y.shape} for x {x.shape}")
    return x, y


def _digits_for(model, split):
    import nncomp as nc
    x, y = nc.data.for_model(model, split)
    if tuple(x.shape[1:]) != model.input_shape:
        raise UsageError(f"the shipped digits ({x.shape[1:]}) do not fit this model's input {model.input_shape}; "
                         "pass --data / --calibration-data with an .npz holding x (and y)")
    return x, y


def read_recipe(path):
    """``(steps, calibration, huffman)`` from a JSON or TOML recipe file, validated."""
    if not os.path.isfile(path):
        raise UsageError(f"cannot read recipe {path}: no such file")
    try:
        if path.endswith(".toml"):
            import tomllib
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        else:
            with open(path) as fh:
                data = json.load(fh)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read recipe {path}: {type(e).__name__}: {e}") from None
    if isinstance(data, list):
        data = {"steps": data}
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list) or not data["steps"]:
        raise UsageError(f"recipe {path}: expected a non-empty list 'steps' of {{method = ..., options}}")
    unknown = set(data) - {"steps", "calibration", "huffman"}
    if unknown:
        raise UsageError(f"recipe {path}: unknown keys {sorted(unknown)}; allowed: steps, calibration, huffman")
    steps = []
    for i, step in enumerate(data["steps"], 1):
        if not isinstance(step, dict) or step.get("method") not in METHODS:
            got = step.get("method") if isinstance(step, dict) else step
            raise UsageError(f"recipe {path}: step {i} needs method = one of {list(METHODS)}, got {got!r}")
        kwargs = {k: v for k, v in step.items() if k != "method"}
        if "calibration" in kwargs:
            raise UsageError(f"recipe {path}: step {i}: set calibration once at the top level "
                             "(a number of training digits)")
        steps.append((step["method"], kwargs))
    calib = data.get("calibration", 0)
    if type(calib) is not int or calib < 0:
        raise UsageError(f"recipe {path}: calibration must be a number of samples >= 0, got {calib!r}")
    huffman = data.get("huffman", False)
    if type(huffman) is not bool:
        raise UsageError(f"recipe {path}: huffman must be true or false, got {huffman!r}")
    return steps, calib, huffman


def steps_from_options(a):
    """The method options of ``compress`` as recipe steps, in a fixed order."""
    steps = []
    if a.prune is not None:
        steps.append(("prune", {"sparsity": a.prune}))
    if a.prune_filters is not None:
        steps.append(("prune_filters", {"ratio": a.prune_filters}))
    if a.factorize is not None:
        steps.append(("factorize", {"speedup": a.factorize}))
    if a.share is not None:
        steps.append(("share", {"bits": a.share}))
    if a.quantize is not None:
        modes = {"weights": {"weights_only": True}, "dynamic": {}, "static": {"activations": "static"}}
        steps.append(("quantize", modes[a.quantize]))
    if a.deep_compression:
        steps.append(("deep_compression", {}))
    return steps


def apply_steps(model, steps, calibration):
    import nncomp as nc
    from .errors import NncompError
    for i, (method, kwargs) in enumerate(steps, 1):
        fn = getattr(nc, method)
        if calibration is not None:
            kwargs = {**kwargs, "calibration": calibration}
        try:
            model = fn(model, **kwargs)
        except TypeError as e:
            raise UsageError(f"step {i} ({method}): {e}") from None
        except NncompError as e:
            raise UsageError(f"step {i} ({method}): {e}") from None
    return model


# ----------------------------------------------------------------------------- commands
def cmd_info(a):
    model = _load(a.file, a.input_shape)
    print(model.summary())
    print(f"file: {a.file}, {os.path.getsize(a.file):,} bytes on disk")
    return 0


def cmd_compress(a):
    steps = steps_from_options(a)
    calib_n, huffman = a.calibration, a.huffman
    if a.recipe:
        if steps:
            raise UsageError("give either method options or --recipe, not both")
        steps, calib_n_file, huffman_file = read_recipe(a.recipe)
        calib_n = calib_n if calib_n is not None else calib_n_file
        huffman = huffman or huffman_file
    if not steps:
        raise UsageError("nothing to do: give a method option (--prune, --share, --quantize, ...) or --recipe")
    calibration = _npz(a.calibration_data)[0] if a.calibration_data else None
    model = _load(a.file, a.input_shape, calibration)
    if a.calibration_data:
        if calib_n:
            calibration = calibration[:calib_n]
    elif calib_n:
        calibration = _digits_for(model, "train")[0][:calib_n]
    for method, _ in steps:
        _require(method)
    small = apply_steps(model, steps, calibration)
    import nncomp as nc
    out_dir = os.path.dirname(os.path.abspath(a.output))
    if not os.path.isdir(out_dir):
        raise UsageError(f"cannot write {a.output}: folder {out_dir} does not exist")
    nc.save(small, a.output, huffman=huffman)
    size = os.path.getsize(a.output)
    print(f"{a.file}: {model.nbytes:,} weight bytes -> {small.nbytes:,} in memory, {size:,} bytes on disk "
          f"({' -> '.join(m for m, _ in steps)}{', Huffman' if huffman else ''}"
          f"{f', calibrated on {len(calibration)} samples' if calibration is not None else ''})")
    print(f"wrote {a.output}")
    return 0


def _require(method):
    import importlib
    import nncomp as nc
    try:
        importlib.import_module(nc._LAZY[method])
    except ModuleNotFoundError:
        raise UsageError(f"method {method!r} is not available in this version of nncomp") from None


def cmd_eval(a):
    import numpy as np
    from .bench.timing import alternate, set_threads
    set_threads(a.threads or os.cpu_count() or 1)
    x, y = _npz(a.data) if a.data else (None, None)
    model = _load(a.file, a.input_shape, x)
    if not a.data:
        x, y = _digits_for(model, "test")
    from .errors import InputError
    try:
        logits = model(x)
    except InputError as e:
        raise UsageError(f"{a.data or 'the digits'}: {e}") from None
    logits = logits[0] if isinstance(logits, tuple) else logits
    lines = [f"{a.file}: {model.nbytes:,} weight bytes, {model.macs:,} MACs per sample, {len(x)} samples"]
    if y is not None and logits.ndim == 2:
        lines.append(f"accuracy {100 * float((logits.argmax(1) == y).mean()):.2f}%")
    batches = a.batches
    for b in batches:
        xb = np.ascontiguousarray(x[np.arange(b) % len(x)])
        t = alternate({"m": lambda: model(xb)}, repeat=a.repeat, warmup=2, max_seconds=10, spinners=())["m"]
        lines.append(f"batch {b}: median {t['median_ms']:.3f} ms (p90 {t['p90_ms']:.3f}), "
                     f"{b / t['median_ms'] * 1e3:,.0f} samples/s")
    print("\n".join(lines))
    return 0


def cmd_optimize(a):
    import nncomp as nc
    from .planner import Planner, metrics
    metric = metrics.named(a.metric)
    x, y = _npz(a.calib, any_y=metric is not None) if a.calib else (None, None)
    model = _load(a.file, a.input_shape, x)
    if not a.calib:
        x, y = _digits_for(model, "train")
        x, y = x[:a.calibration], y[:a.calibration]
    if metric is not None and y is not None and y.ndim == 1 and y.dtype.kind in "iu":
        y = None          # class labels are no metric's reference: compare with the original model's outputs
    methods = None if a.methods is None else [m.strip() for m in a.methods.split(",") if m.strip()]
    out_dir = os.path.dirname(os.path.abspath(a.output))
    if not os.path.isdir(out_dir):
        raise UsageError(f"cannot write {a.output}: folder {out_dir} does not exist")

    def progress(step, message):
        if not a.quiet:
            print(f"[{step}/{Planner.STEPS}] {message}", file=sys.stderr, flush=True)
    planner = Planner(progress=progress)
    result = planner.run(model, x, labels=None if a.agreement else y, budget=a.budget, batch=a.batch,
                         objective=a.objective, methods=methods, n_jobs=a.jobs, seed=a.seed, metric=metric,
                         **({} if a.confidence is None else {"confidence": a.confidence}))
    nc.save(result, a.output, huffman=True)
    print(result.plan)
    print(f"wrote {a.output} ({os.path.getsize(a.output):,} bytes, the plan included)")
    return 0


def _file_arguments(s):
    """The model file and its input size (every command that loads one)."""
    s.add_argument("file")
    s.add_argument("--input-shape", metavar="D,D,..", help="per-sample input size in the file's order, e.g. 3,48,192 "
                   "(default: the data's, else the file's; an ONNX file with free dimensions needs one)")


def build_parser():
    p = OneLineParser(prog=PROG, description="Compress trained neural networks; measure speed, size, accuracy.")
    sub = p.add_subparsers(dest="command", metavar="{info,compress,eval,optimize,bench}", parser_class=OneLineParser)
    s = sub.add_parser("info", help="print the model summary")
    _file_arguments(s)
    s = sub.add_parser("compress", help="compress a model and save it in nncomp's format")
    _file_arguments(s)
    s.add_argument("-o", "--output", required=True, help="output .h5 file")
    s.add_argument("--prune", type=float, metavar="SPARSITY", help="magnitude pruning, fraction removed")
    s.add_argument("--prune-filters", type=float, metavar="RATIO",
                   help="structured pruning: fraction of filters removed")
    s.add_argument("--factorize", type=float, metavar="SPEEDUP", help="low rank with this FLOP reduction")
    s.add_argument("--share", type=int, metavar="BITS", help="k-means weight sharing, 1-8 bits")
    s.add_argument("--quantize", choices=("weights", "dynamic", "static"),
                   help="int8: weights only, or weights and activations (dynamic or static ranges)")
    s.add_argument("--deep-compression", action="store_true", help="prune + share (+ --huffman)")
    s.add_argument("--recipe", metavar="FILE", help="a JSON or TOML recipe (steps run in order)")
    s.add_argument("--calibration", type=int, metavar="N", default=None,
                   help="refit on the first N training digits (default: data-free)")
    s.add_argument("--calibration-data", metavar="NPZ", help="calibration inputs: an .npz with x")
    s.add_argument("--huffman", action="store_true", help="Huffman-code codes and indices on disk")
    s = sub.add_parser("eval", help="accuracy and speed on the shipped digits or an .npz")
    _file_arguments(s)
    s.add_argument("--data", metavar="NPZ", help="an .npz with x (and y for accuracy)")
    s.add_argument("--batch", default="1,64", help="batch sizes to time (default 1,64)")
    s.add_argument("--repeat", type=int, default=20)
    s.add_argument("--threads", type=int, default=None)
    s = sub.add_parser("optimize", help="nc.optimize: the fastest (or smallest) model within an accuracy budget")
    _file_arguments(s)
    s.add_argument("-o", "--output", required=True, help="output .h5 file (Huffman-coded, with the plan)")
    s.add_argument("--budget", type=float, default=0.5, help="points of accuracy allowed to be lost (default 0.5)")
    s.add_argument("--confidence", type=float, default=None,
                   help="the held-out loss's upper bound at this one-sided level must be within the budget "
                   "(default nc.optimize's, 0.8; 0.5: the measured loss alone)")
    s.add_argument("--batch", type=int, default=1, help="the batch size the model will serve (default 1)")
    s.add_argument("--objective", choices=("latency", "size", "energy"), default="latency",
                   help="minimise the measured time per call (default), the file's bytes, or the estimated "
                   "energy per inference (Horowitz 45 nm model, not measured)")
    s.add_argument("--calib", metavar="NPZ", help="calibration data: an .npz with x (and y, labels: without "
                   "them the budget is in points of agreement); default: the first --calibration training digits")
    s.add_argument("--calibration", type=int, metavar="N", default=2000,
                   help="training digits used without --calib (default 2000)")
    s.add_argument("--agreement", action="store_true",
                   help="budget in points of agreement with the original model, even if labels are given")
    s.add_argument("--metric", default="top1", metavar="NAME",
                   help="what the budget counts: top1 (default: accuracy, or agreement without labels), "
                   "map-iou[:THRESH] (a probability map's binarized IoU, default 0.3), cosine (outputs' cosine "
                   "similarity) or ctc[:BLANK] (sequences read the same by greedy CTC decoding, blank class 0), against the original model's outputs, or y when it holds reference values (not "
                   "class labels)")
    s.add_argument("--methods", metavar="A,B", help="candidate families (default all): prune, prune_int8, "
                   "quantize, share, prune_share, factorize, prune_filters")
    s.add_argument("--jobs", type=int, default=None, help="build and score candidates as this many joblib jobs")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    sub.add_parser("bench", help="python -m nncomp.bench (pass its options after 'bench')", add_help=False)
    return p


def main(argv=None):
    """Entry point; returns the exit code (errors exit 2 with one line on stderr)."""
    from_shell = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from .bench.__main__ import run
        from .bench.args import parse_args
        if from_shell:
            from .bench.timing import reexec_without_openblas_overrides
            reexec_without_openblas_overrides()
        return run(parse_args(argv[1:]))
    p = build_parser()
    a = p.parse_args(argv)
    if a.command is None:
        fail("choose a command: info, compress, eval, optimize or bench")
    from .errors import NncompError
    try:
        if a.input_shape is not None:
            try:
                a.input_shape = positive_ints(a.input_shape, "--input-shape")
            except ValueError as e:
                raise UsageError(str(e)) from None
        if a.command == "eval":
            try:
                a.batches = positive_ints(a.batch, "--batch")
            except ValueError as e:
                raise UsageError(str(e)) from None
            if a.repeat < 1 or (a.threads is not None and a.threads < 1):
                raise UsageError("--repeat and --threads must be >= 1")
        if a.command in ("compress", "optimize") and a.calibration is not None and a.calibration < 1:
            raise UsageError(f"--calibration must be >= 1 samples, got {a.calibration}")
        return {"info": cmd_info, "compress": cmd_compress, "eval": cmd_eval, "optimize": cmd_optimize}[a.command](a)
    except (UsageError, NncompError, OSError) as e:
        fail(e)


if __name__ == "__main__":
    sys.exit(main())
