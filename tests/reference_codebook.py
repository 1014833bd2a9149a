"""NumPy twins of the codebook, k-means and Huffman kernels (nncomp/kernels/codebook.py, codebook_vpermps.py,
kmeans.py, huffman.py).

The dense codebook twins follow the float32 summation contract of kernels/codebook.py exactly
(sixteen lane accumulators, multiply then add, the fixed lane tree), so they are compared with
``np.array_equal``; ``codebook_dense`` gives the weights for float64 checks by the tolerance rule.
"""
import numpy as np


def codebook_unpack4(codes, n_in=None):
    """Packed 4-bit codes ``(n_out, nb*16)`` -> ``(n_out, nb*32)`` codes (low nibble: column j, high: j+16)."""
    n_out, width = codes.shape
    blocks = codes.reshape(n_out, width // 16, 1, 16)
    out = np.concatenate([blocks & 15, blocks >> 4], axis=2).reshape(n_out, width * 2)
    return out if n_in is None else out[:, :n_in]


def reduce16(a):
    """The lane-summation tree of the codebook kernels' contract, in float32: lanes i and i + 8,
    then i and i + 4 of those, then (0 + 2) + (1 + 3)."""
    a = np.asarray(a, np.float32)
    t = a[:8] + a[8:]
    u = t[:4] + t[4:]
    return (u[0] + u[2]) + (u[1] + u[3])


def fma32(a, b, c):
    """Elementwise float32 ``a * b + c`` with one rounding: the exact product in float64, the sum
    rounded to odd (TwoSum), then rounded to float32 (Boldo and Melquiond's emulation)."""
    p = np.asarray(a, np.float64) * np.asarray(b, np.float64)
    c = np.asarray(c, np.float64)
    s = p + c
    bp = s - p
    err = (p - (s - bp)) + (c - bp)
    even = (s.view(np.int64) & 1) == 0
    s = np.where((err != 0) & even & np.isfinite(s), np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(np.float32)


def _lane_product(w, x):
    """The contract: float32 lane accumulators over columns k = l (mod 16), in increasing k, one fused
    multiply-add each, then the tree."""
    n, k = x.shape
    acc = np.zeros((n, w.shape[0], 16), np.float32)
    for b in range(k // 16):
        acc = fma32(x[:, None, b * 16:b * 16 + 16], w[None, :, b * 16:b * 16 + 16], acc)
    t = acc[..., :8] + acc[..., 8:]
    u = t[..., :4] + t[..., 4:]
    return (u[..., 0] + u[..., 2]) + (u[..., 1] + u[..., 3])


def codebook_matmul4(codes, x, cb16):
    """``x @ W.T`` with ``W = cb16[unpacked codes]``, summed as the contract says (float32, exact)."""
    return _lane_product(cb16[codebook_unpack4(codes)], np.asarray(x, np.float32))


# its batch-1 AVX2 build (nncomp/kernels/codebook_avx2.py): the same contract, the same bits
codebook_matmul4_avx2 = codebook_matmul4


def lane_sums4(codes, o, x, cb16):
    """The contract's 16 float32 lane sums of row ``o`` for one sample ``x``, before the tree."""
    w = cb16[codebook_unpack4(codes[o:o + 1])][0]
    x = np.asarray(x, np.float32)
    acc = np.zeros(16, np.float32)
    for b in range(x.shape[0] // 16):
        acc = fma32(x[b * 16:b * 16 + 16], w[b * 16:b * 16 + 16], acc)
    return acc


def codebook_matmul_vpermps(codes, x, cb, wide):
    """``codebook_matmul8`` (wide: one code per byte) or ``codebook_matmul4`` (packed)."""
    return codebook_matmul8(codes, x, cb) if wide else codebook_matmul4(codes, x, cb)


def codebook_matmul8(codes, x, cb):
    """``x @ W.T`` with ``W = cb[codes]`` (one code per byte), summed as the contract says."""
    return _lane_product(cb[codes], np.asarray(x, np.float32))


def codebook_dense(codes, cb, bits):
    """float64 weights of packed codes (for tolerance checks)."""
    c = codebook_unpack4(codes) if bits <= 4 else codes
    return cb.astype(np.float64)[c]


def codebook_gram(codes, cov, k):
    """``sum_o A_o.T @ cov @ A_o`` with ``A_o`` the one-hot ``(n_in, k)`` matrix of row o's codes."""
    g = np.zeros((k, k))
    for row in codes:
        a = np.eye(k)[row]
        g += a.T @ cov @ a
    return g


def csr_codebook_gram(codes, indices, indptr, cov, k):
    """``codebook_gram`` over the stored entries of each CSR row only."""
    g = np.zeros((k, k))
    for o in range(len(indptr) - 1):
        s = slice(indptr[o], indptr[o + 1])
        a = np.eye(k)[codes[s]]
        cols = indices[s].astype(np.int64)
        g += a.T @ cov[np.ix_(cols, cols)] @ a
    return g


def csr_codebook_dense(codes, indices, indptr, cb, n_in):
    w = np.zeros((len(indptr) - 1, n_in))
    for o in range(len(indptr) - 1):
        s = slice(indptr[o], indptr[o + 1])
        w[o, indices[s].astype(np.int64)] = cb[codes[s]]
    return w


def csr_codebook_matvec(codes, indices, indptr, cb, x):
    """float64 ``W @ x`` of a CSR codebook matrix."""
    return csr_codebook_dense(codes, indices, indptr, cb, x.shape[0]) @ x.astype(np.float64)


# its two loop structures (nncomp/kernels/codebook.py): one contract
csr_codebook_matvec_chunked = csr_codebook_matvec_rows = csr_codebook_matvec


def kmeans_assign(w, cb):
    """Lowest index of the nearest codebook entry (float64 distances)."""
    d = np.abs(w.astype(np.float64)[:, None] - cb.astype(np.float64)[None, :])
    return np.argmin(d, axis=1).astype(np.uint8)


def kmeans_lloyd(v, s0, s1, cent, max_iter):
    """Lloyd's algorithm by brute force on the weighted values (``s0`` prefix sums of the counts).

    Assignment: nearest centroid, ties to the lower one; update: weighted mean. Returns the centroids
    (for inputs where no cluster ever empties, which the tests choose).
    """
    c = np.diff(s0)
    cent = np.array(cent, np.float64)
    for _ in range(max_iter):
        d = np.abs(v[:, None] - cent[None, :])
        a = np.argmin(d, axis=1)
        new = np.array([np.average(v[a == j], weights=c[a == j]) for j in range(cent.size)])
        if np.array_equal(new, cent):
            break
        cent = new
    return cent


def huffman_encode(sym, code, length):
    """Bit string of the codes, MSB first, packed into bytes (last byte zero-padded)."""
    bits = "".join(format(int(code[s]), f"0{int(length[s])}b") if length[s] else "" for s in sym)
    bits += "0" * (-len(bits) % 8)
    return np.array([int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)], np.uint8), len(bits)


def huffman_decode(stream, nbits, code, length, n):
    """Decode ``n`` symbol indices by matching prefixes against the code table; stops early if the
    bits run out. Returns the decoded indices."""
    bits = "".join(format(int(b), "08b") for b in stream)[:nbits]
    table = {format(int(c), f"0{int(ln)}b"): s for s, (c, ln) in enumerate(zip(code, length))}
    out, cur = [], ""
    for ch in bits:
        cur += ch
        if cur in table:
            out.append(table[cur])
            cur = ""
            if len(out) == n:
                break
    return np.array(out, np.int32)
