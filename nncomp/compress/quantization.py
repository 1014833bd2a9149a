"""Linear int8 quantization: symmetric int8 weights, int8/uint8 activations, int32 accumulation.

After Vanhoucke et al. (2011) and the integer-only scheme of Jacob et al. (2018), post-training:
weights get per-output-channel (or per-tensor) symmetric int8 codes; activations are quantized per
tensor, either per call (``activations="dynamic"``) or with ranges calibrated on sample inputs
(``"static"``: min-max, percentile or MSE-optimal clipping); products accumulate exactly in int32
(AVX-512 VNNI ``vpdpbusd`` where the CPU has it). With calibration data the mean output error of each
layer is folded into its bias (empirical bias correction, Nagel et al. 2019). The number format and
its rounding rules are in nncomp/matrices/int8.py.

Pruned layers (CSRMatrix weights, from ``nc.prune``) are quantized too, into
:class:`~nncomp.matrices.csr_int8.CSRInt8Matrix`: the same number format on the stored nonzeros only,
the sparsity pattern kept exactly, so "prune + int8" stores 1 + 2 bytes per nonzero instead of 4 + 2.
"""
import numpy as np

from ..checks import check_choice, check_flag, check_number, check_seed
from ..errors import CompressionParameterError
from ..matrices import DenseMatrix
from ..matrices.csr import CSRMatrix
from ..matrices.csr_int8 import CSRInt8Matrix
from ..matrices.int8 import ACT_DTYPES, Int8Matrix, activation_params
from .calibration import check_calibration, check_model, layerwise, select_layers

METHODS = ("minmax", "percentile", "mse")
# Calibration statistics use at most this many activation values (a seeded subsample).
MAX_VALUES = 1 << 20
# Clipping fractions of the min-max range that the "mse" method tries.
MSE_GRID = np.linspace(0.2, 1.0, 41)


def _check_bits(bits):
    bits = check_number(bits, "bits", integer=True, method="quantize", fix="expected the int 8")
    if bits != 8:
        raise CompressionParameterError(
            f"quantize() got bits={int(bits)}; linear quantization supports bits=8 only "
            "(for 1-8 bit weights use k-means weight sharing: nc.share(model, bits=...))")


def calibrated_range(values, method, act_dtype="uint8", percentile=99.99, seed=0):
    """The activation range ``(lo, hi)`` chosen from calibration ``values`` (any shape).

    ``"minmax"``: the extremes. ``"percentile"``: the ``100 - percentile`` and ``percentile``
    percentiles. ``"mse"``: the clipping ``(t * lo, t * hi)``, ``t`` on a grid in ``[0.2, 1]``, whose
    quantize-dequantize round trip has the least mean squared error on the values.
    Statistics use a seeded subsample of at most ``MAX_VALUES`` values.
    """
    v = np.asarray(values, np.float32).reshape(-1)
    if v.size > MAX_VALUES:
        v = v[np.random.default_rng(seed).choice(v.size, MAX_VALUES, replace=False)]
    lo, hi = float(v.min()), float(v.max())
    if method == "percentile":
        lo, hi = (float(a) for a in np.percentile(v, [100.0 - percentile, percentile]))
    elif method == "mse":
        best = None
        for t in MSE_GRID:
            s, z = activation_params(t * lo, t * hi, act_dtype)
            q = np.clip(np.rint(v / s) + np.float32(z), 0, 255)
            err = float(np.mean(((q - z) * s - v).astype(np.float64) ** 2))
            if best is None or err < best[0]:
                best = (err, t * lo, t * hi)
        lo, hi = best[1], best[2]
    return lo, hi


def quantize(model, *, bits=8, weights_only=False, per_channel=True, activations="dynamic",
             calibration=None, method="minmax", bias_correction=True, layers=None,
             activation_dtype="uint8", percentile=99.99, seed=0):
    """Quantize the weights (and activations) of Dense, Conv2D and ConvTranspose2D layers to int8.

    Dense weights become :class:`~nncomp.matrices.int8.Int8Matrix`; pruned weights stored as
    :class:`~nncomp.matrices.csr.CSRMatrix` become :class:`~nncomp.matrices.csr_int8.CSRInt8Matrix`
    (same sparsity pattern, int8 codes of the nonzeros). Every keyword applies to both formats alike:
    weight-only, dynamic and static activations, uint8/int8 activation codes, per-channel or
    per-tensor scales, calibration and bias correction. Other formats (codebook, low-rank) and
    grouped convolutions are left alone.

    Parameters
    ----------
    model : Model
    bits : int
        Must be 8 (other widths: :func:`nncomp.share`).
    weights_only : bool
        Keep activations float32 (``y = scale * (x @ q.T)``): the memory-bound batch-1 win. Ignores
        ``activations``, ``method`` and ``activation_dtype``.
    per_channel : bool
        One weight scale per output channel (default) or one per layer.
    activations : {"dynamic", "static"}
        Quantize each layer input per call from its own range, or with a range calibrated on
        ``calibration`` (required). Inputs outside a static range saturate.
    calibration : ndarray, optional
        Sample inputs ``(n_samples, *input_shape)`` in the model's layout (a few hundred training
        samples). Needed for static ranges and for bias correction.
    method : {"minmax", "percentile", "mse"}
        How static ranges are chosen (see :func:`calibrated_range`).
    bias_correction : bool
        With calibration data, add ``mean(W x) - mean(Wq xq)`` over the calibration rows to each bias,
        layer by layer on the quantized model's own activations. Skipped without calibration data.
    layers : None, str, list or dict
        Which layers (default: every Dense and ungrouped Conv2D or ConvTranspose2D with dense or CSR
        weights; a ConvTranspose2D's bias, one per output channel, gets no bias correction).
    activation_dtype : {"uint8", "int8"}
        Asymmetric uint8 codes with a zero point (default), or symmetric int8.
    percentile : float
        For ``method="percentile"``: in (50, 100].
    seed : int
        Seeds the subsampling of calibration statistics.

    Returns
    -------
    Model
        A new model whose selected layers hold Int8Matrix (dense) or CSRInt8Matrix (sparse) weights.
    """
    check_model(model, "quantize")
    _check_bits(bits)
    weights_only = check_flag(weights_only, "weights_only", method="quantize")
    per_channel = check_flag(per_channel, "per_channel", method="quantize")
    bias_correction = check_flag(bias_correction, "bias_correction", method="quantize")
    activations = check_choice(activations, "activations", ("dynamic", "static"), method="quantize")
    method = check_choice(method, "method", METHODS, method="quantize")
    act_dtype = check_choice(activation_dtype, "activation_dtype", ACT_DTYPES, method="quantize")
    percentile = check_number(percentile, "percentile", low=50, high=100, low_open=True, method="quantize")
    check_seed(seed, method="quantize")
    mode = "float" if weights_only else activations
    x = check_calibration(calibration, model, "quantize")
    if mode == "static" and x is None:
        raise CompressionParameterError(
            "quantize(activations='static') needs calibration data to fix the activation ranges; pass "
            "calibration=x_train[:512] or use activations='dynamic'")
    accept = lambda layer: (isinstance(layer.weight, (DenseMatrix, CSRMatrix))  # noqa: E731
                            and getattr(layer, "groups", 1) == 1)
    names = select_layers(model, layers, "quantize", accept=accept)

    def make(name, layer, x_rows=None):
        act_range = None
        if mode == "static":
            act_range = calibrated_range(x_rows, method, act_dtype, percentile, seed)
        try:
            if isinstance(layer.weight, CSRMatrix):
                return CSRInt8Matrix.from_csr(layer.weight, per_channel=per_channel, activations=mode,
                                              act_dtype=act_dtype, act_range=act_range)
            return Int8Matrix.from_float(layer.weight.w, per_channel=per_channel, activations=mode,
                                         act_dtype=act_dtype, act_range=act_range)
        except CompressionParameterError as e:
            raise CompressionParameterError(f"quantize(): layer {name!r}: {e}") from None

    if x is None or (mode != "static" and not bias_correction):
        return model.replace_layers({n: model[n].layer.replace(weight=make(n, model[n].layer)) for n in names})

    def refit(name, layer, x_rows, y_rows):
        weight = make(name, layer, x_rows)
        bias = layer.bias
        if bias_correction:
            delta = (y_rows.astype(np.float64) - weight.apply(x_rows)).mean(axis=0)
            bias = (delta if bias is None else bias + delta).astype(np.float32)
        return layer.replace(weight=weight, bias=bias)

    return layerwise(model, x, names, refit, seed=seed)
