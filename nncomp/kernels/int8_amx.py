"""Intel AMX fast path for u8 x s8 -> int32 matrix products (``tdpbusd`` on tile registers).

AMX (Sapphire Rapids and later Xeons) adds eight tile registers of up to 16 rows x 64 bytes and
``tdpbusd``: one instruction multiplies a 16 x 64 tile of unsigned activation bytes by a 16 x 64 tile
of signed weight bytes in VNNI order (16 groups of 4 inputs x 16 output channels) and adds the
16 x 16 int32 products into a third tile: 16,384 multiply-adds, 128 times one ``vpdpbusd``. The
weight panels of the int8 matrices (matrices/int8.py: 16 output channels each) are already in that
order and contiguous: 16 consecutive groups of a panel (64 inputs) are one 1 KiB weight tile. The
kernel reads any panel width (a 16-channel column tile of a wider panel has a row stride of
``4 * width``), but wide panels ran far slower (module doc of matrices/int8.py).

Tiles (one fixed configuration: every tile 16 rows x 64 bytes): C (int32 results) in tiles
``2 m + n`` for a block of up to 2 x 2 tiles (32 rows x 32 channels), A (activations) in 4 and 5,
B (weights) in 6 and 7; each load comes right before the first product that needs it (all loads
first, then the products, ran 3.6x slower from L1). The C tiles are loaded from ``out``,
accumulate a k-block of ``KB`` inputs and are stored back, so the kernel adds to ``out`` as the VNNI
kernel does. The parallel units are pairs of column tiles x ``ROWS`` activation rows; each streams
its two weight columns once per unit, prefetching ``PREFETCH`` steps ahead into L2, and the
activations come packed (:func:`pack_rows`): tile rows read at the activations' own row stride fell
in one L1 set for 4096 inputs.

Contract: as :func:`nncomp.kernels.int8_vnni.int8_matmul_u8s8_vnni` (exact int32 sums, bit-identical
to the portable kernel), for the part this kernel covers: rows ``[0, 16 * (n // 16))`` and inputs
``[k0, k0 + 64 * ((k1 - k0) // 64))``, the activations packed into 1 KiB tiles first;
:func:`matmul` runs the rest with the VNNI kernel.

The operating system must grant the process the tile state first (Linux 5.16+:
``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``); without it the first tile instruction
kills the process. :data:`HAVE_AMX` is True only when the JIT target has AMX-TILE and AMX-INT8 and
that request succeeded (kernels/isa.py); callers check it.
"""
import ctypes
import platform

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from . import int8_vnni as vnni
from . import isa
from ._ir import declare, loop_latch, loop_phis, prefetch as prefetch_line
from ._jit import both, pick

KB = 4096           # inputs per k-block: a 32-channel slice of it (128 KiB) stays in L2 across row blocks
ROWS = 64           # activation rows per parallel tile
PREFETCH = 16       # k-steps (64 inputs each) that the weight prefetch runs ahead
MIN_ROWS = 16       # fewer rows than one tile: the VNNI kernel
MIN_INPUTS = 1024   # and the VNNI kernel for short or narrow products (worth)
MIN_OUTPUTS = 256

_SYS_ARCH_PRCTL = 158           # x86-64 syscall number
_ARCH_GET_XCOMP_PERM = 0x1022
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18


def request_tile_state():
    """Ask Linux for the AMX tile state of this process; True when it is (or already was) granted."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) != 0:
            return False
        mask = ctypes.c_uint64(0)
        if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_GET_XCOMP_PERM, ctypes.byref(mask)) != 0:
            return False
        return bool(mask.value >> _XFEATURE_XTILEDATA & 1)
    except (OSError, AttributeError):
        return False


HAVE_AMX = isa.HAVE_AMX_INT8 and isa.HAVE_VNNI and request_tile_state()   # tests monkeypatch it

# The tile configuration (palette 1): tiles 0-7 of 16 rows x 64 bytes.
TILE_CONFIG = np.zeros(64, np.uint8)
TILE_CONFIG[0] = 1
TILE_CONFIG[16:32] = np.array([64] * 8, "<u2").view(np.uint8)
TILE_CONFIG[48:56] = 16

I8 = ir.IntType(8)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
PTR = I8.as_pointer()
VOID = ir.VoidType()


def call_void(builder, name, args, argtys):
    builder.call(declare(builder.module, name, ir.FunctionType(VOID, argtys)), args)


@intrinsic
def configure_tiles(typingctx, cfg):
    """``ldtilecfg`` from a 64-byte uint8 array."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        call_void(builder, "llvm.x86.ldtilecfg", [builder.bitcast(data, PTR)], [PTR])
        return context.get_dummy_value()
    return types.void(cfg), codegen


@intrinsic
def release_tiles(typingctx):
    """``tilerelease``: the tile state back to its initial, cheap-to-switch state."""
    def codegen(context, builder, signature, args):
        call_void(builder, "llvm.x86.tilerelease", [], [])
        return context.get_dummy_value()
    return types.void(), codegen


def _make_block(mt, nt, prefetch):
    """Intrinsic ``block(x, xoff, xmstride, wp, woff, wstride, nsteps, out, ooff, ostride)``.

    Adds ``mt`` x ``nt`` 16 x 16 result tiles over ``nsteps`` steps of 64 inputs: activation tile m of
    step s at flat offset ``xoff + m * xmstride + 1024 * s`` of the packed activations ``x`` (uint8,
    :func:`pack_rows`: 16 rows of 64 bytes, contiguous); weight tile n of step s at flat offset ``woff +
    16 * s * wstride + 64 * n`` of ``wp`` (row stride ``wstride`` bytes); results at flat offsets
    ``ooff + r * ostride + 16 * n`` of ``out`` (int32). ``prefetch``: 64-byte columns of each weight
    row to prefetch ``PREFETCH`` steps ahead (0: none).
    """

    @intrinsic
    def block(typingctx, x, xoff, xmstride, wp, woff, wstride, wnstride, nsteps, out, ooff, ostride):
        sig = types.void(x, xoff, xmstride, wp, woff, wstride, wnstride, nsteps, out, ooff, ostride)

        def codegen(context, builder, signature, args):
            xd, wd, od = (context.make_array(signature.args[k])(context, builder, args[k]).data for k in (0, 3, 8))
            intp = context.get_value_type(types.intp)
            xoff_, xs_, woff_, ws_, wn_, n_, ooff_, os_ = (
                context.cast(builder, args[k], signature.args[k], types.intp) for k in (1, 2, 4, 5, 6, 7, 9, 10))
            io = [I8, PTR, I64]
            obytes = builder.mul(os_, intp(4))

            def c_ptr(m, n):
                at = builder.add(ooff_, builder.add(builder.mul(os_, intp(16 * m)), intp(16 * n)))
                return builder.bitcast(builder.gep(od, [at]), PTR)

            for m in range(mt):
                for n in range(nt):
                    call_void(builder, "llvm.x86.tileloadd64", [I8(2 * m + n), c_ptr(m, n), obytes], io)
            pre = builder.block
            loop = builder.append_basic_block("amx_loop")
            done = builder.append_basic_block("amx_done")
            builder.cbranch(builder.icmp_signed(">", n_, intp(0)), loop, done)

            builder.position_at_end(loop)
            s, _ = loop_phis(builder, intp, None, [], pre)
            step_bytes = builder.mul(ws_, intp(16))
            wstep = builder.add(woff_, builder.mul(s, step_bytes))

            def load_a(m):
                at = builder.add(xoff_, builder.add(builder.mul(xs_, intp(m)), builder.mul(s, intp(1024))))
                call_void(builder, "llvm.x86.tileloadd64", [I8(4 + m), builder.bitcast(builder.gep(xd, [at]), PTR), I64(64)], io)

            def load_b(n):
                at = builder.add(wstep, builder.mul(wn_, intp(n)))
                call_void(builder, "llvm.x86.tileloadd64", [I8(6 + n), builder.bitcast(builder.gep(wd, [at]), PTR), ws_], io)

            def product(m, n):
                call_void(builder, "llvm.x86.tdpbusd", [I8(2 * m + n), I8(4 + m), I8(6 + n)], [I8, I8, I8])

            if prefetch:      # prefetch never faults: past the end of the panel it is only wasted
                ahead = builder.add(wstep, builder.mul(step_bytes, intp(PREFETCH)))
                for r in range(16):
                    row = builder.add(ahead, builder.mul(ws_, intp(r)))
                    for c in range(prefetch):
                        prefetch_line(builder, builder.gep(wd, [builder.add(row, builder.mul(wn_, intp(c)))]))
            # Each load right before the first product that needs it: loads then overlap the products
            # (all loads first, then all products, ran 3.6x slower from L1 on a Xeon with AMX).
            load_a(0)
            load_b(0)
            product(0, 0)
            if nt == 2:
                load_b(1)
                product(0, 1)
            if mt == 2:
                load_a(1)
                if nt == 2:
                    product(1, 1)
                product(1, 0)
            loop_latch(builder, intp, s, [], [], n_, loop, done)

            builder.position_at_end(done)
            for m in range(mt):
                for n in range(nt):
                    call_void(builder, "llvm.x86.tilestored64", [I8(2 * m + n), c_ptr(m, n), obytes], io)
            return context.get_dummy_value()

        return sig, codegen

    return block


# Every block prefetches its own weight columns PREFETCH steps ahead.
_b22, _b12, _b21, _b11 = (_make_block(2, 2, 2), _make_block(1, 2, 2), _make_block(2, 1, 1), _make_block(1, 1, 1))


def _pack_rows(xu, k0, xa):
    """Activation tiles for the AMX kernel: ``xa[t, s, r, :] = xu[16 t + r, k0 + 64 s : k0 + 64 s + 64]``.

    IN  xu (n, kp) uint8; k0 >= 0. OUT xa (T, S, 16, 64) uint8 with 16 T <= n, k0 + 64 S <= kp.
    A tile is then 1 KiB of consecutive bytes: tile rows read at the activations' own row stride
    (a multiple of 4 KiB for 4096 inputs) all fell in one L1 set and ran 3x slower.
    """
    n_t, n_s = xa.shape[0], xa.shape[1]
    for u in prange(n_t * n_s):
        t = u // n_s
        base = k0 + 64 * (u - t * n_s)
        for r in range(16):
            xa[t, u - t * n_s, r, :] = xu[16 * t + r, base:base + 64]


amx_pack_rows, amx_pack_rows_parallel = both(_pack_rows)


def _matmul_amx(xa, wp, k0, out, cfg):
    """AMX u8 x s8 product over panels: ``out[i, o] += sum_{k0 <= k < k0 + 64 S} xu[i, k] * w[o, k]``
    for the rows ``i < 16 T`` of the activations ``xu`` packed as ``xa`` (int32).

    IN  xa (T, S, 16, 64) uint8 (:func:`pack_rows` of ``xu`` from ``k0``); wp (n_panels, kp // 4,
        4 * width) int8 panels, width in (16, 32, 48, 64); k0 % 4 == 0, k0 + 64 S <= kp,
        64 S <= 65536; cfg: TILE_CONFIG.
    OUT out (n, n_panels * width) int32 C-contiguous, n >= 16 T, added to (other rows: untouched).
    """
    n_t, n_s = xa.shape[0], xa.shape[1]
    n_panels, n_g, pw4 = wp.shape
    nct = pw4 // 64                   # 16-channel column tiles per panel
    n_cols = out.shape[1]
    n16 = 16 * n_t
    row_tiles = (n16 + ROWS - 1) // ROWS
    col_pairs = (n_panels * nct + 1) // 2
    tile_stride = n_s * 1024          # bytes from one 16-row activation tile to the next
    for t in prange(col_pairs * row_tiles):
        configure_tiles(cfg)
        j = 2 * (t // row_tiles)      # column tiles j and j + 1 (in one panel or in two)
        r0 = (t - (j // 2) * row_tiles) * ROWS
        r1 = min(n16, r0 + ROWS)
        pair = j + 1 < n_panels * nct
        w0 = (j // nct) * n_g * pw4 + 64 * (j % nct)                              # column tile j
        wn = ((j + 1) // nct) * n_g * pw4 + 64 * ((j + 1) % nct) - w0 if pair else 0  # to tile j + 1
        w0 += k0 // 4 * pw4
        for s0 in range(0, n_s, KB // 64):
            steps = min(KB // 64, n_s - s0)
            for i in range(r0, r1, 32):
                a = (xa, (i // 16) * tile_stride + 1024 * s0, tile_stride, wp, w0 + 16 * s0 * pw4, pw4, wn, steps,
                     out, i * n_cols + 16 * j, n_cols)
                if r1 - i >= 32:
                    if pair:
                        _b22(*a)
                    else:
                        _b21(*a)
                elif pair:
                    _b12(*a)
                else:
                    _b11(*a)
        release_tiles()


int8_matmul_u8s8_amx, int8_matmul_u8s8_amx_parallel = both(_matmul_amx)


def worth(n, n_in, n_out):
    """Whether the tiles pay for a product of ``n`` rows x ``n_in`` inputs x ``n_out`` outputs: packing
    the activations, loading and storing the result tiles per k-block and the VNNI call on the
    remainders cost more than the tiles save on short or narrow products. Time over the VNNI
    kernel's (Int8Matrix.apply, 2 threads, Xeon with AMX): 64x784x300 1.28, 64x300x100 1.23,
    256x144x32 1.24, 1024x288x64 1.22, 3136x576x64 (convolution patches) 1.29; 64x1024x1024
    0.87, 64x4096x1024 0.58, 16x4096x4096 0.63, 32x4096x4096 0.53."""
    return n >= MIN_ROWS and n_in >= MIN_INPUTS and n_out >= MIN_OUTPUTS


def pack_rows(xu, k0, k1):
    """The activation tiles :func:`_matmul_amx` reads: rows ``[0, 16 * (n // 16))`` of ``xu`` and
    inputs ``[k0, k0 + 64 * ((k1 - k0) // 64))`` as ``(T, S, 16, 64)`` uint8."""
    xa = np.empty((xu.shape[0] // 16, (k1 - k0) // 64, 16, 64), np.uint8)
    pick((amx_pack_rows, amx_pack_rows_parallel), xa.size)(xu, k0, xa)
    return xa


def matmul(xu, wp, k0, k1, out):
    """``out[i, o] += sum_{k0 <= k < k1} xu[i, k] * w[o, k]`` (the VNNI kernel's contract): the AMX
    kernel on whole 16-row tiles and 64-input steps, the VNNI kernel on the rest. Needs HAVE_AMX."""
    n = xu.shape[0]
    n16 = n // 16 * 16
    k64 = k0 + (k1 - k0) // 64 * 64
    work = xu.shape[0] * wp.shape[0] * wp.shape[2] * ((k1 - k0) // 4)
    if n16 and k64 > k0:
        pick((int8_matmul_u8s8_amx, int8_matmul_u8s8_amx_parallel), work)(
            pack_rows(xu, k0, k1), wp, k0, out, TILE_CONFIG)
    vnni_pair = (vnni.int8_matmul_u8s8_vnni, vnni.int8_matmul_u8s8_vnni_parallel)
    if n16 < n:
        pick(vnni_pair, work)(xu[n16:], wp, k0, k1, out[n16:])
    if n16 and k64 < k1:
        pick(vnni_pair, work)(xu[:n16], wp, k64, k1, out[:n16])
