"""ONNX model files (``ModelProto``), read as untrusted input through the optional ``onnx`` package.

Here: recognising an ONNX file by its content, parsing it without letting ``onnx`` read anything
else (no external data unless ``external_data=True``, then only regular files inside the model's
folder), the opset (11-21; older ones upgraded with ``onnx.version_converter``), the graph checks
(dangling names, duplicate outputs, cycles, unsupported operators, all before any weight is read)
and each tensor's conversion with declared sizes capped before allocation. The translation of the
graph into a :class:`~nncomp.model.Model` is in ``onnx_ops.py``; shape computations are folded in
``onnx_fold.py``.
"""
import math
import os
import stat

import numpy as np

from ..errors import CorruptModelFileError, ModelFileError, NncompError, UnsafeModelFileError, UnsupportedModelError
from .untrusted import convert, guard

__all__ = ["is_onnx", "load_onnx", "stat_regular", "OPSETS"]

OPSETS = (11, 21)
MAX_NODES = 100_000
MAX_RANK = 8
MAX_DIM = 1 << 31
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# ONNX TensorProto data types nncomp reads: code -> (numpy dtype, the typed field holding the values)
DTYPES = {1: (np.float32, "float_data"), 2: (np.uint8, "int32_data"), 3: (np.int8, "int32_data"),
          5: (np.int16, "int32_data"), 6: (np.int32, "int32_data"), 7: (np.int64, "int64_data"),
          9: (np.bool_, "int32_data"), 10: (np.float16, "int32_data"), 11: (np.float64, "double_data"),
          12: (np.uint32, "uint64_data"), 13: (np.uint64, "uint64_data")}


def is_onnx(path):
    """Whether the file at ``path`` should be read as ONNX: not HDF5 (no signature at 0 or at a user
    block offset), and either an ``ir_version`` field first (how every ONNX writer starts) or an
    ``.onnx`` name. Unreadable paths and anything but a regular file (a FIFO would block the open)
    answer False: the HDF5 reader then says why."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as fh:
            head = fh.read(8)
            size = os.fstat(fh.fileno()).st_size
            offset = 512
            while head != _HDF5_MAGIC and offset + 8 <= size:
                fh.seek(offset)
                if fh.read(8) == _HDF5_MAGIC:
                    return False
                offset *= 2
    except (OSError, ValueError, TypeError):
        return False
    if head == _HDF5_MAGIC:
        return False
    return head[:1] == b"\x08" or os.fsdecode(path).lower().endswith(".onnx")


def onnx_module(path=None):
    """The ``onnx`` package, or an UnsupportedModelError saying how to install it."""
    try:
        import onnx
        import onnx.version_converter  # noqa: F401
    except ImportError:
        raise UnsupportedModelError(path, None, "reading ONNX files needs the onnx package: "
                                    "pip install nncomp[onnx]") from None
    return onnx


def stat_regular(path, what="model file"):
    try:
        st = os.stat(path)
    except (OSError, ValueError, TypeError) as e:
        raise ModelFileError(path, None, f"cannot stat {what} ({getattr(e, 'strerror', None) or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelFileError(path, None, f"{what} is not a regular file (directories, FIFOs and devices are refused)")
    return st


def read_model(path, max_file_bytes):
    """The parsed, opset-checked ModelProto at ``path``; ModelFileError for anything else."""
    onnx = onnx_module(path)
    st = stat_regular(path)
    limit = min(int(max_file_bytes), (2 << 30) - 1)
    if st.st_size > limit:
        raise UnsafeModelFileError(path, None, f"file is {st.st_size} bytes; the limit is {limit} (protobuf's "
                                   "own is 2 GiB; larger models keep their weights in external data)")
    with guard(path, None, "cannot read the file"), open(path, "rb") as fh:
        data = fh.read(limit + 1)
    model = onnx.ModelProto()
    with guard(path, None, "not a readable ONNX file (protobuf ModelProto)"):
        model.ParseFromString(data)
    if not model.HasField("graph") or model.ir_version < 3:
        raise CorruptModelFileError(path, None, "not a readable ONNX file: no graph or no IR version (>= 3)")
    return _upgraded(model, path, onnx)


def opset_of(model, path):
    """The default-domain opset version of ``model``; refuses other domains' operators."""
    found = None
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            found = int(imp.version)
    if found is None:
        raise CorruptModelFileError(path, "opset_import", "the model declares no ai.onnx opset")
    return found


def _upgraded(model, path, onnx):
    version = opset_of(model, path)
    lo, hi = OPSETS
    if version > hi:
        raise UnsupportedModelError(path, "opset_import", f"opset {version} is newer than this nncomp reads "
                                    f"({lo}-{hi}); export with opset_version={hi}, or convert: "
                                    f"onnx.version_converter.convert_version(model, {hi})")
    if version < lo:
        if any(t.data_location == 1 for t in model.graph.initializer):
            raise UnsupportedModelError(path, "opset_import", f"opset {version} with external data cannot be "
                                        f"upgraded here; upgrade it to opset {lo}+ with onnx first")
        with guard(path, "opset_import", f"cannot upgrade opset {version} to 13 with onnx.version_converter"):
            model = onnx.version_converter.convert_version(model, 13)
    return model


def check_graph(graph, path, supported):
    """Refuse dangling names, duplicate outputs, out-of-order nodes (cycles) and unsupported operators,
    reading no tensor data. ``supported``: the op types the importer maps."""
    if len(graph.node) > MAX_NODES:
        raise UnsafeModelFileError(path, "graph", f"{len(graph.node)} nodes; the limit is {MAX_NODES}")
    bad = {}
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in supported:
            op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            bad.setdefault(op, []).append(node.name or (node.output[0] if node.output else "?"))
    if bad:
        listing = "; ".join(f"{op} (nodes {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
                            for op, names in sorted(bad.items()))
        raise UnsupportedModelError(path, "graph", f"unsupported operators: {listing}")
    known = {t.name for t in graph.initializer} | {i.name for i in graph.input}
    produced = set()
    for node in graph.node:
        for name in node.input:
            if name and name not in known:
                later = any(name in n.output for n in graph.node)
                raise CorruptModelFileError(path, node.name or node.op_type, f"reads {name!r}, which "
                                            + ("a later node writes (a cycle, or nodes out of order)" if later
                                               else "nothing defines (a dangling name)"))
        for name in node.output:
            if name and (name in known or name in produced):
                raise CorruptModelFileError(path, node.name or node.op_type, f"output {name!r} is defined twice")
            if name:
                produced.add(name)
        known.update(n for n in node.output if n)
    for out in graph.output:
        if out.name not in known:
            raise CorruptModelFileError(path, "graph.output", f"output {out.name!r} is not defined by the graph")
    if len(graph.node) == 0 or len(graph.output) == 0:
        raise CorruptModelFileError(path, "graph", "the graph has no nodes or no outputs")


class TensorReader:
    """Converts TensorProtos (initializers, Constant values) to arrays, with every size checked first."""

    def __init__(self, path, max_tensor_bytes, max_file_bytes, allow_nonfinite, external_data):
        self.path, self.max_tensor, self.max_file = path, int(max_tensor_bytes), int(max_file_bytes)
        self.allow_nonfinite, self.external_data, self.total = allow_nonfinite, external_data, 0
        self.folder = os.path.dirname(os.path.realpath(path))

    def array(self, t, obj=None):
        obj = obj or t.name or "tensor"
        if t.data_type not in DTYPES:
            raise UnsupportedModelError(self.path, obj, f"tensor element type {t.data_type} is not supported "
                                        "(float, double, float16, ints and bool are)")
        dtype, field = DTYPES[t.data_type]
        dims = tuple(int(d) for d in t.dims)
        if len(dims) > MAX_RANK or any(d < 0 or d > MAX_DIM for d in dims):
            raise CorruptModelFileError(self.path, obj, f"declared shape {dims} is not a valid tensor shape")
        nbytes = math.prod(dims) * np.dtype(dtype).itemsize
        if nbytes > self.max_tensor:
            raise UnsafeModelFileError(self.path, obj, f"declares {nbytes} bytes (shape {dims}); the limit is "
                                       f"{self.max_tensor} (max_tensor_bytes)")
        self.total += nbytes
        if self.total > self.max_file:
            raise UnsafeModelFileError(self.path, obj, f"the tensors declare more than {self.max_file} bytes in "
                                       "total (max_file_bytes)")
        if t.data_location == 1:
            raw = self.external(t, obj, nbytes)
        elif t.HasField("raw_data"):
            raw = t.raw_data
        else:
            raw = None
        count = math.prod(dims)
        if raw is not None:
            if len(raw) != nbytes:
                raise CorruptModelFileError(self.path, obj, f"holds {len(raw)} bytes of data; shape {dims} of "
                                            f"{np.dtype(dtype).name} needs {nbytes}")
            arr = np.frombuffer(raw, np.dtype(dtype).newbyteorder("<"), count).astype(dtype)
        else:
            values = getattr(t, field)
            if len(values) != count:
                raise CorruptModelFileError(self.path, obj, f"holds {len(values)} values; shape {dims} needs {count}")
            if t.data_type == 10:
                arr = np.array(values, np.uint16).view(np.float16)
            else:
                with guard(self.path, obj, "values out of range for the element type"):
                    arr = np.array(values, dtype=np.int64 if dtype in (np.uint8, np.int8, np.int16, np.bool_)
                                   else dtype).astype(dtype)
        arr = arr.reshape(dims)
        if arr.dtype.kind == "b":
            arr = arr.astype(np.int64)
        if arr.dtype.kind == "f":
            return convert(arr, np.float32, finite=not self.allow_nonfinite, path=self.path, obj=obj)
        return arr.astype(np.int64)

    def external(self, t, obj, nbytes):
        """The bytes of an external-data tensor: only with ``external_data=True``, and only from a
        regular, singly linked file inside the model's folder, within its length."""
        info = {e.key: e.value for e in t.external_data}
        if not self.external_data:
            raise UnsafeModelFileError(self.path, obj, f"tensor data lives in the external file "
                                       f"{info.get('location', '?')!r}; pass external_data=True to read files "
                                       "next to the model (only regular files inside its folder are read)")
        loc = info.get("location", "")
        parts = loc.replace("\\", "/").split("/")
        if not loc or os.path.isabs(loc) or ".." in parts or loc.startswith(("/", "\\")) or ":" in loc:
            raise UnsafeModelFileError(self.path, obj, f"external data location {loc!r} is not a plain relative "
                                       "path inside the model's folder")
        full = os.path.join(self.folder, loc)
        real = os.path.realpath(full)
        if real != os.path.normpath(full) or os.path.commonpath([real, self.folder]) != self.folder:
            raise UnsafeModelFileError(self.path, obj, f"external data {loc!r} goes through a symbolic link")
        try:
            st = os.lstat(real)
        except OSError as e:
            raise ModelFileError(self.path, obj, f"cannot stat external data {loc!r} ({e.strerror})") from None
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise UnsafeModelFileError(self.path, obj, f"external data {loc!r} is not a regular file with one link")
        try:
            offset, length = int(info.get("offset", 0)), int(info.get("length", nbytes))
        except ValueError:
            raise CorruptModelFileError(self.path, obj, "external data offset/length are not integers") from None
        if offset < 0 or length != nbytes or offset + length > st.st_size:
            raise CorruptModelFileError(self.path, obj, f"external data {loc!r}: offset {offset}, length {length}; "
                                        f"expected an offset >= 0 and a length of {nbytes} within its {st.st_size} bytes")
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
        with guard(self.path, obj, "cannot read external data"):
            fd = os.open(real, flags)
            try:
                return os.pread(fd, length, offset)
            finally:
                os.close(fd)


def load_onnx(path, *, input_shape=None, max_tensor_bytes, max_file_bytes, allow_nonfinite=False,
              external_data=False):
    """Load the ONNX model at ``path`` as a Model (see :func:`nncomp.io.load`)."""
    path = os.fspath(path)
    from .onnx_ops import SUPPORTED, Importer
    model = read_model(path, max_file_bytes)
    check_graph(model.graph, path, SUPPORTED)
    tensors = TensorReader(path, max_tensor_bytes, max_file_bytes, allow_nonfinite, external_data)
    try:
        return Importer(model, path, tensors, opset_of(model, path), input_shape).build()
    except ModelFileError as e:
        if e.path is None:
            raise type(e)(path, e.obj, e.reason) from None
        raise
    except NncompError as e:
        raise UnsupportedModelError(path, None, str(e)) from None
    except (ValueError, TypeError, IndexError, KeyError, OverflowError, ZeroDivisionError) as e:
        raise CorruptModelFileError(path, None, f"malformed ONNX graph ({type(e).__name__}: {e})") from None
