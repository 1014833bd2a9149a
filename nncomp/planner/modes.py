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
``"measured"`` mode runs as its last calls measured; it is timed as it runs.
"""
import numba

from ..plan import batch_parts, run_parts, run_serial

__all__ = ["MODES", "run_mode", "in_mode"]

MODES = ("serial", "parts", "parallel", "measured")


def run_mode(model, batch, threads=None):
    """The mode in which ``model`` runs batches of ``batch`` samples on ``threads`` Numba threads
    (default: the current count): ``"serial"``, ``"parts"``, ``"parallel"`` or ``"measured"``
    (:meth:`nncomp.Model.run_mode`)."""
    return model.run_mode(batch, threads)


def in_mode(model, mode, batch, threads=None):
    """A callable ``x -> model(x)`` that runs batches of ``batch`` samples in ``mode``.

    ``"serial"`` and ``"parts"`` can be imposed on any model (one Numba thread; the batch parts of
    nncomp.plan, each a one-thread call); ``"parallel"`` and ``"measured"`` only on a model that
    runs so by itself (NncompError-free: the model itself is returned, which runs in its own mode).
    """
    threads = numba.get_num_threads() if threads is None else threads
    if mode == "serial" and threads > 1:
        return lambda x: run_serial(lambda: model(x))
    if mode == "parts":
        bounds = batch_parts(batch, threads, float("inf"), 0)
        if bounds is not None:
            return lambda x: run_parts(lambda part: (model(part),), x, bounds, threads)[0]
    return model
