"""The model suite: every method alone and combined on the shipped models, against the dense engine.

The method settings live in one table, :data:`RECIPES`: a row is a :class:`Recipe` (method, settings,
``fn(model, calibration) -> Model``, calibrated or not, Huffman-coded on disk or not, the public
methods it needs). A recipe whose method has not landed in ``nncomp`` yields a row marked
``"not available"``; a recipe that raises yields ``"error: ..."``. Adding a row is one line.

Each row is measured the same way (:func:`measure`): accuracy on the test digits, top-1 agreement
with the dense model and the largest logit difference from it, weight bytes in memory, bytes on disk
(``nc.save`` to a temporary file, reloaded and checked), MACs, and the latency at a small batch and the
throughput at a large batch, each timed alternating with the dense model in the same loop, so that
``speedup`` is a ratio measured under the same machine conditions.
"""
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import DATA_DIR
from . import peers
from .layers import NotAvailable, formats_of, require
from .sizes import saved_size
from .timing import LEAD_S, SETTLE_S, alternate

MODELS = ("lenet300", "lenet5", "vgg_small", "resnet_small")
QUICK_MODELS = ("lenet300",)
CALIBRATION_SAMPLES = 512
# Calls per contender at batch 1, where one call takes 20-300 us: on this VM a call now and then
# runs ~1.5 ms for ~0.1 s at a time (both contenders alike; the cause is outside the process: no
# thread of it is busy meanwhile), and with 8 calls (2 blocks) one such spell set a ratio of the
# dense model against itself at 3-50x. 24 calls in 6 blocks keep the median out of it.
BATCH1_REPEAT = 24


def _nc():
    import nncomp
    return nncomp


@dataclass(frozen=True)
class Recipe:
    """One row of the suite: ``fn(model, calibration or None) -> Model``.

    ``base``: ``(method, settings)`` of the recipe whose result ``fn`` starts from instead of the dense
    model (a combination's first step); the run compresses each base once and shares it.
    """

    method: str
    settings: str
    fn: object
    calibrated: bool = False
    huffman: bool = False
    needs: tuple = ()
    quick: bool = False
    base: tuple = ()

    @property
    def label(self):
        return f"{self.method} {self.settings}" + (" +calib" if self.calibrated else "")


def both(method, settings, fn, needs, *, huffman=False, quick=False, base=()):
    """The recipe without and with calibration data (the methods accept ``calibration=None``)."""
    return [Recipe(method, settings, fn, False, huffman, needs, quick, base),
            Recipe(method, settings, fn, True, huffman, needs, False, base)]


def free(method, settings, fn, needs, *, huffman=False, quick=False):
    """A data-free row only (extra settings of a method; keeps the default run under 5 minutes)."""
    return [Recipe(method, settings, fn, False, huffman, needs, quick)]


def calibrated(method, settings, fn, needs, *, huffman=False):
    """A calibrated row only (the method needs data)."""
    return [Recipe(method, settings, fn, True, huffman, needs, False)]


def _int8(m, c):
    return _nc().quantize(m, calibration=c)


# The settings table: one line per row. ``both`` makes the data-free and the calibrated row (the
# headline setting of each method and every combination); ``free`` a data-free row (further settings).
RECIPES = [
    *free("prune", "sparsity=0.5", lambda m, c: _nc().prune(m, sparsity=0.5, calibration=c), ("prune",)),
    *free("prune", "sparsity=0.8", lambda m, c: _nc().prune(m, sparsity=0.8, calibration=c), ("prune",)),
    *both("prune", "sparsity=0.9", lambda m, c: _nc().prune(m, sparsity=0.9, calibration=c), ("prune",),
          quick=True),
    *both("prune_filters", "ratio=0.25",
          lambda m, c: _nc().prune_filters(m, ratio=0.25, calibration=c), ("prune_filters",), quick=True),
    *free("prune_filters", "ratio=0.5",
          lambda m, c: _nc().prune_filters(m, ratio=0.5, calibration=c), ("prune_filters",)),
    *free("quantize", "int8 weights only",
          lambda m, c: _nc().quantize(m, weights_only=True, calibration=c), ("quantize",), quick=True),
    *both("quantize", "int8 dynamic activations", _int8, ("quantize",)),
    *calibrated("quantize", "int8 static activations (mse)",
                lambda m, c: _nc().quantize(m, activations="static", method="mse", calibration=c), ("quantize",)),
    *free("share", "bits=8", lambda m, c: _nc().share(m, bits=8, calibration=c), ("share",)),
    *both("share", "bits=5", lambda m, c: _nc().share(m, bits=5, calibration=c), ("share",), huffman=True,
          quick=True),
    *free("share", "bits=4", lambda m, c: _nc().share(m, bits=4, calibration=c), ("share",), huffman=True),
    *both("factorize", "speedup=2", lambda m, c: _nc().factorize(m, speedup=2.0, calibration=c),
          ("factorize",), quick=True),
    *free("factorize", "speedup=4", lambda m, c: _nc().factorize(m, speedup=4.0, calibration=c),
          ("factorize",)),
    *both("deep_compression", "defaults, Huffman",
          lambda m, c: _nc().deep_compression(m, calibration=c), ("deep_compression",), huffman=True,
          quick=True),
    *both("prune + int8", "sparsity=0.9, int8 dynamic", _int8, ("prune", "quantize"), base=("prune", "sparsity=0.9")),
    *both("low-rank + int8", "speedup=2, int8 dynamic", _int8, ("factorize", "quantize"),
          base=("factorize", "speedup=2")),
]

# Peers on the dense model: (method, settings, builder(model, threads) -> fn(x), bytes(model)).
PEERS = [
    ("torch", "float32 eager", lambda m, t: peers.torch_model(m), lambda m: peers.torch_bytes(m)),
    ("torch", "dynamic int8 Linear", lambda m, t: peers.torch_model(m, int8=True),
     lambda m: peers.torch_bytes(m, int8=True)),
    ("onnxruntime", "float32", lambda m, t: peers.ort_model(m, threads=t), lambda m: peers.torch_bytes(m)),
    ("onnxruntime", "dynamic int8 MatMul", lambda m, t: peers.ort_model(m, threads=t, int8=True),
     lambda m: peers.torch_bytes(m, int8=True)),
]

METHOD_NAMES = sorted({r.method for r in RECIPES} | {"dense", "peers"})

COLUMNS = ["model", "method", "settings", "calibrated", "status", "formats", "accuracy", "accuracy_delta",
           "agreement", "max_logit_err", "weight_bytes", "disk_bytes", "payload_bytes", "huffman",
           "compression_ratio", "memory_ratio", "macs", "latency_ms", "latency_p90_ms",
           "speedup_latency", "throughput_sps", "speedup_throughput", "verdict", "compress_s"]


def model_paths(names=MODELS, keras=False):
    """Paths of the shipped models (and of the checkout's ``data/keras/*.h5`` with ``keras``)."""
    paths = [DATA_DIR / f"{n}.h5" for n in names]
    if keras:
        from ..data import CHECKOUT_DIR
        if CHECKOUT_DIR is None:
            raise ValueError("--keras needs a source checkout: the Keras fixtures live in its data/keras/, "
                             "which an installed nncomp does not ship")
        keras_dir = CHECKOUT_DIR / "data" / "keras"
        paths += sorted(p for p in keras_dir.glob("*.h5") if not p.name.endswith(".weights.h5")
                        and not p.name.endswith("_free.h5"))    # a free-size input needs input_shape=
    return paths


def _verdict(ratio, speedup_latency, speedup_throughput, *, margin=1.10):
    """"smaller", "faster", "smaller+faster" or "neither" (10% margins; speed at either batch)."""
    smaller = ratio is not None and ratio >= margin
    speeds = [s for s in (speedup_latency, speedup_throughput) if s is not None]
    faster = bool(speeds) and max(speeds) >= margin
    slower = bool(speeds) and max(speeds) < 1 / margin
    words = [w for w, on in (("smaller", smaller), ("faster", faster)) if on]
    out = "+".join(words) or "neither"
    return out + (", slower" if slower else "")


class Context:
    """The dense model and the data a model's rows are measured against."""

    def __init__(self, model, x, y, calibration, batches, repeat, max_seconds, name, settle=SETTLE_S,
                 spinners=()):
        self.model, self.x, self.y, self.calibration = model, x, y, calibration
        self.batches, self.repeat, self.max_seconds, self.name = batches, repeat, max_seconds, name
        self.settle, self.spinners = settle, spinners
        self.budget = None      # a timing.Budget: each measurement's max_seconds adapts to the run's deadline
        self.compressed = {}    # (method, settings, calibrated) -> (model, seconds): shared by combinations
        self.compress_wall = 0.0    # seconds spent compressing (a shared base counted once)
        self.logits = model(x)
        self.pred = self.logits.argmax(axis=1)
        self.accuracy = float((self.pred == y).mean()) if y is not None else None
        self.payload = None
        self.xb = {b: np.ascontiguousarray(x[np.arange(b) % len(x)]) for b in batches}


def _time_against_dense(ctx, fn, spinners, lead=False):
    """``{batch: (dense timing, row timing)}``, alternating dense and the row (with ``lead``, a peer
    runtime's row: each block first runs LEAD_S of untimed calls, so that neither times its slow
    first calls after the other's block or a pause: nncomp.bench.timing)."""
    out = {}
    for b in ctx.batches:
        xb = ctx.xb[b]
        repeat = max(ctx.repeat, BATCH1_REPEAT) if b == 1 else ctx.repeat
        t = alternate({"dense": lambda: ctx.model(xb), "row": lambda: fn(xb)}, repeat=repeat, block=4,
                      warmup=2, settle=ctx.settle, spinners=spinners, lead_s=LEAD_S if lead else 0.0,
                      max_seconds=ctx.budget.take(1.0, ctx.max_seconds) if ctx.budget else ctx.max_seconds)
        out[b] = (t["dense"], t["row"])
    return out


def _row(ctx, method, settings, calibrated, status="ok"):
    r = dict.fromkeys(COLUMNS)
    r.update(model=ctx.name, method=method, settings=settings, calibrated=calibrated, status=status)
    return r


def measure(ctx, fn, row, *, nbytes=None, macs=None, disk=None, huffman=False, spins=False, peer=False):
    """Fill ``row`` for a callable ``fn(x) -> logits`` (a Model, or a ``peer`` runtime whose threads may ``spins``)."""
    logits = np.asarray(fn(ctx.x))
    pred = logits.argmax(axis=1)
    if ctx.y is not None:
        row["accuracy"] = float((pred == ctx.y).mean())
        row["accuracy_delta"] = 100.0 * (row["accuracy"] - ctx.accuracy)
    row["agreement"] = float((pred == ctx.pred).mean())
    row["max_logit_err"] = float(np.abs(logits.astype(np.float64) - ctx.logits).max())
    row["weight_bytes"], row["macs"], row["huffman"] = nbytes, macs, huffman
    if disk is not None:
        row["disk_bytes"], row["payload_bytes"] = disk
    dense_bytes = ctx.model.nbytes
    if row["payload_bytes"]:
        row["compression_ratio"] = dense_bytes / row["payload_bytes"]
    if nbytes:
        row["memory_ratio"] = dense_bytes / nbytes
    spinners = None if ctx.spinners is None else set(ctx.spinners) | ({"row"} if spins else set())
    times = _time_against_dense(ctx, fn, spinners, lead=peer)
    small, large = ctx.batches[0], ctx.batches[-1]
    d, t = times[small]
    row["latency_ms"], row["latency_p90_ms"] = t["median_ms"], t["p90_ms"]
    row["speedup_latency"] = d["median_ms"] / t["median_ms"]
    d, t = times[large]
    row["throughput_sps"] = large / (t["median_ms"] / 1e3)
    row["speedup_throughput"] = d["median_ms"] / t["median_ms"]
    row["verdict"] = _verdict(row["compression_ratio"] or row["memory_ratio"], row["speedup_latency"],
                              row["speedup_throughput"]) if row["method"] != "dense" else "baseline"
    return row


def run_recipe(ctx, recipe):
    """Compress with one recipe and measure the result; never raises."""
    row = _row(ctx, recipe.method, recipe.settings, recipe.calibrated)
    try:
        require(recipe.needs)
    except NotAvailable as e:
        row["status"] = str(e)
        return row
    t0 = time.perf_counter()
    try:
        small, row["compress_s"] = compressed(ctx, recipe)
        row["formats"] = formats_of(small)
        saved = saved_size(small, huffman=recipe.huffman)
        probe = ctx.xb[ctx.batches[-1]]
        if not np.array_equal(saved.loaded(probe), small(probe)):
            row["status"] = "error: the saved file reloads with different outputs"
        measure(ctx, small, row, nbytes=small.nbytes, macs=small.macs,
                disk=(saved.file_bytes, saved.payload_bytes),
                huffman=recipe.huffman)
    except Exception as e:  # noqa: BLE001 - one failing method must not stop the suite
        row["status"] = f"error: {type(e).__name__}: {_one_line(e)}"
        if row["compress_s"] is None:
            row["compress_s"] = time.perf_counter() - t0
    return row


def compressed(ctx, recipe):
    """``(model, seconds)``: ``recipe`` applied to the dense model (to its base's result, compressed once)."""
    key = (recipe.method, recipe.settings, recipe.calibrated)
    if key not in ctx.compressed:
        start, base_s = ctx.model, 0.0
        if recipe.base:
            base = next(r for r in RECIPES if (r.method, r.settings) == recipe.base)
            start, base_s = compressed(ctx, Recipe(base.method, base.settings, base.fn, recipe.calibrated))
        t0 = time.perf_counter()
        small = recipe.fn(start, ctx.calibration if recipe.calibrated else None)
        ctx.compress_wall += time.perf_counter() - t0
        ctx.compressed[key] = (small, base_s + time.perf_counter() - t0)
    return ctx.compressed[key]


def run_dense(ctx):
    row = _row(ctx, "dense", "float32 (nncomp engine)", False)
    row["formats"] = formats_of(ctx.model)
    saved = saved_size(ctx.model)
    measure(ctx, ctx.model, row, nbytes=ctx.model.nbytes, macs=ctx.model.macs,
            disk=(saved.file_bytes, saved.payload_bytes))
    return row


def run_peer(ctx, peer, threads):
    method, settings, build, nbytes = peer
    row = _row(ctx, method, settings, False)
    t0 = time.perf_counter()
    try:
        fn = build(ctx.model, threads)
        row["compress_s"] = time.perf_counter() - t0
        row["formats"] = "peer"
        disk = (fn.onnx_bytes, None) if hasattr(fn, "onnx_bytes") else None
        measure(ctx, fn, row, nbytes=nbytes(ctx.model), macs=ctx.model.macs, disk=disk, spins=method == "torch",
                peer=True)
    except peers.PeerUnavailable as e:
        row["status"] = str(e)
    except Exception as e:  # noqa: BLE001
        row["status"] = f"error: {type(e).__name__}: {_one_line(e)}"
    return row


def _one_line(e):
    return " ".join(str(e).split())[:300]


def selected(recipes, methods, quick):
    """Recipes filtered by ``--methods`` names and ``--quick``."""
    out = [r for r in recipes if not quick or r.quick]
    if methods:
        out = [r for r in out if r.method in methods]
    return out


def load_data(model, data=None):
    """``(x_test, y_test, calibration)``: a given .npz (``x``, ``y``, optional ``x_calib``) or the digits."""
    nc = _nc()
    if data is None:
        x, y = nc.data.for_model(model, "test")
        calib = nc.data.for_model(model, "train")[0][:CALIBRATION_SAMPLES]
        return x, y, calib
    with np.load(data) as d:
        x = d["x"].astype(np.float32)
        y = d["y"].astype(np.int64) if "y" in d else None
        calib = d["x_calib"].astype(np.float32) if "x_calib" in d else x[:CALIBRATION_SAMPLES]
    return x, y, calib


def run_model(path, *, recipes, batches=(1, 64), repeat=8, threads=2, with_peers=True, data=None,
              max_seconds=1.0, max_samples=None, settle=SETTLE_S, spinners=(), progress=print, phases=None,
              budget=None):
    """Every row for one model file; returns a list of row dicts (dense first).

    ``settle`` seconds pass untimed after the block of a contender whose threads spin (torch), or
    after every block with ``spinners=None``. ``phases``: a dict that receives the seconds spent in
    loading, the dense row, the methods (compressing; saving and timing) and the peers. ``budget``: a
    :class:`~nncomp.bench.timing.Budget` that shortens each measurement when the run falls behind.
    """
    nc = _nc()
    phases = {} if phases is None else phases
    t0 = time.perf_counter()
    model = nc.load(path)
    name = Path(path).stem if Path(path).parent.name != "keras" else f"keras/{Path(path).stem}"
    x, y, calib = load_data(model, data)
    if max_samples:
        x, y = x[:max_samples], (None if y is None else y[:max_samples])
    ctx = Context(model, x, y, calib, tuple(batches), repeat, max_seconds, name, settle, spinners)
    ctx.budget = budget
    t1 = time.perf_counter()
    rows = [run_dense(ctx)]
    progress(_progress_line(rows[-1]))
    t2 = time.perf_counter()
    for r in recipes:
        rows.append(run_recipe(ctx, r))
        progress(_progress_line(rows[-1]))
    t3 = time.perf_counter()
    if with_peers:
        for p in PEERS:
            rows.append(run_peer(ctx, p, threads))
            progress(_progress_line(rows[-1]))
    compress = ctx.compress_wall
    phases.update({f"{name}: load": t1 - t0, f"{name}: dense": t2 - t1, f"{name}: methods compress": compress,
                   f"{name}: methods save+measure": t3 - t2 - compress, f"{name}: peers": time.perf_counter() - t3})
    return rows


def _progress_line(r):
    head = f"{r['model']:>12}  {r['method']:<16} {r['settings']:<30} {'calib' if r['calibrated'] else '     '}"
    if r["status"] != "ok":
        return f"{head}  {r['status']}"
    acc = f"acc {100 * r['accuracy']:.1f}%" if r["accuracy"] is not None else f"agree {100 * r['agreement']:.1f}%"
    ratio = f"{r['compression_ratio']:.1f}x smaller" if r["compression_ratio"] else ""
    return (f"{head}  {acc}  {r['latency_ms']:.3g} ms ({r['speedup_latency']:.2f}x)  "
            f"{r['throughput_sps']:.0f}/s ({r['speedup_throughput']:.2f}x)  {ratio}")
