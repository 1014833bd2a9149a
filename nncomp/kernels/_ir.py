"""LLVM IR shared by the hand-written tiles (nncomp/kernels/csr.py, csr_int8.py, conv_blocked.py),
and the helpers Numba code calls: the sparse mat-vecs' prefetches, and :data:`fma32` (the codebook
kernels' plain loops, the scalar logistic function of nncomp/kernels/epilogue.py)."""
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .isa import VECTOR_REGISTERS


def declare(module, name, fnty):
    """The function ``name`` (an intrinsic) of the LLVM ``module``, declared on first use."""
    fn = module.globals.get(name)
    return fn if fn is not None else ir.Function(module, fnty, name)


@intrinsic
def _fma32_ir(typingctx, a, b, c):
    """float32 ``a * b + c`` with one rounding (``llvm.fma.f32``) in Numba code: :data:`fma32`."""
    if not all(t == types.float32 for t in (a, b, c)):
        return None

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        return builder.call(declare(builder.module, "llvm.fma.f32", ir.FunctionType(f32, [f32] * 3)), list(args))

    return types.float32(types.float32, types.float32, types.float32), codegen


def _fma32_py(a, b, c):
    """float32 ``a * b + c`` with one rounding, in Python (NUMBA_DISABLE_JIT runs): the float64 sum
    is rounded to odd (exact with TwoSum), then to float32, which is exactly the fused result."""
    p = float(a) * float(b)             # exact: 24 + 24 bits fit a double
    c = float(c)
    s = p + c
    if np.isfinite(s):
        bp = s - p
        err = (p - (s - bp)) + (c - bp)
        if err != 0 and not (np.float64(s).view(np.int64) & 1):
            s = float(np.nextafter(s, np.inf if err > 0 else -np.inf))
    return np.float32(s)


fma32 = _fma32_py if numba.config.DISABLE_JIT else _fma32_ir


def masked_v16(module):
    """``(mload, mstore)``: LLVM's masked load and store of ``<16 x float>`` (``mload(ptr, i32 4,
    mask, passthru)``, ``mstore(value, ptr, i32 4, mask)``), declared in ``module`` on first use."""
    v16 = ir.VectorType(ir.FloatType(), 16)
    vptr, i32, mask_t = v16.as_pointer(), ir.IntType(32), ir.VectorType(ir.IntType(1), 16)
    return (declare(module, "llvm.masked.load.v16f32.p0v16f32", ir.FunctionType(v16, [vptr, i32, mask_t, v16])),
            declare(module, "llvm.masked.store.v16f32.p0v16f32",
                    ir.FunctionType(ir.VoidType(), [v16, vptr, i32, mask_t])))


def masked_v(module, width):
    """``(mload, mstore)`` of ``<width x float>`` (:func:`masked_v16` for 16 lanes)."""
    if width == 16:
        return masked_v16(module)
    vt = ir.VectorType(ir.FloatType(), width)
    vptr, i32, mask_t = vt.as_pointer(), ir.IntType(32), ir.VectorType(ir.IntType(1), width)
    return (declare(module, f"llvm.masked.load.v{width}f32.p0v{width}f32", ir.FunctionType(vt, [vptr, i32, mask_t, vt])),
            declare(module, f"llvm.masked.store.v{width}f32.p0v{width}f32",
                    ir.FunctionType(ir.VoidType(), [vt, vptr, i32, mask_t])))


def splat(builder, value, width):
    """``<width x T>`` of the scalar ``value`` in every lane."""
    undef = ir.Constant(ir.VectorType(value.type, width), ir.Undefined)
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)
    return builder.shuffle_vector(builder.insert_element(undef, value, ir.IntType(32)(0)), undef, zeros)


def vec_types():
    """``(float, <16 x float>, its pointer, i32, <16 x i1>)`` LLVM types."""
    f32 = ir.FloatType()
    v16 = ir.VectorType(f32, 16)
    return f32, v16, v16.as_pointer(), ir.IntType(32), ir.VectorType(ir.IntType(1), 16)


def lane_mask(builder, lanes, i32):
    """``<16 x i1>``: lane < lanes."""
    splat = ir.Constant(ir.VectorType(i32, 16), [0] * 16)
    undef = ir.Constant(ir.VectorType(i32, 16), ir.Undefined)
    v = builder.shuffle_vector(builder.insert_element(undef, builder.trunc(lanes, i32), i32(0)), undef, splat)
    return builder.icmp_signed("<", ir.Constant(ir.VectorType(i32, 16), list(range(16))), v)


def store_v16(builder, value, ptr, mask, whole, some=None):
    """Store ``<16 x float>`` ``value`` at ``ptr``: a plain store where ``whole`` (an i1: every lane
    is kept), else, where ``some`` (default: always), the lanes of ``mask`` (a prefix: lanes below
    some count). AMD Zen 3 runs ``vmaskmovps`` to memory as microcode: a register tile of full
    channel vectors stores plainly, only a partial last vector pays for a mask. With AVX2 (16
    registers: :func:`_store_halves`) each 8-lane half is stored plainly, masked or not at all."""
    mstore = masked_v16(builder.module)[1]
    with builder.if_else(whole) as (plain, masked):
        with plain:
            builder.store(value, ptr, align=4)
        with masked:
            if some is not None:
                with builder.if_then(some):
                    _store_partial(builder, value, ptr, mask, mstore)
            else:
                _store_partial(builder, value, ptr, mask, mstore)


def store_v8(builder, value, ptr, mask, whole):
    """Store ``<8 x float>`` ``value`` at ``ptr``: plainly where ``whole`` (an i1), else the lanes of
    the ``<8 x i1>`` prefix ``mask`` (one ``vmaskmovps``)."""
    mstore = masked_v(builder.module, 8)[1]
    with builder.if_else(whole) as (plain, masked):
        with plain:
            builder.store(value, ptr, align=4)
        with masked:
            builder.call(mstore, [value, ptr, ir.IntType(32)(4), mask])


def _store_partial(builder, value, ptr, mask, mstore):
    if VECTOR_REGISTERS >= 32:      # AVX-512: one masked vmovups
        builder.call(mstore, [value, ptr, ir.IntType(32)(4), mask])
    else:
        _store_halves(builder, value, ptr, mask)


def _store_halves(builder, value, ptr, mask):
    """The lanes of the prefix ``mask`` of ``<16 x float>`` ``value`` stored at ``ptr`` as two 8-lane
    halves: the low one plainly when all its lanes are kept, the high one not at all when none of
    its lanes are, masked otherwise. LLVM stores a masked 16-lane vector with two ``vmaskmovps``
    whatever the mask; a channel count of 8 mod 16 (24, 40, 72, 88, 120: most of a MobileNet's) then
    needs none (Zen 3, one thread, 16 -> 72 channels at 56 x 56 in the blocked kernel: see the
    session notes of issue 13 for the A/B)."""
    f32, i32 = ir.FloatType(), ir.IntType(32)
    v8 = ir.VectorType(f32, 8)
    m8 = ir.VectorType(ir.IntType(1), 8)
    mstore8 = declare(builder.module, "llvm.masked.store.v8f32.p0v8f32",
                      ir.FunctionType(ir.VoidType(), [v8, v8.as_pointer(), i32, m8]))
    undef_m = ir.Constant(ir.VectorType(ir.IntType(1), 16), ir.Undefined)
    base = builder.bitcast(ptr, v8.as_pointer())
    for h in range(2):
        half = builder.shuffle_vector(value, value, ir.Constant(ir.VectorType(i32, 8), list(range(8 * h, 8 * h + 8))))
        hmask = builder.shuffle_vector(mask, undef_m, ir.Constant(ir.VectorType(i32, 8), list(range(8 * h, 8 * h + 8))))
        at = builder.gep(base, [i32(h)])
        full = builder.extract_element(mask, i32(8 * h + 7))
        first = builder.extract_element(mask, i32(8 * h))
        with builder.if_else(full) as (plain, partial):
            with plain:
                builder.store(half, at, align=4)
            with partial:
                with builder.if_then(first):
                    builder.call(mstore8, [half, at, i32(4), hmask])


def prefetch(builder, ptr, locality=2):
    """Emit a read prefetch of the line at ``ptr`` (any pointer type) into the caches
    (``locality`` 3: L1, 2: L2, 1: L3). A prefetch never faults: an address past an array's end
    is only wasted bandwidth."""
    i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
    fn = declare(builder.module, "llvm.prefetch.p0", ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]))
    builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(locality), i32(1)])


def _prefetch_at(typingctx, arr, i):
    """``prefetch_at(arr, i)`` in Numba code: prefetch the line holding ``arr[i]`` (a 1-D array)
    into L2; any ``i`` is allowed (past the end nothing faults)."""
    sig = types.void(arr, i)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0])
        at = context.cast(builder, args[1], signature.args[1], types.intp)
        prefetch(builder, builder.gep(data.data, [at]))
        return context.get_dummy_value()
    return sig, codegen


def _no_prefetch(arr, i):
    """NUMBA_DISABLE_JIT runs: a prefetch changes no value."""


prefetch_at = _no_prefetch if numba.config.DISABLE_JIT else intrinsic(_prefetch_at)

# Sparse rows run in chunks of CHUNK_NNZ nonzeros, each prefetching the lines of its values and
# column indices AHEAD_NNZ nonzeros later (4 KB of float32 values): a row that starts cold from DRAM
# (a weight evicted by the rest of a network) finds them arriving (nncomp/kernels/csr.py).
CHUNK_NNZ = 32
AHEAD_NNZ = 1024


@numba.njit(inline="always", cache=True)
def prefetch_chunk(values, indices, j):
    """Prefetch the lines holding nonzeros ``j + AHEAD_NNZ .. + CHUNK_NNZ`` of ``values`` and ``indices``."""
    j += AHEAD_NNZ
    for q in range(0, CHUNK_NNZ * indices.itemsize, 64):
        prefetch_at(indices, j + q // indices.itemsize)
    for q in range(0, CHUNK_NNZ * values.itemsize, 64):
        prefetch_at(values, j + q // values.itemsize)


def when(builder, cond, values, fn):
    """``fn(values)`` where the i1 ``cond`` holds, else ``values``: a branch (the flags are the same
    for every tile of a call, so it is always predicted) instead of computing both and selecting."""
    before = builder.block
    with builder.if_then(cond):
        changed = fn(values)
        then_end = builder.block
    out = []
    for v, c in zip(values, changed):
        phi = builder.phi(v.type)
        phi.add_incoming(v, before)
        phi.add_incoming(c, then_end)
        out.append(phi)
    return out


def loop_phis(builder, intp, vty, inits, pre):
    """At the top of a loop block entered from block ``pre``: a counter phi starting at 0 and one
    ``vty`` phi per value of ``inits`` (``vty`` None: each value's own type); the caller adds their
    incoming values from the latch."""
    i = builder.phi(intp)
    i.add_incoming(intp(0), pre)
    phis = []
    for v in inits:
        a = builder.phi(v.type if vty is None else vty)
        a.add_incoming(v, pre)
        phis.append(a)
    return i, phis


def loop_latch(builder, intp, i, phis, values, count, repeat, leave):
    """Close a loop in the current block: ``i + 1`` and ``values`` flow back into the phis of
    :func:`loop_phis`; branch to ``repeat`` while ``i + 1 < count``, else to ``leave``."""
    block = builder.block
    nxt = builder.add(i, intp(1))
    i.add_incoming(nxt, block)
    for a, v in zip(phis, values):
        a.add_incoming(v, block)
    builder.cbranch(builder.icmp_signed("<", nxt, count), repeat, leave)


def paired_sum(builder, intp, vty, lo, hi, nvec, step, add):
    """Emit ``sum_{lo <= j < hi} step(j, .)`` into ``nvec`` vectors of type ``vty``; return them.

    ``step(j, accs)`` emits one nonzero's contribution and returns the updated accumulators. Pairs
    of nonzeros go into two interleaved accumulator sets (even and odd j: hides the FMA or add
    latency), which ``add`` (``builder.fadd`` or ``builder.add``) then joins; an odd count ends with
    one more step. ``lo`` and ``hi`` are ``intp`` values.
    """
    zero = ir.Constant(vty, None)
    n_pairs = builder.sdiv(builder.sub(hi, lo), intp(2))
    pre = builder.block
    loop = builder.append_basic_block("tile_loop")
    after = builder.append_basic_block("tile_after")
    builder.cbranch(builder.icmp_signed(">", n_pairs, intp(0)), loop, after)
    builder.position_at_end(loop)
    idx = builder.phi(intp)
    idx.add_incoming(intp(0), pre)
    even = [builder.phi(vty) for _ in range(nvec)]
    odd = [builder.phi(vty) for _ in range(nvec)]
    for a in even + odd:
        a.add_incoming(zero, pre)
    j = builder.add(lo, builder.mul(idx, intp(2)))
    new_even = step(j, even)
    new_odd = step(builder.add(j, intp(1)), odd)
    nxt = builder.add(idx, intp(1))
    end = builder.block
    idx.add_incoming(nxt, end)
    for a, v in zip(even + odd, new_even + new_odd):
        a.add_incoming(v, end)
    builder.cbranch(builder.icmp_signed("<", nxt, n_pairs), loop, after)

    builder.position_at_end(after)
    finals = []
    for v in new_even + new_odd:        # every phi first: LLVM wants them at the block top
        f = builder.phi(vty)
        f.add_incoming(zero, pre)
        f.add_incoming(v, end)
        finals.append(f)
    sums = [add(finals[k], finals[nvec + k]) for k in range(nvec)]
    is_odd = builder.icmp_signed("!=", builder.srem(builder.sub(hi, lo), intp(2)), intp(0))
    with builder.if_then(is_odd):
        tail = step(builder.sub(hi, intp(1)), sums)
        tail_block = builder.block
    merged = []
    for k in range(nvec):
        m = builder.phi(vty)
        m.add_incoming(sums[k], after)
        m.add_incoming(tail[k], tail_block)
        merged.append(m)
    return merged


def segment_loops(builder, intp, vty, n_acc, nseg, ngroups, x, w, group):
    """Emit the loops of an int8 block (kernels/int8_vnni.py, int8_avx2.py): for segments ``s <
    nseg`` and groups ``g < ngroups``, ``accs = group((wbase, xrows), g, accs)`` over ``n_acc``
    accumulators of type ``vty`` that start at zero and stay in registers across both loops.
    ``x = (data, off, seg, stride, rows)``: row m of segment s starts at element ``off + s * seg + m
    * stride`` of ``data`` (``xrows[m]``, a pointer); ``w = (data, off, seg)``: segment s's weights
    at ``wbase = data + off + s * seg``. Returns the accumulators' final values (zero when either
    count is 0). Counts and offsets are ``intp`` values."""
    xdata, xoff, xseg, xstride, rows = x
    wdata, woff, wseg = w

    def segment(s):
        xbase = builder.gep(xdata, [builder.add(xoff, builder.mul(s, xseg))])
        wbase = builder.gep(wdata, [builder.add(woff, builder.mul(s, wseg))])
        return wbase, [builder.gep(xbase, [builder.mul(xstride, intp(m))]) for m in range(rows)]

    zero = ir.Constant(vty, None)
    pre = builder.block
    outer = builder.append_basic_block("seg_loop")
    inner = builder.append_basic_block("group_loop")
    latch = builder.append_basic_block("seg_latch")
    done = builder.append_basic_block("block_done")
    go = builder.and_(builder.icmp_signed(">", nseg, intp(0)), builder.icmp_signed(">", ngroups, intp(0)))
    builder.cbranch(go, outer, done)

    builder.position_at_end(outer)
    s, seg_accs = loop_phis(builder, intp, vty, [zero] * n_acc, pre)
    ctx = segment(s)
    builder.branch(inner)

    builder.position_at_end(inner)
    g, accs = loop_phis(builder, intp, vty, seg_accs, outer)
    new = group(ctx, g, accs)
    loop_latch(builder, intp, g, accs, new, ngroups, inner, latch)

    builder.position_at_end(latch)
    loop_latch(builder, intp, s, seg_accs, new, nseg, outer, done)

    builder.position_at_end(done)
    fins = []
    for v in new:
        fin = builder.phi(vty)
        fin.add_incoming(zero, pre)
        fin.add_incoming(v, latch)
        fins.append(fin)
    return fins
