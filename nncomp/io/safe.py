"""The one safe HDF5 reader under every load path.

Model files are untrusted input (see docs/sources.md and shared/reliability.md). Before any data is
read, the whole file is walked once and refused if it holds anything but hard links, plain numeric
datasets without external or virtual storage, and allow-listed filters; declared sizes are capped
per tensor and per file before any allocation. Attributes are type- and size-checked before they
are read, and only the attributes a loader asks for are read at all. While a file is open, HDF5's
plugin search path is emptied, so no filter plugin can be loaded from disk. Every exception h5py
raises is wrapped into a :class:`~nncomp.errors.ModelFileError` naming the file, the object, and why.
"""
import contextlib
import json
import math
import mmap
import os
import stat
import threading

import h5py
import h5py.h5pl
import numpy as np

from ..errors import (CorruptModelFileError, ModelFileError, NncompError, UnsafeModelFileError,
                      UnsupportedModelError)

# gzip, shuffle, fletcher32, nbit, scale-offset (built into HDF5) and lzf (built into h5py):
# none of them makes HDF5 search the plugin path.
ALLOWED_FILTERS = {1: "gzip", 2: "shuffle", 3: "fletcher32", 5: "nbit", 6: "scaleoffset", 32000: "lzf"}
MAX_TENSOR_BYTES = 4 << 30
MAX_FILE_BYTES = 16 << 30
MAX_ATTR_BYTES = 16 << 20
MAX_JSON_DEPTH = 64
MAX_RANK = 8
MAX_LINKS = 200_000
# No trained weight comes near this; a float32 exponent bit flip of an ordinary weight (x 2**128) does,
# and it then overflows the forward pass to inf. Refused with the non-finite values.
MAX_ABS_VALUE = 1e30
# A dataset declaring more than BOMB_BYTES that expands more than BOMB_RATIO times its stored size
# is a decompression bomb (Keras' own rule uses 4 GiB and 1000x).
BOMB_BYTES = 1 << 30
BOMB_RATIO = 1000

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_VLEN_BYTES = 16  # hvl_t: what one variable-length element occupies in the attribute itself


@contextlib.contextmanager
def guard(path, obj=None, what="cannot read"):
    """Turn anything a third-party call raises into CorruptModelFileError(path, obj, ...)."""
    try:
        yield
    except NncompError:
        raise
    except Exception as e:  # noqa: BLE001 - h5py raises 8+ exception types (and SystemError, RecursionError)
        raise CorruptModelFileError(path, obj, f"{what} ({type(e).__name__}: {e})") from None


def check_path(path):
    """Refuse a path that is not a regular HDF5 file, before h5py touches it."""
    try:
        st = os.stat(path)
    except (OSError, ValueError, TypeError) as e:
        raise ModelFileError(path, None, f"cannot stat file ({getattr(e, 'strerror', None) or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelFileError(path, None, "not a regular file (directories, FIFOs and devices are refused)")
    with guard(path, None, "cannot read the file header"), open(path, "rb") as fh:
        head = fh.read(8)
        if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
            raise UnsupportedModelError(path, None, "zip/pickle files (.keras, .pt, .pth) are not supported: "
                                        "they can execute code; export the weights to HDF5 (see the README)")
        # HDF5 may also sit after a user block of 512 * 2^k bytes.
        offset = 512
        while head != _HDF5_MAGIC and offset + 8 <= st.st_size:
            fh.seek(offset)
            head = fh.read(8)
            offset *= 2
    if head != _HDF5_MAGIC:
        raise CorruptModelFileError(path, None, "not a readable HDF5 file (file signature not found)")


def _check_cap(value, name):
    if type(value) is bool or not isinstance(value, (int, np.integer)) or value < 0:
        raise NncompError(f"{name} must be an int >= 0 (bytes), got {value!r}")
    return int(value)


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


_GCOL = b"GCOL\x01\x00\x00\x00"
_GCOL_MIN = 4096  # HDF5 never writes a smaller global heap collection (H5HG_MINSIZE)


def check_global_heaps(path):
    """Refuse a file whose global heap collections (where variable-length strings live) are inconsistent.

    HDF5 trusts the object sizes inside a collection: one flipped size bit made it loop forever while
    holding the GIL (found by tests/test_fuzz.py). Every collection header in the file must be
    followed by objects that tile it exactly (16-byte headers, sizes padded to 8, a final free-space
    object); that is checked here, in Python, before HDF5 reads any variable-length data.
    """
    with guard(path, None, "cannot scan the file's global heaps"), open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size < len(_GCOL):
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            size_of_file = len(data)
            base = 0
            while base + 16 <= size_of_file and data[base:base + 8] != _HDF5_MAGIC:
                base = 512 if base == 0 else base * 2
            if base + 16 > size_of_file:
                return
            version = data[base + 8]
            lengths = data[base + 14] if version in (0, 1) else data[base + 10]
            if lengths != 8:
                return  # only the layout h5py writes (8-byte lengths) is checked
            g = data.find(_GCOL)
            while g >= 0:
                _check_collection(data, g, size_of_file, path)
                g = data.find(_GCOL, g + 1)


def _check_collection(data, g, eof, path):
    if g + 16 > eof:
        return
    size = int.from_bytes(data[g + 8:g + 16], "little")
    if size < _GCOL_MIN:
        return  # HDF5 refuses such a collection itself ("global heap size is too small")
    end = g + size
    if end > eof:
        raise CorruptModelFileError(path, None, f"global heap collection at byte {g} runs past the end of the file")
    p, seen = g + 16, set()
    while p + 16 <= end:
        index = int.from_bytes(data[p:p + 2], "little")
        n = int.from_bytes(data[p + 8:p + 16], "little")
        if index == 0:  # free space: the rest of the collection, header included
            if p + n != end:
                raise CorruptModelFileError(path, None, f"global heap collection at byte {g}: free space at byte {p} "
                                            f"is {n} bytes, but {end - p} remain")
            return
        if index in seen or p + 16 + n > end:
            raise CorruptModelFileError(path, None, f"global heap collection at byte {g}: object {index} at byte "
                                        f"{p} ({n} bytes) is inconsistent with the collection")
        seen.add(index)
        p += 16 + (n + 7) // 8 * 8
    if p != end:
        raise CorruptModelFileError(path, None, f"global heap collection at byte {g}: objects do not fill it")


def convert(arr, dtype=np.float32, *, ndim=None, finite=True, path=None, obj=None):
    """A numeric array as a C-contiguous native-order array of ``dtype``, range- and finiteness-checked.

    Float targets: values beyond the target's range are refused (no silent ``inf``); NaN/Inf and
    magnitudes above ``MAX_ABS_VALUE`` (1e30) are refused when ``finite``. Integer targets: the source must be integers within the target's range.
    """
    arr = np.asarray(arr)
    if arr.dtype.kind not in "fiu" or arr.dtype.subdtype is not None:
        raise UnsupportedModelError(path, obj, f"unsupported element type {arr.dtype}; expected int/float")
    if ndim is not None and arr.ndim != ndim:
        raise CorruptModelFileError(path, obj, f"expected a {ndim}-D array, got shape {arr.shape}")
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        if arr.dtype.kind == "f" and arr.dtype.itemsize > dtype.itemsize and arr.size:
            fin = arr[np.isfinite(arr)]
            if fin.size and np.abs(fin).max() > np.finfo(dtype).max:
                raise CorruptModelFileError(path, obj, f"value exceeds {dtype} range")
        out = np.ascontiguousarray(arr, dtype=dtype)
        if finite and out.size:
            bad = int(out.size - np.count_nonzero(np.isfinite(out)))
            if bad:
                raise CorruptModelFileError(path, obj, f"{bad} non-finite value(s) (NaN/Inf) in weights; "
                                            "pass allow_nonfinite=True to accept them")
            big = int(np.count_nonzero(np.abs(out) > MAX_ABS_VALUE))
            if big:
                raise CorruptModelFileError(path, obj, f"{big} value(s) beyond +-{MAX_ABS_VALUE:g}: the data is "
                                            "damaged (a flipped exponent bit looks like this; such a weight "
                                            "overflows float32); pass allow_nonfinite=True to accept them")
        return out
    if dtype.kind not in "iu" or arr.dtype.kind not in "iu":
        raise CorruptModelFileError(path, obj, f"expected integers, got {arr.dtype}")
    info = np.iinfo(dtype)
    if arr.size and (int(arr.min()) < info.min or int(arr.max()) > info.max):
        raise CorruptModelFileError(path, obj, f"values outside the range of {dtype}")
    return np.ascontiguousarray(arr, dtype=dtype)


def _no_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _depth(value):
    """Nesting depth of parsed JSON, without recursion."""
    best, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            best = max(best, d)
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return best


def parse_json(text, path=None, obj=None, *, max_chars=MAX_ATTR_BYTES):
    """``json.loads`` with size and nesting-depth limits (NaN/Infinity refused); errors become ModelFileError.

    CPython's JSON scanner turns runaway nesting into RecursionError (wrapped here); the depth of
    what it returns is then capped, so that no later walk over the value can recurse deeply.
    """
    if isinstance(text, bytes):
        with guard(path, obj, "JSON is not UTF-8"):
            text = text.decode("utf-8")
    if not isinstance(text, str):
        raise CorruptModelFileError(path, obj, f"expected JSON text, got {type(text).__name__}")
    if len(text) > max_chars:
        raise UnsafeModelFileError(path, obj, f"JSON is {len(text)} characters; limit {max_chars}")
    with guard(path, obj, "invalid JSON"):
        value = json.loads(text, parse_constant=_no_constant)
    if _depth(value) > MAX_JSON_DEPTH:
        raise UnsafeModelFileError(path, obj, f"JSON nests more than {MAX_JSON_DEPTH} levels deep")
    return value
