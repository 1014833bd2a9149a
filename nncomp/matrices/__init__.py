"""Weight storage formats.

Every weighted layer holds its weight as a Matrix of shape ``(n_out, n_in)`` in one format; a conv
weight ``(c_out, c_in/groups, kh, kw)`` is the matrix ``(c_out, kh*kw*c_in/groups)`` applied to
image patches laid out ``(kh, kw, c)``. Each format satisfies ``apply(x) ~= x @ to_dense().T`` and
reports in ``nbytes`` what it really holds. Formats register themselves by name so that the native
file format can store and restore any of them.
"""
from .base import FORMATS, Matrix, register_format
from .dense import DenseMatrix

__all__ = ["FORMATS", "Matrix", "register_format", "DenseMatrix", "as_matrix"]


def as_matrix(w):
    """A Matrix as it is, or a 2-D float array wrapped as a DenseMatrix."""
    return w if isinstance(w, Matrix) else DenseMatrix(w)
