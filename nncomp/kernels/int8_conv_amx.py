"""AMX tiles for the implicit int8 convolution (kernels/int8_conv.py): the same kernel with its
line product on ``tdpbusd`` tiles instead of the VNNI block.

An A tile is 16 output pixels of one line by 64 activation codes: pixel ``p`` of a kernel row reads
``kw * cp`` consecutive codes of the padded input that start ``sw * cp`` bytes after pixel
``p - 1``'s, so ``tileloadd`` takes the tile straight from the padded codes at a row stride of
``sw * cp`` (no patch matrix, no packing). Each kernel row's weights are padded with zeros to a
multiple of 64 inputs (:func:`amx_weights`' layout): the bytes a tile row reads past ``kw * cp`` meet
zero weights, so they add nothing whatever they hold. A B tile is 16 groups of 4 inputs x 16 output
channels of one panel (1 KiB, contiguous); C tiles accumulate over the kernel rows and steps, two
16-channel panels at a time. Rows past the line's last pixel compute values nobody reads (the line
buffer has 16-pixel rows), and the last tiles of an image read up to :func:`slack` bytes past the
padded input, which the caller allocates. Dilated columns (``dw > 1``) are not a run of codes: the
caller keeps the VNNI kernel for them.

One ``tdpbusd`` is 16 x 16 x 64 multiply-adds against 16 x 16 x 4 for a ``vpdpbusd``: the
convolutions of small CNNs (16-64 channels, 3 x 3) are otherwise bound by the VNNI port. Everything
around the product (the quantization of the input, the dequantization, epilogue and pooling) is
kernels/int8_conv.py's ``_conv`` itself, built again with this module's line product: the same bits.
Callers check ``int8_amx.HAVE_AMX`` (the tile instructions do not compile for other CPUs).
"""
import types as pytypes

from numba import types
from numba.extending import intrinsic

from . import int8_conv
from ._ir import loop_latch, loop_phis
from ._jit import both, jit
from .int8_amx import I8, I64, PTR, TILE_CONFIG, call_void, configure_tiles, release_tiles
from .int8_conv import dequant_line


def _make_block(nt):
    """Intrinsic ``block(x, xoff, xrow, xseg, wp, woff, wseg, wn, nseg, nsteps, out, ooff, ostride)``:
    adds ``nt`` 16 x 16 int32 result tiles (``out`` at flat offsets ``ooff + r * ostride + 16 * n``)
    over ``nseg`` segments of ``nsteps`` steps of 64 inputs: the activation tile of segment ``g``, step
    ``s`` at ``x[xoff + g * xseg + 64 * s]`` (row stride ``xrow`` bytes), weight tile ``n`` at
    ``wp[woff + n * wn + g * wseg + 1024 * s]`` (row stride 64)."""

    @intrinsic
    def block(typingctx, x, xoff, xrow, xseg, wp, woff, wseg, wn, nseg, nsteps, out, ooff, ostride):
        sig = types.void(x, xoff, xrow, xseg, wp, woff, wseg, wn, nseg, nsteps, out, ooff, ostride)

        def codegen(context, builder, signature, args):
            xd, wd, od = (context.make_array(signature.args[k])(context, builder, args[k]).data for k in (0, 4, 10))
            intp = context.get_value_type(types.intp)
            xoff_, xrow_, xseg_, woff_, wseg_, wn_, nseg_, nst_, ooff_, os_ = (
                context.cast(builder, args[k], signature.args[k], types.intp) for k in (1, 2, 3, 5, 6, 7, 8, 9, 11, 12))
            io = [I8, PTR, I64]
            obytes = builder.mul(os_, intp(4))
            total = builder.mul(nseg_, nst_)

            def c_ptr(n):
                return builder.bitcast(builder.gep(od, [builder.add(ooff_, intp(16 * n))]), PTR)

            for n in range(nt):
                call_void(builder, "llvm.x86.tileloadd64", [I8(n), c_ptr(n), obytes], io)
            pre = builder.block
            loop = builder.append_basic_block("amx_conv_loop")
            done = builder.append_basic_block("amx_conv_done")
            builder.cbranch(builder.icmp_signed(">", total, intp(0)), loop, done)
            builder.position_at_end(loop)
            t, _ = loop_phis(builder, intp, None, [], pre)
            g = builder.sdiv(t, nst_)
            s = builder.sub(t, builder.mul(g, nst_))
            xa = builder.add(xoff_, builder.add(builder.mul(g, xseg_), builder.mul(s, intp(64))))
            call_void(builder, "llvm.x86.tileloadd64", [I8(4), builder.bitcast(builder.gep(xd, [xa]), PTR), xrow_], io)
            wa = builder.add(woff_, builder.add(builder.mul(g, wseg_), builder.mul(s, intp(1024))))
            for n in range(nt):
                at = builder.add(wa, builder.mul(wn_, intp(n)))
                call_void(builder, "llvm.x86.tileloadd64", [I8(6 + n), builder.bitcast(builder.gep(wd, [at]), PTR),
                                                        I64(64)], io)
                call_void(builder, "llvm.x86.tdpbusd", [I8(n), I8(4), I8(6 + n)], [I8, I8, I8])
            loop_latch(builder, intp, t, [], [], total, loop, done)
            builder.position_at_end(done)
            for n in range(nt):
                call_void(builder, "llvm.x86.tilestored64", [I8(n), c_ptr(n), obytes], io)
            return context.get_dummy_value()

        return sig, codegen

    return block


_c1, _c2 = _make_block(1), _make_block(2)


@jit(inline="always")
def _line_amx(xp, b, oh, kh, kw, sh, sw, dh, dw, wp, zc, mul, bias, acc, ow_n, dst, off):
    """Output line ``oh`` of image ``b`` into ``dst[off:off + ow_n * co]`` (flat): the tile product
    into ``acc`` (16-pixel rows, ncols), then dequantized with the bias (int8_conv._line's contract;
    ``wp`` in :func:`amx_weights`' layout, ``dw`` 1)."""
    _, hp, wpx, cp = xp.shape
    n_p, n_g, _ = wp.shape
    ncols = acc.shape[1]
    gk = n_g // kh                  # 4-input groups per kernel row, a multiple of 16
    acc[:] = 0
    for p0 in range(0, ow_n, 16):
        xoff = ((b * hp + oh * sh) * wpx + p0 * sw) * cp
        u = 0
        while u < n_p:
            if u + 1 < n_p:
                _c2(xp, xoff, sw * cp, dh * wpx * cp, wp, u * n_g * 64, gk * 64, n_g * 64, kh, gk // 16, acc,
                    p0 * ncols + 16 * u, ncols)
                u += 2
            else:
                _c1(xp, xoff, sw * cp, dh * wpx * cp, wp, u * n_g * 64, gk * 64, n_g * 64, kh, gk // 16, acc,
                    p0 * ncols + 16 * u, ncols)
                u += 1
    dequant_line(acc, ow_n, zc, mul, bias, dst, off)


@jit(inline="always")
def _acc_rows16(ow_n):
    return -(-ow_n // 16) * 16


@jit(inline="always")
def _amx_start():
    """Configure the tiles (every task: a parallel task may run on any thread): int8_amx's
    TILE_CONFIG."""
    configure_tiles(TILE_CONFIG)


@jit(inline="always")
def _amx_end():
    release_tiles()


def _build():
    """int8_conv._conv with this module's line product and hooks (its own function object and
    qualified name, so that its on-disk cache is its own)."""
    base = int8_conv._conv
    names = dict(vars(int8_conv), _line=_line_amx, _acc_rows=_acc_rows16, _task_start=_amx_start,
                 _task_end=_amx_end)
    fn = pytypes.FunctionType(base.__code__, names, "_conv_amx", base.__defaults__, base.__closure__)
    fn.__qualname__ = "_conv_amx"
    fn.__doc__ = base.__doc__
    return fn


int8_conv_amx_nhwc, int8_conv_amx_nhwc_parallel = both(_build(), error_model="numpy")


def kw64(kwb):
    """A kernel row's inputs in the tiles' weight layout: ``kwb`` rounded up to 64."""
    return -(-kwb // 64) * 64


def slack(sw, cp, kwb):
    """Bytes past the padded input that the last tiles of an image may read (see the module notes)."""
    return 16 * sw * cp + kw64(kwb) + 64
