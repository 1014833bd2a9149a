"""``nc.compare(model, small, x, y)``: models side by side on the same data, timed alternating."""

import numpy as np

from ..errors import CompressionParameterError
from ..model import Model
from .timing import alternate

__all__ = ["compare", "Comparison"]

FIELDS = ("name", "formats", "bytes", "huffman_bytes", "macs", "ms", "accuracy", "agreement", "max_logit_err")


class Comparison:
    """The result of :func:`compare`: one row per model, the first being the reference.

    Attributes
    ----------
    rows : list of dict
        ``name``, ``formats``, ``bytes`` (weights in memory), ``huffman_bytes`` (stored arrays of
        ``nc.save(..., huffman=True)``; None when unknown), ``macs`` (per sample), ``ms``
        (``{batch: median ms}``), ``p90_ms``, ``accuracy`` (None without labels), ``agreement`` (top-1
        agreement with the first model) and ``max_logit_err`` (largest |output - first model's output|).
    batch_sizes : tuple of int
    """

    def __init__(self, rows, batch_sizes):
        self.rows, self.batch_sizes = rows, tuple(batch_sizes)

    def __getitem__(self, key):
        if isinstance(key, str):
            for r in self.rows:
                if r["name"] == key:
                    return r
            raise KeyError(key)
        return self.rows[key]

    def __len__(self):
        return len(self.rows)

    def to_dicts(self):
        return [dict(r) for r in self.rows]

    def __repr__(self):
        head = ["model", "formats", "bytes", "Huffman bytes", "MACs"]
        head += [f"ms @{b}" for b in self.batch_sizes]
        head += ["accuracy", "agreement", "max logit err"]
        body = []
        base = self.rows[0]
        for r in self.rows:
            ratio = f" ({base['bytes'] / r['bytes']:.1f}x)" if r is not base and r["bytes"] else ""
            hb = "" if r["huffman_bytes"] is None else f"{r['huffman_bytes']:,}"
            line = [r["name"], r["formats"], f"{r['bytes']:,}{ratio}", hb, f"{r['macs']:,}"]
            for b in self.batch_sizes:
                speed = base["ms"][b] / r["ms"][b]
                line.append(f"{r['ms'][b]:.3g}" + ("" if r is base else f" ({speed:.2f}x)"))
            line.append("" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}%")
            line.append(f"{100 * r['agreement']:.1f}%")
            line.append(f"{r['max_logit_err']:.3g}")
            body.append(line)
        widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
        fmt = lambda cells: "  ".join(str(c).rjust(w) if i >= 2 else str(c).ljust(w)  # noqa: E731
                                      for i, (c, w) in enumerate(zip(cells, widths)))
        lines = [fmt(head)] + [fmt(b) for b in body]
        lines.append("(ms: median per call, models alternating; (x): relative to the first model)")
        return "\n".join(lines)

    __str__ = __repr__


def _huffman_bytes(model):
    """Bytes of the stored arrays when saved with ``huffman=True``; None if Huffman coding is unavailable."""
    from .sizes import saved_size
    try:
        return saved_size(model, huffman=True).payload_bytes
    except ImportError:
        return None


def _formats(model):
    from .layers import formats_of
    return formats_of(model)


def compare(model, *others, x=None, y=None, batch_sizes=(1, 64), repeat=20, names=None, huffman=True):
    """Compare models on the same inputs: size, speed, accuracy and agreement with the first one.

    ``nc.compare(model, small, x, y)`` works: positional arguments after the models are ``x`` then ``y``.

    Parameters
    ----------
    model : Model
        The reference (usually the dense model).
    *others : Model
        Models to compare with it (then optionally ``x`` and ``y`` positionally).
    x : ndarray, shape (n_samples, *input_shape)
        Inputs in the models' layout; the timed batches are its first rows (repeated if too few).
    y : ndarray of int, shape (n_samples,), optional
        Labels: adds top-1 accuracy.
    batch_sizes : tuple of int
        Batch sizes to time (median ms per call, all models alternating in one loop).
    repeat : int
        Timed rounds per batch size.
    names : list of str, optional
        Row names (default: each model's name, numbered when names repeat).
    huffman : bool
        Also measure the stored bytes with Huffman coding (saves each model to a temporary file).

    Returns
    -------
    Comparison
        Prints as a table; ``.rows`` holds the numbers.
    """
    models = [model]
    rest = list(others)
    while rest and isinstance(rest[0], Model):
        models.append(rest.pop(0))
    if len(rest) > 2:
        raise CompressionParameterError(f"compare() got {len(rest)} extra positional arguments; expected "
                                        "models, then x and y")
    if rest:
        if x is not None:
            raise CompressionParameterError("compare() got x both positionally and as a keyword")
        x = rest.pop(0)
    if rest:
        if y is not None:
            raise CompressionParameterError("compare() got y both positionally and as a keyword")
        y = rest.pop(0)
    for i, m in enumerate(models):
        if not isinstance(m, Model):
            raise CompressionParameterError(f"compare() argument {i} is {type(m).__name__}, not an nncomp Model")
    if x is None:
        raise CompressionParameterError("compare() needs inputs x: nc.compare(model, small, x, y)")
    if type(repeat) is bool or not isinstance(repeat, (int, np.integer)) or repeat < 1:
        raise CompressionParameterError(f"compare() got repeat={repeat!r}; expected an int >= 1")
    try:
        batch_sizes = tuple(int(b) for b in batch_sizes)
    except (TypeError, ValueError):
        raise CompressionParameterError(f"compare() got batch_sizes={batch_sizes!r}; expected ints >= 1") from None
    if not batch_sizes or min(batch_sizes) < 1:
        raise CompressionParameterError(f"compare() got batch_sizes={batch_sizes!r}; expected ints >= 1")
    x = models[0].check_input(x)
    if x.shape[0] < 1:
        raise CompressionParameterError("compare() got an empty x; pass at least one sample")
    for m in models[1:]:
        if m.input_shape != models[0].input_shape or m.input_layout != models[0].input_layout:
            raise CompressionParameterError(f"compare(): model {m.name!r} takes {m.input_layout} "
                                            f"{m.input_shape}, the first takes {models[0].input_layout} "
                                            f"{models[0].input_shape}")
    if y is not None:
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise CompressionParameterError(f"compare(): y must be 1-D with one label per sample, got {y.shape} "
                                            f"for x {x.shape}")
    if names is None:
        names = [m.name for m in models]
        if len(set(names)) < len(names):
            names = [f"{n} #{i}" if i else n for i, n in enumerate(names)]
    elif len(names) != len(models):
        raise CompressionParameterError(f"compare() got {len(names)} names for {len(models)} models")

    outputs = [np.asarray(m(x)) for m in models]
    ref = outputs[0].astype(np.float64)
    ref_pred = outputs[0].argmax(axis=-1)
    rows = []
    for name, m, out in zip(names, models, outputs):
        pred = out.argmax(axis=-1)
        rows.append({"name": str(name), "formats": _formats(m), "bytes": m.nbytes,
                     "huffman_bytes": _huffman_bytes(m) if huffman else None, "macs": m.macs,
                     "ms": {}, "p90_ms": {},
                     "accuracy": None if y is None else float((pred == y).mean()),
                     "agreement": float((pred == ref_pred).mean()),
                     "max_logit_err": float(np.abs(out.astype(np.float64) - ref).max())})
    for b in batch_sizes:
        xb = np.ascontiguousarray(x[np.arange(b) % x.shape[0]])
        calls = {i: (lambda m=m: m(xb)) for i, m in enumerate(models)}
        t = alternate(calls, repeat=int(repeat), block=4, warmup=2, max_seconds=30, spinners=())
        for i, r in enumerate(rows):
            r["ms"][b], r["p90_ms"][b] = t[i]["median_ms"], t[i]["p90_ms"]
    return Comparison(rows, batch_sizes)
