"""Canonical Huffman coding of integer arrays (the last stage of Deep Compression) and size reports.

``encode(arr)`` returns ``(parts, attrs)``: the code table, ``stream`` (uint8, the codes most
significant bit first) and ``attrs = {"count": n, "nbits": bits}``. The table is either ``lengths``
(uint8, one per value of the range ``attrs["first"] ..``, 0 for an absent value; chosen when the range
is dense) or ``symbols`` (the distinct values, ascending, in the array's dtype) with ``lengths`` (one
per symbol). Codes are canonical (assigned in order of length,
then symbol) and limited to :data:`MAX_LEN` = 24 bits: when plain Huffman would need longer codes the
lengths come from package-merge (optimal under the limit). A one-symbol alphabet gets a code of
length 0 (an empty stream); an empty array has no symbols. ``decode`` checks, before any Numba code
runs, everything the decoder trusts: distinct symbols, lengths in range, the Kraft sum exactly 1
(oversubscribed or incomplete codes are refused), the stream length; a stream that ends early gives
"bitstream ended after N of M symbols". The native file format (nncomp.io.native) stores the codable
arrays of a model this way with ``nc.save(model, path, huffman=True)``; the size report
(nncomp.compress.huffman) counts the same bytes.
"""
import heapq

import numpy as np

from ..errors import CorruptModelFileError, NncompError
from ..kernels import huffman as K

MAX_LEN = 24
LUT_BITS = 11


def huffman_lengths(counts):
    """Optimal code lengths for symbol ``counts`` (all > 0), ties broken by symbol order."""
    n = len(counts)
    if n <= 1:
        return np.zeros(n, np.int64)
    heap = [(int(c), i) for i, c in enumerate(counts)]
    heapq.heapify(heap)
    parent = np.zeros(2 * n - 1, np.int64)
    nxt = n
    while len(heap) > 1:
        c1, a = heapq.heappop(heap)
        c2, b = heapq.heappop(heap)
        parent[a] = parent[b] = nxt
        heapq.heappush(heap, (c1 + c2, nxt))
        nxt += 1
    depth = np.zeros(2 * n - 1, np.int64)
    for node in range(2 * n - 3, -1, -1):     # parents have larger ids: walk from the root down
        depth[node] = depth[parent[node]] + 1
    return depth[:n]


def package_merge(counts, limit):
    """Optimal code lengths of at most ``limit`` bits (needs ``len(counts) <= 2**limit``)."""
    n = len(counts)
    if n <= 1:
        return np.zeros(n, np.int64)
    order = sorted(range(n), key=lambda i: (int(counts[i]), i))
    leaves = [int(counts[i]) for i in order]
    levels, packages = [], []
    for _ in range(limit):                     # from the deepest level (length limit) upwards
        merged, i, j = [], 0, 0
        while i < n or j < len(packages):
            if j >= len(packages) or (i < n and leaves[i] <= packages[j]):
                merged.append((leaves[i], True))
                i += 1
            else:
                merged.append((packages[j], False))
                j += 1
        levels.append(merged)
        packages = [merged[k][0] + merged[k + 1][0] for k in range(0, len(merged) - 1, 2)]
    lengths = np.zeros(n, np.int64)
    need = 2 * n - 2
    for merged in reversed(levels):            # the top level first: take the cheapest items
        taken = merged[:need]
        m = sum(1 for _, leaf in taken if leaf)
        for i in range(m):
            lengths[order[i]] += 1
        need = 2 * (need - m)
    return lengths


def code_lengths(counts, limit=MAX_LEN):
    """Huffman code lengths, length-limited by package-merge when Huffman exceeds ``limit``."""
    lengths = huffman_lengths(counts)
    if len(lengths) and lengths.max() > limit:
        lengths = package_merge(counts, limit)
    return lengths


def canonical_codes(lengths):
    """Canonical code of each symbol (uint32), from the code lengths (order: length, then symbol)."""
    lengths = np.asarray(lengths, np.int64)
    codes = np.zeros(lengths.size, np.uint32)
    code, prev = 0, 0
    for s in np.lexsort((np.arange(lengths.size), lengths)):
        if lengths[s] == 0:
            continue
        code <<= int(lengths[s]) - prev
        prev = int(lengths[s])
        codes[s] = code
        code += 1
    return codes


def _symbols(arr):
    """``(symbols, counts, index of each element)`` of an integer array."""
    flat = arr.reshape(-1)
    if arr.dtype.itemsize <= 2:
        lo = int(np.iinfo(arr.dtype).min)
        off = flat.astype(np.int64) - lo
        counts = np.bincount(off, minlength=1 << (8 * arr.dtype.itemsize))
        present = np.flatnonzero(counts)
        lut = np.zeros(counts.size, np.int32)
        lut[present] = np.arange(present.size, dtype=np.int32)
        return (present + lo).astype(arr.dtype), counts[present], lut[off]
    symbols, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    return symbols, counts, inverse.astype(np.int32)


def encode(arr):
    """Huffman-code an integer array: ``(parts, attrs)`` as described in the module docstring."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype.kind not in "iu":
        raise NncompError(f"Huffman coding needs an integer array, got {arr.dtype}")
    symbols, counts, idx = _symbols(arr)
    if symbols.size > 1 << MAX_LEN:
        raise NncompError(f"Huffman coding supports at most 2**{MAX_LEN} distinct values, got {symbols.size}; "
                          "save with huffman=False")
    lengths = code_lengths(counts)
    nbits = int((counts * lengths).sum())
    stream = np.zeros(-(-nbits // 8), np.uint8)
    if nbits:
        K.huffman_encode(idx, canonical_codes(lengths), lengths.astype(np.uint8), stream)
    attrs = {"count": int(arr.size), "nbits": nbits}
    span = int(symbols[-1]) - int(symbols[0]) + 1 if symbols.size else 0
    if symbols.size and span <= symbols.size * (1 + arr.dtype.itemsize):
        table = np.zeros(span, np.uint8)         # one length per value of the range, 0: absent
        table[symbols.astype(np.int64) - int(symbols[0])] = lengths
        attrs["first"] = int(symbols[0])
        return {"lengths": table, "stream": stream}, attrs
    return {"symbols": symbols, "lengths": lengths.astype(np.uint8), "stream": stream}, attrs


def encoded_nbytes(arr):
    """Bytes that :func:`encode` stores for ``arr``: table and stream."""
    parts, _ = encode(arr)
    return sum(p.nbytes for p in parts.values())


def decoder_tables(lengths):
    """Decoder tables (lookup table, canonical first/count/offset, symbol order) of valid lengths."""
    maxlen = int(lengths.max())
    lut_bits = min(maxlen, LUT_BITS)
    codes = canonical_codes(lengths)
    order = np.lexsort((np.arange(lengths.size), lengths)).astype(np.int32)
    count = np.bincount(lengths, minlength=maxlen + 1).astype(np.int64)
    first = np.zeros(maxlen + 1, np.int64)
    offset = np.zeros(maxlen + 1, np.int64)
    for ln in range(1, maxlen + 1):
        first[ln] = (first[ln - 1] + count[ln - 1]) << 1 if ln > 1 else 0
        offset[ln] = offset[ln - 1] + count[ln - 1] if ln > 1 else 0
    lut_sym = np.zeros(1 << lut_bits, np.int32)
    lut_len = np.zeros(1 << lut_bits, np.uint8)
    for s in np.flatnonzero(lengths <= lut_bits):
        span = 1 << (lut_bits - int(lengths[s]))
        start = int(codes[s]) * span
        lut_sym[start:start + span] = s
        lut_len[start:start + span] = lengths[s]
    return lut_sym, lut_len, lut_bits, first, count, offset, order, maxlen


def decode(parts, attrs, shape, dtype, path=None, obj=None):
    """Inverse of :func:`encode`, validating every part first (CorruptModelFileError)."""
    def bad(reason):
        raise CorruptModelFileError(path, obj, reason)

    dtype = np.dtype(dtype)
    if not isinstance(parts, dict) or set(parts) not in ({"symbols", "lengths", "stream"}, {"lengths", "stream"}):
        bad(f"Huffman parts must be [symbols,] lengths, stream; got {sorted(parts) if isinstance(parts, dict) else parts}")
    lengths, stream = parts["lengths"], parts["stream"]
    if not (dtype.kind in "iu" and lengths.ndim == stream.ndim == 1 and lengths.dtype == stream.dtype == np.uint8):
        bad("Huffman parts must be 1-D uint8 lengths and stream, for an integer array")
    if not (isinstance(shape, (list, tuple)) and all(type(s) is int and s >= 0 for s in shape)):
        bad(f"invalid shape {shape!r}")
    n = int(np.prod(shape, dtype=np.int64))
    count, nbits, first = attrs.get("count"), attrs.get("nbits"), attrs.get("first")
    if type(count) is not int or count != n or type(nbits) is not int or nbits < 0:
        bad(f"Huffman attrs count={count!r} nbits={nbits!r} do not fit an array of {n} values")
    if "symbols" in parts:
        symbols = parts["symbols"]
        if not (symbols.ndim == 1 and symbols.dtype == dtype):
            bad(f"Huffman symbols must be 1-D {dtype}")
    else:
        info = np.iinfo(dtype)
        if type(first) is not int or not (info.min <= first and first + max(lengths.size - 1, 0) <= info.max):
            bad(f"Huffman table start {first!r} with {lengths.size} entries does not fit {dtype}")
        present = np.flatnonzero(lengths) if lengths.size > 1 else np.arange(lengths.size)
        symbols = (first + present).astype(dtype)
        lengths = lengths[present]
    nsym = symbols.size
    if lengths.size != nsym or (nsym > 1 and np.any(np.diff(symbols.astype(np.int64)) <= 0)):
        bad(f"Huffman table: {nsym} symbols (must be distinct and ascending) with {lengths.size} lengths")
    if stream.size != -(-nbits // 8):
        bad(f"bitstream has {stream.size} bytes; {nbits} bits need {-(-nbits // 8)}")
    if n == 0 or nsym <= 1:
        if (n == 0) != (nsym == 0) or nbits != 0 or (nsym == 1 and lengths[0] != 0):
            bad(f"{nsym}-symbol Huffman table for {n} values must have length 0 and an empty stream")
        return np.full(shape, symbols[0] if nsym else 0, dtype)
    ln = lengths.astype(np.int64)
    if ln.min() < 1 or ln.max() > MAX_LEN:
        bad(f"Huffman code lengths must be in 1..{MAX_LEN}, got {ln.min()}..{ln.max()}")
    kraft = int((np.int64(1) << (MAX_LEN - ln)).sum())
    if kraft != 1 << MAX_LEN:
        bad(f"Huffman code lengths violate the Kraft inequality (sum of 2**-length = {kraft / 2**MAX_LEN:.6g}, "
            f"{'> 1: oversubscribed' if kraft > 1 << MAX_LEN else '< 1: incomplete code'})")
    padded = np.zeros(stream.size + 4, np.uint8)
    padded[:stream.size] = stream
    out = np.empty(n, np.int32)
    done, used = K.huffman_decode(padded, nbits, *decoder_tables(ln), out)
    if done < n:
        bad(f"bitstream ended after {done} of {n} symbols")
    if used != nbits:
        bad(f"bitstream has {nbits - used} bits after the last of {n} symbols")
    return symbols[out].reshape(shape)
