"""Deep Compression's size report: the bytes of every layer after pruning, sharing and Huffman coding.

The codec itself lives in :mod:`nncomp.coding` (below ``io/`` and ``compress/``); its public names
are re-exported here for code that imported them from this module.
"""
import numpy as np

from ..coding.huffman import (LUT_BITS, MAX_LEN, canonical_codes, code_lengths, decode, encode,  # noqa: F401
                              encoded_nbytes, huffman_lengths, package_merge)
from ..coding.index import choose_index_bits, gaps_of

_INDEX_ARRAYS = ("gaps", "indices", "indptr")


class SizeReport:
    """Bytes of every layer after each Deep Compression stage (``rows``, ``total``; ``str()``: a table).

    Stages: ``dense`` (float32), ``pruned`` (float32 non-zeros plus relative indices at
    ``index_bits`` bits, fillers included), ``shared`` (codes at ``bits`` bits plus the same indices
    and the float32 codebook), ``huffman`` (what ``nc.save(model, path, huffman=True)`` stores: the
    Huffman streams and tables of the codable arrays and every other array, headers aside). Biases
    and other parameters count in every stage's bytes. The bit columns are per stored (non-zero)
    weight: weight bits include the codebook and its Huffman table, index bits the relative indices
    (fillers included) and their table.
    """

    COLUMNS = ("layer", "weights", "density", "dense", "pruned", "shared", "huffman",
               "weight_bits_pq", "weight_bits_pqh", "index_bits_pq", "index_bits_pqh")

    def __init__(self, rows):
        self.rows = rows
        tot = {k: sum(r[k] for r in rows) for k in ("weights", "nnz", "dense", "pruned", "shared", "huffman")}
        tot["layer"] = "total"
        tot["density"] = tot["nnz"] / max(tot["weights"], 1)
        self.total = tot

    @property
    def ratio(self):
        """Dense float32 bytes over Huffman bytes: the compression rate."""
        return self.total["dense"] / max(self.total["huffman"], 1)

    def __str__(self):
        head = ("| layer | #weights | weights% (P) | weight bits (P+Q) | weight bits (P+Q+H) | index bits (P+Q) "
                "| index bits (P+Q+H) | bytes dense | pruned | shared | Huffman | rate (P+Q) | rate (P+Q+H) |")
        lines = [head, "|" + "---|" * 13]

        def fmt(v):
            return "-" if v is None else f"{v:.1f}"

        for r in self.rows + [self.total]:
            lines.append(f"| {r['layer']} | {r['weights']:,} | {100 * r['density']:.1f}% | "
                         f"{fmt(r.get('weight_bits_pq'))} | {fmt(r.get('weight_bits_pqh'))} | "
                         f"{fmt(r.get('index_bits_pq'))} | {fmt(r.get('index_bits_pqh'))} | {r['dense']:,} | "
                         f"{r['pruned']:,} | {r['shared']:,} | {r['huffman']:,} | "
                         f"{100 * r['shared'] / r['dense']:.2f}% | {100 * r['huffman'] / r['dense']:.2f}% |")
        lines.append(f"\ncompression: {self.ratio:.1f}x ({self.total['dense']:,} -> {self.total['huffman']:,} bytes)")
        return "\n".join(lines)

    __repr__ = __str__


def _matrix_row(m):
    """Stage bytes of one weight Matrix (no bias)."""
    n_out, n_in = m.shape
    dense = n_out * n_in * 4
    arrays, _ = m.to_arrays()
    codable = set(getattr(m, "codable", ()))
    hbytes = {k: (encoded_nbytes(a) if k in codable and a.dtype.kind in "iu" and a.size else a.nbytes)
              for k, a in arrays.items()}
    idx_h = sum(v for k, v in hbytes.items() if k in _INDEX_ARRAYS)
    w_h = sum(v for k, v in hbytes.items() if k not in _INDEX_ARRAYS)
    pos = m.positions() if hasattr(m, "positions") else np.flatnonzero(m.to_dense())
    nnz = int(pos.size)
    sparse = nnz < n_out * n_in or hasattr(m, "positions") or hasattr(m, "indptr")
    g = getattr(m, "index_bits", None) or (choose_index_bits(pos) if nnz else 8)
    idx_pq = -(-gaps_of(pos, g).size * g // 8) if sparse else 0
    bits = getattr(m, "bits", None)
    cb = getattr(m, "codebook", None)
    pruned = nnz * 4 + idx_pq if sparse else dense
    shared = (-(-nnz * bits // 8) + idx_pq + cb.nbytes) if bits else pruned
    per = max(nnz, 1)
    return {"weights": n_out * n_in, "nnz": nnz, "density": nnz / (n_out * n_in), "dense": dense,
            "pruned": pruned, "shared": shared, "huffman": idx_h + w_h,
            "weight_bits_pq": bits if bits else 32.0, "weight_bits_pqh": 8 * w_h / per,
            "index_bits_pq": 8 * idx_pq / per if sparse else None,
            "index_bits_pqh": 8 * idx_h / per if sparse else None}


def size_report(model):
    """Per-layer bytes after each Deep Compression stage: dense, pruned, shared, Huffman.

    Parameters
    ----------
    model : Model
        Any nncomp model; layers keep the formats they have (a dense layer counts the same bytes in
        every stage but the last, where its float32 weights are not Huffman-coded).

    Returns
    -------
    SizeReport
        ``rows`` (one dict per node with parameters), ``total``, ``ratio``; ``print()`` shows the table
        in the form of Deep Compression's Tables 2-5.
    """
    from ..compress.calibration import check_model
    from ..matrices import Matrix
    check_model(model, "size_report")
    rows = []
    for node in model.nodes:
        tensors = {k: v for k, v in node.layer.tensors().items() if v is not None}
        if not tensors:
            continue
        row = {"layer": node.name, "weights": 0, "nnz": 0, "density": 1.0, "dense": 0, "pruned": 0,
               "shared": 0, "huffman": 0}
        for v in tensors.values():
            if isinstance(v, Matrix):
                row.update({k: (row[k] + x if k in ("weights", "nnz", "dense", "pruned", "shared", "huffman")
                                else x) for k, x in _matrix_row(v).items()})
            else:
                for k in ("dense", "pruned", "shared", "huffman"):
                    row[k] += int(np.asarray(v).nbytes)
        row["density"] = row["nnz"] / row["weights"] if row["weights"] else 1.0
        rows.append(row)
    return SizeReport(rows)
