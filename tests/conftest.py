"""Test configuration: hypothesis profiles and the float32 tolerance rule, in one place."""
import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Plans take the built-in kernel choices, not ones measured at first use (nncomp/tuning.py): the
# same plan on every machine and run; tests/test_tuning.py turns probing on where it tests it.
os.environ.setdefault("NNCOMP_TUNING", "off")

settings.register_profile("dev", deadline=None, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", deadline=None, max_examples=40, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))

U = 2.0 ** -24


def twin_builds():
    """Pairs of builds of one nncomp kernel that differ only in a scalar's float width, an array's
    read-only flag or an omitted argument given: each is a whole compile (20-50 s for a convolution)
    that a float32 argument, the argument given, or nncomp.kernels._jit.one_build_for_read_only
    would have saved."""
    from numba import typeof
    from numba.core import types
    from numba.core.registry import CPUDispatcher

    from nncomp.kernels._jit import _writable

    def key(sig):
        return tuple(types.float32 if t == types.float64 else typeof(t.value) if isinstance(t, types.Omitted)
                     else _writable(t) for t in sig)
    found, seen = [], set()
    for name, module in list(sys.modules.items()):
        if not name.startswith("nncomp.") or module is None:
            continue
        for attr, d in list(vars(module).items()):
            if not isinstance(d, CPUDispatcher) or id(d) in seen:
                continue
            seen.add(id(d))
            builds = {}
            for sig in list(d.overloads):
                builds.setdefault(key(sig), []).append(sig)
            found += [f"{name}.{attr}: {sigs}" for sigs in builds.values() if len(sigs) > 1]
    return found


@pytest.fixture(scope="session", autouse=True)
def one_build_per_kernel_signature():
    """After the session: no kernel was compiled twice for float64 scalars, read-only arrays or an
    omitted argument (pass np.float32 scalars and every argument, as the layers do)."""
    yield
    twins = twin_builds()
    assert not twins, ("kernels compiled twice for float64 scalars, read-only arrays or an omitted argument:\n"
                       + "\n".join(twins))


def assert_close_f32(y, y_ref, mag, k, c=2.0, atol=1e-30):
    """Per element ``|y - y_ref| <= c * K * u * m + atol`` (shared/reliability.md tolerance rule).

    ``y_ref`` is a float64 reference, ``mag`` the matching product of magnitudes (``|A| @ |B|``) and
    ``k`` the reduction length.
    """
    y = np.asarray(y, np.float64)
    assert y.shape == y_ref.shape, (y.shape, y_ref.shape)
    bound = c * max(k, 1) * U * np.asarray(mag, np.float64) + atol
    err = np.abs(y - y_ref)
    bad = err > bound
    assert not bad.any(), (f"{bad.sum()} of {bad.size} elements outside the bound; worst excess "
                           f"{(err - bound).max():.3g}")


def random_epilogue(rng, n, co, affine, add, clip, act):
    """The epilogue arguments of the dense kernels' contract (``scale, shift, res, lo, hi, act``) for
    ``n`` samples x ``co`` outputs: random affine map and residual where asked, else empty ones."""
    f32 = np.float32
    scale, shift = ((rng.standard_normal(co).astype(f32), rng.standard_normal(co).astype(f32))
                    if affine else (np.zeros(0, f32),) * 2)
    res = rng.standard_normal((n, co)).astype(f32) if add else np.zeros((0, co), f32)
    lo, hi = (f32(v) for v in (clip or (-np.inf, np.inf)))
    return scale, shift, res, lo, hi, act


def check_dense_product(run, twin, rng, co, k, n, with_bias, affine, add, clip, act):
    """A dense kernel of the layers' contract against its NumPy twin on random ``co x k`` weights and
    ``n`` samples (``run(w, x, bias, epi)`` and ``twin(w, x, bias, scale, shift, res, lo, hi, act,
    alpha, beta)``, alpha 0.2, beta 0.5): the sums within float32 rounding of one fused multiply-add
    per feature (bound from the sum of |terms|), the epilogue's own float32 steps after them; without
    activation and clip, a NaN input poisons its own sample's row only."""
    f32 = np.float32
    w = rng.standard_normal((co, k)).astype(f32)
    x = rng.standard_normal((n, k)).astype(f32)
    bias = rng.standard_normal(co).astype(f32) if with_bias else np.zeros(0, f32)
    epi = random_epilogue(rng, n, co, affine, add, clip, act)
    want = twin(w, x, bias, *epi[:5], act, f32(0.2), f32(0.5))
    got = run(w, x, bias, epi)
    mag = (np.abs(x) @ np.abs(w).T + (np.abs(bias) if with_bias else 0)) * (np.abs(epi[0]) if affine else 1) + 1
    assert np.all(np.abs(got - want) <= 2 * k * np.finfo(f32).eps * mag)
    if act == 0 and clip is None:
        b = rng.integers(0, n)
        x[b, rng.integers(0, k)] = np.nan
        got = run(w, x, bias, epi)
        assert np.isnan(got[b]).all() and not np.isnan(np.delete(got, b, axis=0)).any()
