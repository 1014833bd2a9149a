"""NumPy twin of the Winograd F(2x2, 3x3) kernel (nncomp/kernels/conv_winograd.py): the same three
passes (input transform, 16 products, output transform) in float64, written with the matrices."""
import numpy as np

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)


def winograd_nhwc(xp, wt, bias, oh, ow, co, pool=0):
    """``xp`` (n, oh + 2, ow + 2, c) padded; ``wt`` (16, cp, cop) transformed; (n, oh, ow, co) out,
    or its 2x2 max-pool (floor) with ``pool=2``."""
    n, _, _, c = xp.shape
    th, tw = -(-oh // 2), -(-ow // 2)
    x = np.zeros((n, 2 * th + 2, 2 * tw + 2, c))
    x[:, :oh + 2, :ow + 2] = xp
    # every tile's 4x4 input: (n, th, tw, 4, 4, c)
    d = np.stack([np.stack([x[:, r:r + 2 * th:2, s:s + 2 * tw:2] for s in range(4)], 3) for r in range(4)], 3)
    u = np.einsum("ar,nijrsc,bs->nijabc", BT, d, BT).reshape(n, th, tw, 16, c)
    m = np.einsum("nijxc,xck->nijxk", u, np.asarray(wt, np.float64)[:, :c, :co]).reshape(n, th, tw, 4, 4, co)
    y = np.einsum("ar,nijrsk,bs->nijabk", AT, m, AT)               # (n, th, tw, 2, 2, co)
    y = y.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * th, 2 * tw, co)[:, :oh, :ow] + np.asarray(bias[:co])
    if pool:
        ph, pw = oh // 2, ow // 2
        y = y[:, :2 * ph, :2 * pw].reshape(n, ph, 2, pw, 2, co).max(axis=(2, 4))
    return y
