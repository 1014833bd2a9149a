"""AVX-512 VNNI fast path for u8 x s8 -> int32 matrix products (``vpdpbusd``).

LLVM never emits ``vpdpbusd`` (64 unsigned-byte x signed-byte multiply-adds per instruction) from
plain loops, so the micro-kernels here are written in LLVM IR through ``numba.extending.intrinsic``:
a block of ``R`` weight rows x ``C`` activation rows is accumulated in ``R*C`` zmm registers over
64-byte chunks, then each register is summed with ``llvm.vector.reduce.add.v16i32``.

Contract (shared with the portable ``quant.int8_matmul_u8s8``, which gives bit-identical results):
``out[i, o] += sum(int32(xu[i, k]) * int32(w[o, k]) for k in [k0, k1))`` in int32, where
``(k1 - k0) % 64 == 0`` and ``k1 - k0 <= 65536`` (255 * 128 * 65536 < 2**31: no lane or sum can
overflow, so integer results are exact and independent of the order of summation).
Callers check :data:`HAVE_VNNI` first: on a CPU without ``avx512_vnni`` the intrinsic would not even
compile. Signed activations use the zero-point trick: ``xu = x + 128`` (uint8) and the caller
subtracts ``128 * colsum(w)``.
"""
import llvmlite.binding as llvm
import numba
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import both

# k-block (bytes) per micro-kernel call: the R weight rows of a block (4 x 4 KiB) stay in L1 while
# every activation row block streams past them.
KBLOCK = 4096


def _host_has_vnni():
    """True where the JIT targets this CPU and the CPU has AVX-512F and AVX-512 VNNI."""
    cfg = numba.core.config
    if cfg.DISABLE_JIT or (cfg.CPU_NAME not in (None, "host")):
        return False
    try:
        feats = llvm.get_host_cpu_features()
    except Exception:  # noqa: BLE001 - unknown host: use the portable kernel
        return False
    return bool(feats.get("avx512f") and feats.get("avx512vnni"))


HAVE_VNNI = _host_has_vnni()


def _declare(module, name, fnty):
    fn = module.globals.get(name)
    return fn if fn is not None else ir.Function(module, fnty, name)


def _make_block(R, C):
    """Intrinsic ``block(xu, w, i0, o0, k0, nchunks, out)``: add an R x C block of dot products.

    ``out[i0 + c, o0 + r] += sum_{k0 <= k < k0 + 64*nchunks} xu[i0 + c, k] * w[o0 + r, k]``.
    """

    @intrinsic
    def block(typingctx, xu, w, i0, o0, k0, nchunks, out):
        sig = types.void(xu, w, i0, o0, k0, nchunks, out)

        def codegen(context, builder, signature, args):
            xa_t, wa_t, _, _, _, _, out_t = signature.args
            xa = context.make_array(xa_t)(context, builder, args[0])
            wa = context.make_array(wa_t)(context, builder, args[1])
            oa = context.make_array(out_t)(context, builder, args[6])
            intp = context.get_value_type(types.intp)
            i0_, o0_, k0_, n_ = (context.cast(builder, v, t, types.intp)
                                 for v, t in zip(args[2:6], signature.args[2:6]))
            x_cols = cgutils.unpack_tuple(builder, xa.shape, 2)[1]
            w_cols = cgutils.unpack_tuple(builder, wa.shape, 2)[1]
            out_cols = cgutils.unpack_tuple(builder, oa.shape, 2)[1]
            i32, i8 = ir.IntType(32), ir.IntType(8)
            v16 = ir.VectorType(i32, 16)
            vptr = v16.as_pointer()
            dpbusd = _declare(builder.module, "llvm.x86.avx512.vpdpbusd.512",
                              ir.FunctionType(v16, [v16, v16, v16]))
            reduce = _declare(builder.module, "llvm.vector.reduce.add.v16i32", ir.FunctionType(i32, [v16]))

            def row_ptr(data, cols, row):
                return builder.gep(data, [builder.add(builder.mul(row, cols), k0_)])

            xrows = [row_ptr(xa.data, x_cols, builder.add(i0_, intp(c))) for c in range(C)]
            wrows = [row_ptr(wa.data, w_cols, builder.add(o0_, intp(r))) for r in range(R)]
            zero = ir.Constant(v16, None)
            pre = builder.block
            loop = builder.append_basic_block("vnni_loop")
            done = builder.append_basic_block("vnni_done")
            builder.cbranch(builder.icmp_signed(">", n_, intp(0)), loop, done)

            builder.position_at_end(loop)
            idx = builder.phi(intp)
            idx.add_incoming(intp(0), pre)
            accs = []
            for _ in range(R * C):
                a = builder.phi(v16)
                a.add_incoming(zero, pre)
                accs.append(a)
            off = builder.mul(idx, intp(64))

            def load(base):
                p = builder.bitcast(builder.gep(base, [off]), vptr)
                return builder.load(p, align=1)

            xv = [load(p) for p in xrows]
            wv = [load(p) for p in wrows]
            new = []
            for r in range(R):
                for c in range(C):
                    new.append(builder.call(dpbusd, [accs[r * C + c], xv[c], wv[r]]))
            nxt = builder.add(idx, intp(1))
            end = builder.block
            idx.add_incoming(nxt, end)
            for a, v in zip(accs, new):
                a.add_incoming(v, end)
            builder.cbranch(builder.icmp_signed("<", nxt, n_), loop, done)

            builder.position_at_end(done)
            fins = []
            for v in new:
                fin = builder.phi(v16)
                fin.add_incoming(zero, pre)
                fin.add_incoming(v, end)
                fins.append(fin)
            for r in range(R):
                for c in range(C):
                    total = builder.call(reduce, [fins[r * C + c]])
                    pos = builder.add(builder.mul(builder.add(i0_, intp(c)), out_cols),
                                      builder.add(o0_, intp(r)))
                    ptr = builder.gep(oa.data, [pos])
                    builder.store(builder.add(builder.load(ptr), total), ptr)
            return context.get_dummy_value()

        return sig, codegen

    block.__name__ = f"_block_{R}x{C}"
    return block


_b4x4, _b4x3, _b4x2, _b4x1 = (_make_block(4, c) for c in (4, 3, 2, 1))
_b1x4, _b1x3, _b1x2, _b1x1 = (_make_block(1, c) for c in (4, 3, 2, 1))


def _matmul_vnni(xu, w, k0, k1, out):
    """VNNI u8 x s8 product: ``out[i, o] += sum_{k0 <= k < k1} xu[i, k] * w[o, k]`` (int32).

    IN  xu (n, kx) uint8 C-contiguous; w (n_out, kw) int8 C-contiguous; 0 <= k0 <= k1 <= min(kx, kw),
        (k1 - k0) % 64 == 0, k1 - k0 <= 65536.
    OUT out (n, n_out) int32, added to.
    """
    n = xu.shape[0]
    n_out = w.shape[0]
    n_blocks = (n_out + 3) // 4
    for b in prange(n_blocks):
        o0 = b * 4
        rows = min(4, n_out - o0)
        for kb in range(k0, k1, KBLOCK):
            nch = (min(kb + KBLOCK, k1) - kb) // 64
            i = 0
            while i + 4 <= n:
                if rows == 4:
                    _b4x4(xu, w, i, o0, kb, nch, out)
                else:
                    for o in range(o0, o0 + rows):
                        _b1x4(xu, w, i, o, kb, nch, out)
                i += 4
            tail = n - i
            if rows == 4:
                if tail == 3:
                    _b4x3(xu, w, i, o0, kb, nch, out)
                elif tail == 2:
                    _b4x2(xu, w, i, o0, kb, nch, out)
                elif tail == 1:
                    _b4x1(xu, w, i, o0, kb, nch, out)
            else:
                for o in range(o0, o0 + rows):
                    if tail == 3:
                        _b1x3(xu, w, i, o, kb, nch, out)
                    elif tail == 2:
                        _b1x2(xu, w, i, o, kb, nch, out)
                    elif tail == 1:
                        _b1x1(xu, w, i, o, kb, nch, out)


int8_matmul_u8s8_vnni, int8_matmul_u8s8_vnni_parallel = both(_matmul_vnni)
