"""Helpers for tests of nncomp's native file: a small model in every weight format (the model of
data/fixtures/native_v1.h5), and an editor that rewrites a saved file's description and arrays."""
import hashlib
import json

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
