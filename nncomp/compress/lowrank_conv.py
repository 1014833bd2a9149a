"""The linear algebra of low-rank factors: truncated SVD, reduced-rank regression, Jaderberg's scheme 2.

Dense layers and the channel scheme factor a weight matrix ``(n_out, n_in)`` (a conv's is
``(N, kh*kw*C)``): filter reconstruction is its truncated SVD; data reconstruction is reduced-rank
ridge regression of the layer's outputs on its calibration inputs (whiten by the input covariance,
truncate, unwhiten: closed form), anchored at the original weight so that its data error is never
above the truncated SVD's.

Scheme 2 replaces a k x k convolution by a k x 1 convolution into K channels, then 1 x k.
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

Arithmetic is float64 (except the float32 products of the randomized SVD for very large matrices);
the caller converts the factors to float32 layers.
"""
import numpy as np
from scipy import linalg

# Ridge strength relative to the mean diagonal of a Gram matrix (keeps singular systems solvable).
DAMP = 1e-6


# ------------------------------------------------------------------ matrices (dense, channel scheme)
# Matrices with at least this many entries get a randomized truncated SVD when the rank is small.
RANDOMIZED_MIN_SIZE = 1 << 24


def truncated_svd(a, rank, *, seed=0):
    """``(u[:, :rank], s[:rank], vt[:rank])`` of a float matrix (float64 results).

    Exact (LAPACK) unless ``a`` has at least RANDOMIZED_MIN_SIZE entries and ``rank`` is at most a
    quarter of ``min(a.shape)``: then Halko et al.'s randomized range finder (oversampling by
    ``max(10, rank // 10)``, three power iterations with re-orthonormalisation, seeded), whose
    float32 products keep a VGG-16 fc6 factorization to seconds.
    """
    m, n = a.shape
    if a.size < RANDOMIZED_MIN_SIZE or rank > min(m, n) // 4:
        u, s, vt = np.linalg.svd(np.asarray(a, np.float64), full_matrices=False)
        return u[:, :rank], s[:rank], vt[:rank]
    a = np.asarray(a, np.float32)
    k = min(min(m, n), rank + max(10, rank // 10))
    rng = np.random.default_rng(seed)
    q = np.linalg.qr((a @ rng.standard_normal((n, k), dtype=np.float32)).astype(np.float64))[0]
    for _ in range(3):
        z = np.linalg.qr((a.T @ q.astype(np.float32)).astype(np.float64))[0]
        q = np.linalg.qr((a @ z.astype(np.float32)).astype(np.float64))[0]
    b = (q.T.astype(np.float32) @ a).astype(np.float64)
    ub, s, vt = np.linalg.svd(b, full_matrices=False)
    return (q @ ub)[:, :rank], s[:rank], vt[:rank]


def svd_factors(w, rank, gain=None, seed=0):
    """Truncated SVD ``w ~= u @ v``: ``u (n_out, rank)``, ``v (rank, n_in)``, balanced.

    ``gain (n_out,)`` weights the rows of the error (a following BatchNorm's scale).
    """
    a = np.asarray(w, np.float64) * gain[:, None] if gain is not None else w
    u, s, vt = truncated_svd(a, rank, seed=seed)
    root = np.sqrt(s)
    u, v = u * root, root[:, None] * vt
    if gain is not None:
        u = u / gain[:, None]
    return _balance(u, v)


def rrr_parts(w, x, y, gain=None):
    """Reduced-rank ridge regression of ``y`` on ``x`` anchored at ``w``, centered.

    Returns ``(b, eig, vecs)``: ``b (n_in, n_out)`` solves ``min ||y - x b||^2 + lam ||b - w.T||^2``
    (``lam = DAMP`` times the mean input variance); ``eig`` (descending) and ``vecs (n_out, n_out)``
    diagonalise the (gain-weighted) covariance of the fitted outputs. The best rank-r weight is
    ``diag(1/gain) V_r V_r.T diag(gain) b.T`` (Reinsel and Velu's reduced-rank regression).
    """
    w = np.asarray(w, np.float64)
    x = np.asarray(x, np.float64)
    x = x - x.mean(axis=0)
    y = np.asarray(y, np.float64)
    y = y - y.mean(axis=0)
    s = x.T @ x
    lam = DAMP * max(np.trace(s) / s.shape[0], 1e-12)
    s[np.diag_indices_from(s)] += lam
    c = x.T @ y + lam * w.T
    b = linalg.solve(s, c, assume_a="pos")
    g = c.T @ b
    if gain is not None:
        g = g * gain[:, None] * gain[None, :]
    eig, vecs = np.linalg.eigh((g + g.T) / 2)
    order = np.argsort(eig)[::-1]
    return b, np.maximum(eig[order], 0), vecs[:, order]


def rrr_factors(w, bias, x, y, rank, gain=None):
    """Data reconstruction of ``w (n_out, n_in)`` with ``bias``: ``(u, v, new_bias)``.

    Minimises ``||y + bias - x (u v).T - new_bias||^2 + lam ||u v - w||^2`` over rank-``rank``
    products (gain-weighted outputs): the data error is never above the truncated SVD's.
    ``x (rows, n_in)`` are the layer's inputs on calibration data (the partly compressed model's own
    activations), ``y (rows, n_out)`` the original layer's outputs without bias.
    """
    b, _, vecs = rrr_parts(w, x, y, gain)
    q = vecs[:, :rank]
    g = np.ones(q.shape[0]) if gain is None else gain
    u, v = _balance(q / g[:, None], q.T @ (g[:, None] * b.T))
    base = np.zeros(q.shape[0]) if bias is None else np.asarray(bias, np.float64)
    shift = np.asarray(y, np.float64).mean(axis=0) - (np.asarray(x, np.float64).mean(axis=0) @ v.T) @ u.T
    return u, v, base + shift


# ------------------------------------------------------------------ per layer
# ``plan`` (lowrank._Plan) carries: scheme, w (float32 weight matrix), layer, shape (input h, w, c),
# gain (output weights or None), max_rank. ``data`` is None or (input rows, target outputs).
def plan_spectrum(plan, data):
    """Squared singular values (filter) or captured output energies (data) of the plan's matrix."""
    if plan.scheme == "jaderberg":
        kh, kw = plan.layer.kernel_size
        chol = None
        if data is not None:
            try:
                chol = PatchProblem(data[0], data[1], kh, kw, plan.shape[2], plan.gain).vertical_cholesky()
            except np.linalg.LinAlgError:
                chol = None
        return jaderberg_spectrum(plan.w, kh, kw, plan.shape[2], plan.gain, chol)[0]
    if data is None:
        a = plan.w * plan.gain[:, None].astype(np.float32) if plan.gain is not None else plan.w
        if a.size < RANDOMIZED_MIN_SIZE:
            return np.linalg.svd(a.astype(np.float64), compute_uv=False) ** 2
        g = (a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a).astype(np.float64)  # big: the Gram's eigenvalues
        return np.maximum(np.linalg.eigvalsh(g)[::-1], 0)
    return rrr_parts(plan.w, data[0], data[1], plan.gain)[1][:plan.max_rank]


def plan_factors(plan, rank, data, iterations, seed):
    """``(first_weight, second_weight, bias)`` as float64 arrays."""
    b = plan.layer.bias
    if plan.scheme == "jaderberg":
        kh, kw = plan.layer.kernel_size
        c = plan.shape[2]
        if data is None:
            v, h = jaderberg_filter(plan.w, rank, kh, kw, c, plan.gain)
            return v, h, b
        problem = PatchProblem(data[0], data[1], kh, kw, c, plan.gain)
        v, h, bias, _ = jaderberg_data(plan.w, b, rank, problem, iterations=iterations)
        return v, h, bias
    if data is None:
        u, v = svd_factors(plan.w, rank, plan.gain, seed)
        return v, u, b
    u, v, bias = rrr_factors(plan.w, b, data[0], data[1], rank, plan.gain)
    return v, u, bias


# ------------------------------------------------------------------ scheme 2
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
    h = right.reshape(k, n, kw).transpose(1, 2, 0).reshape(n, kw * k)
    return np.ascontiguousarray(left.T), np.ascontiguousarray(h)


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
