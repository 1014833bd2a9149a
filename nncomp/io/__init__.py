"""Reading and writing model files: nncomp's native format, PyTorch state dicts, Keras HDF5, ONNX."""
import os

from ..checks import is_integer
from ..errors import NncompError, UnsupportedModelError
from .native import save
from .safe import MAX_FILE_BYTES, MAX_TENSOR_BYTES, SafeFile

__all__ = ["load", "save"]


def load(path, *, architecture=None, input_shape=None, max_tensor_bytes=MAX_TENSOR_BYTES,
         max_file_bytes=MAX_FILE_BYTES, allow_nonfinite=False, isolate=False, timeout=60.0, max_memory=None,
         external_data=False):
    """Load a model from a file: nncomp native, PyTorch state dict or Keras (HDF5), or ONNX.

    The format is recognised from the file's contents (ONNX: a protobuf ModelProto, read through the
    optional ``onnx`` package, ``pip install nncomp[onnx]``; its model takes and returns ONNX's layout,
    4-D tensors NCHW). Every file is treated as untrusted: links,
    external or virtual storage, unknown filters, non-numeric data and non-finite weights are
    refused, and declared sizes are capped before anything is allocated.

    Parameters
    ----------
    path : str or path-like
        The model file.
    architecture : str, dict, or path-like, optional
        For files that carry no architecture: an ``nncomp-arch`` v1 JSON string or dict (PyTorch
        state dicts), or a Keras ``model_config`` JSON / legacy ``.h5`` path (Keras ``.weights.h5``).
    input_shape : tuple of int, optional
        The per-sample input size in the model's layout that summaries, MAC counts and compression
        use (``model.input_shape``). Required for a Keras model whose input leaves height and width
        free; for others it replaces the size stored in the file. Calls accept every size all
        layers fit either way.
    max_tensor_bytes, max_file_bytes : int
        Caps on the declared size of one tensor and of all tensors in the file.
    allow_nonfinite : bool
        Accept NaN/Inf weights and magnitudes above 1e30 (refused by default).
    isolate : bool
        Parse the file in a child process, with a wall-clock ``timeout`` (seconds) and an address-space
        limit ``max_memory`` (bytes the child may add; default ``2 * max_file_bytes + 2 GiB``): a hang,
        crash or memory blow-up inside HDF5 on a hostile file becomes a ModelFileError. Recommended for
        Keras files from untrusted sources (see docs/sources.md); costs an interpreter start-up.
    external_data : bool
        ONNX only: read tensors kept in external data files (refused by default); then only regular,
        singly linked files inside the model's folder are read, within their length.

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
        return load_isolated(path, architecture=architecture, input_shape=input_shape, timeout=timeout,
                             max_memory=max_memory, max_tensor_bytes=max_tensor_bytes,
                             max_file_bytes=max_file_bytes, allow_nonfinite=allow_nonfinite,
                             external_data=external_data)
    if input_shape is not None:
        input_shape = _check_shape(input_shape)
    from .onnx import is_onnx
    if is_onnx(path):
        from .onnx import load_onnx
        return load_onnx(path, input_shape=input_shape, max_tensor_bytes=max_tensor_bytes,
                         max_file_bytes=max_file_bytes, allow_nonfinite=allow_nonfinite, external_data=external_data)
    with SafeFile(path, max_tensor_bytes=max_tensor_bytes, max_file_bytes=max_file_bytes,
                  allow_nonfinite=allow_nonfinite) as f:
        from . import native
        if native.is_native(f):
            return _sized(native.load_native(f), input_shape)
        root = f.file
        if "model_weights" in root or "layers" in root and "vars" in root:
            from . import keras
            return keras.load_keras(f, architecture=architecture, input_shape=input_shape)
        if "architecture" in root.attrs or architecture is not None:
            from . import torch
            return _sized(torch.load_torch(f, architecture=architecture), input_shape)
        raise UnsupportedModelError(f.path, None, "unrecognised model file: not nncomp native, not Keras, and "
                                    "no nncomp-arch architecture (pass architecture= for a bare state dict)")


def _check_shape(shape):
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__") or not all(
            is_integer(d) and d >= 1 for d in shape):
        raise NncompError(f"load() got input_shape={shape!r}; pass a tuple of positive ints in the model's "
                          "layout, e.g. (3, 224, 224) for a PyTorch image model")
    return tuple(int(d) for d in shape)


def _sized(model, input_shape):
    """``model`` with ``input_shape`` as its nominal per-sample size (checked against every layer)."""
    if input_shape is None or input_shape == model.input_shape:
        return model
    try:
        return model.with_nodes(model.nodes, input_shape=input_shape)
    except NncompError as e:
        raise NncompError(f"load() got input_shape={input_shape}, which this model cannot take: {e}") from None
