"""Dense (fully connected) layers: ``y = x @ W.T + b`` with the weight in any Matrix format."""
import math
from dataclasses import dataclass, field

import numpy as np

from .. import tuning
from ..errors import NncompError
from ..kernels import _jit, aligned, blas, dense_few, dense_stream
from ..kernels.sparse_small import bias_epilogue_rows, bias_epilogue_rows_parallel
from ..matrices import DenseMatrix, Matrix, as_matrix
from ..matrices.int8 import Int8Matrix
from .base import Layer, register, set_fields, tensor_field, vector
from .conv import Conv2D
from .conv_blocked import blocked_eligible, blocked_step
from .conv_int8 import int8_step
from .fused import absorb_epilogue
from .gemv import NO_EPILOGUE, NO_PERM, epilogue_vectors, single_sample_step
from .workspace import scratch

# A single sample runs its weight format's compiled mat-vec with the bias and the epilogue inside
# (Matrix.single_sample_kernel: float32 dense, CSR, CSR + codebook), serial or parallel as the
# format's work says (nncomp/matrices/dense.py for the dense one).
# Batches of 2 .. BLOCKED_MAX_BATCH samples run as a 1x1 convolution over the samples laid out as
# an image, with the blocked kernel and its epilogue (nncomp/kernels/conv_blocked.py), for weights
# up to its size limit. Against OpenBLAS through NumPy at one thread (Zen 4): LeNet-300's 300x784
# at 8 samples 45 against 94 us, at 64 289 against 351; 128x576 at 64: 93 against 121; a 10-output
# layer's kernel 4.1 against 2.9, but as a step (bias, a transposed copy, the BLAS guard) 3 against
# 5-10 us.
BLOCKED_MAX_BATCH = 256
# Larger float32 dense weights (VGG-16's fc6 and fc7) at 2 .. STREAM_MAX_BATCH samples may read the
# weight once, in its own layout, with the samples as the vectors (nncomp/kernels/dense_stream.py).
# Against OpenBLAS split over the threads (Xeon with AMX, 2 threads, alternating, development
# runs): fc6 at 2-128 samples 0.44-0.78x its time (32: 26 against 50 ms; ONNX Runtime 32), fc7
# 0.49-0.93x, 1000x4096 0.41-0.87x; at 256 samples 1.7-2x slower (each 64 samples read the
# weight again). Which one runs is measured per CPU and shape (nncomp/tuning.py); without probes,
# the streaming product up to STREAM_DEFAULT_BATCH samples.
STREAM_MAX_BATCH = 256
STREAM_DEFAULT_BATCH = 128
# ... and at 2 .. dense_few.MAX_BATCH samples also as several mat-vecs sharing each weight load
# (nncomp/kernels/dense_few.py), the rule without probes up to FEW_DEFAULT_BATCH (one pass over the
# weight). Xeon with AMX, 2 threads, in a loop: fc7 at 2-4 samples 1.18-1.22 ms against 2.34-2.42
# for the streaming product (ONNX Runtime 1.34-1.41), at 5 and 8 1.66 and 2.05 against 2.45 and
# 2.48; fc6 at 2-4 12.7-12.9 against 14.3-15.4, at 5 and 8 16.0 and 18.7 against 15.4 and 14.3.
FEW_DEFAULT_BATCH = 4
# ... and through OpenBLAS with the weight stored transposed, (n_in, n_out), a copy made once for the
# layer when measured faster ("kn", nncomp/kernels/blas.py blas_gemm_kn): the product then comes in
# the samples' row order, where OpenBLAS's product with the weight as stored comes as the transposed
# view of ``W @ x.T`` (its fastest order below blas.SMALL_BATCH samples), which the next step copies
# (nearly every step reads its input C-contiguous; the "blas" candidate is timed with that copy).
# PP-OCRv6's recognizer head, 120 -> 18,710 classes over 40 positions (Xeon with AMX, 2 threads):
# 0.84 ms against 0.88 for the transposed product and 0.69-0.82 more for the copy the softmax made.
# A codebook weight without a compiled product for every batch (over 32 values; over 16 without
# AVX-512: CodebookMatrix.batch_kernel) runs the same blocked step at every batch it serves, decoded into a
# work buffer on every call (Matrix.decoder): LeNet-300 8-bit at batch 4-64 (Zen 4, 2 threads, one
# process, development runs) 0.09-0.26x -> 0.30-0.72x the dense model's speed. The register kernels
# (4-5 bits) keep their own product: decoded they were slower below 32 samples (5-bit 0.51-0.66x ->
# 0.21-0.31x), and the choice may not depend on the batch size, which the run mode splits: a sample's
# result would change with it. So does AVX2's 4-bit product (nncomp/kernels/codebook_avx2.py; Zen 3,
# one process, in the dense model's speed: LeNet-300 4-bit at 8 samples 0.57x decoded -> 0.89x, at
# 64 samples 0.75x -> 0.72x; batch 1 ran it already). Other formats keep their kernels (CSR computes
# fewer multiply-adds: decoded it fell from 1.15x to 0.59x).
# samples per image line at most (a line's pixels are the tiles; lines are the parallel work items;
# a batch that the lines do not divide is padded with zero samples, unless up to twice as many lines
# divide it: :func:`_lines`)
LINE_MAX = 16
LINE_MIN = 4
# Static-int8 weights up to this size run as a 1x1 convolution of the implicit-GEMM int8 kernel
# (every line of samples reads the whole weight, so it must stay in L2); larger ones keep the
# int8 matrix product, which splits the weight's rows over the threads (and runs AMX tiles).
INT8_IMAGE_MAX_BYTES = 1 << 20
_NONE = np.zeros(0, np.float32)


@register
@dataclass(frozen=True, eq=False)
class Dense(Layer):
    """``y = x @ W.T + b`` with W a Matrix ``(n_out, n_in)`` in any format, over the last axis: a
    sample is a vector ``(n_in,)`` or a sequence of them (``(t, n_in)``: a transformer's projections,
    Keras' Dense on sequences, ONNX MatMul with a constant), whose rows run as one batch."""

    weight: Matrix = field(default=None, metadata={"tensor": True, "config": False})
    bias: np.ndarray = tensor_field()
    kind = "dense"

    def __post_init__(self):
        set_fields(self, weight=as_matrix(self.weight))
        set_fields(self, bias=vector(self.bias, self.weight.n_out, "dense bias"))

    def output_shape(self, shape):
        shape = tuple(shape)
        if len(shape) in (0, 3) or shape[-1] != self.weight.n_in:
            raise NncompError(f"dense layer expects ({self.weight.n_in},) features per sample, or a sequence "
                              f"of them (..., {self.weight.n_in}) (not an image (h, w, c): a 1x1 Conv2D maps "
                              f"its channels), got {shape}")
        return shape[:-1] + (self.weight.n_out,)

    def macs(self, shape):
        return self.weight.macs_per_row * math.prod(shape[:-1])

    def prepare(self, n, shape):
        if len(shape) > 1:
            return self._over_rows(lambda rows: self.prepare(rows, shape[-1:]), n, shape)
        small = (self._single_sample(n, NO_EPILOGUE) or self._int8(n, None) or self._blocked(n, None)
                 or self._streamed(n, NO_EPILOGUE) or self._product(n, NO_EPILOGUE))
        if small is not None:
            return small
        mul, bias = self.weight.prepare(n), self.bias

        def step(x):
            y = mul(x)
            if bias is not None:
                y += bias
            return y
        step.blas = self.weight.uses_blas
        return step

    def prepare_epilogue(self, n, shape, *, epilogue):
        if len(shape) > 1:
            return self._over_rows(lambda rows: self.prepare_epilogue(rows, shape[-1:], epilogue=epilogue), n, shape)
        return (self._single_sample(n, epilogue) or self._int8(n, epilogue) or self._blocked(n, epilogue)
                or self._streamed(n, epilogue) or self._product(n, epilogue))

    def _over_rows(self, make, n, shape):
        """The step for ``n`` sequences of per-sample ``shape`` (..., n_in): ``make(rows)``, the step
        for their ``rows`` feature vectors, on the batch seen as a matrix (None where it is None)."""
        rows, k, co = n * math.prod(shape[:-1]), shape[-1], self.weight.n_out
        step = make(rows)
        if step is None:
            return None
        out = (n, *shape[:-1], co)

        def seq(x, res=None):
            x = x.reshape(rows, k)
            return (step(x) if res is None else step(x, res.reshape(rows, co))).reshape(out)
        seq.blas = getattr(step, "blas", True)
        return seq

    def _product(self, n, epilogue):
        """A compressed weight's step: its format's product, then the bias and ``epilogue`` in one
        kernel call (nncomp/kernels/sparse_small.py), no Python between them; None for float32
        dense weights (their BLAS product may be a transposed view)."""
        w = self.weight
        if isinstance(w, DenseMatrix):
            return None
        mul, co = w.prepare(n), w.n_out
        bias = _NONE if self.bias is None else self.bias
        scale, shift, lo, hi, code, alpha, beta = epilogue_vectors(epilogue, co)
        if not bias.shape[0] and not scale.shape[0] and lo == -np.inf and hi == np.inf and not code and not epilogue[2]:
            step = lambda x: mul(x)  # noqa: E731
        else:
            fin = _jit.pick((bias_epilogue_rows, bias_epilogue_rows_parallel), n * co)
            no_res = np.zeros((0, co), np.float32)

            def step(x, res=None):
                y = mul(x)
                if not y.flags.c_contiguous:        # a format whose product is a transposed view
                    y = np.ascontiguousarray(y)
                fin(y, bias, scale, shift, no_res if res is None else res.reshape(n, co), lo, hi, code, alpha, beta)
                return y
        step.blas = False           # the sparse, codebook and int8 kernels never call BLAS
        return step

    def _blocked(self, n, epilogue):
        """The step for ``n`` samples as a 1x1 convolution of the blocked kernel (with ``epilogue``
        inside; its residual read as a second input), or None where it does not serve."""
        w = self.weight
        decodes = w.format == "codebook" and not w.batch_kernel
        if not 2 <= n <= BLOCKED_MAX_BATCH or not (isinstance(w, DenseMatrix) or decodes):
            return None
        conv = self._as_conv()
        if not blocked_eligible(conv):
            return None
        rows, q = _lines(n, max(-(-n // LINE_MAX), min(_jit.num_threads(), n // LINE_MIN)))  # a line per thread
        return _image_step(blocked_step(conv, (rows, q, w.n_in), 1, rows, q, epilogue), n, w.n_in, w.n_out, rows, q)

    def _streamed(self, n, epilogue):
        """The step for 2 .. STREAM_MAX_BATCH samples through a float32 dense weight that the
        blocked kernel does not take: the weight-streaming product or (up to dense_few.MAX_BATCH
        samples) the few-sample mat-vecs, with the bias and ``epilogue`` inside, as measured
        (nncomp/kernels/dense_stream.py, dense_few.py), or None."""
        w = self.weight
        if not (isinstance(w, DenseMatrix) and 2 <= n <= STREAM_MAX_BATCH):
            return None
        (co, k), arr = w.shape, w.w
        bias = _NONE if self.bias is None else self.bias
        scale, shift, lo, hi, code, alpha, beta = epilogue_vectors(epilogue, co)
        kern = _jit.pick((dense_stream.stream_gemm, dense_stream.stream_gemm_parallel), n * co * k)
        parts = _jit.num_threads() if kern is dense_stream.stream_gemm_parallel else 1
        kc = dense_stream.block_features(n, k)
        x_shape, out_shape = dense_stream.work_shapes(n, k, co)
        no_res = np.zeros((0, co), np.float32)

        def step(x, res=None):
            out = aligned.empty((n, co))
            kern(arr, np.ascontiguousarray(x.reshape(n, k)), bias, scale, shift,
                 no_res if res is None else res.reshape(n, co), lo, hi, code, alpha, beta, kc, parts,
                 scratch("stream_inputs", x_shape), scratch("stream_outputs", out_shape), out)
            return out
        few = _jit.pick((dense_few.few_gemm, dense_few.few_gemm_parallel), n * co * k)

        def few_step(x, res=None):
            out = aligned.empty((n, co))
            few(arr, np.ascontiguousarray(x.reshape(n, k)), bias, scale, shift,
                no_res if res is None else res.reshape(n, co), lo, hi, code, alpha, beta, out)
            return out
        step.blas = few_step.blas = False
        steps = {"few": few_step, "stream": step} if n <= dense_few.MAX_BATCH else {"stream": step}
        default = ("few" if n <= FEW_DEFAULT_BATCH else "stream") if n <= STREAM_DEFAULT_BATCH else "blas"
        kn_parts = blas.split_parts(n * co * k)
        fin = _jit.pick((bias_epilogue_rows, bias_epilogue_rows_parallel), n * co)

        def kn(wt):
            def kn_step(x, res=None):
                out = aligned.empty((n, co))
                blas.blas_gemm_kn(blas.SGEMM_AT, np.ascontiguousarray(x.reshape(n, k)), wt, out, kn_parts)
                fin(out, bias, scale, shift, no_res if res is None else res.reshape(n, co), lo, hi, code, alpha, beta)
                return out
            return kn_step
        names = (*steps, "blas", "kn") if blas.direct() else (*steps, "blas")

        def make():
            x, mul = np.random.default_rng(0).standard_normal((n, k), dtype=np.float32), w.prepare(n)
            out = {**{name: (lambda s=s: s(x)) for name, s in steps.items()},
                   "blas": lambda: np.ascontiguousarray(mul(x))}
            if blas.direct():
                out["kn"] = lambda s=kn(np.ascontiguousarray(arr.T)): s(x)
            return out
        chosen = tuning.choose("dense-stream", (co, k, n, parts), names, default, make)
        if chosen == "kn":
            return kn(self.memo("weight_kn", lambda: np.ascontiguousarray(arr.T)))
        return steps.get(chosen)

    def _as_conv(self):
        """This layer as a 1x1 Conv2D over samples laid out as an image's pixels (built once)."""
        return self.memo("as_conv", lambda: Conv2D(weight=self.weight, bias=self.bias, in_channels=self.weight.n_in))

    def _int8(self, n, epilogue):
        """The step for ``n`` samples through static-int8 weights as a 1x1 convolution of the
        implicit-GEMM int8 kernel (nncomp/layers/conv_int8.py: the quantization, the VNNI product,
        the bias and ``epilogue`` in one call), or None where that kernel does not serve."""
        w = self.weight
        if not (isinstance(w, Int8Matrix) and w.activations == "static" and w.packed.nbytes <= INT8_IMAGE_MAX_BYTES):
            return None
        conv = self._as_conv()
        rows, q = _lines(n, max(1, min(2 * _jit.num_threads(), n // LINE_MIN)))     # lines for 2 tasks a thread
        run = int8_step(conv, (rows, q, w.n_in), 1, rows, q, epilogue)
        return None if run is None else _image_step(run, n, w.n_in, w.n_out, rows, q)

    def _runs_gemv(self, n):
        return n == 1 and self.weight.single_sample_kernel() is not None

    def _single_sample(self, n, epilogue, perm=None):
        """The compiled mat-vec step of the weight's format (with ``epilogue`` inside, its input
        gathered by ``perm``) for one sample, or None."""
        return single_sample_step(self.weight, self.bias, epilogue, perm) if n == 1 else None

    def fuse(self, successor, n, shape):
        return absorb_epilogue(self, successor, n, (shape,))

    def flattened(self, n, image, order):
        """This layer reading a per-sample ``image`` (h, w, c) that a flatten in ``order`` (``"chw"``
        or ``"hwc"``) fed it, as a plan-only :class:`FlatDense` whose mat-vec gathers the features in
        that order (a copy and a Python step fewer); None unless it runs the one-sample mat-vec."""
        if type(self) is not Dense or not self._runs_gemv(n):
            return None

        def make():
            h, wd, c = image
            perm = NO_PERM
            if order == "chw" and h * wd > 1 and c > 1:     # chw feature f of NHWC feature g
                perm = np.arange(h * wd * c).reshape(h, wd, c).transpose(2, 0, 1).ravel()
            return FlatDense(weight=self.weight, bias=self.bias, image=image, perm=perm)
        return self.memo(("flattened", image, order), make)

    def describe(self):
        return self.weight.describe()


@dataclass(frozen=True, eq=False)
class FlatDense(Dense):
    """A dense layer reading one flattened ``image`` (h, w, c), its features gathered in the
    flatten's order by ``perm`` (plan-only, from :meth:`Dense.flattened`)."""

    image: tuple = None
    perm: np.ndarray = None
    kind = "flatten+dense"

    def output_shape(self, shape):
        if tuple(shape) != self.image:
            raise NncompError(f"flatten+dense expects {self.image} per sample, got {shape}")
        return (self.weight.n_out,)

    def prepare(self, n, shape):
        return self._single_sample(n, NO_EPILOGUE, self.perm)

    def prepare_epilogue(self, n, shape, *, epilogue):
        return self._single_sample(n, epilogue, self.perm)


def _lines(n, rows):
    """``(lines, q)``: ``n`` samples as ``lines`` image lines of ``q``, ``lines`` the first of
    ``rows .. 2 rows`` that divides ``n``, else ``rows`` (the last line then padded with zero
    samples). The padding cost a call 5-8 us: two concatenations (Intel Xeon, 2 threads, 40 samples
    as 3 lines of 14 against 4 of 10, 120 -> 120 to 240 -> 120 outputs: 15-23 against 10-17 us)."""
    for lines in range(rows, min(n, 2 * rows) + 1):
        if n % lines == 0:
            return lines, n // lines
    return rows, -(-n // rows)


def _image_step(run, n, k, co, rows, q):
    """``run`` (a conv step over one (rows, q, k) image) as the step of ``n`` samples (n, k) -> (n, co):
    the samples laid out as the image's pixels, zero rows padding the last line (and the residual)."""
    pad = rows * q - n

    def step(x, res=None):
        if pad:
            x = np.concatenate([x.reshape(n, k), np.zeros((pad, k), np.float32)])
            res = None if res is None else np.concatenate([res.reshape(n, co), np.zeros((pad, co), np.float32)])
        image = x.reshape(1, rows, q, k)
        y = run(image) if res is None else run(image, res.reshape(1, rows, q, co))
        return y.reshape(rows * q, co)[:n] if pad else y.reshape(n, co)
    step.blas = False
    return step
