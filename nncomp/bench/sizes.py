"""Bytes on disk: the one measure every benchmark table uses for a model's file."""
import os
import tempfile
from dataclasses import dataclass


@dataclass(frozen=True)
class SavedSize:
    """What ``nc.save`` wrote: the whole file, the stored arrays alone, and the model reloaded from it."""

    file_bytes: int
    payload_bytes: int
    loaded: object


def saved_size(model, *, huffman=False):
    """Save ``model`` to a temporary file with ``nc.save(model, path, huffman=huffman)`` and measure it.

    ``payload_bytes`` counts the bytes the file's datasets occupy on disk (the weights; HDF5 headers
    and metadata aside), Huffman-coded where ``huffman``; ``file_bytes`` is the file's size. A native
    file of format version 2 or 3 keeps its model description in its first dataset, after the arrays
    (docs/format.md): those ``@model_nbytes`` bytes are metadata and not counted.
    """
    import h5py

    from ..io import load, save
    total = [0]

    def visit(_, obj):
        if isinstance(obj, h5py.Dataset):
            total[0] += obj.id.get_storage_size()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.h5")
        save(model, path, huffman=huffman)
        with h5py.File(path, "r") as f:
            f.visititems(visit)
            described = int(f.attrs.get("model_nbytes", 0))
        return SavedSize(os.path.getsize(path), total[0] - described, load(path))
