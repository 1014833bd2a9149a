"""The Matrix protocol shared by every weight format."""
import numpy as np

from ..errors import CorruptModelFileError, InputError

FORMATS = {}


def register_format(cls):
    """Class decorator: make a Matrix format known to the native file reader by ``cls.format``."""
    if cls.format in FORMATS and FORMATS[cls.format] is not cls:
        raise RuntimeError(f"matrix format {cls.format!r} registered twice")
    FORMATS[cls.format] = cls
    return cls


class Matrix:
    """A weight matrix ``(n_out, n_in)`` in one storage format.

    Subclasses are frozen dataclasses defining ``format`` (a short name), ``shape``,
    ``_apply(x)`` (``x`` already validated: float32, C-contiguous, ``(n_samples, n_in)``),
    ``to_dense()``, ``nbytes``, ``to_arrays()`` and ``from_arrays()``.
    """

    format = "abstract"
    # whether prepare()'s product may call BLAS (the model then runs it with OpenBLAS at one thread)
    uses_blas = False

    @property
    def n_out(self):
        return self.shape[0]

    @property
    def n_in(self):
        return self.shape[1]

    @property
    def macs_per_row(self):
        """Multiply-adds per input row (``n_out * n_in`` for dense; fewer for compressed formats)."""
        return self.shape[0] * self.shape[1]

    def apply(self, x):
        """Return ``x @ W.T`` as float32 ``(n_samples, n_out)``.

        Parameters
        ----------
        x : array_like, shape (n_samples, n_in)
            Converted to C-contiguous float32.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.shape[1]:
            raise InputError(
                f"{self.format} matrix {self.shape}: expected input (n_samples, {self.shape[1]}), "
                f"got {x.shape}; reshape the input to 2-D with {self.shape[1]} features")
        if x.shape[0] == 0:
            return np.zeros((0, self.shape[0]), np.float32)
        return self._apply(x)

    def prepare(self, n):
        """The function ``x -> x @ W.T`` for the model's own activations of ``n`` rows (float32,
        shape checked when the model was built), called inside the model's one-OpenBLAS-thread scope
        (``blas.ONE_THREAD``): no input checks, decisions made once. Formats whose kernels decide by
        batch size override it; the default is :meth:`_apply` on a C-contiguous x."""
        return lambda x: self._apply(np.ascontiguousarray(x))

    def single_sample_kernel(self):
        """``(arrays, kernels, work)`` of the compiled one-sample product of this format that adds
        the bias and applies an epilogue in the same call (nncomp/kernels/sparse_small.py), called as
        ``kernel(*arrays, x, perm, bias, scale, shift, res, lo, hi, act, alpha, beta, out)``;
        ``kernels`` is its (serial, parallel) pair and ``work`` what picks between them. None where
        the format has none (the layer then runs :meth:`prepare`'s product and the bias and epilogue
        kernel)."""
        return None

    def decoder(self):
        """``(kernels, args)``: the compiled decoder (nncomp/kernels/decode.py) that writes this
        matrix transposed, ``to_dense().T`` zero-padded to ``cop`` columns, into a ``(n_in, cop)``
        float32 buffer as ``kernel(*args, out)``; ``kernels`` is its (serial, parallel) pair. The
        blocked convolution decodes a compressed weight this way call by call. None where the
        format's product is not a float32 product with ``to_dense()`` (int8 activations)."""
        return None

    def to_arrays(self):
        """``(arrays, attrs)``: the numeric arrays and the small JSON-able attributes to store."""
        raise NotImplementedError

    @classmethod
    def from_arrays(cls, arrays, attrs, *, path=None, obj=None):
        """Rebuild from :meth:`to_arrays` output, validating everything a kernel will trust."""
        raise NotImplementedError

    def describe(self):
        """A short description for the model summary."""
        return self.format

    @property
    def batch_dependent(self):
        """Whether a sample's result depends on the other samples of its batch (int8 activations
        quantized with a range taken from each call's input): such a product is never split."""
        return getattr(self, "activations", None) == "dynamic"

    def __repr__(self):
        return f"{type(self).__name__}(shape={self.shape}, nbytes={self.nbytes})"


def expect(cond, path, obj, reason):
    """Raise CorruptModelFileError(path, obj, reason) unless ``cond``: checks on stored arrays."""
    if not cond:
        raise CorruptModelFileError(path, obj, reason)
