"""Index coding of sparse weights: the in-memory column-index dtype and the relative-index (gap) stream.

In memory, column indices are uint16 where every column fits (``n_in <= 65536``, so that one
AVX-512 gather loads 16 of them), else int32: :func:`index_dtype`.

In the file, as in Deep Compression, positions are stored as relative indices: the nonzeros are
taken in row-major order over the flattened ``(n_out * n_in)`` matrix, starting from position -1,
and each is written as its distance ``d >= 1`` from the previous one in ``index_bits`` bits. A
distance larger than ``M = 2**index_bits - 1`` is preceded by filler entries: the symbol 0 means
"advance M positions, no weight here". :func:`choose_index_bits` picks the width whose
Huffman-coded stream (table included) is smallest.
"""
import numpy as np

from .huffman import code_lengths


def index_dtype(n_in):
    """uint16 column indices where every column fits (``n_in <= 65536``), else int32."""
    return np.dtype(np.uint16) if n_in <= 65536 else np.dtype(np.int32)


def gaps_of(positions, index_bits):
    """Relative-index stream (uint8) of strictly increasing flat ``positions`` with fillers."""
    d = np.diff(np.asarray(positions, np.int64), prepend=-1)
    m = (1 << index_bits) - 1
    fill = (d - 1) // m
    last = d - fill * m
    out = np.zeros(int(fill.sum()) + d.size, np.uint8)
    ends = np.cumsum(fill + 1) - 1
    out[ends] = last
    return out


def positions_of(gaps, index_bits):
    """Inverse of :func:`gaps_of`: the flat positions (int64) of the entries."""
    g = np.asarray(gaps).astype(np.int64)
    steps = np.where(g == 0, (1 << index_bits) - 1, g)
    return (np.cumsum(steps) - 1)[g != 0]


def gap_counts(positions, index_bits):
    """How often each symbol ``0 .. 2**index_bits - 1`` occurs in ``gaps_of(positions, index_bits)``,
    counted without building the stream."""
    d = np.diff(np.asarray(positions, np.int64), prepend=-1)
    m = (1 << index_bits) - 1
    fill = (d - 1) // m
    counts = np.bincount(d - fill * m, minlength=m + 1)
    counts[0] = fill.sum()
    return counts


def choose_index_bits(positions):
    """Relative-index width 1..8 whose Huffman-coded gap stream costs least: stream bytes plus one
    table byte per distinct symbol (ties go to the narrower width)."""
    best, arg = None, 8
    for g in range(1, 9):
        counts = gap_counts(positions, g)
        counts = counts[counts > 0]
        cost = int((counts * code_lengths(counts)).sum()) // 8 + counts.size
        if best is None or cost < best:
            best, arg = cost, g
    return arg
