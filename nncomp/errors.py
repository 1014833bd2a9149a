"""The one family of nncomp errors.

Every error nncomp raises on purpose derives from :class:`NncompError` (a ``ValueError``), and its
message says what was expected, what came, and how to fix it.
"""

__all__ = [
    "NncompError",
    "ModelFileError",
    "UnsafeModelFileError",
    "CorruptModelFileError",
    "UnsupportedModelError",
    "InputError",
    "CompressionParameterError",
]


class NncompError(ValueError):
    """Base class of every error nncomp raises on purpose."""


class ModelFileError(NncompError):
    """A model file cannot be read: names the file, the object inside it, and why.

    Attributes
    ----------
    path : str or None
        The file on disk.
    obj : str or None
        The HDF5 path of the offending object inside the file (``None`` for the file itself).
    reason : str
        What is wrong, and where possible how to fix it.
    """

    def __init__(self, path, obj, reason):
        self.path = None if path is None else str(path)
        self.obj = obj
        self.reason = reason
        where = self.path or "<model>"
        if obj:
            where += f":{obj}"
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):
        return (type(self), (self.path, self.obj, self.reason))


class UnsafeModelFileError(ModelFileError):
    """The file asks for something nncomp refuses by policy (links, external storage, plugins)."""


class CorruptModelFileError(ModelFileError):
    """The file is damaged: truncated, bit-flipped, checksum mismatch, inconsistent contents."""


class UnsupportedModelError(ModelFileError):
    """A valid file whose content nncomp does not support (a layer class, a format version)."""


class InputError(NncompError, TypeError):
    """An argument to a model or a kernel wrapper has the wrong shape, dtype or value."""


class CompressionParameterError(NncompError):
    """A compression method got a parameter outside its range."""
