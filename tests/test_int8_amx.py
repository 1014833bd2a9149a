"""The AMX int8 path (nncomp/kernels/int8_amx.py): tile products against the portable kernel, the
activation packing against its NumPy twin, and Int8Matrix results that do not depend on the path."""
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import reference as ref
from nncomp.kernels import int8 as quant, int8_amx as amx, int8_vnni as vnni
from nncomp.matrices.int8 import Int8Matrix, pack_panels

needs_amx = pytest.mark.skipif(not amx.HAVE_AMX, reason="CPU, JIT target or OS without AMX-INT8 tiles")


@given(n=st.integers(0, 70), k=st.integers(0, 300), k0=st.integers(0, 80), seed=st.integers(0, 2**31))
@example(n=16, k=64, k0=0, seed=0)
def test_pack_rows_matches_its_numpy_twin(n, k, k0, seed):
    xu = np.random.default_rng(seed).integers(0, 256, (n, k + k0), dtype=np.uint8)
    got = amx.pack_rows(xu, k0, k0 + k)
    want = ref.amx_pack_rows(xu, k0, k0 + k)
    assert got.shape == want.shape and np.array_equal(got, want)


@needs_amx
@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 100), n_panels=st.integers(1, 3), width=st.sampled_from([16, 32, 48, 64]),
       groups=st.integers(1, 120), k0_groups=st.integers(0, 20), extreme=st.booleans(), seed=st.integers(0, 2**31))
@example(n=16, n_panels=1, width=16, groups=16, k0_groups=0, extreme=True, seed=0)     # one tile exactly
@example(n=96, n_panels=2, width=64, groups=1100, k0_groups=3, extreme=False, seed=1)  # k-blocks, row tiles
def test_amx_matmul_is_bit_identical_to_the_portable_kernel(n, n_panels, width, groups, k0_groups, extreme, seed):
    rng = np.random.default_rng(seed)
    k = 4 * groups
    if extreme:       # every product at its largest magnitude: int32 sums near their limit
        q = np.full((n_panels * width, k), -128, np.int8)
        xu = np.full((n, k), 255, np.uint8)
    else:
        q = rng.integers(-127, 128, (n_panels * width, k), dtype=np.int8)
        xu = rng.integers(0, 256, (n, k), dtype=np.uint8)
    wp = pack_panels(q, width)
    k0 = min(4 * k0_groups, k)
    k1 = int(rng.integers(k0 // 4, groups + 1)) * 4
    start = rng.integers(-1000, 1000, (n, n_panels * width), dtype=np.int32)   # the kernels add to out
    got, want = start.copy(), start.copy()
    amx.matmul(xu, wp, k0, k1, got)
    quant.int8_matmul_u8s8(xu, wp, k0, k1, want)
    assert np.array_equal(got, want)


@needs_amx
@pytest.mark.parametrize("parallel", [False, True])
@settings(max_examples=25, deadline=None)
@given(n=st.integers(16, 90), n_panels=st.integers(1, 5), groups=st.integers(16, 200), k0_groups=st.integers(0, 9),
       seed=st.integers(0, 2**31))
@example(n=37, n_panels=3, groups=50, k0_groups=1, seed=3)
def test_amx_tile_kernel_matches_its_twin_on_whole_tiles_only(parallel, n, n_panels, groups, k0_groups, seed):
    """The tile kernel alone adds rows < 16 T and inputs k0 .. k0 + 64 S, and nothing else."""
    rng = np.random.default_rng(seed)
    xu = rng.integers(0, 256, (n, 4 * groups), dtype=np.uint8)
    wp = pack_panels(rng.integers(-127, 128, (16 * n_panels, 4 * groups), dtype=np.int8), 16)
    k0 = min(4 * k0_groups, 4 * groups - 64)
    xa = amx.pack_rows(xu, k0, 4 * groups)
    out = rng.integers(-1000, 1000, (n, 16 * n_panels), dtype=np.int32)
    want = ref.int8_matmul_u8s8_amx(xa, wp, k0, out)
    kernel = amx.int8_matmul_u8s8_amx_parallel if parallel else amx.int8_matmul_u8s8_amx
    kernel(xa, wp, k0, out, amx.TILE_CONFIG)
    assert np.array_equal(out, want)


@needs_amx
def test_int8_matrix_gives_the_same_bits_with_and_without_amx(monkeypatch):
    rng = np.random.default_rng(7)
    m = Int8Matrix.from_float(rng.standard_normal((300, 1100)).astype(np.float32))
    x = rng.standard_normal((40, 1100)).astype(np.float32)    # 2 tiles + 8 rows; 17 steps + 12 inputs
    assert amx.worth(40, m.code_width, 300)
    with_amx = m.apply(x)
    monkeypatch.setattr(amx, "HAVE_AMX", False)
    assert np.array_equal(with_amx, m.apply(x))


def test_tiles_only_for_products_where_they_paid():
    assert amx.worth(16, 4096, 4096) and amx.worth(64, 1024, 256)
    assert not amx.worth(15, 4096, 4096)             # less than one tile of rows
    assert not amx.worth(64, 784, 300)               # LeNet-300's first layer: VNNI was faster
    assert not amx.worth(3136, 576, 64)              # convolution patches: VNNI was faster


def test_amx_flag_needs_the_isa_and_the_tile_state():
    from nncomp.kernels import isa
    assert isinstance(amx.request_tile_state(), bool)
    if amx.HAVE_AMX:
        assert isa.HAVE_AMX_INT8 and vnni.HAVE_VNNI and amx.request_tile_state()
    cfg = amx.TILE_CONFIG
    assert cfg[0] == 1 and list(cfg[16:32].view("<u2")) == [64] * 8 and list(cfg[48:56]) == [16] * 8
