"""nncomp.coding: index coding (index dtypes, relative-index streams, the one index-width chooser) and
the package's place below io/ and compress/ (the Huffman codec itself: tests/test_huffman.py)."""
import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
from hypothesis import example, given, strategies as st

from nncomp.coding import code_lengths, encoded_nbytes
from nncomp.coding.index import choose_index_bits, gap_counts, gaps_of, index_dtype, positions_of

ROOT = Path(__file__).resolve().parents[1]
positions = st.builds(lambda n, density, seed: np.flatnonzero(np.random.default_rng(seed).random(n) < density),
                      st.integers(0, 3000), st.floats(0, 1), st.integers(0, 2**31 - 1))


def _choose_by_stream(pos):
    """The chooser as first written: build each width's gap stream and count its symbols."""
    best, arg = None, 8
    for g in range(1, 9):
        counts = np.bincount(gaps_of(pos, g))
        counts = counts[counts > 0]
        cost = int((counts * code_lengths(counts)).sum()) // 8 + counts.size
        if best is None or cost < best:
            best, arg = cost, g
    return arg


@given(pos=positions, g=st.integers(1, 8))
@example(pos=np.array([], np.int64), g=1)
@example(pos=np.array([0, 300, 301]), g=2)
def test_gap_stream_round_trips_and_counts(pos, g):
    gaps = gaps_of(pos, g)
    assert gaps.dtype == np.uint8 and (gaps.size == 0 or (gaps.max() < 2 ** g and gaps[-1] != 0))
    assert np.array_equal(positions_of(gaps, g), pos)
    assert np.array_equal(gap_counts(pos, g), np.bincount(gaps, minlength=2 ** g))


@given(pos=positions)
def test_choose_index_bits_picks_the_cheapest_huffman_coded_stream(pos):
    g = choose_index_bits(pos)
    assert g == _choose_by_stream(pos)
    if pos.size > 50:        # what it estimates is what the file stores, up to the table's layout
        sizes = [encoded_nbytes(gaps_of(pos, w)) for w in range(1, 9)]
        assert sizes[g - 1] <= min(sizes) + 2 ** 8 + 8


def test_index_dtype_is_uint16_while_every_column_fits():
    assert index_dtype(1) == np.uint16 and index_dtype(65536) == np.uint16
    assert index_dtype(65537) == np.int32


def test_coding_imports_only_numpy_errors_and_kernels():
    for path in sorted((ROOT / "nncomp" / "coding").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 or node.module in ("errors", "kernels"), (path.name, node.module)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                assert all(n.split(".")[0] in ("numpy", "heapq") for n in names), (path.name, names)


def test_the_native_file_uses_the_codec_without_loading_compress():
    code = ("import sys, nncomp.io.native as n, nncomp.coding.huffman as h; "
            "assert n.ENCODINGS['huffman'] == (h.encode, h.decode); "
            "print(sorted(m for m in sys.modules if m.startswith('nncomp.compress.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""}).stdout
    assert "nncomp.compress.huffman" not in out and "nncomp.compress.sharing" not in out, out
