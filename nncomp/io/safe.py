"""The one safe HDF5 reader under every load path.

Model files are untrusted input (see docs/sources.md and shared/reliability.md). Before any data is
read, the whole file is walked once and refused if it holds anything but hard links, plain numeric
datasets without external or virtual storage, and allow-listed filters; declared sizes are capped
per tensor and per file before any allocation. Attributes are type- and size-checked before they
are read, and only the attributes a loader asks for are read at all. While a file is open, HDF5's
plugin search path is emptied, so no filter plugin can be loaded from disk. Every exception h5py
raises is wrapped into a :class:`~nncomp.errors.ModelFileError` naming the file, the object, and why.

This module is the walk over an open file (:class:`SafeFile`); the checks that need no open file
(header, global heaps, array conversion, JSON limits, :func:`guard`) are in ``untrusted.py`` and are
importable from here too.
"""
import contextlib
import math
import os
import threading

import h5py
import h5py.h5pl
import numpy as np

from ..checks import check_number
from ..errors import CorruptModelFileError, NncompError, UnsafeModelFileError, UnsupportedModelError
# The checks that need no open file live in untrusted.py; they are imported from here as well.
from .untrusted import (MAX_ABS_VALUE, MAX_ATTR_BYTES, MAX_JSON_DEPTH, check_global_heaps,  # noqa: F401
                        check_path, convert, guard, parse_json)

# gzip, shuffle, fletcher32, nbit, scale-offset (built into HDF5) and lzf (built into h5py):
# none of them makes HDF5 search the plugin path.
ALLOWED_FILTERS = {1: "gzip", 2: "shuffle", 3: "fletcher32", 5: "nbit", 6: "scaleoffset", 32000: "lzf"}
MAX_TENSOR_BYTES = 4 << 30
MAX_FILE_BYTES = 16 << 30
MAX_RANK = 8
MAX_LINKS = 200_000
# A dataset declaring more than BOMB_BYTES that expands more than BOMB_RATIO times its stored size
# is a decompression bomb (Keras' own rule uses 4 GiB and 1000x).
BOMB_BYTES = 1 << 30
BOMB_RATIO = 1000

_VLEN_BYTES = 16  # hvl_t: what one variable-length element occupies in the attribute itself


def _check_cap(value, name):
    return check_number(value, name, integer=True, low=0, fix="a size in bytes", error=NncompError)


# ---------------------------------------------------------------------- plugin search path
_plugin_lock = threading.Lock()
_plugin_state = {"users": 0, "saved": []}


def _plugins_off():
    """Empty HDF5's plugin search path (reference-counted across open SafeFiles)."""
    with _plugin_lock:
        if _plugin_state["users"] == 0:
            saved = []
            with contextlib.suppress(Exception):
                while h5py.h5pl.size():
                    saved.append(h5py.h5pl.get(0))
                    h5py.h5pl.remove(0)
            _plugin_state["saved"] = saved
        _plugin_state["users"] += 1


def _plugins_on():
    with _plugin_lock:
        _plugin_state["users"] -= 1
        if _plugin_state["users"] == 0:
            with contextlib.suppress(Exception):
                for p in _plugin_state["saved"]:
                    h5py.h5pl.append(p)
            _plugin_state["saved"] = []


class SafeFile:
    """A read-only, pre-checked view of an HDF5 model file.

    Parameters
    ----------
    path : str or path-like
    max_tensor_bytes, max_file_bytes : int
        Caps on the declared size of one dataset and of all datasets together (each name counts).
    allow_nonfinite : bool
        Accept NaN/Inf in weights (refused by default).

    Attributes
    ----------
    datasets : dict
        HDF5 path -> h5py.Dataset of every dataset in the file, all checked.
    """

    def __init__(self, path, *, max_tensor_bytes=MAX_TENSOR_BYTES, max_file_bytes=MAX_FILE_BYTES,
                 allow_nonfinite=False):
        self.path = os.fspath(path)
        self.max_tensor_bytes = _check_cap(max_tensor_bytes, "max_tensor_bytes")
        self.max_file_bytes = _check_cap(max_file_bytes, "max_file_bytes")
        self.allow_nonfinite = bool(allow_nonfinite)
        self.file = None
        self._heaps_checked = False
        check_path(self.path)
        _plugins_off()
        self._plugins = True
        try:
            with guard(self.path, None, "not a readable HDF5 file"):
                self.file = h5py.File(self.path, "r")
            self.datasets = self._walk()
        except BaseException:
            self.close()
            raise

    def close(self):
        if getattr(self, "file", None) is not None:
            with contextlib.suppress(Exception):
                self.file.close()
        if getattr(self, "_plugins", False):
            self._plugins = False
            _plugins_on()

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"SafeFile({self.path!r}, datasets={len(getattr(self, 'datasets', ()))})"

    # ------------------------------------------------------------------ policy walk
    def _walk(self):
        links = []

        def visit(name, link):
            links.append((name, link))
            return True if len(links) > MAX_LINKS else None

        with guard(self.path, None, "cannot list the file's links"):
            self.file.visititems_links(visit)
        if len(links) > MAX_LINKS:
            raise UnsafeModelFileError(self.path, None, f"file holds more than {MAX_LINKS} links")
        for name, link in links:
            if isinstance(link, h5py.ExternalLink):
                raise UnsafeModelFileError(self.path, "/" + name,
                                           f"ExternalLink to '{link.filename}:{link.path}' is not allowed")
            if isinstance(link, h5py.SoftLink):
                raise UnsafeModelFileError(self.path, "/" + name, f"SoftLink to '{link.path}' is not allowed")
            if not isinstance(link, h5py.HardLink):
                raise UnsafeModelFileError(self.path, "/" + name, f"link type {type(link).__name__} is not allowed")
        datasets, seen, total = {}, {}, 0
        for name, _ in links:
            obj_name = "/" + name
            with guard(self.path, obj_name, "cannot open object"):
                obj = self.file[obj_name]
                if not isinstance(obj, h5py.Dataset):
                    continue
                addr = h5py.h5o.get_info(obj.id).addr
            if addr in seen:
                raise UnsafeModelFileError(self.path, obj_name, f"dataset is the same object as {seen[addr]} "
                                           "(hard-linked aliases of one dataset are refused)")
            seen[addr] = obj_name
            total += self._check_dataset(obj_name, obj)
            datasets[obj_name] = obj
            if total > self.max_file_bytes:
                raise UnsafeModelFileError(self.path, None, f"file declares more than {self.max_file_bytes} "
                                           "bytes of tensors in total; raise max_file_bytes if it is trusted")
        return datasets

    def _check_dataset(self, name, ds):
        with guard(self.path, name, "cannot inspect dataset"):
            if ds.is_virtual:
                raise UnsafeModelFileError(self.path, name, "virtual dataset (data mapped from other files) "
                                           "is not allowed")
            if ds.external:
                raise UnsafeModelFileError(self.path, name, "external raw storage is not allowed "
                                           f"(points to {ds.external[0][0]!r})")
            plist = ds.id.get_create_plist()
            for i in range(plist.get_nfilters()):
                fid = plist.get_filter(i)[0]
                if fid not in ALLOWED_FILTERS:
                    raise UnsafeModelFileError(self.path, name, f"HDF5 filter id {fid} is not allowed "
                                               f"(allowed: {sorted(ALLOWED_FILTERS)})")
            space = ds.id.get_space()
            if space.get_simple_extent_type() == h5py.h5s.NULL:
                raise CorruptModelFileError(self.path, name, "dataset has a null dataspace")
            tclass = ds.id.get_type().get_class()
            if tclass not in (h5py.h5t.INTEGER, h5py.h5t.FLOAT):
                raise UnsupportedModelError(self.path, name, f"unsupported element type (HDF5 class {tclass}); "
                                            "expected int/float")
            dt = ds.dtype
            if dt.kind not in "fiu" or dt.subdtype is not None:
                raise UnsupportedModelError(self.path, name, f"unsupported element type {dt} (HDF5 class "
                                            f"{tclass}); expected int/float")
            shape = ds.shape
            if len(shape) > MAX_RANK:
                raise UnsupportedModelError(self.path, name, f"rank {len(shape)} exceeds {MAX_RANK}")
            nbytes = math.prod(shape) * dt.itemsize
            if nbytes > self.max_tensor_bytes:
                raise UnsafeModelFileError(self.path, name, f"declares {nbytes} bytes (shape {shape}, {dt}); "
                                           f"limit {self.max_tensor_bytes}: raise max_tensor_bytes if trusted")
            if nbytes > BOMB_BYTES and nbytes > BOMB_RATIO * ds.id.get_storage_size():
                raise UnsafeModelFileError(self.path, name, f"declares {nbytes} bytes stored in "
                                           f"{ds.id.get_storage_size()}: refused as a decompression bomb")
        return nbytes

    # ------------------------------------------------------------------ reading
    def has(self, name):
        """Whether dataset ``name`` exists (and passed the checks)."""
        return ("/" + name.lstrip("/")) in self.datasets

    def read(self, name, *, dtype=np.float32, ndim=None, finite=None):
        """Read dataset ``name`` as a native-order C-contiguous array of ``dtype``, checked.

        Floats are converted to ``dtype`` with a range check; NaN/Inf are refused unless the file was
        opened with ``allow_nonfinite`` (or ``finite=False``). ``ndim`` checks the rank.
        """
        name = "/" + name.lstrip("/")
        ds = self.datasets.get(name)
        if ds is None:
            raise CorruptModelFileError(self.path, name, "dataset is missing")
        with guard(self.path, name, "cannot read data"):
            arr = np.asarray(ds[()])
            if arr.shape != ds.shape:
                raise CorruptModelFileError(self.path, name, f"read shape {arr.shape} differs from declared {ds.shape}")
        check = (not self.allow_nonfinite) if finite is None else bool(finite)
        return convert(arr, dtype, ndim=ndim, finite=check, path=self.path, obj=name)

    def attr(self, obj, key, *, kind="str", max_bytes=MAX_ATTR_BYTES, allow_vlen=False):
        """Read one attribute after checking its type and size; ``None`` when absent.

        kind: ``"str"`` (a string), ``"int"`` (an integer scalar), ``"strs"`` (a 1-D array of strings,
        or an empty numeric array, which Keras writes for "no names"). Variable-length strings are read
        only with ``allow_vlen`` (Keras writes them): their heap is where corrupted files crashed or hung
        HDF5 (the fuzz test and ``load(..., isolate=True)`` exist for that).
        """
        where = obj if obj.startswith("/") else "/" + obj
        label = f"{where}@{key}"
        if kind not in ("str", "int", "strs"):
            raise NncompError(f"attr kind must be 'str', 'int' or 'strs', got {kind!r}")
        with guard(self.path, label, "cannot read attribute"):
            target = self.file[where]
            if key not in target.attrs:
                return None
            aid = target.attrs.get_id(key)
            if aid.get_space().get_simple_extent_type() == h5py.h5s.NULL:
                raise CorruptModelFileError(self.path, label, "attribute has a null dataspace")
            shape = aid.shape
            n = math.prod(shape)
            tid = aid.get_type()
            tclass = tid.get_class()
            size = aid.get_storage_size()
            if size > max_bytes or len(shape) > 1:
                raise UnsafeModelFileError(self.path, label, f"attribute is {size} bytes of shape {shape}; "
                                           f"limit {max_bytes} bytes, 1-D")
            if kind == "int":
                if tclass != h5py.h5t.INTEGER or n != 1:
                    raise CorruptModelFileError(self.path, label, "expected an integer scalar")
                return int(np.asarray(target.attrs[key]).reshape(-1)[0])
            vlen = False
            if tclass == h5py.h5t.STRING:
                vlen = bool(tid.is_variable_str())
                if vlen and not allow_vlen:
                    raise UnsupportedModelError(self.path, label, "variable-length string attributes are not "
                                                "read here")
                if kind == "str" and n != 1:
                    raise CorruptModelFileError(self.path, label, f"expected one string, got shape {shape}")
            elif not (kind == "strs" and n == 0 and tclass in (h5py.h5t.FLOAT, h5py.h5t.INTEGER)):
                raise CorruptModelFileError(self.path, label, f"expected a string attribute, got HDF5 class {tclass}")
            if vlen and n * _VLEN_BYTES > max_bytes:
                raise UnsafeModelFileError(self.path, label, f"attribute holds {n} strings; limit {max_bytes} bytes")
            if vlen and not self._heaps_checked:
                check_global_heaps(self.path)
                self._heaps_checked = True
            value = target.attrs[key]
            if isinstance(value, h5py.Empty):
                raise CorruptModelFileError(self.path, label, "attribute is empty")
            arr = np.asarray(value, dtype=object).reshape(-1) if n else np.empty(0, object)
            out = [v.decode("utf-8") if isinstance(v, bytes) else v for v in arr]
            if not all(isinstance(v, str) for v in out):
                raise CorruptModelFileError(self.path, label, "attribute does not hold strings")
            if sum(len(v) for v in out) > max_bytes:
                raise UnsafeModelFileError(self.path, label, f"attribute text exceeds {max_bytes} bytes")
        return out if kind == "strs" else out[0]

    def json_attr(self, obj, key, **kw):
        """Parse a JSON string attribute with size and nesting-depth limits."""
        text = self.attr(obj, key, **kw)
        where = obj if obj.startswith("/") else "/" + obj
        return None if text is None else parse_json(text, self.path, f"{where}@{key}")
