"""The epilogue a producing layer applies in place to its fresh output: batch norm's per-channel
affine map, a residual add, a clip (ReLU, ReLU6, Clip), in that order, in one pass over the values;
then, in a second kernel, one activation function (sigmoid, hard sigmoid, hard swish, leaky ReLU,
SiLU ``x * sigmoid(x)``, GELU ``x (1 + erf(x / sqrt(2))) / 2``).

The same float32 operations as the layers run one by one (``y * scale + shift``, ``+ res``,
``np.maximum(y, lo)``, ``np.minimum(y, hi)``; no fused multiply-add), so results are bit-identical
to them; NaN passes through the clip and -0.0 becomes +0.0 at a clip to 0, as in NumPy.
"""
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from ._ir import declare, fma32, loop_latch, loop_phis
from ._jit import both, jit
from .erf import gelu_values
from .isa import VECTOR_REGISTERS

# Activation codes of activation_rows.
ACT_NONE, ACT_SIGMOID, ACT_HARDSIGMOID, ACT_HARDSWISH, ACT_LEAKYRELU, ACT_SILU, ACT_GELU = 0, 1, 2, 3, 4, 5, 6


# Rows of fewer channels than this run as flat runs of several rows (at least RUN_VALUES values, the
# affine map's vectors repeated along a run): LLVM vectorizes a loop over c values by 16 lanes times
# an unroll that 16 or 24 channels cannot fill, so such rows ran scalar (Xeon, one thread, 803 k
# values with a clip at 16 channels: 237 -> 124 us; 24 channels 216 -> 127; from 32 on the rows were
# as fast as runs).
RUN_BELOW_CHANNELS = 32
RUN_VALUES = 128


@jit(inline="always")
def clip_value(v, lo, hi):
    """NumPy's ``minimum(maximum(v, lo), hi)``: the first operand only if it wins strictly or is NaN
    (so max(-0.0, 0.0) is +0.0, as np.maximum gives)."""
    if not (v > lo or v != v):
        v = lo
    if not (v < hi or v != v):
        v = hi
    return v


def _epilogue(y, scale, shift, res, lo, hi):
    """``y = clip((y * scale + shift) + res, lo, hi)`` in place, each part optional.

    IN  y (m, c) float32 C-contiguous; scale, shift (c,) float32, or (0,) for no affine map;
        res (m, c) float32 C-contiguous, or (0, c) for no residual; lo, hi float (-inf, inf: none).
    OUT y, overwritten.
    """
    m, c = y.shape
    affine = scale.shape[0] > 0
    add = res.shape[0] > 0
    # The affine and residual steps are written out in both loops: as an inlined helper taking the
    # arrays and an index they ran 8-80x slower (LLVM vectorized neither loop); the clip, on scalars, is shared.
    if c < RUN_BELOW_CHANNELS:      # flat runs of whole rows (above), the same operations per value
        rows = max(1, -(-RUN_VALUES // c))
        run = rows * c
        sc = np.empty(run if affine else 0, np.float32)
        sh = np.empty(run if affine else 0, np.float32)
        for r in range(rows if affine else 0):
            sc[r * c:(r + 1) * c] = scale
            sh[r * c:(r + 1) * c] = shift
        flat = y.reshape(m * c)
        rflat = res.reshape(res.shape[0] * c)
        for t in prange((m + rows - 1) // rows):
            base = t * run
            n = min(run, m * c - base)
            seg = flat[base:base + n]
            rs = rflat[base:base + n] if add else rflat[0:0]
            for k in range(n):
                v = seg[k]
                if affine:
                    v = v * sc[k]
                    v = v + sh[k]
                if add:
                    v = v + rs[k]
                seg[k] = clip_value(v, lo, hi)
        return
    for i in prange(m):
        row = y[i]
        for k in range(c):
            v = row[k]
            if affine:
                v = v * scale[k]
                v = v + shift[k]
            if add:
                v = v + res[i, k]
            row[k] = clip_value(v, lo, hi)


epilogue_rows, epilogue_rows_parallel = both(_epilogue)


# The logistic function as ONNX Runtime's MLAS computes it: an odd rational function of the input
# clamped to [-18, 18], within 2.3e-7 of 1 / (1 + exp(-x)) everywhere; vectorizable, where libm's
# expf per value ran 25x slower than the other activations here.
_F = np.float32
SIGMOID_P = (_F(4.37031012579801e-11), _F(1.15627324459942e-07), _F(6.08574864600143e-05),
             _F(8.51377133304701e-03), _F(2.48287947061529e-01))
SIGMOID_Q = (_F(6.10247389755681e-13), _F(5.76102136993427e-09), _F(6.29106785017040e-06),
             _F(1.70198817374094e-03), _F(1.16817656904453e-01), _F(9.93151921023180e-01))


@jit(error_model="numpy")
def _logistic(v):
    """``1 / (1 + exp(-v))`` for a float32 (NaN passes)."""
    if v < _F(-18.0):
        v = _F(-18.0)
    if v > _F(18.0):
        v = _F(18.0)
    s = v * v
    p = fma32(fma32(fma32(fma32(SIGMOID_P[0], s, SIGMOID_P[1]), s, SIGMOID_P[2]), s, SIGMOID_P[3]), s, SIGMOID_P[4])
    q = fma32(fma32(fma32(fma32(fma32(SIGMOID_Q[0], s, SIGMOID_Q[1]), s, SIGMOID_Q[2]), s, SIGMOID_Q[3]), s,
                    SIGMOID_Q[4]), s, SIGMOID_Q[5])
    r = p * v / q + _F(0.5)
    if r < _F(0.0):
        r = _F(0.0)
    if r > _F(1.0):
        r = _F(1.0)
    return r


def _vectors16(builder, intp, ydata, off, n, name, body):
    """Emit a loop over ``n`` vectors of 16 floats at ``ydata + off``: each replaced by ``body(v)``."""
    vf = ir.VectorType(ir.FloatType(), 16)
    pre = builder.block
    loop = builder.append_basic_block(f"{name}_loop")
    done = builder.append_basic_block(f"{name}_done")
    builder.cbranch(builder.icmp_signed(">", n, intp(0)), loop, done)
    builder.position_at_end(loop)
    i, _ = loop_phis(builder, intp, vf, [], pre)
    ptr = builder.bitcast(builder.gep(ydata, [builder.add(off, builder.mul(i, intp(16)))]), vf.as_pointer())
    builder.store(body(builder.load(ptr, align=4)), ptr, align=4)
    loop_latch(builder, intp, i, [], [], n, loop, done)
    builder.position_at_end(done)


def logistic_ir(builder, v):
    """LLVM IR of :func:`_logistic` on float vector ``v``: the same float32 operations lane by lane
    (clamps that keep NaN, the polynomials' steps as fused multiply-adds, ``llvm.fma`` in both, one
    division), so the same bits; LLVM vectorizes this where the scalar loop over :func:`_logistic`
    stayed scalar (4.4 ns a value on an AMD EPYC Zen 3: a 640 x 640 probability map took 1.8 ms).
    The fused steps against separate multiplies and adds: SiLU over 205k values 66-76 -> 48-51 us
    on one thread, 71-81 -> 35-37 on two (Intel Xeon); within 1.7e-7 of the logistic function."""
    const = lambda x: ir.Constant(v.type, [float(x)] * v.type.count)  # noqa: E731
    lo, hi, zero, one = const(-18.0), const(18.0), const(0.0), const(1.0)
    v = builder.select(builder.fcmp_ordered("<", v, lo), lo, v)
    v = builder.select(builder.fcmp_ordered(">", v, hi), hi, v)
    s = builder.fmul(v, v)

    fma = declare(builder.module, f"llvm.fma.v{v.type.count}f32", ir.FunctionType(v.type, [v.type] * 3))

    def poly(coefs):
        acc = const(coefs[0])
        for c in coefs[1:]:
            acc = builder.call(fma, [acc, s, const(c)])
        return acc
    r = builder.fadd(builder.fdiv(builder.fmul(poly(SIGMOID_P), v), poly(SIGMOID_Q)), const(0.5))
    r = builder.select(builder.fcmp_ordered("<", r, zero), zero, r)
    return builder.select(builder.fcmp_ordered(">", r, one), one, r)


@intrinsic
def _sigmoid16(typingctx, y, off, nvec, silu):
    """``nvec`` vectors of 16 values of flat ``y`` from ``off``, in place: :func:`logistic_ir`, times
    the value where ``silu`` (SiLU: ``v * sigmoid(v)``, one float32 multiply)."""
    sig = types.void(y, off, nvec, silu)

    def codegen(context, builder, signature, args):
        ydata = context.make_array(signature.args[0])(context, builder, args[0]).data
        intp = context.get_value_type(types.intp)
        off_, n_, silu_ = (context.cast(builder, args[k], signature.args[k], types.intp) for k in (1, 2, 3))
        times = builder.icmp_signed("!=", silu_, intp(0))

        def body(v):
            r = logistic_ir(builder, v)
            return builder.select(times, builder.fmul(v, r), r)
        _vectors16(builder, intp, ydata, off_, n_, "sigmoid16", body)
        return context.get_dummy_value()

    return sig, codegen


def hard_ir(builder, v, va, vb):
    """LLVM IR of ``clip(v * a + b, 0, 1)`` on float vector ``v`` (``va``, ``vb`` splats): a multiply,
    then an add (no fused multiply-add), the clip's NumPy rules (NaN passes). Hard sigmoid is this,
    hard swish ``v`` times it. The one copy of these operations for :func:`_act16` and the register
    tiles' epilogue (nncomp/kernels/conv_tiles.py), so both give the same bits."""
    zero, one = ir.Constant(v.type, None), ir.Constant(v.type, [1.0] * v.type.count)
    t = builder.fadd(builder.fmul(v, va), vb)
    t = builder.select(builder.fcmp_unordered(">", t, zero), t, zero)      # not (t > 0 or NaN): 0
    return builder.select(builder.fcmp_unordered("<", t, one), t, one)     # not (t < 1 or NaN): 1


def leaky_ir(builder, v, va):
    """LLVM IR of leaky ReLU on float vector ``v``: ``v`` where ``v >= 0`` or NaN, else ``v * a``."""
    zero = ir.Constant(v.type, None)
    return builder.select(builder.fcmp_unordered(">=", v, zero), v, builder.fmul(v, va))


@intrinsic
def _act16(typingctx, y, off, nvec, act, alpha, beta):
    """``nvec`` vectors of 16 values of flat ``y`` from ``off``, in place: hard sigmoid
    ``clip(alpha*v + beta, 0, 1)``, hard swish ``v * clip(v/6 + 1/2, 0, 1)`` (``alpha``, ``beta``
    given as 1/6, 1/2) or leaky ReLU (``alpha * v`` below 0), the float32 operations of the scalar
    loop of :func:`_activation` lane by lane (a multiply, then an add: no fused multiply-add; the
    clip's NumPy rules, NaN passing), so the bits are the same. Numba's own loop over rows of 16
    channels stayed scalar (0.23 ns a value on an AVX-512 Xeon; this: 16 values a vector)."""
    sig = types.void(y, off, nvec, act, alpha, beta)

    def codegen(context, builder, signature, args):
        ydata = context.make_array(signature.args[0])(context, builder, args[0]).data
        intp = context.get_value_type(types.intp)
        off_, n_, act_ = (context.cast(builder, args[k], signature.args[k], types.intp) for k in (1, 2, 3))
        a_, b_ = (context.cast(builder, args[k], signature.args[k], types.float32) for k in (4, 5))
        vf = ir.VectorType(ir.FloatType(), 16)
        undef = ir.Constant(vf, ir.Undefined)
        mask = ir.Constant(ir.VectorType(ir.IntType(32), 16), [0] * 16)

        def splat(v):
            return builder.shuffle_vector(builder.insert_element(undef, v, ir.IntType(32)(0)), undef, mask)
        va, vb = splat(a_), splat(b_)
        leaky = builder.icmp_signed("==", act_, intp(ACT_LEAKYRELU))
        swish = builder.icmp_signed("==", act_, intp(ACT_HARDSWISH))
        def body(v):
            t = hard_ir(builder, v, va, vb)
            return builder.select(leaky, leaky_ir(builder, v, va), builder.select(swish, builder.fmul(v, t), t))
        _vectors16(builder, intp, ydata, off_, n_, "act16", body)
        return context.get_dummy_value()

    return sig, codegen


# The dense register tiles (nncomp/kernels/conv_tiles.py) apply hard sigmoid, hard swish and leaky
# ReLU as they store where the CPU has 16 vector registers: one thread, AMD EPYC Zen 3, same-process
# A/B against the pass per line, hard swish after 1x1 layers of MobileNetV3-Small 0.94-0.96x the
# time, the 3-channel stem 0.93x (two threads 0.88-0.97x). With AVX-512's 40 tile widths the
# activation code cost 2 s (serial) and 9 s (parallel build) more compile time a kernel; its speed
# there is unmeasured, so those builds keep the pass.
IN_TILES = VECTOR_REGISTERS < 32


@jit(inline="always")
def tile_activation(act, alpha, beta, dw=1):
    """``(act, alpha, beta)`` for the dense register tiles' epilogue, which apply hard sigmoid, hard
    swish and leaky ReLU with :func:`_act16`'s operations as they store an output (no pass of its
    own over the stored lines) where :data:`IN_TILES`; ``(0, 0, 0)`` for sigmoid, for dilated rows
    (``dw`` > 1: several tile calls per output) and elsewhere, which keep the activation kernel."""
    if IN_TILES and ACT_HARDSIGMOID <= act <= ACT_LEAKYRELU and dw == 1:
        a, b = _act_params(act, alpha, beta)
        return act, a, b
    return 0, np.float32(0.0), np.float32(0.0)


@jit(inline="always")
def _act_params(act, alpha, beta):
    """The ``(alpha, beta)`` the vector code runs ``act`` with: hard swish its fixed 1/6 and 1/2."""
    if act == ACT_HARDSWISH:
        return np.float32(1.0 / 6.0), np.float32(0.5)
    return np.float32(alpha), np.float32(beta)


# Values per parallel task of the activation kernel (64 KiB: in L2, several tasks per thread).
ACT_CHUNK = 16384


def _activation(y, act, alpha, beta):
    """``y = act(y)`` in place: sigmoid (ONNX Runtime's rational approximation, below), SiLU ``y *
    sigmoid(y)``, GELU (nncomp/kernels/erf.py), hard sigmoid ``clip(alpha*y + beta,
    0, 1)``, hard swish ``y * clip(y/6 + 1/2, 0, 1)`` or leaky ReLU (``alpha * y`` below 0), in
    float32 with the clip's NumPy semantics (NaN passes).

    A kernel of its own, not a fifth part of ``epilogue_rows``: that loop with an activation branch
    in it ran 1.6x slower without any activation (LLVM vectorized it less). The activation layers
    run this kernel on a copy of their input, so fused and unfused results agree bit for bit. The
    values are one flat run (16 a vector in :func:`_act16`, sigmoid in :func:`_sigmoid16`), in tasks
    of ACT_CHUNK.
    IN  y (m, c) float32 C-contiguous; act one of the ACT_* codes; alpha, beta float32.
    OUT y, overwritten.
    """
    flat = y.reshape(y.size)
    total = flat.shape[0]
    zero, one = np.float32(0.0), np.float32(1.0)
    a, b = _act_params(act, alpha, beta)
    for t in prange((total + ACT_CHUNK - 1) // ACT_CHUNK):
        lo = t * ACT_CHUNK
        hi = min(total, lo + ACT_CHUNK)
        nv = (hi - lo) // 16
        if act == ACT_GELU:         # over a slice: a loop from 0, which LLVM vectorizes (not one from lo)
            seg = flat[lo:hi]
            gelu_values(seg)
            continue
        if act == ACT_SIGMOID or act == ACT_SILU:
            _sigmoid16(flat, lo, nv, act == ACT_SILU)
            for k in range(lo + 16 * nv, hi):
                flat[k] = _logistic(flat[k]) * flat[k] if act == ACT_SILU else _logistic(flat[k])
            continue
        _act16(flat, lo, nv, act, a, b)
        for k in range(lo + 16 * nv, hi):
            v = flat[k]
            if act == ACT_LEAKYRELU:
                flat[k] = v if v >= zero or v != v else v * a
                continue
            u = v * a + b
            if not (u > zero or u != u):
                u = zero
            if not (u < one or u != u):
                u = one
            flat[k] = v * u if act == ACT_HARDSWISH else u


activation_rows, activation_rows_parallel = both(_activation, error_model="numpy")


# Op codes of chain_rows.
CHAIN_AFFINE, CHAIN_ADD, CHAIN_CLIP, CHAIN_ACT = 0, 1, 2, 3
CHAIN_BLOCK = 32            # rows a chain applies all its ops to before the next rows (in L1)


def _chain(y, kinds, params, vecs, res):
    """Epilogue ops in any order, each as :func:`_epilogue` or :func:`_activation` computes it
    (so bit-identical to them run one by one), all of them on a block of CHAIN_BLOCK rows before
    the next block: one pass over ``y`` where the one-by-one ops made one each (an activation
    followed by an affine map, as ONNX exports of PP-LCNet's learnable affine blocks have).

    IN  y (m, c) float32 C-contiguous; kinds (k,) int64 CHAIN_* codes; params (k, 3) float32: a
        clip's (lo, hi), an activation's (ACT_* code, alpha, beta); vecs (k, 2, c) float32: an
        affine map's (scale, shift); res (m, c) float32 C-contiguous for a CHAIN_ADD (else (0, c)).
    OUT y, overwritten.
    """
    m, c = y.shape
    none = np.zeros(0, np.float32)
    no_res = np.zeros((0, c), np.float32)
    inf = np.float32(np.inf)
    for blk in prange((m + CHAIN_BLOCK - 1) // CHAIN_BLOCK):
        a = blk * CHAIN_BLOCK
        b = min(m, a + CHAIN_BLOCK)
        rows = y[a:b]
        for j in range(kinds.shape[0]):
            kind = kinds[j]
            if kind == CHAIN_AFFINE:
                epilogue_rows(rows, vecs[j, 0], vecs[j, 1], no_res, -inf, inf)
            elif kind == CHAIN_ADD:
                epilogue_rows(rows, none, none, res[a:b], -inf, inf)
            elif kind == CHAIN_CLIP:
                epilogue_rows(rows, none, none, no_res, params[j, 0], params[j, 1])
            else:
                activation_rows(rows, int(params[j, 0]), params[j, 1], params[j, 2])


chain_rows, chain_rows_parallel = both(_chain, error_model="numpy")
