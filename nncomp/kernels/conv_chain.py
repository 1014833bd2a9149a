"""A run of convolution steps as one compiled call (nncomp/layers/conv_chain.py builds it).

The steps of a run are rows of an integer and a float parameter table; :func:`run_chain` walks
them in order, padding each input, calling the blocked, depthwise or Winograd kernels (plain with
their in-kernel epilogue, or pooled then the epilogue and activation kernels on the pooled output),
the static-int8 implicit GEMM (nncomp/kernels/int8_conv.py, which quantizes its input itself),
and the two steps a squeeze-and-excitation block adds between them (a global mean over the pixels,
and a per-sample channel vector applied to a map), keeping every output for the steps after it.
One Python call per run instead of one per step, and no Python between the kernels: the steps'
Python cost ~5 us each at batch 1.

Each step computes exactly what its own prepared step computes: the same kernels with the same
arguments (the serial or parallel build as that step picked it), so the results are identical.
"""
import numba
import numpy as np
from numba import types
from numba.extending import intrinsic
from numba.typed import List

from ._jit import jit
from .aligned import ALIGN
from .conv import conv_pad_nhwc, conv_pad_nhwc_parallel
from .conv_blocked import (conv_blocked_nhwc, conv_blocked_nhwc_parallel, conv_blocked_pooled_nhwc,
                           conv_blocked_pooled_nhwc_parallel, per_image_weight)
from .binary import channel_binary_nhwc, channel_binary_nhwc_parallel
from .conv_depthwise import depthwise_blocked_nhwc, depthwise_blocked_nhwc_parallel
from .conv_winograd import SKEW, winograd_nhwc, winograd_nhwc_parallel
from .epilogue import activation_rows, activation_rows_parallel, epilogue_rows, epilogue_rows_parallel
from .int8_conv import int8_conv_nhwc, int8_conv_nhwc_parallel
from .int8_vnni import CODE
from .pool import global_mean_nhwc, global_mean_nhwc_parallel

# Columns of the integer table: the step's parameters, the slots whose last reader the step is
# (DROP0, DROP1, DROP2; 0 for none), an int8 step's activation zero point, padded input (HPAD, WPAD,
# CPAD: its codes' height, width and channels) and output lines per task, then the addresses and sizes
# of its weight (rows x columns) and of its N_VECTORS vectors.
(IN, RES, KH, KW, SH, SW, DH, DW, NVEC, PMAX, T, B, L, R, OH, OW, CO, POOL, AFFINE, ADD, ACT, POST_ACT,
 PARALLEL, PAD_PARALLEL, POST_PARALLEL, THREADS, WINOGRAD, CHUNK, W_ADDR, W_ROWS, W_COLS, UNPADDED, KIND, OP,
 REVERSE, DROP0, DROP1, SCALED, SCALE, DROP2, ZERO, HPAD, WPAD, CPAD, LINES) = range(45)
N_VECTORS = 7
V_ADDR = 45             # N_VECTORS addresses, then N_VECTORS lengths
N_INTS = V_ADDR + 2 * N_VECTORS
# Kinds of step (column KIND): a dense or Winograd convolution (as WINOGRAD says), a depthwise one,
# the mean of each image's pixels ((n, 1, 1, c)), and slot IN's map op slot RES's (n, 1, 1, c)
# channel vector (``vector op map`` with REVERSE; OP a code of kernels.binary.CHANNEL_OPS). A dense
# convolution with SCALED reads its input map times slot SCALE's (n, 1, 1, c) channel vector, as a
# weight per image (conv_blocked.per_image_weight). INT8: the static-int8 implicit GEMM
# (int8_conv_nhwc; its weight the int8 panels (W_ROWS panels, W_COLS = k-groups x 64 codes), its
# epilogue in the kernel, or with POOL >= 2 the pool in the kernel and the POST_ epilogue after it).
CONV, DEPTHWISE, MEAN, CHANNEL, INT8 = range(5)
# Columns of the float table (SX: an int8 step's activation scale).
LO, HI, ALPHA, BETA, POST_LO, POST_HI, POST_ALPHA, POST_BETA, SX = range(9)
N_FLOATS = 9
# Vectors per step in the vector list: bias, scale, shift (padded to the weight's width), the
# pooled output's scale and shift (length co, or 0 for none), and an int8 step's dequantization
# multipliers (float32, co) and zero-point row sums (int32, co); length 0 where unused.

ARRAY4 = types.Array(types.float32, 4, "C")


def _pointer_to(item):
    """An intrinsic: the ``item`` pointer at integer ``address`` (of an array the caller keeps alive)."""
    @intrinsic
    def pointer(typingctx, address):
        sig = types.CPointer(item)(types.int64)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(signature.return_type))
        return sig, codegen
    return pointer


_f32_pointer, _i8_pointer, _i32_pointer = (_pointer_to(t) for t in (types.float32, types.int8, types.int32))


@intrinsic
def cycles(typingctx):
    """The CPU's time-stamp counter (``llvm.readcyclecounter``: ``rdtsc`` on x86; 0 where there is none)."""
    sig = types.int64()

    def codegen(context, builder, signature, args):
        from llvmlite import ir
        fn = builder.module.declare_intrinsic("llvm.readcyclecounter", fnty=ir.FunctionType(ir.IntType(64), []))
        return builder.call(fn, [])
    return sig, codegen


@jit
def _vector(p, k):
    return numba.carray(_f32_pointer(p[V_ADDR + k]), (p[V_ADDR + N_VECTORS + k],))


@jit
def _empty4(n, h, w, c):
    """An uninitialised (n, h, w, c) float32 array whose data starts on an ALIGN-byte boundary: the
    compiled twin of nncomp/kernels/aligned.py's ``empty`` (Numba's own start 32 bytes past one
    half the time)."""
    size = n * h * w * c
    raw = np.empty(size + ALIGN // 4, np.float32)
    start = (ALIGN - raw.ctypes.data % ALIGN) % ALIGN // 4
    return raw[start:start + size].reshape((n, h, w, c))


@jit
def run_chain(x0, x1, ints, floats, status):
    """The output of the last step of a run (with ``status[0]`` 0), or an empty array with
    ``status[0] = i + 1`` when int8 step ``i`` met a NaN or infinite input (the caller raises: its codes
    would be meaningless).

    IN  x0, x1 (n, h, w, c) float32 C-contiguous: the run's inputs (value slots 0 and 1; x1 any
        array when unused); ints (steps, N_INTS) int64, with the addresses of each step's (k, cop)
        float32 weight and N_VECTORS float32 vectors (bias, scale, shift: cop; the pooled
        output's scale and shift: co or 0), which the caller keeps alive; floats (steps, N_FLOATS)
        float32; an int8 step's weight is int8 panels (W_ROWS, W_COLS // 64, 64) and its last vector
        int32; status (steps + 2,) int64: status[1] is set to the time-stamp counter before the first
        step and status[i + 2] after step i (tools/profile_steps.py reads them). Step i reads slot ints[i, IN] (and ints[i, RES] for a residual) and writes slot
        i + 2. (Arrays go by address: a typed List made in Python compiled for 3 s per process.) After
        step i, slots ints[i, DROP0], ints[i, DROP1] and ints[i, DROP2] (from 2; 0: none) are let go: their memory
        goes back to the allocator for the steps after, still in cache, instead of every value of
        the run staying alive to its end (MobileNetV3-Small at batch 8: ~40 MB, L3 overflowed).
    OUT a new (n, oh, ow, co) float32 array.
    """
    values = List.empty_list(ARRAY4)
    values.append(x0)
    values.append(x1)
    gone = np.empty((0, 0, 0, 0), np.float32)
    status[1] = cycles()
    for i in range(ints.shape[0]):
        p = ints[i]
        f = floats[i]
        src = values[p[IN]]
        n, h, wd, c = src.shape
        if p[KIND] == MEAN or p[KIND] == CHANNEL:
            values.append(_squeeze_step(p, src, values[p[RES]]))
            _drop(values, p, gone)
            status[i + 2] = cycles()
            continue
        t, b, l, r = p[T], p[B], p[L], p[R]
        xp = src
        # Winograd, and the blocked kernel where it tiles across images (UNPADDED), read the padding as zeros
        if t + b + l + r > 0 and not p[WINOGRAD] and not p[UNPADDED]:
            xp = _empty4(n, h + t + b, wd + l + r, c)
            if p[PAD_PARALLEL]:
                conv_pad_nhwc_parallel(src, 0, t, l, xp)
            else:
                conv_pad_nhwc(src, 0, t, l, xp)
        w = numba.carray(_f32_pointer(p[W_ADDR]), (p[W_ROWS], p[W_COLS]))
        bias, scale, shift, post, post_shift = (_vector(p, 0), _vector(p, 1), _vector(p, 2), _vector(p, 3),
                                                _vector(p, 4))
        oh, ow, co, pool = p[OH], p[OW], p[CO], p[POOL]
        if p[KIND] == INT8:
            out = _int8_step(p, f, src, values[p[RES]], bias, scale, shift)
            if out.shape[0] == 0:
                status[0] = i + 1
                return out
        elif p[WINOGRAD]:         # F(m x m, r x r) with m = p[WINOGRAD], r = p[KH]: (m + r - 1)**2 positions
            m, span = p[WINOGRAD], (p[WINOGRAD] + p[KH] - 1) ** 2
            cp, cop = p[W_ROWS] // span, p[W_COLS]
            wt = numba.carray(_f32_pointer(p[W_ADDR]), (span, cp, cop))
            tiles = p[CHUNK] * ((ow + m - 1) // m)     # conv_winograd.work_sizes
            us, ms = span * (tiles * cp + SKEW), span * (tiles * cop + SKEW)
            ub = _empty4(p[THREADS], 1, 1, us).reshape((p[THREADS], us))
            mb = _empty4(p[THREADS], 1, 1, ms).reshape((p[THREADS], ms))
            out = _empty4(n, oh // pool, ow // pool, co) if pool else _empty4(n, oh, ow, co)
            res = values[p[RES]] if p[ADD] else out
            if p[PARALLEL]:
                winograd_nhwc_parallel(src, t, b, l, r, wt, bias, scale, shift, p[AFFINE] != 0, res, p[ADD] != 0,
                                       f[LO], f[HI], p[ACT], f[ALPHA], f[BETA], p[NVEC], p[PMAX], p[CHUNK], ub, mb,
                                       pool, out, m)
            else:
                winograd_nhwc(src, t, b, l, r, wt, bias, scale, shift, p[AFFINE] != 0, res, p[ADD] != 0, f[LO], f[HI],
                              p[ACT], f[ALPHA], f[BETA], p[NVEC], p[PMAX], p[CHUNK], ub, mb, pool, out, m)
        elif pool == 0:
            pt, pl = (t, l) if p[UNPADDED] else (0, 0)
            out = _empty4(n, oh, ow, co)
            res = values[p[RES]] if p[ADD] else out
            if p[SCALED]:
                ws = _empty4(n, 1, p[W_ROWS], p[W_COLS]).reshape((n * p[W_ROWS], p[W_COLS]))
                per_image_weight(w, values[p[SCALE]].reshape((n, c)), ws)
                w = ws
            if p[KIND] == DEPTHWISE:
                _depthwise_step(p, f, xp, pt, pl, w, bias, scale, shift, res, out)
            elif p[PARALLEL]:
                conv_blocked_nhwc_parallel(xp, pt, pl, w, bias, p[KH], p[KW], p[SH], p[SW], p[DH], p[DW], p[NVEC],
                                           p[PMAX], scale, shift, p[AFFINE] != 0, res, p[ADD] != 0,
                                           f[LO], f[HI], p[ACT], f[ALPHA], f[BETA], out)
            else:
                conv_blocked_nhwc(xp, pt, pl, w, bias, p[KH], p[KW], p[SH], p[SW], p[DH], p[DW], p[NVEC], p[PMAX],
                                  scale, shift, p[AFFINE] != 0, res, p[ADD] != 0, f[LO], f[HI],
                                  p[ACT], f[ALPHA], f[BETA], out)
        else:
            out = _empty4(n, oh // pool, ow // pool, co)
            lines = _empty4(p[THREADS], pool, ow, co)
            if p[PARALLEL]:
                conv_blocked_pooled_nhwc_parallel(xp, w, bias, p[KH], p[KW], p[SH], p[SW], p[DH], p[DW],
                                                  p[NVEC], p[PMAX], pool, lines, out)
            else:
                conv_blocked_pooled_nhwc(xp, w, bias, p[KH], p[KW], p[SH], p[SW], p[DH], p[DW], p[NVEC],
                                         p[PMAX], pool, lines, out)
        if pool != 0:       # the epilogue after the pool
            rows = out.reshape(out.size // co, co)
            no_res = np.zeros((0, co), np.float32)
            if post.shape[0] > 0 or f[POST_LO] > -np.inf or f[POST_HI] < np.inf:
                if p[POST_PARALLEL]:
                    epilogue_rows_parallel(rows, post, post_shift, no_res, f[POST_LO], f[POST_HI])
                else:
                    epilogue_rows(rows, post, post_shift, no_res, f[POST_LO], f[POST_HI])
            if p[POST_ACT] != 0:
                if p[POST_PARALLEL]:
                    activation_rows_parallel(rows, p[POST_ACT], f[POST_ALPHA], f[POST_BETA])
                else:
                    activation_rows(rows, p[POST_ACT], f[POST_ALPHA], f[POST_BETA])
        values.append(out)
        _drop(values, p, gone)
        status[i + 2] = cycles()
    return values[len(values) - 1]


@jit
def _drop(values, p, gone):
    """Let go of the values in slots p[DROP0], p[DROP1] and p[DROP2] (from 2: the run's inputs are its
    caller's)."""
    if p[DROP0] >= 2:
        values[p[DROP0]] = gone
    if p[DROP1] >= 2:
        values[p[DROP1]] = gone
    if p[DROP2] >= 2:
        values[p[DROP2]] = gone


@jit
def _int8_step(p, f, x, res_map, bias, escale, eshift):
    """An INT8 step of :func:`run_chain`: a new (n, oh, ow, co) map (pooled: (n, oh // q, ow // q,
    co)), or an empty one when ``x`` holds a NaN or an infinity."""
    n = x.shape[0]
    co, oh, ow = p[CO], p[OH], p[OW]
    q = p[POOL] if p[POOL] > 1 else 1
    wp = numba.carray(_i8_pointer(p[W_ADDR]), (p[W_ROWS], p[W_COLS] // 64, 64))
    mul = _vector(p, 5)
    zc = numba.carray(_i32_pointer(p[V_ADDR + 6]), (p[V_ADDR + N_VECTORS + 6],))
    xp = np.empty((n, p[HPAD], p[WPAD], p[CPAD]), CODE)
    out = _empty4(n, oh // q, ow // q, co)
    flat = out.reshape((out.size // co, co))
    res = res_map.reshape((n * oh * ow, co)) if p[ADD] else np.zeros((0, co), np.float32)
    if p[PARALLEL]:
        bad = int8_conv_nhwc_parallel(x, f[SX], p[ZERO], p[T], p[L], xp, p[KH], p[KW], p[SH], p[SW], p[DH], p[DW], oh,
                                      ow, wp, zc, mul, bias, escale, eshift, res, f[LO], f[HI], p[ACT], f[ALPHA],
                                      f[BETA], q, p[LINES], flat)
    else:
        bad = int8_conv_nhwc(x, f[SX], p[ZERO], p[T], p[L], xp, p[KH], p[KW], p[SH], p[SW], p[DH], p[DW], oh, ow, wp,
                             zc, mul, bias, escale, eshift, res, f[LO], f[HI], p[ACT], f[ALPHA], f[BETA], q, p[LINES],
                             flat)
    if bad:
        return np.empty((0, 0, 0, 0), np.float32)
    return out


@jit
def _depthwise_step(p, f, xp, pt, pl, w, bias, scale, shift, res, out):
    """A depthwise convolution step of :func:`run_chain` into ``out`` (``xp`` padded, or read with
    its padding ``pt``, ``pl`` as zeros)."""
    if p[PARALLEL]:
        depthwise_blocked_nhwc_parallel(xp, pt, pl, w, bias, p[KH], p[KW], p[SH], p[SW], p[DH], p[DW], p[NVEC], p[PMAX],
                                        scale, shift, p[AFFINE] != 0, res, p[ADD] != 0, f[LO], f[HI], p[ACT],
                                        f[ALPHA], f[BETA], out)
    else:
        depthwise_blocked_nhwc(xp, pt, pl, w, bias, p[KH], p[KW], p[SH], p[SW], p[DH], p[DW], p[NVEC], p[PMAX], scale,
                               shift, p[AFFINE] != 0, res, p[ADD] != 0, f[LO], f[HI], p[ACT], f[ALPHA], f[BETA], out)


@jit
def _squeeze_step(p, src, vec):
    """A MEAN or CHANNEL step of :func:`run_chain`: a new (n, 1, 1, c) mean of ``src``'s pixels, or
    a new map ``src op vec`` (``vec`` (n, 1, 1, c))."""
    n, h, wd, c = src.shape
    if p[KIND] == MEAN:
        out = np.empty((n, 1, 1, c), np.float32)
        if p[PARALLEL]:
            global_mean_nhwc_parallel(src.reshape(n, h * wd, c), out.reshape(n, c))
        else:
            global_mean_nhwc(src.reshape(n, h * wd, c), out.reshape(n, c))
        return out
    out = _empty4(n, h, wd, c)
    if p[PARALLEL]:
        channel_binary_nhwc_parallel(src.reshape(n, h * wd, c), vec.reshape(n, c), p[OP], p[REVERSE] != 0,
                                     out.reshape(n, h * wd, c))
    else:
        channel_binary_nhwc(src.reshape(n, h * wd, c), vec.reshape(n, c), p[OP], p[REVERSE] != 0,
                            out.reshape(n, h * wd, c))
    return out
