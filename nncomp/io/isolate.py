"""Parse a model file in a child process, so that a hang or crash inside HDF5 cannot take the caller down.

Corrupted variable-length string attributes (which Keras files are full of) made HDF5 segfault or
loop forever while holding the GIL (shared/reliability.md, F22 and T9): no signal or thread can stop
that. ``load(path, isolate=True)`` runs the ordinary loader in a fresh interpreter with a wall-clock
timeout and an address-space limit (``RLIMIT_AS``). The child sends the model back as JSON plus an
``.npz`` of plain numeric arrays (read with ``allow_pickle=False``, sizes checked, every array's
SHA-256 verified), never as a pickle: the parent trusts nothing the child writes.
"""
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

from ..checks import check_number
from .. import errors
from ..errors import CorruptModelFileError, ModelFileError, NncompError, UnsafeModelFileError
from .onnx import is_onnx, stat_regular
from .safe import MAX_ATTR_BYTES, MAX_FILE_BYTES, MAX_TENSOR_BYTES, check_path, convert, parse_json

__all__ = ["load_isolated"]

_ERRORS = {name: getattr(errors, name) for name in errors.__all__}


def load_isolated(path, *, architecture=None, input_shape=None, timeout=60.0, max_memory=None,
                  max_tensor_bytes=MAX_TENSOR_BYTES, max_file_bytes=MAX_FILE_BYTES, allow_nonfinite=False,
                  external_data=False):
    """``nncomp.load`` in a child process with a timeout and a memory limit.

    Parameters
    ----------
    path : str or path-like
    architecture : as for :func:`nncomp.load` (passed to the child; it may be an nncomp Model).
    timeout : float
        Seconds the child may take (interpreter start-up, about 1-3 s, included).
    max_memory : int, optional
        Address space in bytes the child may add to what it holds after start-up; default
        ``2 * max_file_bytes + 2 GiB``.
    max_tensor_bytes, max_file_bytes, allow_nonfinite, external_data
        As for :func:`nncomp.load`.

    Raises
    ------
    ModelFileError
        What the child raised (same class, path, object and reason), or "parsing timed out after
        N s", "the parser crashed (SIGSEGV)", "the parser ran out of memory".
    """
    timeout = check_number(timeout, "timeout", low=0, low_open=True, method="load_isolated",
                           fix="seconds", error=NncompError)
    if max_memory is None:
        max_memory = 2 * int(max_file_bytes) + (2 << 30)
    max_memory = check_number(max_memory, "max_memory", integer=True, low=1, method="load_isolated",
                              fix="bytes", error=NncompError)
    path = os.path.abspath(os.fspath(path))
    if is_onnx(path):
        stat_regular(path)  # a FIFO would hang the child too: refuse it here
    else:
        check_path(path)
    kwargs = dict(architecture=architecture, input_shape=input_shape, max_tensor_bytes=max_tensor_bytes, max_file_bytes=max_file_bytes,
                  allow_nonfinite=allow_nonfinite, external_data=external_data)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    with tempfile.TemporaryDirectory(prefix="nncomp-isolate-") as out:
        request = pickle.dumps({"path": path, "kwargs": kwargs, "out": out, "max_memory": max_memory})
        try:
            proc = subprocess.run([sys.executable, "-m", "nncomp.io.isolate"], input=request, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UnsafeModelFileError(path, None, f"parsing timed out after {timeout} s (the parser was "
                                       "killed); the file may be corrupt or hostile") from None
        if proc.returncode < 0:
            try:
                sig = signal.Signals(-proc.returncode).name
            except ValueError:
                sig = f"signal {-proc.returncode}"
            raise CorruptModelFileError(path, None, f"the parser crashed ({sig}); the file is corrupt or hostile, "
                                        "or max_memory is too small")
        status = _status(out, path, proc)
        if "error" in status:
            raise _rebuild_error(status, path)
        return _read_model(out, path, max_file_bytes, allow_nonfinite)


def _status(out, path, proc):
    try:
        with open(os.path.join(out, "status.json"), "rb") as fh:
            status = parse_json(fh.read(1 << 20), path, "status")
    except (OSError, ModelFileError):
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise CorruptModelFileError(path, None, f"the parser failed (exit code {proc.returncode}: "
                                    f"{tail[0][:200]})") from None
    if not isinstance(status, dict):
        raise CorruptModelFileError(path, None, "the parser returned a malformed status")
    return status


def _rebuild_error(status, path):
    cls = _ERRORS.get(status.get("error"), CorruptModelFileError)
    reason = str(status.get("reason", ""))[:4000]
    if issubclass(cls, ModelFileError):
        obj = status.get("obj")
        return cls(status.get("path") or path, obj if isinstance(obj, str) else None, reason)
    return cls(reason)


class _Arrays:
    """What ``native.load_native`` needs from a SafeFile, served from the child's JSON and npz."""

    def __init__(self, path, meta, arrays, allow_nonfinite):
        self.path, self.meta, self.arrays, self.allow_nonfinite = path, meta, arrays, allow_nonfinite

    def read(self, name, *, dtype=np.float32, ndim=None, finite=None):
        if name not in self.arrays:
            raise CorruptModelFileError(self.path, name, "array missing from the parser's output")
        check = (not self.allow_nonfinite) if finite is None else finite
        return convert(self.arrays[name], dtype, ndim=ndim, finite=check, path=self.path, obj=name)


def _read_model(out, path, max_file_bytes, allow_nonfinite):
    from .native import build_native
    npz = os.path.join(out, "arrays.npz")
    try:
        with open(os.path.join(out, "model.json"), "rb") as fh:
            meta = parse_json(fh.read(MAX_ATTR_BYTES + 1), path, "model")
        with zipfile.ZipFile(npz) as z:
            infos = z.infolist()
        if sum(i.file_size for i in infos) > max_file_bytes + (1 << 20) * (1 + len(infos)):
            raise CorruptModelFileError(path, None, "the parser's output exceeds max_file_bytes")
        with np.load(npz, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        if isinstance(e, ModelFileError):
            raise
        raise CorruptModelFileError(path, None, f"unreadable parser output ({type(e).__name__}: {e})") from None
    return build_native(_Arrays(path, meta, arrays, allow_nonfinite), meta)


# ------------------------------------------------------------------------------------ the child
class _Collector(dict):
    """Stands in for an h5py.File under native's writer: keeps the arrays in memory."""

    def create_dataset(self, name, data):
        self[name] = np.ascontiguousarray(data)


def _limit_memory(extra):
    import resource
    with open("/proc/self/statm") as fh:
        current = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (current + extra, current + extra))


def _child():
    req = pickle.loads(sys.stdin.buffer.read())  # from our own parent: trusted
    out = req["out"]
    from . import load
    from .native import ArrayWriter, model_to_json
    try:
        _limit_memory(req["max_memory"])
    except (OSError, ValueError, ImportError):
        pass  # no /proc or no RLIMIT_AS: the timeout still applies
    try:
        model = load(req["path"], **req["kwargs"])
        arrays = _Collector()
        meta = model_to_json(model, ArrayWriter(arrays, False))
        with open(os.path.join(out, "model.json"), "w") as fh:
            json.dump(meta, fh)
        np.savez(os.path.join(out, "arrays.npz"), **arrays)
        status = {"ok": True}
    except NncompError as e:
        status = {"error": type(e).__name__, "path": getattr(e, "path", None), "obj": getattr(e, "obj", None),
                  "reason": getattr(e, "reason", str(e))}
    except MemoryError:
        status = {"error": "UnsafeModelFileError", "reason": f"parsing needed more than max_memory="
                  f"{req['max_memory']} bytes"}
    except Exception as e:  # noqa: BLE001 - reported to the parent as a corrupt file
        status = {"error": "CorruptModelFileError", "reason": f"{type(e).__name__}: {e}"}
    tmp = os.path.join(out, "status.tmp")
    with open(tmp, "w") as fh:
        json.dump(status, fh)
    os.replace(tmp, os.path.join(out, "status.json"))


if __name__ == "__main__":
    _child()
