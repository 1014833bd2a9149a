"""The layer suite: every weight format on VGG-16 layer shapes (random weights) against the peers.

Per layer shape and batch size, every contender runs in the same process, alternating, after a
warm-up: nncomp's formats (each produced by the public method on a one-layer model), NumPy/BLAS,
scipy.sparse and, when installed, PyTorch CPU and ONNX Runtime. Each row carries its median and p90,
its time relative to NumPy dense float32 in the same alternation, and its distance to its roofline:
``max(weight bytes / measured DRAM bandwidth, FLOPs / measured sgemm throughput)`` over the measured
time (100 % = at the limit). Both limits are measured at the start of the run
(:func:`nncomp.bench.roofline.machine_limits`), then raised to the best rates the contenders achieved
(:func:`nncomp.bench.roofline.cap`), so no cell exceeds 100 % (int8 compute aside).
Batch-1 rows flush the caches before each call (the weights come from DRAM, as in a real network).
"""
import time
from dataclasses import dataclass

import numpy as np

from ..layers import Conv2D, Dense
from ..model import Model, Node
from . import peers
from .roofline import cap, roofline_ms
from .timing import SETTLE_S, alternate

# name: (kind, n_out, n_in) for dense layers; (kind, c_out, c_in, hw, k, pad) for convolutions.
SHAPES = {
    "fc6": ("dense", 4096, 25088),
    "fc7": ("dense", 4096, 4096),
    "conv3_2": ("conv", 256, 256, 56, 3, 1),
    "conv5_2": ("conv", 512, 512, 14, 3, 1),
}
QUICK_SHAPES = {
    "fc_small": ("dense", 512, 2048),
    "conv_small": ("conv", 32, 32, 16, 3, 1),
}


def layer_model(name, *, layout=None, seed=0, shapes=SHAPES):
    """A one-node Model holding layer ``name`` with random (He-scaled normal) weights and bias.

    Dense layers take ``(n, n_in)``; convolutions take NHWC by default (nncomp's native layout) or
    ``layout="NCHW"`` (the peers' native layout). The same seed gives the same weights.
    """
    spec = shapes[name]
    rng = np.random.default_rng(seed)
    if spec[0] == "dense":
        _, n_out, n_in = spec
        w = (rng.standard_normal((n_out, n_in), dtype=np.float32) * np.float32(np.sqrt(2.0 / n_in)))
        b = rng.standard_normal(n_out, dtype=np.float32) * np.float32(0.01)
        return Model([Node(name, Dense(w, b))], input_shape=(n_in,), input_layout="NC", name=name)
    _, c_out, c_in, hw, k, pad = spec
    w = rng.standard_normal((c_out, k * k * c_in), dtype=np.float32) * np.float32(np.sqrt(2.0 / (k * k * c_in)))
    b = rng.standard_normal(c_out, dtype=np.float32) * np.float32(0.01)
    layout = layout or "NHWC"
    shape = (hw, hw, c_in) if layout == "NHWC" else (c_in, hw, hw)
    conv = Conv2D(w, b, in_channels=c_in, kernel_size=k, padding=pad)
    return Model([Node(name, conv)], input_shape=shape, input_layout=layout, name=name)


def layer_input(model, batch, seed=1):
    """A float32 input batch for a one-layer model (post-ReLU-like: non-negative half-normal)."""
    rng = np.random.default_rng(seed)
    return np.abs(rng.standard_normal((batch,) + model.input_shape, dtype=np.float32))


def describe_shape(name, shapes=SHAPES):
    spec = shapes[name]
    if spec[0] == "dense":
        return f"{spec[1]}x{spec[2]}"
    _, c_out, c_in, hw, k, pad = spec
    return f"{c_in}x{hw}x{hw} -> {c_out} {k}x{k} pad {pad}"


@dataclass(frozen=True)
class LayerRecipe:
    """A nncomp format on a one-layer model: ``fn(model) -> model`` built with a public method."""

    name: str
    fn: object
    kinds: tuple = ("dense", "conv")
    needs: tuple = ()


def _nc():
    import nncomp
    return nncomp


def _filters_removed(m, ratio):
    """The conv of a one-layer model with ``ratio`` of its filters removed by ``nc.prune_filters``.

    Structured pruning leaves a model's output alone, so the conv gets a 1x1 consumer first; the
    timed model is the pruned conv alone (its consumer would shrink too in a real network).
    """
    node = m.nodes[0]
    c = node.layer.out_channels
    w = np.random.default_rng(2).standard_normal((c, c), dtype=np.float32) * np.float32(np.sqrt(2.0 / c))
    two = m.with_nodes([node, Node("next", Conv2D(w, in_channels=c, kernel_size=1), (node.name,))],
                       outputs=("next",))
    pruned = _nc().prune_filters(two, ratio=ratio, layers=[node.name])
    return Model([pruned.nodes[0]], input_shape=m.input_shape, input_layout=m.input_layout, name=m.name)


LAYER_RECIPES = [
    LayerRecipe("nncomp dense float32", lambda m: m),
    LayerRecipe("nncomp CSR 90%", lambda m: _nc().prune(m, sparsity=0.9), ("dense",), ("prune",)),
    LayerRecipe("nncomp CSR 95%", lambda m: _nc().prune(m, sparsity=0.95), ("dense",), ("prune",)),
    LayerRecipe("nncomp pruned 80%", lambda m: _nc().prune(m, sparsity=0.8), ("conv",), ("prune",)),
    LayerRecipe("nncomp 50% filters removed", lambda m: _filters_removed(m, 0.5), ("conv",),
                ("prune_filters",)),
    LayerRecipe("nncomp int8 weights", lambda m: _nc().quantize(m, weights_only=True), needs=("quantize",)),
    LayerRecipe("nncomp int8 dynamic", lambda m: _nc().quantize(m), needs=("quantize",)),
    LayerRecipe("nncomp codebook 4-bit", lambda m: _nc().share(m, bits=4), needs=("share",)),
    LayerRecipe("nncomp low rank r=256", lambda m: _nc().factorize(m, rank=256), ("dense",), ("factorize",)),
    LayerRecipe("nncomp low rank 2.5x fewer FLOPs", lambda m: _nc().factorize(m, speedup=2.5), ("conv",),
                ("factorize",)),
]


# ------------------------------------------------------------------------------- baselines
def magnitude_prune(w, sparsity):
    """``w`` with its smallest-magnitude ``sparsity`` fraction set to zero (exact count)."""
    flat = np.abs(w).reshape(-1)
    k = int(round(sparsity * flat.size))
    out = w.copy()
    if k:
        idx = np.argpartition(flat, k - 1)[:k]
        out.reshape(-1)[idx] = 0
    return out


def numpy_dense(w, b):
    wt = w.T

    def fn(x):
        y = x @ wt
        y += b
        return y
    return fn


def numpy_conv(w, b, k, pad):
    """NumPy im2col (sliding_window_view, one copy) + BLAS over NHWC input."""
    wt = np.ascontiguousarray(w.T)

    def fn(x):
        n, h, wd, c = x.shape
        xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))  # n, oh, ow, c, k, k
        oh, ow = win.shape[1], win.shape[2]
        cols = np.ascontiguousarray(win.transpose(0, 1, 2, 4, 5, 3)).reshape(n * oh * ow, k * k * c)
        y = cols @ wt
        y += b
        return y.reshape(n, oh, ow, -1)
    return fn


class _Contender:
    def __init__(self, name, kind, fn, weight_bytes, macs, layout="native", status="ok", build_s=0.0,
                 fmt=""):
        self.name, self.kind, self.fn, self.weight_bytes, self.macs = name, kind, fn, weight_bytes, macs
        self.layout, self.status, self.build_s, self.format = layout, status, build_s, fmt


def _try(name, kind, build, layout="native"):
    """Build a contender; failures become rows with a status ("not installed", "error: ...")."""
    t0 = time.perf_counter()
    try:
        fn, nbytes, macs, fmt = build()
    except peers.PeerUnavailable as e:
        return _Contender(name, kind, None, None, None, layout, str(e))
    except NotAvailable as e:
        return _Contender(name, kind, None, None, None, layout, str(e))
    except Exception as e:  # noqa: BLE001 - a failing contender is reported, not fatal
        return _Contender(name, kind, None, None, None, layout, f"error: {type(e).__name__}: {e}")
    return _Contender(name, kind, fn, nbytes, macs, layout, "ok", time.perf_counter() - t0, fmt)


class NotAvailable(RuntimeError):
    """A method's module has not landed (or lacks the function): the row says "not available"."""


def require(names):
    """Raise NotAvailable unless every public method in ``names`` can be imported."""
    import importlib
    nc = _nc()
    for n in names:
        module = nc._LAZY.get(n)
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name) or e.name == module:
                raise NotAvailable("not available") from None
            raise
        try:
            getattr(nc, n)
        except AttributeError:
            raise NotAvailable("not available") from None


def formats_of(model):
    """The weight formats of a model's weighted layers, e.g. ``"csr+dense"``."""
    seen = []
    for node in model.nodes:
        w = getattr(node.layer, "weight", None)
        if w is not None:
            d = w.describe() if hasattr(w, "describe") else w.format
            if d not in seen:
                seen.append(d)
    return "+".join(seen) or "-"


def build_contenders(name, shapes, threads, recipes=None):
    """Every contender for one layer shape: ``(contenders, reference_fn)``."""
    recipes = LAYER_RECIPES if recipes is None else recipes
    kind = shapes[name][0]
    model = layer_model(name, shapes=shapes)
    layer = model.nodes[0].layer
    w, b = np.asarray(layer.weight.to_dense()), layer.bias
    dense_macs = model.macs
    out = []
    if kind == "dense":
        out.append(_try("NumPy dense float32", "baseline",
                        lambda: (numpy_dense(w, b), w.nbytes + b.nbytes, dense_macs, "dense")))
        w90 = magnitude_prune(w, 0.9)
        nnz = int(np.count_nonzero(w90))
        csr_bytes = nnz * 8 + (w.shape[0] + 1) * 4 + b.nbytes
        out.append(_try("scipy.sparse CSR 90%", "peer",
                        lambda: (peers.scipy_csr(w90, b), csr_bytes, nnz, "csr")))
        out.append(_try("torch dense float32", "peer",
                        lambda: (peers.torch_model(model), w.nbytes + b.nbytes, dense_macs, "dense")))
        out.append(_try("torch CSR 90%", "peer", lambda: (peers.torch_csr(w90, b), csr_bytes, nnz, "csr")))
        out.append(_try("torch dynamic int8", "peer",
                        lambda: (peers.torch_model(model, int8=True), w.size + 8 + b.nbytes, dense_macs,
                                 "int8")))
        exported = {}

        def serialized():   # the float32 graph, exported once for both ORT contenders
            if "graph" not in exported:
                exported["graph"] = peers.onnx_model(model).SerializeToString()
            return exported["graph"]
        out.append(_try("ORT float32 MatMul", "peer",
                        lambda: (peers.ort_model(model, threads=threads, serialized=serialized()),
                                 w.nbytes + b.nbytes, dense_macs, "dense")))
        out.append(_try("ORT dynamic int8 MatMul", "peer",
                        lambda: (peers.ort_model(model, threads=threads, int8=True, serialized=serialized()),
                                 w.size + b.nbytes, dense_macs, "int8")))
        exported.clear()
    else:
        _, _, _, _, k, pad = shapes[name]
        nchw = layer_model(name, layout="NCHW", shapes=shapes)
        out.append(_try("NumPy im2col + BLAS", "baseline",
                        lambda: (numpy_conv(w, b, k, pad), w.nbytes + b.nbytes, dense_macs, "dense")))
        out.append(_try("torch conv2d float32", "peer",
                        lambda: (peers.torch_model(nchw), w.nbytes + b.nbytes, dense_macs, "dense"), "NCHW"))
        out.append(_try("ORT Conv float32", "peer",
                        lambda: (peers.ort_model(nchw, threads=threads), w.nbytes + b.nbytes, dense_macs,
                                 "dense"), "NCHW"))
    for r in recipes:
        if kind not in r.kinds:
            continue

        def build(r=r):
            require(r.needs)
            m = r.fn(model)
            return m, m.nbytes, m.macs, formats_of(m)
        out.append(_try(r.name, "nncomp", build))
    for c in out:
        if c.kind == "nncomp" and c.status == "ok":
            c.fn = c.fn.__call__
    return out, model


def _rel_err(y, ref):
    """Relative Frobenius error against the dense output; None when the outputs differ in shape
    (a layer that lost filters)."""
    y = np.asarray(y, np.float64)
    if y.shape != ref.shape:
        return None
    return float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30))


# The contenders that run every multiply-add of the dense float32 layer: the sgemm roof's peers.
FLOAT32_DENSE = ("NumPy dense float32", "NumPy im2col + BLAS", "torch dense float32", "torch conv2d float32",
                 "ORT float32 MatMul", "ORT Conv float32", "nncomp dense float32")


def run_layer_suite(*, shapes=SHAPES, batches=(1, 32), threads=2, repeat=8, limits=None, recipes=None,
                    max_seconds=6.0, settle=SETTLE_S, every_block=False, progress=print, seed=1, budget=None):
    """Time every contender on every layer shape and batch size; returns ``(rows, limits)``.

    ``limits`` come back raised by :func:`~nncomp.bench.roofline.cap` to the best rates contenders
    achieved (weight bytes / median of any row; float32 FLOPs of :data:`FLOAT32_DENSE`), so no cell's
    roofline exceeds 100 % (but int8 compute, whose limit is higher); every row's roofline uses them.
    ``settle`` seconds pass untimed after the blocks of the contenders running NumPy's or torch's
    threads (which keep spinning), or after every block with ``every_block``.
    """
    rows = []
    for name in shapes:
        t0 = time.perf_counter()
        contenders, model = build_contenders(name, shapes, threads, recipes)
        progress(f"layers: {name} ({describe_shape(name, shapes)}): built {len(contenders)} contenders "
                 f"in {time.perf_counter() - t0:.1f} s")
        for batch in batches:
            x = layer_input(model, batch, seed=seed)
            x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x
            ok = [c for c in contenders if c.status == "ok"]
            calls = {c.name: (lambda c=c: c.fn(x_nchw if c.layout == "NCHW" else x)) for c in ok}
            base = contenders[0]
            ref = np.asarray(base.fn(x), np.float64) if base.status == "ok" else None
            errs = {}
            for c in ok:
                try:
                    y = calls[c.name]()
                    if c.layout == "NCHW" and np.ndim(y) == 4:
                        y = y.transpose(0, 2, 3, 1)
                    errs[c.name] = _rel_err(y, ref) if ref is not None else None
                except Exception as e:  # noqa: BLE001
                    c.status = f"error: {type(e).__name__}: {e}"
            calls = {k: v for k, v in calls.items() if k in errs}
            spin = None if every_block else {k for k in calls if k.startswith(("NumPy", "torch"))}
            timed = alternate(calls, repeat=repeat, block=4, warmup=1, flush=batch == 1,
                              settle=settle, spinners=spin, max_seconds=budget.take(max_seconds, max_seconds)
                              if budget else max_seconds) if calls else {}
            base_ms = timed.get(base.name, {}).get("median_ms")
            for c in contenders:
                row = {"layer": name, "shape": describe_shape(name, shapes), "batch": batch,
                       "contender": c.name, "kind": c.kind, "format": c.format, "status": c.status,
                       "median_ms": None, "p90_ms": None, "runs": None, "time_vs_numpy": None,
                       "speedup_vs_numpy": None, "weight_bytes": c.weight_bytes,
                       "gflop": None, "roofline_ms": None, "roofline_pct": None,
                       "rel_err_vs_dense": errs.get(c.name), "build_s": round(c.build_s, 3)}
                t = timed.get(c.name)
                if t is not None:
                    row.update(median_ms=t["median_ms"], p90_ms=t["p90_ms"], runs=t["n"],
                               gflop=2.0 * c.macs * batch / 1e9)
                    if base_ms:
                        row["time_vs_numpy"] = t["median_ms"] / base_ms
                        row["speedup_vs_numpy"] = base_ms / t["median_ms"]
                rows.append(row)
            done = [r for r in rows if r["layer"] == name and r["batch"] == batch and r["median_ms"]]
            best = min(done, key=lambda r: r["median_ms"]) if done else None
            progress(f"layers: {name} batch {batch}: {len(done)} timed"
                     + (f", fastest {best['contender']} {best['median_ms']:.3g} ms" if best else ""))
    if limits:   # no cell above the best rates seen (float32 FLOPs: dense float32 contenders only)
        label = "{contender} on {layer} at batch {batch}"
        limits = cap(limits, [(label.format(**r), r["weight_bytes"], r["median_ms"]) for r in rows if r["median_ms"]],
                     [(label.format(**r), r["gflop"] * 1e9, r["median_ms"]) for r in rows
                      if r["median_ms"] and r["contender"] in FLOAT32_DENSE])
        for r in rows:
            if r["median_ms"]:
                r["roofline_ms"] = roofline_ms(r["weight_bytes"], r["gflop"] * 1e9, limits)
                r["roofline_pct"] = 100.0 * r["roofline_ms"] / r["median_ms"]
    return rows, limits
