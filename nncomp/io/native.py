"""nncomp's own file format (docs/format.md): any Model, any weight format, checksummed, atomic saves."""
import contextlib
import hashlib
import json
import os
import tempfile

import numpy as np

from ..errors import CorruptModelFileError, NncompError, UnsupportedModelError
from ..layers import LAYERS
from ..matrices import FORMATS, Matrix
from ..model import Model, Node
from .safe import guard, h5py, parse_json

FORMAT_NAME = "nncomp"
FORMAT_VERSION = 1

# Entropy coders for integer arrays, by name: {"huffman": (encode, decode)}. ``encode(arr)`` returns
# ``(arrays, attrs)``; ``decode(arrays, attrs, path, obj)`` validates and returns the array.
ENCODINGS = {}


def _sha256(arr):
    return hashlib.sha256(np.ascontiguousarray(arr).view(np.uint8).reshape(-1).data).hexdigest()


class _Writer:
    def __init__(self, f, huffman):
        self.f, self.huffman, self.n = f, huffman, 0

    def array(self, arr, *, codable=False):
        arr = np.ascontiguousarray(arr)
        if arr.dtype.kind not in "fiu":
            raise NncompError(f"cannot save array of dtype {arr.dtype}")
        if codable and self.huffman and arr.dtype.kind in "iu" and arr.size:
            encode, _ = ENCODINGS["huffman"]
            parts, attrs = encode(arr)
            return {"encoding": "huffman", "attrs": attrs,
                    "parts": {k: self.array(v) for k, v in parts.items()},
                    "dtype": arr.dtype.str, "shape": list(arr.shape)}
        name = f"t/{self.n}"
        self.n += 1
        self.f.create_dataset(name, data=arr)
        return {"data": name, "dtype": arr.dtype.str, "shape": list(arr.shape), "sha256": _sha256(arr)}

    def tensor(self, value):
        if isinstance(value, Matrix):
            arrays, attrs = value.to_arrays()
            codable = set(getattr(value, "codable", ()))
            return {"matrix": value.format, "attrs": attrs,
                    "arrays": {k: self.array(v, codable=k in codable) for k, v in arrays.items()}}
        return {"array": self.array(value)}


def model_to_json(model, writer):
    nodes = []
    for n in model.nodes:
        tensors = {k: writer.tensor(v) for k, v in n.layer.tensors().items() if v is not None}
        nodes.append({"name": n.name, "kind": n.layer.kind, "inputs": list(n.inputs),
                      "config": n.layer.config(), "tensors": tensors})
    return {"name": model.name, "input": {"shape": list(model.input_shape), "layout": model.input_layout},
            "outputs": list(model.outputs), "nodes": nodes}


def save(model, path, *, huffman=False):
    """Save ``model`` to ``path`` in nncomp's native HDF5 format, atomically.

    The file is written to a temporary file in the same folder, flushed and fsynced, then renamed
    over ``path``: a failed save leaves an existing file untouched.

    Parameters
    ----------
    model : Model
    path : str or path-like
    huffman : bool
        Huffman-code the integer arrays that a format marks as codable (codebook codes, sparse
        index gaps), as in Deep Compression. Decoded at load; the round trip is exact.
    """
    if not isinstance(model, Model):
        raise NncompError(f"save() needs a Model, got {type(model).__name__}")
    if huffman and "huffman" not in ENCODINGS:
        from ..compress import huffman as _  # noqa: F401  registers the coder
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".nncomp-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            meta = model_to_json(model, _Writer(f, huffman))
            f.attrs["nncomp_format"] = np.bytes_(FORMAT_NAME)
            f.attrs["format_version"] = np.int64(FORMAT_VERSION)
            text = json.dumps(meta, separators=(",", ":")).encode()
            f.attrs["model"] = np.bytes_(text)
            f.attrs["model_sha256"] = np.bytes_(hashlib.sha256(text).hexdigest().encode())
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return path


def is_native(f):
    return f.attr("/", "nncomp_format") == FORMAT_NAME


class _Reader:
    def __init__(self, f):
        self.f, self.path = f, f.path

    def array(self, spec, obj):
        if not isinstance(spec, dict):
            raise CorruptModelFileError(self.path, obj, "malformed array entry")
        dtype = np.dtype(spec.get("dtype", "<f4"))
        if dtype.kind not in "fiu":
            raise CorruptModelFileError(self.path, obj, f"array dtype {dtype} is not numeric")
        if spec.get("encoding") is not None:
            coder = ENCODINGS.get(spec["encoding"])
            if coder is None and spec["encoding"] == "huffman":
                from ..compress import huffman as _  # noqa: F401
                coder = ENCODINGS.get("huffman")
            if coder is None:
                raise UnsupportedModelError(self.path, obj, f"unknown encoding {spec['encoding']!r}")
            parts = {k: self.array(v, f"{obj}/{k}") for k, v in spec["parts"].items()}
            arr = coder[1](parts, spec.get("attrs", {}), spec["shape"], dtype, self.path, obj)
        else:
            name = spec["data"]
            arr = self.f.read(name, dtype=dtype, finite=dtype.kind == "f" and not self.f.allow_nonfinite)
            if _sha256(arr) != spec.get("sha256"):
                raise CorruptModelFileError(self.path, "/" + name, "checksum mismatch (SHA-256): the data is damaged")
        if list(arr.shape) != list(spec.get("shape", arr.shape)):
            raise CorruptModelFileError(self.path, obj, f"shape {arr.shape} differs from recorded {spec['shape']}")
        return arr

    def tensor(self, spec, obj):
        if "array" in spec:
            return self.array(spec["array"], obj)
        cls = FORMATS.get(spec.get("matrix"))
        if cls is None:
            _import_formats()
            cls = FORMATS.get(spec.get("matrix"))
        if cls is None:
            raise UnsupportedModelError(self.path, obj, f"unknown weight format {spec.get('matrix')!r}")
        arrays = {k: self.array(v, f"{obj}/{k}") for k, v in spec["arrays"].items()}
        return cls.from_arrays(arrays, spec.get("attrs", {}), path=self.path, obj=obj)


def _import_formats():
    """Import every module that defines a weight format, so that FORMATS knows them all."""
    import importlib
    import pkgutil

    from .. import matrices
    for mod in pkgutil.iter_modules(matrices.__path__):
        importlib.import_module(f"{matrices.__name__}.{mod.name}")


def load_native(f):
    """Load a native file from an open SafeFile."""
    return build_native(f, read_description(f))


def read_description(f):
    """The checked model JSON of a native file: version, SHA-256 and nesting depth verified."""
    version = f.attr("/", "format_version", kind="int")
    if version is None or version < 1:
        raise CorruptModelFileError(f.path, "/@format_version", "missing or invalid format version")
    if version > FORMAT_VERSION:
        raise UnsupportedModelError(f.path, "/@format_version", f"format version {version} is newer than "
                                    f"supported ({FORMAT_VERSION}); upgrade nncomp")
    text = f.attr("/", "model")
    if text is None:
        raise CorruptModelFileError(f.path, "/@model", "the model description is missing")
    if hashlib.sha256(text.encode()).hexdigest() != f.attr("/", "model_sha256"):
        raise CorruptModelFileError(f.path, "/@model", "checksum mismatch (SHA-256): the model description is damaged")
    return parse_json(text, f.path, "/@model")


def build_native(f, meta):
    """Build the Model from a native description and a source of its arrays (a SafeFile)."""
    r = _Reader(f)
    try:
        nodes = []
        for spec in meta["nodes"]:
            cls = LAYERS.get(spec["kind"])
            if cls is None:
                raise UnsupportedModelError(f.path, spec["name"], f"unknown layer kind {spec['kind']!r}")
            tensors = {k: r.tensor(v, f"{spec['name']}/{k}") for k, v in spec["tensors"].items()}
            with guard(f.path, spec["name"], "invalid layer"):
                layer = cls.from_config(spec["config"], tensors)
            nodes.append(Node(spec["name"], layer, tuple(spec["inputs"])))
        return Model(nodes, input_shape=meta["input"]["shape"], input_layout=meta["input"]["layout"],
                     outputs=meta["outputs"], name=meta.get("name", "model"))
    except NncompError as e:
        if hasattr(e, "path"):
            raise
        raise CorruptModelFileError(f.path, None, str(e)) from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CorruptModelFileError(f.path, "/@model", f"malformed model description ({type(e).__name__}: {e})") from None
