"""Fit the float32 error function of nncomp/kernels/erf.py: ``erf(x) = x P(x^2) / Q(x^2)`` on [0, 4],
``P`` of degree 6, ``Q`` of degree 5 with ``Q(0) = 1``, by least squares on the relative error against
float64 ``scipy.special.erf``, reweighted by the previous ``1 / Q`` (so the rational error, not the
linearized one, is minimized); then each candidate pair of degrees evaluated in float32 as the kernel
does (Horner, x clamped to [-4, 4]) on 4,000,001 points of [-6, 6], in units in the last place.

    python tools/fit_erf.py        # prints the coefficients and the float32 errors
"""
import numpy as np
from scipy import special


def fit(dp, dq, iters=40):
    x = np.concatenate([np.linspace(0, 4, 80001)[1:], np.geomspace(1e-6, 0.01, 400)])
    t, f = x * x, special.erf(x) / x
    q_prev = np.ones_like(t)
    for _ in range(iters):
        cols = [t ** k for k in range(dp + 1)] + [-f * t ** k for k in range(1, dq + 1)]
        a = np.stack(cols, 1) / (f * q_prev)[:, None]
        sol, *_ = np.linalg.lstsq(a, 1 / q_prev, rcond=None)
        p, q = sol[:dp + 1], np.concatenate([[1.0], sol[dp + 1:]])
        q_prev = np.polyval(q[::-1], t)
    return p, q


def in_float32(p, q, g):
    v = np.clip(g, np.float32(-4), np.float32(4)).astype(np.float32)
    t = v * v
    num, den = np.float32(p[-1]), np.float32(q[-1])
    for c in p[-2::-1]:
        num = (t * num + np.float32(c)).astype(np.float32)
    for c in q[-2::-1]:
        den = (t * den + np.float32(c)).astype(np.float32)
    return (v * num / den).astype(np.float32)


def main():
    g = np.linspace(-6, 6, 4000001).astype(np.float32)
    ref = special.erf(g.astype(np.float64))
    ulp = np.spacing(np.abs(ref).astype(np.float32))
    for dp, dq in ((6, 4), (6, 5), (7, 5)):
        p, q = fit(dp, dq)
        err = np.abs(in_float32(p, q, g) - ref)
        print(f"P degree {dp}, Q degree {dq}: at most {(err / ulp).max():.2f} ulps, {(err / ulp).mean():.3f} on "
              f"average, {err.max():.2e} absolute")
        print("  P", [float(np.float32(c)) for c in p])
        print("  Q", [float(np.float32(c)) for c in q])


if __name__ == "__main__":
    main()
