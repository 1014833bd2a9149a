"""The latency table: each candidate's measured difference from the dense model, in the dense model's mode.

Latency depends on a candidate's formats and shapes, not on its weights' values, so the planner
times *proxies* first: each candidate built by its method without the calibration refit (data-free;
static int8 takes its ranges from PROXY_SAMPLES samples). Only the candidates that measure at least
MIN_GAIN faster than dense are then built with the full refit and scored; a full build whose formats
and bytes match its proxy's (the usual case) reuses the proxy's entry, one that differs is timed
itself.

Every entry is timed in the mode the dense model runs in (:mod:`.modes`; a one-layer change must
not move the whole model from batch parts to parallel kernels between the table and the final
call; a dense model that measures its way each call is timed, with every entry, in the way it
measured fastest when the table was made), first briefly (SCREEN_EFFORT of the calls): a
candidate that is clearly slower (by MIN_GAIN) stops there, the others are timed in full. (A large
model's candidates are first timed by their layer alone: :mod:`.screen`.)
Differences are kept relative to the dense time of the same measurement and expressed against one
reference dense time, so that a neighbour's load that slows every call between two measurements
does not bias their sum.
"""
from .candidates import compose
from .latency import entry_key, machine_key, structure_key
from .modes import concrete_mode, in_mode, run_mode

__all__ = ["LatencyTable", "MIN_GAIN", "SIGNIFICANCE", "PROXY_SAMPLES", "SCREEN_EFFORT"]

# A candidate must save at least this share of the dense model's time (as measured) to be worth an
# accuracy risk; smaller measured savings are within the timing noise of a busy machine. And at least
# SIGNIFICANCE standard errors of its paired difference from dense (when the timer reports them).
MIN_GAIN = 0.02
SIGNIFICANCE = 2.0
PROXY_SAMPLES = 32     # calibration samples of a static int8 proxy's ranges
SCREEN_EFFORT = 0.25   # share of the calls of the first, brief timing of every candidate


class LatencyTable:
    """Measured entries ``{key: relative difference from dense}`` for one model, batch and mode.

    Parameters
    ----------
    model : Model
        The dense model.
    xb : ndarray
        The timing batch.
    timer : object with ``measure({name: callable}, x, effort) -> {name: ms}``
    cache : LatencyCache or None
        Entries found there are not measured; measured ones are added (and saved by :meth:`save`).
    """

    def __init__(self, model, xb, timer, cache):
        self.model, self.xb, self.timer, self.cache = model, xb, timer, cache
        self.batch = xb.shape[0]
        self.mode = run_mode(model, self.batch)
        self.timing = concrete_mode(model, xb, timer)   # "measured": the way the dense model ran fastest
        self.machine, self.structure = machine_key(), structure_key(model)
        self.rel, self.confirmed, self.se = {}, set(), {}
        self.dense_ms = None       # the reference dense time (of the first measurement)
        self.last_dense = None     # the dense time of the latest measurement
        self.measured = 0          # entries timed (not found in the cache)

    def key(self, name, label, patch):
        """The cache key of ``patch`` in place of layer ``name`` (its formats and bytes, not values)."""
        return entry_key(self.machine, self.structure, self.batch, [
            name, label, self.timing, [(p.name, p.layer.describe(), int(p.layer.nbytes)) for p in patch]])

    def eligible(self, name, patch):
        """Whether the model with ``patch`` runs in the dense model's mode. One that would not is
        left out: its difference would hold the change of mode, which another layer's change can
        bring about too (two such entries summed: LeNet-300 at batch 64, whose dense pass runs
        parallel kernels and each sparser layer's a serial one, was predicted at a negative time)."""
        return run_mode(compose(self.model, {name: patch}), self.batch) == self.mode

    def costs(self, deltas, keys):
        """``deltas`` ``{layer: [ms per option]}`` with every saving that is not SIGNIFICANCE standard
        errors below zero set to 0 (no saving the search may spend accuracy on); ``keys`` ``{(layer,
        option): key}``. With many layers, the search would otherwise pick the luckiest draws of noise
        (the winner's curse, summed)."""
        return {n: [d if not i or d + SIGNIFICANCE * self.se.get(keys[n, i], 0.0) * (self.dense_ms or 1.0) < 0
                    else 0.0 for i, d in enumerate(ds)] for n, ds in deltas.items()}

    def delta(self, key):
        """The entry's difference from dense in ms of the reference dense time (inf: not measured)."""
        rel = self.rel.get(key)
        return float("inf") if rel is None else rel * (self.dense_ms or 1.0)

    def measure(self, entries, effort=1.0, screen=True):
        """Time ``entries`` ``{key: (layer name, patch)}`` not known yet (all of them if ``effort > 1``:
        a confirmation); with ``screen``, briefly first, and in full only those not clearly slower."""
        known = self._from_cache(entries) if effort <= 1 else set()
        todo = {k: v for k, v in entries.items() if k not in known}
        if screen and effort <= 1 and len(todo) > 1:
            brief = self._time(todo, SCREEN_EFFORT)
            slow = {k for k, r in brief.items() if r >= MIN_GAIN}
            for k in slow:
                self._put(k, brief[k], screened=True)
            todo = {k: v for k, v in todo.items() if k not in slow}
        if todo:
            for k, r in self._time(todo, effort).items():
                self._put(k, r, confirmed=effort > 1)
        if self.cache is not None:
            self.cache.save()

    def lookup(self, keys):
        """The keys of ``keys`` whose entries are known: measured in this run or found in the cache."""
        return self._from_cache(keys)

    def estimate(self, key, ms, se_ms=0.0):
        """An entry not timed in the whole pass: ``ms``, its layer's difference from dense timed alone
        (:mod:`.screen`), taken for the whole model's; cached as screened."""
        dense = self.dense_reference()
        self.rel[key], self.se[key] = float(ms) / dense, float(se_ms) / dense
        self.measured += 1
        if self.cache is not None:
            self.cache.put(key, {"ms": dense + float(ms), "dense_ms": dense, "confirmed": False, "screened": True,
                                 "alone": True, "se": self.se[key]})

    def _reference(self, ms=None):
        """The reference dense time: set to ``ms`` (and remembered in the cache) if there is none yet;
        with the cache, the one of the run that first measured this table, so that the entries
        found there give the same milliseconds in every later run (each entry stores its own
        dense time, and a confirmed entry the one of its confirmation)."""
        key = entry_key(self.machine, self.structure, self.batch, ["dense reference", self.timing])
        if self.dense_ms is None and self.cache is not None:
            e = self.cache.get(key)
            if e is not None and e.get("dense_ms"):
                self.dense_ms = float(e["dense_ms"])
        if self.dense_ms is None and ms is not None:
            self.dense_ms = float(ms)
            if self.cache is not None:
                self.cache.put(key, {"ms": self.dense_ms, "dense_ms": self.dense_ms})
        return self.dense_ms

    def _from_cache(self, entries):
        self._reference()
        found = set()
        for k in entries:
            if k in self.rel:
                found.add(k)
                continue
            e = self.cache.get(k) if self.cache is not None else None
            if e is not None and e.get("dense_ms"):
                self.rel[k] = e["ms"] / e["dense_ms"] - 1.0
                self.se[k] = e.get("se", 0.0)
                self._reference(e["dense_ms"])
                if e.get("confirmed"):
                    self.confirmed.add(k)
                found.add(k)
        return found

    def _time(self, todo, effort):
        """``{key: relative difference}`` of ``todo``, timed together with dense in this mode."""
        calls = {"dense": in_mode(self.model, self.timing, self.batch)}
        calls.update({k: in_mode(compose(self.model, {n: p}), self.timing, self.batch) for k, (n, p) in todo.items()})
        ms = self.timer.measure(calls, self.xb, effort=effort)
        self._reference(ms["dense"])
        self.last_dense = ms["dense"]
        spread = getattr(self.timer, "spread", None) or {}
        self.se.update({k: spread.get(k, 0.0) / ms["dense"] for k in todo})
        return {k: ms[k] / ms["dense"] - 1.0 for k in todo}

    def _put(self, key, rel, screened=False, confirmed=False):
        self.rel[key] = float(rel)
        self.measured += not confirmed
        if confirmed:
            self.confirmed.add(key)
        if self.cache is not None:
            dense = self.last_dense
            self.cache.put(key, {"ms": dense * (1.0 + rel), "dense_ms": dense, "confirmed": confirmed,
                                 "screened": screened, "se": self.se.get(key, 0.0)})

    def dense_reference(self):
        """The reference dense time in ms (a measurement if none was made: all entries cached)."""
        if self._reference() is None:
            self._reference(self.timer.measure({"dense": in_mode(self.model, self.timing, self.batch)}, self.xb)["dense"])
        return self.dense_ms
