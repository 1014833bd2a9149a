"""Jaderberg's scheme 2 for a k x k convolution: a k x 1 convolution into K channels, then 1 x k.

Notation (nncomp's conv weight matrices, patch columns ordered (kh, kw, c)):

- the original weight ``w`` is ``(N, kh*kw*C)``;
- the vertical filters ``v`` are ``(K, kh*C)`` (a ``(kh, 1)`` conv, columns ``(i, c)``);
- the horizontal filters ``h`` are ``(N, kw*K)`` (a ``(1, kw)`` conv, columns ``(j, k)``).

The pair computes ``W[n, i, j, c] = sum_k h[n, j, k] v[k, i, c]``: the kernel reshaped to the
``(kh*C, N*kw)`` matrix ``M[(i, c), (n, j)]`` is ``v.T @ h'`` with rank K, so the best such kernel
in the Frobenius norm is the truncated SVD of M (filter reconstruction, closed form).

Data reconstruction fits the pair to the layer's outputs on calibration patches: the horizontal
filters (and bias) by least squares given the vertical ones, the vertical filters by conjugate
gradients given the horizontal ones (the output is linear in each), alternating. Every step is a
ridge problem anchored at the current filters or a CGLS run from them, so the data error never
rises above that of the starting point, which is the better of the filter reconstruction and an
input-whitened one.

All arithmetic is float64; the caller converts the factors to float32 layers.
"""
import numpy as np
from scipy import linalg

# Ridge strength relative to the mean diagonal of a Gram matrix (keeps singular systems solvable).
DAMP = 1e-6


def kernel_matrix(w, kh, kw, c):
    """``(N, kh*kw*C)`` conv weight -> ``(kh*C, N*kw)`` matrix ``M[(i, c), (n, j)]``."""
    n = w.shape[0]
    return np.asarray(w, np.float64).reshape(n, kh, kw, c).transpose(1, 3, 0, 2).reshape(kh * c, n * kw)


def pair_kernel(v, h, kh, kw, c):
    """The ``(N, kh*kw*C)`` kernel that the pair ``(v, h)`` computes."""
    k, n = v.shape[0], h.shape[0]
    return np.einsum("njk,kic->nijc", h.reshape(n, kw, k), v.reshape(k, kh, c)).reshape(n, kh * kw * c)


def _balance(left, right):
    """Rescale factor k of ``left (m, K)`` and ``right (K, n)`` so both have the same norm."""
    a = np.linalg.norm(left, axis=0)
    b = np.linalg.norm(right, axis=1)
    s = np.sqrt(np.where((a > 0) & (b > 0), b / np.where(a > 0, a, 1), 1.0))
    return left * s, right / s[:, None]


def _from_matrix_factors(left, right, n, kw):
    """``left (kh*C, K)``, ``right (K, N*kw)`` -> ``(v (K, kh*C), h (N, kw*K))``."""
    k = left.shape[1]
    left, right = _balance(left, right)
    return np.ascontiguousarray(left.T), np.ascontiguousarray(right.reshape(k, n, kw).transpose(1, 2, 0).reshape(n, kw * k))


def jaderberg_spectrum(w, kh, kw, c, gain=None, chol=None):
    """Squared singular values of the (weighted) kernel matrix, and its SVD.

    ``gain (N,)`` weights output channels (e.g. the scale of a following BatchNorm); ``chol`` is the
    lower Cholesky factor ``L`` of a vertical-patch covariance: the SVD is then of ``L.T @ M`` (input
    whitening).
    """
    n = w.shape[0]
    m = kernel_matrix(w, kh, kw, c)
    if gain is not None:
        m = m * np.repeat(gain, kw)[None, :]
    if chol is not None:
        m = chol.T @ m
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    return s ** 2, (u, s, vt)


def jaderberg_filter(w, rank, kh, kw, c, gain=None, chol=None, svd=None):
    """Vertical and horizontal filters of the rank-``rank`` truncated SVD (see jaderberg_spectrum)."""
    n = w.shape[0]
    if svd is None:
        _, svd = jaderberg_spectrum(w, kh, kw, c, gain, chol)
    u, s, vt = svd
    root = np.sqrt(s[:rank])
    left, right = u[:, :rank] * root, root[:, None] * vt[:rank]
    if chol is not None:
        left = linalg.solve_triangular(chol.T, left, lower=False)
    if gain is not None:
        right = right / np.repeat(gain, kw)[None, :]
    return _from_matrix_factors(left, right, n, kw)


class PatchProblem:
    """Centered calibration data of one conv: patches split by horizontal tap, and targets.

    Parameters
    ----------
    patches : ndarray, shape (rows, kh*kw*C)
        im2col rows of the layer's input (the partly compressed model's own activations).
    targets : ndarray, shape (rows, N)
        The original layer's outputs without bias on the original model's activations.
    kh, kw, c : int
    gain : ndarray (N,) or None
        Output-channel weights of the error (a following BatchNorm's scale).
    """

    def __init__(self, patches, targets, kh, kw, c, gain=None):
        p = np.asarray(patches, np.float64).reshape(-1, kh, kw, c)
        self.mean_patch = p.mean(axis=0)
        p = p - self.mean_patch
        self.taps = [np.ascontiguousarray(p[:, :, j, :].reshape(-1, kh * c)) for j in range(kw)]
        y = np.asarray(targets, np.float64)
        self.mean_target = y.mean(axis=0)
        self.targets = y - self.mean_target
        self.kh, self.kw, self.c = kh, kw, c
        self.gain = np.ones(y.shape[1]) if gain is None else np.asarray(gain, np.float64)

    def vertical_cholesky(self):
        """Lower Cholesky factor of the (damped) covariance of vertical patches, over all taps."""
        s = sum(t.T @ t for t in self.taps)
        s /= max(1, len(self.taps) * self.taps[0].shape[0])
        s[np.diag_indices_from(s)] += 1e-3 * max(np.trace(s) / s.shape[0], 1e-12)
        return np.linalg.cholesky(s)

    def _z(self, v):
        """Vertical outputs for every tap, side by side: ``(rows, kw*K)``, columns (j, k)."""
        return np.concatenate([t @ v.T for t in self.taps], axis=1)

    def output(self, v, h):
        """Centered outputs of the pair ``(rows, N)``."""
        return self._z(v) @ h.T

    def error(self, v, h):
        """Weighted squared error ``sum_n gain_n^2 ||y_n - y'_n||^2`` with the best bias."""
        return float(np.sum(((self.targets - self.output(v, h)) * self.gain) ** 2))

    def fit_horizontal(self, v, h0):
        """Least-squares horizontal filters given ``v``, ridge-anchored at ``h0`` (never worse than h0)."""
        z = self._z(v)
        g = z.T @ z
        lam = DAMP * max(np.trace(g) / g.shape[0], 1e-12)
        g[np.diag_indices_from(g)] += lam
        rhs = z.T @ self.targets + lam * h0.T
        try:
            return np.ascontiguousarray(linalg.solve(g, rhs, assume_a="pos").T)
        except (linalg.LinAlgError, ValueError):
            return h0

    def fit_vertical(self, v0, h, steps):
        """``steps`` CGLS iterations on the vertical filters given ``h``, from ``v0`` (monotone)."""
        k, n, kw = v0.shape[0], h.shape[0], self.kw
        hj = [h.reshape(n, kw, k)[:, j, :] * self.gain[:, None] for j in range(kw)]
        fwd = lambda v: sum(t @ v.T @ hh.T for t, hh in zip(self.taps, hj))  # noqa: E731
        adj = lambda r: sum(hh.T @ (r.T @ t) for t, hh in zip(self.taps, hj))  # noqa: E731
        v = v0.copy()
        r = self.targets * self.gain - fwd(v)
        s = adj(r)
        p, gamma = s.copy(), float(np.sum(s * s))
        for _ in range(steps):
            if gamma <= 0:
                break
            q = fwd(p)
            qq = float(np.sum(q * q))
            if not qq > 0:
                break
            alpha = gamma / qq
            v += alpha * p
            r -= alpha * q
            s = adj(r)
            gamma, old = float(np.sum(s * s)), gamma
            p = s + (gamma / old) * p
        return v

    def bias(self, v, h, b):
        """Bias that makes the pair's mean output equal the original layer's on this data."""
        mp = self.mean_patch
        z = np.concatenate([v @ mp[:, j, :].reshape(-1) for j in range(self.kw)])
        base = np.zeros(h.shape[0]) if b is None else np.asarray(b, np.float64)
        return base + self.mean_target - h @ z


def jaderberg_data(w, b, rank, problem, *, iterations=3, cg_steps=8):
    """Data reconstruction of scheme 2 on a PatchProblem; returns ``(v, h, bias, errors)``.

    ``errors`` records the weighted data error after each stage (filter start, whitened start,
    alternations); the result is the last and lowest.
    """
    kh, kw, c = problem.kh, problem.kw, problem.c
    gain = problem.gain
    starts = [jaderberg_filter(w, rank, kh, kw, c, gain)]
    try:
        starts.append(jaderberg_filter(w, rank, kh, kw, c, gain, chol=problem.vertical_cholesky()))
    except np.linalg.LinAlgError:
        pass
    best, errors = None, []
    for v, h in starts:
        h = problem.fit_horizontal(v, h)
        e = problem.error(v, h)
        errors.append(e)
        if best is None or e < best[2]:
            best = (v, h, e)
    v, h, e = best
    for _ in range(iterations):
        v_new = problem.fit_vertical(v, h, cg_steps)
        h_new = problem.fit_horizontal(v_new, h)
        e_new = problem.error(v_new, h_new)
        errors.append(e_new)
        if not e_new < e:
            break
        v, h, e = v_new, h_new, e_new
    n = h.shape[0]
    v, h = _from_matrix_factors(v.T, h.reshape(n, kw, rank).transpose(2, 0, 1).reshape(rank, n * kw), n, kw)
    return v, h, problem.bias(v, h, b), errors
