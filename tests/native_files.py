"""Helpers for tests of nncomp's native file: a small model in every weight format (the model of
data/fixtures/native_v1.h5), and an editor that rewrites a saved file's description and arrays."""
import hashlib
import json
import math
import zlib

import h5py
import numpy as np

import nncomp as nc
from nncomp.matrices.codebook import CodebookMatrix
from nncomp.matrices.csr import CSRMatrix, PrunedDenseMatrix
from nncomp.matrices.csr_codebook import CSRCodebookMatrix
from nncomp.matrices.csr_int8 import CSRInt8Matrix
from nncomp.matrices.int8 import Int8Matrix


def every_format_model(seed=20261203):
    """Seven chained Dense layers of 24 features, one per weight format, with biases."""
    rng = np.random.default_rng(seed)
    n = 24

    def w(density=1.0):
        a = rng.standard_normal((n, n)).astype(np.float32)
        return a * (rng.random((n, n)) < density)

    sparse = w(0.3)
    pos = np.flatnonzero(sparse)
    weights = {
        "dense": w(),
        "csr": CSRMatrix.from_dense(w(0.25)),
        "pruned_dense": PrunedDenseMatrix(w(0.5)),
        "int8": Int8Matrix.from_float(w()),
        "codebook": CodebookMatrix.from_codes(rng.integers(0, 12, (n, n)), rng.standard_normal(12).astype(np.float32), 4),
        "csr_codebook": CSRCodebookMatrix.from_positions(pos, rng.integers(0, 7, pos.size), rng.standard_normal(7).astype(np.float32),
                                                         3, (n, n), index_bits=3),
        "csr_int8": CSRInt8Matrix.from_csr(CSRMatrix.from_dense(w(0.4))),
    }
    nodes, prev = [], "input"
    for name, m in weights.items():
        nodes.append(nc.Node(name, nc.Dense(m, (0.1 * rng.standard_normal(n)).astype(np.float32)), (prev,)))
        nodes.append(nc.Node(name + "_relu", nc.ReLU(), (name,)))
        prev = name + "_relu"
    return nc.Model(nodes, input_shape=(n,), input_layout="NC", name="every_format")


def entries(meta):
    """Every stored-array entry of a native description (plain arrays and Huffman parts), in file order."""
    def walk(entry):
        if isinstance(entry, dict) and "parts" in entry:
            for part in entry["parts"].values():
                yield from walk(part)
        elif isinstance(entry, dict):
            yield entry
    nodes = meta.get("nodes")                 # a test may have damaged the description: walk what is there
    for node in nodes if isinstance(nodes, list) else []:
        for tensor in node.get("tensors", {}).values():
            yield from walk(tensor["array"]) if "array" in tensor else (
                e for entry in tensor.get("arrays", {}).values() for e in walk(entry))


def read_native(path):
    """``(meta, p0)``: the description of a version-2 or -3 file (inflated) and its first pack."""
    with h5py.File(path, "r") as f:
        p0 = f["p0"][()]
        n = int(f.attrs["model_nbytes"])
        version = int(f.attrs["format_version"])
    text = p0[p0.size - n:].tobytes()
    return json.loads(zlib.decompress(text) if version >= 3 else text), p0


def edit_native(path, change):
    """Rewrite a version-2 or -3 file as a crafted one would be: ``change(meta, arrays)`` edits the
    description, in which every packed entry is named by a key ``"data"``, and ``arrays`` (name ->
    array). Named entries are then packed again in order, the description appended and its length
    and checksum recomputed; the arrays' own checksums are left to ``change``. Entries that ``change``
    leaves without a name keep the pack and offset it gives them."""
    meta, p0 = read_native(path)
    arrays = {}
    for entry in entries(meta):
        name = f"t/{len(arrays)}"
        count = math.prod(entry["shape"])
        arrays[name] = np.frombuffer(p0, np.dtype(entry["dtype"]), count, entry.pop("offset")).reshape(entry["shape"])
        del entry["pack"]
        entry["data"] = name
    change(meta, arrays)
    chunks, at = [], 0
    for entry in entries(meta):
        if "data" in entry:
            a = np.ascontiguousarray(arrays[entry.pop("data")])
            entry["pack"], entry["offset"] = 0, at
            chunks.append(a.reshape(-1).view(np.uint8))
            at += a.nbytes
    text = json.dumps(meta).encode()
    with h5py.File(path, "r") as f:
        if int(f.attrs["format_version"]) >= 3:
            text = zlib.compress(text)
    chunks.append(np.frombuffer(text, np.uint8))
    with h5py.File(path, "r+") as f:
        del f["p0"]
        f["p0"] = np.concatenate(chunks)
        f.attrs["model_nbytes"] = np.int64(len(text))
        f.attrs["model_sha256"] = np.bytes_(hashlib.sha256(text).hexdigest().encode())
    return path


def sha256(arr):
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
