"""The one safe HDF5 reader under every load path.

Model files are untrusted input (see docs/format.md and the README's "Hostile files"). Before any
data is read, the whole file is walked once and refused if it holds anything but hard links,
plain numeric datasets without external or virtual storage, and allow-listed filters; declared
sizes are capped per tensor and per file before any allocation. Every exception h5py raises is
wrapped into a :class:`~nncomp.errors.ModelFileError` naming the file, the object, and why.
"""
import contextlib
import json
import math
import os
import stat

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

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

# Never let HDF5 load filter plugins from disk: nncomp only needs built-in filters.
os.environ.setdefault("HDF5_PLUGIN_PATH", os.devnull)

import h5py  # noqa: E402


@contextlib.contextmanager
def guard(path, obj=None, what="cannot read"):
    """Turn anything a third-party call raises into CorruptModelFileError(path, obj, ...)."""
    try:
        yield
    except NncompError:
        raise
    except (Exception, RecursionError) as e:  # noqa: BLE001 - h5py raises 8+ exception types
        raise CorruptModelFileError(path, obj, f"{what} ({type(e).__name__}: {e})") from None


def check_path(path):
    """Refuse a path that is not a regular HDF5 file, before h5py touches it."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ModelFileError(path, None, f"cannot stat file ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelFileError(path, None, "not a regular file (directories, FIFOs and devices are refused)")
    with guard(path, None, "cannot read the file header"), open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        raise UnsupportedModelError(path, None, "zip/pickle files (.keras, .pt, .pth) are not supported: "
                                    "they can execute code; export the weights to HDF5 (see the README)")
    if head != _HDF5_MAGIC:
        # HDF5 may also sit after a user block of 512 * 2^k bytes; h5py finds it.
        if st.st_size < 512:
            raise CorruptModelFileError(path, None, "not a readable HDF5 file (file signature not found)")


class SafeFile:
    """A read-only, pre-checked view of an HDF5 model file.

    Parameters
    ----------
    path : str or path-like
    max_tensor_bytes, max_file_bytes : int
        Caps on the declared size of one dataset and of all datasets together.
    allow_nonfinite : bool
        Accept NaN/Inf in weights (refused by default).
    """

    def __init__(self, path, *, max_tensor_bytes=MAX_TENSOR_BYTES, max_file_bytes=MAX_FILE_BYTES,
                 allow_nonfinite=False):
        self.path = os.fspath(path)
        self.max_tensor_bytes = int(max_tensor_bytes)
        self.max_file_bytes = int(max_file_bytes)
        self.allow_nonfinite = allow_nonfinite
        check_path(self.path)
        with guard(self.path, None, "not a readable HDF5 file"):
            self.file = h5py.File(self.path, "r")
        try:
            self.datasets = self._walk()
        except BaseException:
            self.close()
            raise

    def close(self):
        with contextlib.suppress(Exception):
            self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ policy walk
    def _walk(self):
        links = []
        with guard(self.path, None, "cannot list the file's links"):
            self.file.visititems_links(lambda name, link: links.append((name, link)))
        for name, link in links:
            if isinstance(link, h5py.ExternalLink):
                raise UnsafeModelFileError(self.path, "/" + name,
                                           f"ExternalLink to '{link.filename}:{link.path}' is not allowed")
            if isinstance(link, h5py.SoftLink):
                raise UnsafeModelFileError(self.path, "/" + name, f"SoftLink to '{link.path}' is not allowed")
            if not isinstance(link, h5py.HardLink):
                raise UnsafeModelFileError(self.path, "/" + name, f"link type {type(link).__name__} is not allowed")
        datasets, seen, total = {}, set(), 0
        for name, _ in links:
            obj_name = "/" + name
            with guard(self.path, obj_name, "cannot open object"):
                obj = self.file[obj_name]
                if not isinstance(obj, h5py.Dataset):
                    continue
                addr = h5py.h5o.get_info(obj.id).addr
            nbytes = self._check_dataset(obj_name, obj)
            datasets[obj_name] = obj
            if addr not in seen:
                seen.add(addr)
                total += nbytes
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
            dt = ds.dtype
            if tclass not in (h5py.h5t.INTEGER, h5py.h5t.FLOAT) or dt.kind not in "fiu" or dt.subdtype is not None:
                raise UnsupportedModelError(self.path, name, f"unsupported element type {dt} (HDF5 class "
                                            f"{tclass}); expected int/float")
            shape = ds.shape
            if len(shape) > MAX_RANK:
                raise UnsupportedModelError(self.path, name, f"rank {len(shape)} exceeds {MAX_RANK}")
            nbytes = math.prod(shape) * dt.itemsize
            if nbytes > self.max_tensor_bytes:
                raise UnsafeModelFileError(self.path, name, f"declares {nbytes} bytes (shape {shape}, {dt}); "
                                           f"limit {self.max_tensor_bytes}: raise max_tensor_bytes if trusted")
        return nbytes

    # ------------------------------------------------------------------ reading
    def has(self, name):
        return ("/" + name.lstrip("/")) in self.datasets

    def read(self, name, *, dtype=np.float32, ndim=None, finite=None):
        """Read dataset ``name`` as a native-order array of ``dtype``, checked.

        Floats are converted to ``dtype`` with a range check; NaN/Inf are refused unless the file was
        opened with ``allow_nonfinite`` (or ``finite=False``). ``ndim`` checks the rank.
        """
        name = "/" + name.lstrip("/")
        ds = self.datasets.get(name)
        if ds is None:
            raise CorruptModelFileError(self.path, name, "dataset is missing")
        with guard(self.path, name, "cannot read data"):
            arr = ds[()]
            arr = np.asarray(arr)
            if arr.shape != ds.shape:
                raise CorruptModelFileError(self.path, name, f"read shape {arr.shape} differs from declared {ds.shape}")
        if ndim is not None and arr.ndim != ndim:
            raise CorruptModelFileError(self.path, name, f"expected a {ndim}-D array, got shape {arr.shape}")
        dtype = np.dtype(dtype)
        if dtype.kind == "f":
            if arr.dtype.kind == "f" and arr.dtype.itemsize > dtype.itemsize and arr.size:
                fin = arr[np.isfinite(arr)]
                if fin.size and np.abs(fin).max() > np.finfo(dtype).max:
                    raise CorruptModelFileError(self.path, name, f"value exceeds {dtype} range")
            out = np.ascontiguousarray(arr, dtype=dtype)
            check = (not self.allow_nonfinite) if finite is None else finite
            if check and out.size:
                bad = int(out.size - np.count_nonzero(np.isfinite(out)))
                if bad:
                    raise CorruptModelFileError(self.path, name, f"{bad} non-finite value(s) (NaN/Inf) in weights")
            return out
        if arr.dtype.kind not in "iu":
            raise CorruptModelFileError(self.path, name, f"expected integers, got {arr.dtype}")
        info = np.iinfo(dtype)
        if arr.size and (int(arr.min()) < info.min or int(arr.max()) > info.max):
            raise CorruptModelFileError(self.path, name, f"values outside the range of {dtype}")
        return np.ascontiguousarray(arr, dtype=dtype)

    def attr(self, obj, key, *, kind="str", max_bytes=MAX_ATTR_BYTES, allow_vlen=False):
        """Read one attribute after checking its type and size; ``None`` when absent.

        kind: ``"str"`` (a string), ``"int"`` (an integer scalar), ``"strs"`` (a 1-D array of strings).
        Variable-length strings are read only with ``allow_vlen`` (Keras writes them): their heap is
        where corrupted files crashed or hung HDF5.
        """
        where = obj if obj.startswith("/") else "/" + obj
        with guard(self.path, f"{where}@{key}", "cannot read attribute"):
            target = self.file[where]
            if key not in target.attrs:
                return None
            aid = target.attrs.get_id(key)
            tid = aid.get_type()
            size = aid.get_storage_size()
            if size > max_bytes:
                raise UnsafeModelFileError(self.path, f"{where}@{key}", f"attribute is {size} bytes; limit {max_bytes}")
            tclass = tid.get_class()
            if kind == "int":
                if tclass != h5py.h5t.INTEGER or aid.shape not in ((), (1,)):
                    raise CorruptModelFileError(self.path, f"{where}@{key}", "expected an integer scalar")
                return int(np.asarray(target.attrs[key]).reshape(-1)[0])
            if tclass == h5py.h5t.STRING:
                if tid.is_variable_str() and not allow_vlen:
                    raise UnsupportedModelError(self.path, f"{where}@{key}",
                                                "variable-length string attributes are not read here")
            elif not (tclass == h5py.h5t.FLOAT and kind == "strs" and aid.shape == (0,)):
                raise CorruptModelFileError(self.path, f"{where}@{key}", f"expected a string attribute, got HDF5 class {tclass}")
            value = target.attrs[key]
        if kind == "strs":
            arr = np.asarray(value).reshape(-1)
            return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in arr] if arr.size else []
        if isinstance(value, np.ndarray):
            if value.size != 1:
                raise CorruptModelFileError(self.path, f"{where}@{key}", "expected one string")
            value = value.reshape(-1)[0]
        if isinstance(value, bytes):
            with guard(self.path, f"{where}@{key}", "attribute is not UTF-8"):
                value = value.decode("utf-8")
        return str(value)

    def json_attr(self, obj, key, **kw):
        """Parse a JSON string attribute with size and nesting-depth limits."""
        text = self.attr(obj, key, **kw)
        return None if text is None else parse_json(text, self.path, f"{obj}@{key}")


def parse_json(text, path=None, obj=None):
    """``json.loads`` with a nesting-depth limit; errors become ModelFileError."""
    depth = best = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth -= 1
    if best > MAX_JSON_DEPTH:
        raise UnsafeModelFileError(path, obj, f"JSON nests {best} levels deep; limit {MAX_JSON_DEPTH}")
    with guard(path, obj, "invalid JSON"):
        return json.loads(text)
