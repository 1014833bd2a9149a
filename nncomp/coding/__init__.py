"""Coding of integer streams, below both ``io/`` (the native file) and ``compress/`` (the methods and
the size report): canonical Huffman coding (:mod:`.huffman`, kernels in nncomp.kernels.huffman) and
index coding of sparse weights (:mod:`.index`: index dtypes, relative-index streams, the index-width
chooser). Imports only numpy, nncomp.errors and nncomp.kernels.
"""
from .huffman import (LUT_BITS, MAX_LEN, canonical_codes, code_lengths, decode, decoder_tables, encode,
                      encoded_nbytes, huffman_lengths, package_merge)
from .index import choose_index_bits, gap_counts, gaps_of, index_dtype, positions_of

__all__ = ["MAX_LEN", "LUT_BITS", "huffman_lengths", "package_merge", "code_lengths", "canonical_codes",
           "encode", "decode", "encoded_nbytes", "decoder_tables",
           "index_dtype", "gaps_of", "positions_of", "gap_counts", "choose_index_bits"]
