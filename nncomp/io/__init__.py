"""Reading and writing model files: nncomp's native format, PyTorch state dicts, Keras HDF5."""
import os

from ..errors import NncompError, UnsupportedModelError
from .native import save
from .safe import MAX_FILE_BYTES, MAX_TENSOR_BYTES, SafeFile

__all__ = ["load", "save"]


def load(path, *, architecture=None, max_tensor_bytes=MAX_TENSOR_BYTES, max_file_bytes=MAX_FILE_BYTES,
         allow_nonfinite=False, isolate=False, timeout=60.0, max_memory=None):
    """Load a model from an HDF5 file: nncomp native, PyTorch state dict, or Keras.

    The format is recognised from the file's contents. Every file is treated as untrusted: links,
    external or virtual storage, unknown filters, non-numeric data and non-finite weights are
    refused, and declared sizes are capped before anything is allocated.

    Parameters
    ----------
    path : str or path-like
        The model file.
    architecture : str, dict, or path-like, optional
        For files that carry no architecture: an ``nncomp-arch`` v1 JSON string or dict (PyTorch
        state dicts), or a Keras ``model_config`` JSON / legacy ``.h5`` path (Keras ``.weights.h5``).
    max_tensor_bytes, max_file_bytes : int
        Caps on the declared size of one tensor and of all tensors in the file.
    allow_nonfinite : bool
        Accept NaN/Inf weights and magnitudes above 1e30 (refused by default).
    isolate : bool
        Parse the file in a child process, with a wall-clock ``timeout`` (seconds) and an address-space
        limit ``max_memory`` (bytes the child may add; default ``2 * max_file_bytes + 2 GiB``): a hang,
        crash or memory blow-up inside HDF5 on a hostile file becomes a ModelFileError. Recommended for
        Keras files from untrusted sources (see docs/sources.md); costs an interpreter start-up.

    Returns
    -------
    Model

    Raises
    ------
    ModelFileError
        (and its subclasses) naming the file, the object inside it and the reason.
    """
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise NncompError(f"load() needs a file path, got {type(path).__name__}")
    if isolate:
        from .isolate import load_isolated
        return load_isolated(path, architecture=architecture, timeout=timeout, max_memory=max_memory,
                             max_tensor_bytes=max_tensor_bytes, max_file_bytes=max_file_bytes,
                             allow_nonfinite=allow_nonfinite)
    with SafeFile(path, max_tensor_bytes=max_tensor_bytes, max_file_bytes=max_file_bytes,
                  allow_nonfinite=allow_nonfinite) as f:
        from . import native
        if native.is_native(f):
            return native.load_native(f)
        root = f.file
        if "model_weights" in root or "layers" in root and "vars" in root:
            from . import keras
            return keras.load_keras(f, architecture=architecture)
        if "architecture" in root.attrs or architecture is not None:
            from . import torch
            return torch.load_torch(f, architecture=architecture)
        raise UnsupportedModelError(f.path, None, "unrecognised model file: not nncomp native, not Keras, and "
                                    "no nncomp-arch architecture (pass architecture= for a bare state dict)")
