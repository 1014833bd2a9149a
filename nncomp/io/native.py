"""nncomp's own file format (docs/format.md): any Model, any weight format, checksummed, packed, atomic saves.

Version 3 (written): every array of a model, and at the end the model description (JSON,
zlib-compressed), packed byte after byte into one uint8 dataset ``/p0`` (more, ``/p1`` ..., only
beyond :data:`PACK_BYTES`); the description records each array's pack, offset, dtype, shape and
SHA-256. Version 2 (read): the same with the description as plain JSON. Version 1 (read): one dataset
per array, the description in a root attribute.
"""
import contextlib
import hashlib
import json
import math
import os
import tempfile
import zlib

import numpy as np

from ..coding import huffman
from ..errors import CorruptModelFileError, NncompError, UnsupportedModelError
from ..layers import LAYERS
from ..matrices import FORMATS, Matrix
from ..model import Model, Node
from .safe import MAX_ATTR_BYTES, MAX_RANK, convert, guard, h5py, parse_json

FORMAT_NAME = "nncomp"
FORMAT_VERSION = 3
# The description (names, configs, array entries, an optimization plan) is JSON text; deflated it
# takes a third of its bytes (LeNet-300-100 Deep-Compressed: 4.0 kB -> 1.4 kB; with its plan 8.5 kB -> 2.5 kB).
ZLIB_LEVEL = 9
# Arrays go, in order, into packs /p0, /p1, ... of at most this many bytes (an array larger than that
# gets a pack of its own), so that no dataset outgrows the reader's cap on one dataset (4 GiB).
PACK_BYTES = 1 << 30
# HDF5 1.8 object formats (compact link and attribute storage, readable by HDF5 >= 1.8) and small
# metadata blocks: about 750 bytes of container around the packs instead of 2 kB and more.
LIBVER = ("v108", "v110")
META_BLOCK_BYTES = 512

# Entropy coders for integer arrays, by name: ``encode(arr)`` returns ``(parts, attrs)``;
# ``decode(parts, attrs, shape, dtype, path, obj)`` validates and returns the array.
ENCODINGS = {"huffman": (huffman.encode, huffman.decode)}


def _sha256(arr):
    return hashlib.sha256(np.ascontiguousarray(arr).view(np.uint8).reshape(-1).data).hexdigest()


class ArrayWriter:
    """Describes a model's arrays, storing each as a numbered dataset ``t/0, t/1, ...`` of ``f``
    (entries of format version 1; nncomp.io.isolate passes its arrays this way, in memory)."""

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
        return {**self.store(arr), "dtype": arr.dtype.str, "shape": list(arr.shape), "sha256": _sha256(arr)}

    def store(self, arr):
        name = f"t/{self.n}"
        self.n += 1
        self.f.create_dataset(name, data=arr)
        return {"data": name}

    def tensor(self, value):
        if isinstance(value, Matrix):
            arrays, attrs = value.to_arrays()
            codable = set(getattr(value, "codable", ()))
            return {"matrix": value.format, "attrs": attrs,
                    "arrays": {k: self.array(v, codable=k in codable) for k, v in arrays.items()}}
        return {"array": self.array(value)}


class _PackWriter(ArrayWriter):
    """Packs the arrays' bytes, in order, into uint8 streams (format versions 2 and 3); :meth:`write` stores them."""

    def __init__(self, huffman):
        super().__init__(None, huffman)
        self.packs, self.sizes = [[]], [0]

    def store(self, arr):
        if self.sizes[-1] and self.sizes[-1] + arr.nbytes > PACK_BYTES:
            self.packs.append([])
            self.sizes.append(0)
        entry = {"pack": len(self.packs) - 1, "offset": self.sizes[-1]}
        self.packs[-1].append(arr)
        self.sizes[-1] += arr.nbytes
        return entry

    def write(self, f, description):
        """Write the packs as contiguous datasets ``/p0, /p1, ...``; ``/p0`` ends with ``description``."""
        self.packs[0].append(np.frombuffer(description, np.uint8))
        self.sizes[0] += len(description)
        for k, (arrays, size) in enumerate(zip(self.packs, self.sizes)):
            ds = f.create_dataset(f"p{k}", shape=(size,), dtype=np.uint8)
            at = 0
            for a in arrays:
                if a.nbytes:
                    ds[at:at + a.nbytes] = a.reshape(-1).view(np.uint8)
                at += a.nbytes


def model_to_json(model, writer):
    nodes = []
    for n in model.nodes:
        tensors = {k: writer.tensor(v) for k, v in n.layer.tensors().items() if v is not None}
        nodes.append({"name": n.name, "kind": n.layer.kind, "inputs": list(n.inputs),
                      "config": n.layer.config(), "tensors": tensors})
    out = {"name": model.name, "input": {"shape": list(model.input_shape), "layout": model.input_layout},
           "outputs": list(model.outputs), "nodes": nodes}
    if getattr(model, "plan", None) is not None:
        out["plan"] = model.plan.to_json()     # what nc.optimize chose (nncomp.planner.report)
    return out


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
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".nncomp-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        with h5py.File(tmp, "w", libver=LIBVER, meta_block_size=META_BLOCK_BYTES) as f:
            _write(f, model, huffman)
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


def _write(f, model, huffman):
    """The whole file's contents, written into the open, empty HDF5 file ``f``."""
    writer = _PackWriter(huffman)
    text = zlib.compress(json.dumps(model_to_json(model, writer), separators=(",", ":")).encode(), ZLIB_LEVEL)
    writer.write(f, text)
    f.attrs["nncomp_format"] = np.bytes_(FORMAT_NAME)
    f.attrs["format_version"] = np.int64(FORMAT_VERSION)
    f.attrs["model_nbytes"] = np.int64(len(text))
    f.attrs["model_sha256"] = np.bytes_(hashlib.sha256(text).hexdigest().encode())


def file_bytes(model, *, huffman=False):
    """The bytes of the file ``save(model, path, huffman=huffman)`` writes, from the same file built in
    memory (HDF5's core driver, nothing written to disk and nothing read back): what a planner that
    measures many files needs (:func:`nncomp.bench.sizes.saved_size` writes, reloads and splits them)."""
    if not isinstance(model, Model):
        raise NncompError(f"file_bytes() needs a Model, got {type(model).__name__}")
    with h5py.File(f"nncomp-size-{id(model)}.h5", "w", driver="core", backing_store=False, libver=LIBVER,
                   meta_block_size=META_BLOCK_BYTES) as f:
        _write(f, model, huffman)
        f.flush()
        return len(f.id.get_file_image())


def is_native(f):
    return f.attr("/", "nncomp_format") == FORMAT_NAME


class _Packs:
    """The packs ``/p0, /p1, ...`` of a version-2 file, each read once through the SafeFile, and the
    byte ranges that the description and the arrays claim in them (which may not overlap)."""

    def __init__(self, f):
        self.f, self.path, self.bufs, self.claims = f, f.path, {}, []

    def get(self, k):
        if k not in self.bufs:
            self.bufs[k] = self.f.read(f"p{k}", dtype=np.uint8, ndim=1, finite=False)
        return self.bufs[k]

    def description(self):
        """The model description's bytes: the last ``@model_nbytes`` bytes of ``/p0``."""
        n = self.f.attr("/", "model_nbytes", kind="int")
        buf = self.get(0)
        if n is None or not 0 < n <= min(buf.size, MAX_ATTR_BYTES):
            raise CorruptModelFileError(self.path, "/@model_nbytes", f"model description length {n!r} must be "
                                        f"1..{min(buf.size, MAX_ATTR_BYTES)} (the bytes at the end of /p0)")
        self.claims.append((buf.size - n, buf.size, 0, "the model description"))
        return buf[buf.size - n:].tobytes()

    def array(self, spec, dtype, obj):
        """The bytes of one packed entry as an array of ``dtype``, bounds-checked (not yet hashed)."""
        k, offset, shape = spec.get("pack"), spec.get("offset"), spec.get("shape")
        if not (type(k) is int and k >= 0 and type(offset) is int and offset >= 0):
            raise CorruptModelFileError(self.path, obj, f"packed array needs ints pack >= 0 and offset >= 0, "
                                        f"got pack={k!r} offset={offset!r}")
        if not (isinstance(shape, list) and len(shape) <= MAX_RANK and all(type(s) is int and s >= 0 for s in shape)):
            raise CorruptModelFileError(self.path, obj, f"invalid shape {shape!r} (at most {MAX_RANK} ints >= 0)")
        count = math.prod(shape)
        buf = self.get(k)
        end = offset + count * dtype.itemsize
        if end > buf.size:
            raise CorruptModelFileError(self.path, obj, f"bytes {offset}..{end} of /p{k} are out of range: the pack "
                                        f"holds {buf.size} bytes (truncated, or a damaged offset or shape)")
        if end > offset:
            self.claims.append((offset, end, k, obj))
        arr = np.frombuffer(buf, dtype, count, offset).copy() if count else np.empty(0, dtype)
        finite = dtype.kind == "f" and not self.f.allow_nonfinite
        return convert(arr.reshape(shape), dtype, finite=finite, path=self.path, obj=obj)

    def check_overlaps(self):
        claims = sorted(self.claims, key=lambda c: (c[2], c[0]))
        for (_, end, k, a), (start, _, k2, b) in zip(claims, claims[1:]):
            if k == k2 and start < end:
                raise CorruptModelFileError(self.path, b, f"its bytes in /p{k} overlap those of {a} (from byte {start})")


class _Reader:
    def __init__(self, f, packs):
        self.f, self.path, self.packs = f, f.path, packs

    def array(self, spec, obj):
        if not isinstance(spec, dict):
            raise CorruptModelFileError(self.path, obj, "malformed array entry")
        dtype = np.dtype(spec.get("dtype", "<f4"))
        if dtype.kind not in "fiu":
            raise CorruptModelFileError(self.path, obj, f"array dtype {dtype} is not numeric")
        if spec.get("encoding") is not None:
            coder = ENCODINGS.get(spec["encoding"])
            if coder is None:
                raise UnsupportedModelError(self.path, obj, f"unknown encoding {spec['encoding']!r}")
            parts = {k: self.array(v, f"{obj}/{k}") for k, v in spec["parts"].items()}
            arr = coder[1](parts, spec.get("attrs", {}), spec["shape"], dtype, self.path, obj)
        else:
            if self.packs is None:          # version 1, and nncomp.io.isolate's exchange: one dataset each
                where = "/" + spec["data"]
                arr = self.f.read(spec["data"], dtype=dtype, finite=dtype.kind == "f" and not self.f.allow_nonfinite)
            else:
                where = obj
                arr = self.packs.array(spec, dtype, obj)
            if _sha256(arr) != spec.get("sha256"):
                raise CorruptModelFileError(self.path, where, "checksum mismatch (SHA-256): the data is damaged")
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
    packs = _Packs(f) if format_version(f) >= 2 else None
    return build_native(f, read_description(f, packs), packs)


def format_version(f):
    """The checked format version of a native file (1, 2 or 3)."""
    version = f.attr("/", "format_version", kind="int")
    if version is None or version < 1:
        raise CorruptModelFileError(f.path, "/@format_version", "missing or invalid format version")
    if version > FORMAT_VERSION:
        raise UnsupportedModelError(f.path, "/@format_version", f"format version {version} is newer than "
                                    f"supported ({FORMAT_VERSION}); upgrade nncomp")
    return version


def read_description(f, packs=None):
    """The checked model JSON of a native file: version, SHA-256 (of the bytes stored), inflated size
    (version 3) and nesting depth verified."""
    version = format_version(f)
    if version == 1:
        where, text = "/@model", f.attr("/", "model")
        if text is None:
            raise CorruptModelFileError(f.path, where, "the model description is missing")
        text = text.encode()
    else:
        where, text = "/p0", (packs or _Packs(f)).description()
    if hashlib.sha256(text).hexdigest() != f.attr("/", "model_sha256"):
        raise CorruptModelFileError(f.path, where, "checksum mismatch (SHA-256): the model description is damaged")
    return parse_json(inflate(text, f.path, where) if version >= 3 else text, f.path, where)


def inflate(data, path=None, obj=None, limit=None):
    """The zlib stream ``data`` decompressed, refused (CorruptModelFileError) unless it is one whole
    stream, nothing after it, that inflates to at most ``limit`` bytes (default MAX_ATTR_BYTES, the
    cap on any description; a decompression bomb stops at the limit: no more is ever allocated)."""
    limit = MAX_ATTR_BYTES if limit is None else limit
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as e:
        raise CorruptModelFileError(path, obj, f"the model description is not a valid zlib stream ({e})") from None
    if len(out) > limit or d.unconsumed_tail:
        raise CorruptModelFileError(path, obj, f"the model description inflates beyond {limit} bytes; expected a "
                                    "description of at most that size")
    if not d.eof or d.unused_data:
        raise CorruptModelFileError(path, obj, "the model description's zlib stream is truncated or followed by "
                                    f"{len(d.unused_data)} stray bytes; expected one whole stream")
    return out


def build_native(f, meta, packs=None):
    """Build the Model from a native description and a source of its arrays: a SafeFile and, for
    format versions 2 and 3, its packs (``None``: one dataset per array, as in version 1)."""
    r = _Reader(f, packs)
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
        if packs is not None:
            packs.check_overlaps()
        model = Model(nodes, input_shape=meta["input"]["shape"], input_layout=meta["input"]["layout"],
                      outputs=meta["outputs"], name=meta.get("name", "model"))
        if meta.get("plan") is not None:
            from ..planner.report import OptimizationPlan
            with guard(f.path, "/p0", "invalid optimization plan"):
                model.plan = OptimizationPlan.from_json(meta["plan"])
        return model
    except NncompError as e:
        if hasattr(e, "path"):
            raise
        raise CorruptModelFileError(f.path, None, str(e)) from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        where = "/@model" if packs is None else "/p0"
        raise CorruptModelFileError(f.path, where, f"malformed model description ({type(e).__name__}: {e})") from None
