"""NumPy twin of the Winograd F(m x m, r x r) kernel (nncomp/kernels/conv_winograd.py: F(2x2, 3x3), and the
tiles of nncomp/kernels/winograd_tiles.py: F(4x4, 3x3), F(2x2, 5x5)): the same three passes (input
transform, span**2 products, output transform) in float64, written with the matrices."""
import numpy as np

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
BT4 = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
AT4 = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)
AT25 = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 1]], np.float64)
# (m, r) -> (B^T, A^T): F(2x2, 5x5) shares F(4x4, 3x3)'s points, so its B^T
TILES = {(2, 3): (BT, AT), (4, 3): (BT4, AT4), (2, 5): (BT4, AT25)}


def winograd_nhwc(xp, wt, bias, oh, ow, co, pool=0, m=2):
    """``xp`` (n, oh + r - 1, ow + r - 1, c) padded; ``wt`` (span**2, cp, cop) transformed (span = m + r
    - 1); (n, oh, ow, co) out, or its 2x2 max-pool (floor) with ``pool=2``."""
    s = int(round(np.sqrt(wt.shape[0])))
    r = s - m + 1
    bt, at = TILES[m, r]
    n, _, _, c = xp.shape
    th, tw = -(-oh // m), -(-ow // m)
    x = np.zeros((n, m * th + r - 1, m * tw + r - 1, c))
    x[:, :oh + r - 1, :ow + r - 1] = xp
    # every tile's s x s input: (n, th, tw, s, s, c)
    d = np.stack([np.stack([x[:, i:i + m * th:m, q:q + m * tw:m] for q in range(s)], 3) for i in range(s)], 3)
    u = np.einsum("ar,nijrsc,bs->nijabc", bt, d, bt).reshape(n, th, tw, s * s, c)
    y = np.einsum("nijxc,xck->nijxk", u, np.asarray(wt, np.float64)[:, :c, :co]).reshape(n, th, tw, s, s, co)
    y = np.einsum("ar,nijrsk,bs->nijabk", at, y, at)               # (n, th, tw, m, m, co)
    y = y.transpose(0, 1, 3, 2, 4, 5).reshape(n, m * th, m * tw, co)[:, :oh, :ow] + np.asarray(bias[:co])
    if pool:
        ph, pw = oh // 2, ow // 2
        y = y[:, :2 * ph, :2 * pw].reshape(n, ph, 2, pw, 2, co).max(axis=(2, 4))
    return y
