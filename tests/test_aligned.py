"""64-byte aligned arrays (nncomp/kernels/aligned.py) and the kernel operands made from them."""
import numpy as np
from hypothesis import given, strategies as st

import nncomp as nc
from nncomp.kernels import aligned, layout
from nncomp.kernels.conv_chain import _empty4
from nncomp.layers.conv_blocked import blocked_step, blocked_weights, winograd_weights
from nncomp.matrices.int8_panels import pack_panels
from nncomp.layers.workspace import scratch


@given(shape=st.lists(st.integers(0, 70), min_size=1, max_size=3),
       dtype=st.sampled_from([np.float32, np.int8, np.uint8, np.int32, np.float64]))
def test_empty_and_zeros_are_aligned_contiguous_and_the_right_size(shape, dtype):
    for make in (aligned.empty, aligned.zeros):
        a = make(shape, dtype)
        assert a.shape == tuple(shape) and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
        assert aligned.is_aligned(a)
        if a.nbytes >= aligned.SMALL:
            assert a.ctypes.data % aligned.ALIGN == 0
    assert not aligned.zeros(shape, dtype).any()


@given(size=st.integers(0, 5000), start=st.integers(0, 40), step=st.integers(1, 3),
       dtype=st.sampled_from([np.float32, np.int8, np.uint8, np.int64]))
def test_address_is_the_data_pointer_of_any_array_and_view(size, start, step, dtype):
    import reference
    base = np.zeros(size + 64, dtype)
    for a in (base, base[start:start + size:step], base[start:start + size].reshape(-1, 1)):
        assert aligned.address(a) == reference.address(a) == a.__array_interface__["data"][0]


def test_empty_keeps_its_memory_alive_and_writable():
    a = aligned.empty((3, 5000))
    a[...] = 7.0
    b = aligned.empty((3, 5000))           # a fresh block: a's must not be reused while a lives
    b[...] = 1.0
    assert (a == 7.0).all() and a.base is not None and aligned.is_aligned(a)


@given(rows=st.integers(1, 300), cols=st.integers(1, 300), offset=st.integers(0, 15), seed=st.integers(0, 2**31))
def test_aligned_copies_only_what_is_not_aligned_and_keeps_the_values(rows, cols, offset, seed):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(rows * cols + 16).astype(np.float32)
    a = base[offset:offset + rows * cols].reshape(rows, cols)        # any start, as NumPy's are
    b = aligned.aligned(a)
    assert np.array_equal(a, b) and b.dtype == np.float32 and aligned.is_aligned(b)
    assert aligned.aligned(b) is b
    t = aligned.aligned(a.T, np.float64)                             # strided input, another dtype
    assert t.flags.c_contiguous and t.dtype == np.float64 and np.array_equal(t, a.T)


def test_the_kernels_operands_are_aligned():
    """The weights the kernels read as vectors (blocked and Winograd layouts, dense rows, int8
    panels), the work buffers, and the outputs of a compiled run and of a step start on a cache line
    (NumPy's own large arrays mostly start 16 bytes past one: the reason for all this)."""
    rng = np.random.default_rng(0)
    line = lambda a: a.ctypes.data % 64 == 0  # noqa: E731
    conv = nc.Conv2D(rng.standard_normal((40, 3 * 3 * 24)).astype(np.float32), None, in_channels=24,
                     kernel_size=(3, 3), padding=1)
    w, _ = blocked_weights(conv)
    assert line(w) and line(winograd_weights(conv))
    dense = nc.matrices.DenseMatrix(rng.standard_normal((300, 784)).astype(np.float32))
    assert line(dense.w)
    assert line(pack_panels(rng.integers(-127, 128, (100, 300)).astype(np.int8), 16))
    assert line(scratch("test_aligned", (3, 1000))) and line(scratch("test_aligned", (7, 3000)))
    assert line(blocked_step(conv, (12, 12, 24), 2, 12, 12)(rng.standard_normal((2, 12, 12, 24)).astype(np.float32)))
    x = rng.standard_normal((2, 12, 12, 24)).astype(np.float32)
    for k in range(2):      # outputs of compiled runs, which allocate in Numba (32 bytes off half the time)
        y = _empty4(2, 12, 12 + k, 24)
        assert line(y) and y.shape == (2, 12, 12 + k, 24) and y.flags.c_contiguous
    assert line(layout.nhwc(rng.standard_normal((2, 3, 40, 40)).astype(np.float32)))   # the input's NHWC copy
