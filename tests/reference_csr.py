"""NumPy twins of the CSR kernels (nncomp/kernels/csr.py): float64, written for clarity."""
import numpy as np


def _dense(data, indices, indptr, n_in):
    w = np.zeros((indptr.shape[0] - 1, n_in))
    for o in range(indptr.shape[0] - 1):
        for j in range(indptr[o], indptr[o + 1]):
            w[o, int(indices[j])] += float(data[j])
    return w


def csr_matvec(data, indices, indptr, x):
    """``W @ x`` for one sample x (n_in,), W given by its CSR arrays."""
    return _dense(data, indices, indptr, x.shape[0]) @ x.astype(np.float64)


# the batch-1 kernel's two loop structures (nncomp/kernels/csr.py): one contract
csr_matvec_chunked = csr_matvec_rows = csr_matvec


def csr_matmul(data, indices, indptr, x):
    """``x @ W.T`` for x (n, n_in); data the values, or ``(codes, cb)`` (values ``cb[codes]``)."""
    if isinstance(data, tuple):
        data = data[1][data[0]]
    return x.astype(np.float64) @ _dense(data, indices, indptr, x.shape[1]).T
