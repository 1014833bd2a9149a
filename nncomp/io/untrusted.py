"""Checks on untrusted bytes and values, made without an open HDF5 file (SafeFile is built on them).

A model file's header is checked before h5py opens it (:func:`check_path`), the raw bytes of its
global heaps before HDF5 reads any variable-length string (:func:`check_global_heaps`), every array
after it is read (:func:`convert`: dtype, range, finiteness) and every JSON text before and after
parsing (:func:`parse_json`: size, nesting depth). :func:`guard` turns whatever a third-party call
raises into a :class:`~nncomp.errors.CorruptModelFileError` naming the file and the object.
"""
import contextlib
import json
import mmap
import os
import stat

import numpy as np

from ..errors import CorruptModelFileError, ModelFileError, NncompError, UnsafeModelFileError, UnsupportedModelError

MAX_ATTR_BYTES = 16 << 20
MAX_JSON_DEPTH = 64
# No trained weight comes near this; a float32 exponent bit flip of an ordinary weight (x 2**128) does,
# and it then overflows the forward pass to inf. Refused with the non-finite values.
MAX_ABS_VALUE = 1e30

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


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



_GCOL = b"GCOL\x01\x00\x00\x00"
_GCOL_MIN = 4096  # HDF5 never writes a smaller global heap collection (H5HG_MINSIZE)


def check_global_heaps(path):
    """Refuse a file whose global heap collections (where variable-length strings live) are inconsistent.

    HDF5 trusts the object sizes inside a collection: one flipped size bit made it loop forever while
    holding the GIL (found by tests/test_fuzz.py). Every collection header in the file must be
    followed by objects that tile it exactly (16-byte headers, sizes padded to 8, a final free-space
    object, or a tail of less than 16 bytes: Keras 3.15 through h5py 3.16 wrote one with 8 bytes
    left); that is checked here, in Python, before HDF5 reads any variable-length data.
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
    if p > end:     # (a tail shorter than an object's header is unused: no free-space object fits there)
        raise CorruptModelFileError(path, None, f"global heap collection at byte {g}: objects do not fit it")


def convert(arr, dtype=np.float32, *, ndim=None, finite=True, path=None, obj=None):
    """A numeric array as a C-contiguous native-order array of ``dtype``, range- and finiteness-checked.

    Float targets: values beyond the target's range are refused (no silent ``inf``); NaN/Inf and
    magnitudes above ``MAX_ABS_VALUE`` (1e30) are refused when ``finite``; subnormal values (nonzero,
    below the target's smallest normal, 1.2e-38 for float32) become zero (:func:`flush_subnormal`).
    Integer targets: the source must be integers within the target's range.
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
        return flush_subnormal(out, arr)
    if dtype.kind not in "iu" or arr.dtype.kind not in "iu":
        raise CorruptModelFileError(path, obj, f"expected integers, got {arr.dtype}")
    info = np.iinfo(dtype)
    if arr.size and (int(arr.min()) < info.min or int(arr.max()) > info.max):
        raise CorruptModelFileError(path, obj, f"values outside the range of {dtype}")
    return np.ascontiguousarray(arr, dtype=dtype)


def flush_subnormal(out, source=None):
    """``out`` with its subnormal values (nonzero, under the dtype's smallest normal magnitude) set to
    zero, in a copy where ``out`` shares memory with ``source`` (the caller's array).

    Trained weights hold them (weight decay drives unused weights towards zero: PP-OCRv6's text
    detector, RapidOCR 3.10, has 256k, 63% of one 768 x 384 convolution's weights and the biases of its
    dead channels), and on x86 every multiply-add with a subnormal operand takes a microcode assist of
    ~100 cycles: those two convolutions took 121 of the detector's 200 ms (Intel Xeon), in ONNX Runtime
    too. A subnormal weight changes a product by less than 1.2e-38 times the input: zero instead
    changes no result that float32 can tell from rounding."""
    if out.dtype.kind != "f" or not out.size:
        return out
    sub = (out != 0) & (np.abs(out) < np.finfo(out.dtype).tiny)
    if not sub.any():
        return out
    if source is not None and np.shares_memory(out, source):
        out = out.copy()
    out[sub] = 0
    return out


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
