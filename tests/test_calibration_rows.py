"""The patch rows a layer-wise refit subsamples, gathered alone (nncomp.compress.calibration.patch_rows),
equal those rows of the whole patch matrix the im2col kernel builds, for any window geometry."""
import numpy as np
from hypothesis import given, settings, strategies as st

import nncomp as nc
from nncomp.compress.calibration import patch_rows, rows_of, sample_rows
from nncomp.kernels.conv import im2col_nhwc
from nncomp.layers.base import Window


def _whole(x, window, oh, ow):
    n, _, _, c = x.shape
    out = np.empty((n * oh * ow, window.patch * c), np.float32)
    im2col_nhwc(np.ascontiguousarray(x), *window.args, oh, ow, 0, n * oh, out)
    return out


@settings(max_examples=150, deadline=None)
@given(k=st.tuples(st.integers(1, 4), st.integers(1, 4)), s=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       d=st.tuples(st.integers(1, 2), st.integers(1, 2)), pad=st.tuples(*[st.integers(0, 3)] * 4),
       n=st.integers(1, 3), hw=st.tuples(st.integers(1, 9), st.integers(1, 9)), c=st.integers(1, 4),
       share=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_gathered_patch_rows_equal_the_whole_matrix_rows(k, s, d, pad, n, hw, c, share, seed):
    window = Window(k, s, pad, d)
    oh, ow = window.out_size(*hw)
    if oh < 1 or ow < 1:
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *hw, c)).astype(np.float32)
    rows = np.sort(rng.choice(n * oh * ow, int(share * n * oh * ow), replace=False))
    got = patch_rows(x, window, oh, ow, rows)
    assert got.dtype == np.float32 and np.array_equal(got, _whole(x, window, oh, ow)[rows])


def test_rows_of_a_conv_layer_subsampled_is_the_whole_matrix_subsampled():
    rng = np.random.default_rng(3)
    layer = nc.Conv2D(rng.standard_normal((6, 9 * 4)).astype(np.float32), None, in_channels=4, kernel_size=3,
                      stride=2, padding=1)
    x = rng.standard_normal((40, 11, 9, 4)).astype(np.float32)
    whole = rows_of(layer, x)
    rows = sample_rows(whole.shape[0], 0, max_rows=100)
    assert whole.shape[0] > 200 and np.array_equal(rows_of(layer, x, rows), whole[rows])
