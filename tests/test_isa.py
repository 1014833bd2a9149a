"""The portable paths (nncomp/kernels/isa.py): every kernel choice that depends on AVX-512 / VNNI has
a path for a CPU without the feature, forced here by compiling for an AVX2 CPU (``NUMBA_CPU_NAME=haswell``
in a child process), and checked bit for bit against this machine's build and against the NumPy twins."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

from conftest import assert_close_f32
from nncomp.kernels import isa

ROOT = Path(__file__).resolve().parents[1]
heavy = pytest.mark.skipif(numba.config.DISABLE_JIT, reason="pure-Python kernels (NUMBA_DISABLE_JIT): too slow")

# Runs in the child and in this process: every format whose kernel choice depends on the ISA, plus the
# CSR tiles (target-independent vectors) and the paths' own flags; outputs and the portable kernels' asm.
CASES = r"""
import json, sys
import numpy as np
from nncomp.kernels import codebook as K, codebook_vpermps, conv_blocked, conv_winograd as W, csr as C, dense_few, dense_stream, int8 as quant, int8_amx, int8_vnni, isa
from nncomp.matrices.csr import CSRMatrix
from nncomp.matrices.codebook import CodebookMatrix
from nncomp.matrices.csr_int8 import CSRInt8Matrix
from nncomp.matrices.int8 import Int8Matrix

F = np.float32                          # the kernels' float scalars (a float64 one compiles another build)
NO_CLIP = (F(-np.inf), F(np.inf))

def inputs():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((70, 1000)).astype(np.float32)
    x = rng.standard_normal((20, 1000)).astype(np.float32)
    w[rng.random(w.shape) < 0.9] = 0
    return rng, w, x

def cases():
    rng, w, x = inputs()
    csr = CSRMatrix.from_dense(w)
    mats = {"int8": Int8Matrix.from_float(w), "csr": csr, "csr_int8": CSRInt8Matrix.from_csr(csr)}
    for bits in (4, 5):
        mats[f"codebook{bits}"] = CodebookMatrix.from_codes(rng.integers(0, 2 ** bits, (37, 300)),
                                                            rng.standard_normal(2 ** bits), bits)
    out = {}
    for name, m in mats.items():
        n_in = m.shape[1]
        for n in (1, 9):
            out[f"{name}/{n}"] = m.apply(np.ascontiguousarray(x[:n, :n_in]))
    # Winograd: 16-float vectors in its IR (two ymm each under AVX2), product tiles sized by the registers
    xp = rng.standard_normal((2, 9, 8, 20)).astype(np.float32)
    wt = W.winograd_weight(rng.standard_normal((40, 20, 3, 3)))
    z = np.zeros(48, np.float32)
    y = np.empty((2, 7, 6, 40), np.float32)
    us, ms = W.work_sizes(7, 6, 32, 48, 2)
    W.winograd_nhwc(xp, 0, 0, 0, 0, wt, z, z, z, False, y, False, *NO_CLIP, 0, F(0), F(0), 3, W.product_pixels(3), 2,
                    np.empty((1, us), np.float32), np.empty((1, ms), np.float32), 0, y, 2)
    out["winograd"] = y
    # the weight-streaming dense product: one fused multiply-add per feature whatever the tile shape
    wd = rng.standard_normal((70, 1000)).astype(np.float32)
    e, xs, ys = np.zeros(0, np.float32), *dense_stream.work_shapes(20, 1000, 70)
    y = np.empty((20, 70), np.float32)
    dense_stream.stream_gemm_parallel(wd, x, e, e, e, np.zeros((0, 70), np.float32), *NO_CLIP, 0, F(0), F(0), 300, 2,
                                      np.empty(xs, np.float32), np.empty(ys, np.float32), y)
    out["stream"] = y
    y = np.empty((7, 70), np.float32)
    dense_few.few_gemm_parallel(wd, x[:7], e, e, e, np.zeros((0, 70), np.float32), *NO_CLIP, 0, F(0), F(0), y)
    out["few"] = y
    return out

def asm_has_zmm():
    found = {}
    for d in (quant.int8_matmul_u8s8, quant.int8_matmul_u8s8_parallel, K.codebook_matmul4,
              K.codebook_matmul4_parallel, K.codebook_matmul8, K.codebook_matmul8_parallel, C.csr_matvec,
              C.csr_matvec_parallel, C.csr_matmul, C.csr_matmul_parallel, W.winograd_nhwc):
        for sig in d.signatures:
            found[d.py_func.__name__] = found.get(d.py_func.__name__, False) or "zmm" in d.inspect_asm(sig)
    return found
"""


def _host(name):
    scope = {}
    exec(CASES, scope)   # noqa: S102 - the same code the child runs
    return scope[name]()


@heavy
def test_avx2_build_takes_its_own_paths_and_matches_this_build_and_the_twins(tmp_path):
    script = CASES + f"""
flags = dict(features=sorted(isa.FEATURES), avx512=isa.HAVE_AVX512, vnni=isa.HAVE_VNNI,
             vpermps=codebook_vpermps.HAVE_AVX512, vnni_mod=int8_vnni.HAVE_VNNI, block=int8_vnni.HAVE_BLOCK, amx=int8_amx.HAVE_AMX, tile=conv_blocked.tile_pixels(1),
             product=W.product_pixels(3))
np.savez({str(tmp_path / "avx2.npz")!r}, **cases())
flags["zmm"] = asm_has_zmm()
print(json.dumps(flags))
"""
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="+avx2,+fma",
               NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT), NNCOMP_KEEP_OPENBLAS_ENV="1")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    flags = json.loads(r.stdout.strip().splitlines()[-1])
    assert flags["features"] == ["avx2", "fma"] and not (flags["avx512"] or flags["vnni"] or flags["vpermps"] or flags["vnni_mod"]
                                                       or flags["amx"])
    assert flags["block"]          # the AVX2 int8 block (kernels/int8_avx2.py): its bits are checked below
    assert flags["tile"] == 6 and flags["product"] == 1     # 16 vector registers: AVX2's own tile widths
    assert flags["zmm"] and not any(flags["zmm"].values()), flags["zmm"]   # compiled for AVX2: no zmm anywhere
    avx2 = dict(np.load(tmp_path / "avx2.npz"))
    host = _host("cases")
    _, w, x = _host("inputs")
    assert set(avx2) == set(host)
    for key, y in host.items():
        if key.startswith(("int8", "codebook", "winograd", "stream", "few")):   # the portable kernels' contract: the fast paths' bits
            assert np.array_equal(avx2[key], y), key
        else:                                         # CSR: fastmath sums (vector width may reorder them)
            n = int(key.split("/")[1])
            exact = x[:n].astype(np.float64) @ w.astype(np.float64).T
            mag = np.abs(x[:n]).astype(np.float64) @ np.abs(w).astype(np.float64).T
            tol = 1.0 if key.startswith("csr/") else 0.05 * np.abs(exact).max()   # csr_int8: its own rounding
            assert_close_f32(avx2[key], exact, mag, 1000, c=tol if key.startswith("csr/") else 1.0,
                             atol=0 if key.startswith("csr/") else tol)
            assert_close_f32(avx2[key], y.astype(np.float64), np.abs(y) + mag, 1000)


@pytest.mark.parametrize("name, features, avx512, vnni", [
    ("haswell", "", False, False), ("znver3", "+avx2,+fma", False, False),
    ("skylake-avx512", "+avx512f", True, False), ("sapphirerapids", "+avx512f,+avx512vnni,+amx-int8", True, True),
    ("host", "+avx512f,-avx512f,+avx512vnni", False, False)])
def test_jit_feature_lists_count_only_the_listed_features(monkeypatch, name, features, avx512, vnni):
    monkeypatch.setattr(numba.core.config, "CPU_NAME", name)
    monkeypatch.setattr(numba.core.config, "CPU_FEATURES", features)
    feats = isa.target_features()
    assert ("avx512f" in feats) == avx512 and ("avx512f" in feats and "avx512vnni" in feats) == vnni
    monkeypatch.setattr(numba.core.config, "DISABLE_JIT", True)
    assert isa.target_features() == frozenset()


def test_without_a_feature_list_the_probe_follows_numba_to_the_host(monkeypatch):
    import llvmlite.binding as llvm
    monkeypatch.setattr(numba.core.config, "CPU_NAME", "haswell")     # Numba still uses the host's features
    monkeypatch.setattr(numba.core.config, "CPU_FEATURES", None)
    host = {k for k, v in llvm.get_host_cpu_features().items() if v}
    assert isa.target_features() == host
    assert isa.HAVE_VNNI == ({"avx512f", "avx512vnni"} <= isa.FEATURES) and isa.HAVE_AVX512 == ("avx512f" in isa.FEATURES)
    assert isa.HAVE_AMX_INT8 == ({"amx-tile", "amx-int8"} <= isa.FEATURES)
