"""NumPy twins of the sparse int8 kernels (nncomp/kernels/csr_int8.py), written for clarity.

Integer twins are exact (int64 inside); float twins are float64 (compared by the tolerance rule).
"""
import numpy as np


def _codes_dense(codes, indices, indptr, n_in):
    """The int64 code matrix ``(n_out, n_in)`` of the CSR arrays."""
    n_out = indptr.shape[0] - 1
    w = np.zeros((n_out, n_in), np.int64)
    rows = np.repeat(np.arange(n_out), np.diff(indptr.astype(np.int64)))
    w[rows, indices.astype(np.int64)] = codes.astype(np.int64)
    return w


def _scales(scale, n_out):
    return np.broadcast_to(scale.astype(np.float64), (n_out,))


def csr_int8_matvec_float(codes, indices, indptr, scale, x):
    """``scale * (W_codes @ x)`` for one sample x (n_in,), float64."""
    w = _codes_dense(codes, indices, indptr, x.shape[0]).astype(np.float64)
    return (w @ x.astype(np.float64)) * _scales(scale, w.shape[0])


# its two loop structures (nncomp/kernels/csr_int8.py): one contract
csr_int8_matvec_float_chunked = csr_int8_matvec_float_rows = csr_int8_matvec_float


def csr_int8_matmul_float(codes, indices, indptr, scale, x):
    """``(x @ W_codes.T) * scale`` for x (n, n_in), float64."""
    w = _codes_dense(codes, indices, indptr, x.shape[1]).astype(np.float64)
    return (x.astype(np.float64) @ w.T) * _scales(scale, w.shape[0])


def csr_int8_matvec_u8s8(codes, indices, indptr, xw, packed):
    """Exact ``W_codes @ xu`` (int64) for one sample: xu are the int32 words xw, or (packed) their
    little-endian bytes."""
    xu = np.ascontiguousarray(xw).view(np.uint8) if packed else xw
    return _codes_dense(codes, indices, indptr, xu.shape[0]) @ xu.astype(np.int64)


def csr_int8_matmul_u8s8(codes, indices, indptr, xu):
    """Exact ``xu @ W_codes.T`` (int64) for activation codes xu (n, n_in)."""
    return xu.astype(np.int64) @ _codes_dense(codes, indices, indptr, xu.shape[1]).T
