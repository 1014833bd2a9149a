"""How a model runs a batch (its *mode*), and calls that run it in a given mode, for timing.

A call runs in one of these modes (nncomp/model.py and nncomp/plan.py decide, per input shape and
thread count): ``"serial"`` (one thread, serial kernels: small passes), ``"parts"`` (batches split
into parts that whole passes run on, one thread each with serial kernels; imposed by the planner
only), ``"parallel"`` (the whole batch, parallel kernels) or ``"measured"`` (serial, or for a
convolutional model's large batch parts, against parallel kernels, as its last calls ran). The
mode depends on the *whole* model: its multiply-adds per sample and per weight, and whether a
layer's results depend on how the batch is cut (dynamic int8 activations). A one-layer candidate can therefore change the mode of the
model it is timed in, and a table of per-layer differences is additive only when every entry and
the dense reference run in the same mode: the planner times every candidate in the dense model's
mode (:func:`in_mode`) and keeps out of the search the candidates that would change it.

:func:`run_mode` is the model's own decision (:meth:`nncomp.Model.run_mode`). A model in the
``"measured"`` mode runs as its last calls measured: each candidate, a new model, would warm up and
explore both of its ways (some of its timed calls in the slower one) while the dense model ran in
its settled one. So the latency table times a ``"measured"`` dense model and all its candidates in
one concrete mode, the one of ``"serial"``, ``"parts"`` and ``"parallel"`` in which the dense model
measured fastest when the table was made (:func:`concrete_mode`).
"""
import numba

from ..plan import batch_parts, run_parallel, run_parts, run_serial

__all__ = ["MODES", "run_mode", "in_mode", "layer_call", "concrete_mode"]

MODES = ("serial", "parts", "parallel", "measured")


def run_mode(model, batch, threads=None):
    """The mode in which ``model`` runs batches of ``batch`` samples on ``threads`` Numba threads
    (default: the current count): ``"serial"``, ``"parts"``, ``"parallel"`` or ``"measured"``
    (:meth:`nncomp.Model.run_mode`)."""
    return model.run_mode(batch, threads)


def in_mode(model, mode, batch, threads=None):
    """A callable ``x -> model(x)`` that runs batches of ``batch`` samples in ``mode``.

    ``"serial"`` and ``"parts"`` can be imposed on any model (one Numba thread; the batch parts of
    nncomp.plan, each a one-thread call), ``"parallel"`` on a model that runs so or in the
    ``"measured"`` mode; otherwise the model itself is returned, which runs in its own mode.
    """
    threads = numba.get_num_threads() if threads is None else threads
    if mode == "serial" and threads > 1:
        return lambda x: run_serial(lambda: model(x))
    if mode == "parts":
        bounds = batch_parts(batch, threads, float("inf"), 0)
        if bounds is not None:
            return lambda x: run_parts(lambda part: (model(part),), x, bounds, threads)[0]
    if mode == "parallel" and threads > 1 and run_mode(model, batch, threads) == "measured":
        return lambda x: _parallel(model, x)
    return model


def layer_call(model, mode, batch, threads=None):
    """As :func:`in_mode`, for a model of one layer taken out of a larger one: ``"parallel"`` runs its
    parallel kernels whatever its own mode (the layer alone is smaller than the pass it runs in)."""
    threads = numba.get_num_threads() if threads is None else threads
    if mode == "parallel" and threads > 1:
        return lambda x: _parallel(model, x)
    return in_mode(model, mode, batch, threads)


def _parallel(model, x):
    """``model(x)`` with parallel kernels over the whole batch (a ``"measured"`` model's second way)."""
    plan = model._plan(model.to_internal(x.shape[1:]), x.shape[0], model.outputs)
    outs = run_parallel(plan, model._internal(x))
    return model._to_source_layout(outs[0]) if len(outs) == 1 else tuple(map(model._to_source_layout, outs))


def concrete_mode(model, x, timer, threads=None):
    """The mode of ``"serial"``, ``"parts"``, ``"parallel"`` in which ``model`` runs the batch ``x``
    fastest, measured by ``timer`` (``measure({name: callable}, x) -> {name: ms}``); a model not in
    the ``"measured"`` mode keeps its own."""
    batch = x.shape[0]
    mode = run_mode(model, batch, threads)
    if mode != "measured":
        return mode
    ways = [m for m in ("serial", "parts", "parallel")
            if m != "parts" or batch_parts(batch, threads or numba.get_num_threads(), float("inf"), 0)]
    ms = timer.measure({m: in_mode(model, m, batch, threads) for m in ways}, x)
    return min(ms, key=ms.get)
