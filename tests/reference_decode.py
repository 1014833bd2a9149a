"""Twins of nncomp/kernels/decode.py: a compressed weight transposed into ``(k, cop)``, zero-padded."""
import numpy as np


def _padded(wt, shape):
    out = np.zeros(shape, np.float32)
    out[:, :wt.shape[1]] = wt[:shape[0]]
    return out


def decode_codebook_t(codes, codebook, bits, n_out, shape):
    """``shape`` (k, cop) in place of the kernel's ``out``."""
    if bits <= 4:
        blocks = codes.reshape(codes.shape[0], -1, 1, 16)
        full = np.concatenate([blocks & 15, blocks >> 4], axis=2).reshape(codes.shape[0], -1)
    else:
        full = codes
    return _padded(codebook[full[:n_out, :shape[0]]].T, shape)


def decode_int8_t(q, scale, shape):
    s = scale[:, None] if scale.shape[0] > 1 else scale[0]
    return _padded((q.astype(np.float32) * s).astype(np.float32).T, shape)


def decode_sparse_t(values, codes, indices, indptr, shape):
    n_out = indptr.shape[0] - 1
    w = np.zeros((n_out, shape[0]), np.float32)
    rows = np.repeat(np.arange(n_out), np.diff(indptr.astype(np.int64)))
    if indices.shape[0]:
        w[rows, indices.astype(np.int64)] = values[codes] if codes.shape[0] else values
    return _padded(w.T, shape)


def decode_winograd_t(wt, c, g_mat, shape):
    """``shape`` (span**2, cp, cop) in place of ``out``: G g G^T of every channel pair, float64
    (``g_mat`` G, span x r for an r x r filter)."""
    cop, k = wt.shape[1], g_mat.shape[1]
    g = wt.astype(np.float64).reshape(k, k, c, cop)
    u = np.einsum("ar,rsco,bs->abco", g_mat, g, g_mat).reshape(shape[0], c, cop)
    out = np.zeros(shape, np.float32)
    out[:, :c] = u
    return out
