"""What :func:`nncomp.optimize` chose, and why: the plan a returned model carries as ``model.plan``.

The plan is plain data (JSON-able), saved with the model by ``nc.save`` (the ``"plan"`` entry of the
native file's model description) and reloaded by ``nc.load``; ``print(model.plan)`` shows it.
"""
import json
from dataclasses import asdict, dataclass, field

from .energy import format_pj

__all__ = ["LayerChoice", "OptimizationPlan"]


@dataclass(frozen=True)
class LayerChoice:
    """One weighted layer's chosen candidate.

    Attributes
    ----------
    layer : str
        The node name in the original model, or ``"filters:<producer>"`` for a channel group's filter
        pruning (the producers tied by an Add, and the layers reading them, change together).
    candidate : str
        Its label, e.g. ``"csr90+int8"``, ``"dense"``.
    method : str
        The nncomp method that built it (``"prune"``, ``"quantize"``, ...; ``"dense"``: unchanged).
    settings : dict
        The keywords that method was called with (besides ``layers=`` and ``calibration=``).
    format : str
        The weight format of the resulting node(s) (``Layer.describe()``).
    delta_ms : float
        Measured change of the whole model's time at the plan's batch when only this layer takes the
        candidate (negative: faster), milliseconds.
    delta_bytes : int
        Change of the saved file's bytes when only this layer takes the candidate.
    drop : float
        Score lost (points) on the search part of the calibration data with only this layer changed.
    """

    layer: str
    candidate: str
    method: str
    settings: dict
    format: str
    delta_ms: float
    delta_bytes: int
    drop: float


@dataclass(frozen=True)
class OptimizationPlan:
    """The planner's decision for one model, objective, budget and batch.

    Attributes
    ----------
    objective : {"latency", "size", "energy"}
    budget : float
        Allowed loss in points (top-1 accuracy, or agreement with the original model).
    metric : str
        "accuracy", "agreement", or the name of the user's ``metric`` function.
    batch : int
    layers : tuple of LayerChoice
    dense_ms, predicted_ms, measured_ms : float
        Milliseconds per call at ``batch``: whole-model time of the original model, of the chosen one predicted from the latency table
        (dense plus the chosen candidates' deltas; None for ``objective="size"``, which builds no
        latency table), and measured (median, alternating with dense).
    search_check : (float, float) or None
        Predicted and measured ms of the search's own choice in the final measurement's first round,
        before any layer was set back (``objective="latency"``, a choice that was not all dense): the
        table's prediction error even when the final measurement reverted the choice.
    dense_energy_pj, energy_pj : float
        An *estimate*, not a measurement, of the energy per sample at ``batch`` of the original and
        the returned model, picojoules (:mod:`nncomp.planner.energy`: Horowitz's 45 nm figures as Han
        et al. use them); what ``objective="energy"`` minimises.
    dense_bytes, bytes : int
        Saved file sizes (Huffman-coded, as ``nc.save(..., huffman=True)`` writes them), without the
        plan itself (its JSON adds a few kB to a file saved with it; ``model.plan = None`` drops it).
    baseline_score, heldout_score : float
        Score of the original and of the returned model on the held-out part (fraction).
    heldout_bound, confidence : float
        The one-sided upper bound at ``confidence`` of the points the returned model loses on the
        held-out part (what the budget was checked against; None in plans saved before it).
    search : str
        Which search found the choice (``"milp"``, ``"greedy"``) and what the repair loop reverted.
    reverted : tuple of str
        Layers the repair loop (or the final measurement) set back to dense.
    cpu : str
    planning_s : float
    table : tuple of (layer, candidate, delta_ms, delta_bytes, drop)
        Every candidate built (refused ones are absent): its measured effect alone (None where the
        objective did not measure it) and its score loss on the search data. Rows of layer ``"*"``
        are whole-model candidates (``objective="size"``: the global allocations of
        :mod:`nncomp.planner.allocation`, each built and scored as a whole).
    """

    objective: str
    budget: float
    metric: str
    batch: int
    layers: tuple
    dense_ms: float
    predicted_ms: float
    measured_ms: float
    dense_bytes: int
    bytes: int
    baseline_score: float
    heldout_score: float
    search: str
    reverted: tuple = ()
    cpu: str = ""
    planning_s: float = 0.0
    notes: tuple = field(default=())
    table: tuple = field(default=())
    dense_energy_pj: float = None
    energy_pj: float = None
    search_check: tuple = None
    heldout_bound: float = None
    confidence: float = None

    @property
    def speedup(self):
        """Measured dense time over the returned model's time."""
        return self.dense_ms / self.measured_ms if self.measured_ms > 0 else float("nan")

    @property
    def prediction_error(self):
        """(predicted - measured) / measured whole-model time."""
        if self.predicted_ms is None or not self.measured_ms > 0:
            return float("nan")
        return (self.predicted_ms - self.measured_ms) / self.measured_ms

    @property
    def heldout_drop(self):
        """Points lost on the held-out part of the calibration data."""
        return 100.0 * (self.baseline_score - self.heldout_score)

    def to_json(self):
        """A JSON-able dict (what ``nc.save`` stores)."""
        d = asdict(self)
        d["layers"] = [asdict(c) for c in self.layers]
        d["reverted"], d["notes"] = list(self.reverted), list(self.notes)
        d["table"] = [list(r) for r in self.table]
        d["search_check"] = None if self.search_check is None else list(self.search_check)
        return d

    @classmethod
    def from_json(cls, d):
        """The plan from :meth:`to_json`'s dict (``KeyError``/``TypeError`` on a malformed one)."""
        d = dict(d)
        d["layers"] = tuple(LayerChoice(**c) for c in d["layers"])
        d["reverted"], d["notes"] = tuple(d.get("reverted", ())), tuple(d.get("notes", ()))
        d["table"] = tuple(tuple(r) for r in d.get("table", ()))
        if d.get("search_check") is not None:
            d["search_check"] = tuple(d["search_check"])
        return cls(**d)

    def candidates(self):
        """Every candidate's measured effect alone, one line each (the search's input)."""
        lines = [f"{'layer':14} {'candidate':18} {'dms':>9} {'dbytes':>10} {'drop':>6}"]
        for layer, label, ms, nbytes, drop in self.table:
            lines.append(f"{layer:14} {label:18} {'-' if ms is None else f'{ms:+.4f}':>9} "
                         f"{'-' if nbytes is None else f'{nbytes:+,}':>10} {'-' if drop is None else f'{drop:.2f}':>6}")
        return "\n".join(lines)

    def describe(self):
        """The plan as a table: one row per weighted layer, then the whole-model figures."""
        rows = [("layer", "chosen", "format", "dms", "dbytes", "drop")]
        for c in self.layers:
            rows.append((c.layer, c.candidate, c.format, f"{c.delta_ms:+.4f}", f"{c.delta_bytes:+,}",
                         f"{c.drop:.2f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"Optimization plan: objective {self.objective}, budget {self.budget:g} points of "
                 f"{self.metric}, batch {self.batch}, search {self.search}"
                 + (f", on {self.cpu}" if self.cpu else "")]
        for r in rows:
            lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        predicted = (f"not predicted (objective {self.objective})" if self.predicted_ms is None else
                     f"predicted {self.predicted_ms:.4f} ms (error {100 * self.prediction_error:+.1f}%)")
        if self.search_check is not None and self.reverted:
            p, m = self.search_check
            lines.append(f"the search's choice: predicted {p:.4f} ms, measured {m:.4f} ms "
                         f"(error {100 * (p - m) / m:+.1f}%)")
        lines.append(f"time at batch {self.batch}: dense {self.dense_ms:.4f} ms, {predicted}, measured "
                     f"{self.measured_ms:.4f} ms (speedup {self.speedup:.2f}x)")
        lines.append(f"file: dense {self.dense_bytes:,} bytes, chosen {self.bytes:,} bytes "
                     f"({self.dense_bytes / max(1, self.bytes):.1f}x smaller)")
        if self.energy_pj is not None:
            lines.append(f"energy per inference, estimated (Horowitz 45 nm model, not measured): dense "
                         f"{format_pj(self.dense_energy_pj)}, chosen {format_pj(self.energy_pj)}")
        lines.append(f"held-out {self.metric}: original {self.baseline_score:.4f}, chosen {self.heldout_score:.4f} "
                     f"(drop {self.heldout_drop:.2f} points{self._bound()}, budget {self.budget:g})")
        if self.reverted:
            lines.append(f"reverted to dense: {', '.join(self.reverted)}")
        lines.extend(self.notes)
        lines.append(f"planning time {self.planning_s:.1f} s")
        return "\n".join(lines)

    def _bound(self):
        if self.heldout_bound is None or self.confidence is None or self.confidence <= 0.5:
            return ""
        return f", at most {self.heldout_bound:.2f} with {100 * self.confidence:g}% confidence"

    def __str__(self):
        return self.describe()

    def __repr__(self):
        return (f"OptimizationPlan(objective={self.objective!r}, batch={self.batch}, speedup={self.speedup:.2f}, "
                f"bytes={self.bytes}, heldout_drop={self.heldout_drop:.2f})")

    def dumps(self):
        return json.dumps(self.to_json(), separators=(",", ":"))
