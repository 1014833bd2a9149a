"""Every Numba kernel has a NumPy twin of the same name in tests/reference.py."""
import importlib
import pkgutil

import numba.core.registry
import numpy as np

import nncomp.kernels as K
import reference


def all_kernels():
    found = {}
    for mod in pkgutil.iter_modules(K.__path__):
        if mod.name.startswith("_"):
            continue
        m = importlib.import_module(f"nncomp.kernels.{mod.name}")
        for name, obj in vars(m).items():
            if (isinstance(obj, numba.core.registry.CPUDispatcher) and not name.startswith("_")
                    and not name.endswith("_parallel")):
                found[name] = m.__name__
    return found


def test_every_kernel_has_a_reference_twin():
    kernels = all_kernels()
    assert len(kernels) >= 4
    missing = sorted(k for k in kernels if not hasattr(reference, k))
    assert not missing, f"kernels without a NumPy twin in tests/reference.py: {missing}"


def test_stale_numba_caches_go_when_a_kernel_source_changes(tmp_path, monkeypatch):
    """Numba keys a cached function on its own file: a caller in another module would keep a changed
    kernel's old code. Every cached function of the package goes when any kernel source changes,
    once; nothing goes while the sources stay as they were, or when the user set NUMBA_CACHE_DIR."""
    from nncomp.kernels import _jit

    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    kernels = tmp_path / "pkg" / "kernels"
    (kernels / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "layers" / "__pycache__").mkdir(parents=True)
    (kernels / "a.py").write_text("x = 1\n")

    def cached():
        files = [kernels / "__pycache__" / "a.f-1.py311.nbi", tmp_path / "pkg" / "layers" / "__pycache__" / "b.g-2.py311.1.nbc"]
        for f in files:
            f.write_bytes(b"old")
        return files
    files = cached()
    keep = tmp_path / "pkg" / "layers" / "__pycache__" / "b.cpython-311.pyc"
    keep.write_bytes(b"pyc")
    _jit.drop_stale_caches(kernels)
    assert not any(f.exists() for f in files) and keep.exists()
    files = cached()
    _jit.drop_stale_caches(kernels)             # the same sources: the caches stay
    assert all(f.exists() for f in files)
    (kernels / "a.py").write_text("x = 2\n")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "user"))
    _jit.drop_stale_caches(kernels)             # the user's cache location: left alone
    assert all(f.exists() for f in files)
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    _jit.drop_stale_caches(kernels)
    assert not any(f.exists() for f in files)


def _weighted_sum(pair, w, out):
    a, b = pair
    for i in range(a.shape[0]):
        out[0] += (a[i] + b[i]) * w[i]


def test_read_only_arrays_run_the_writable_build():
    """A Python call with read-only arrays (also inside a tuple) runs the build compiled for writable
    ones, registered for its own types on the first such call: the same result, one build."""
    from nncomp.kernels._jit import jit
    kernel = jit(_weighted_sum)
    rng = np.random.default_rng(0)
    a, b, w = (rng.standard_normal(7).astype(np.float32) for _ in range(3))
    frozen, results = [], []
    for v in (a, b, w):
        v = v.copy()
        v.setflags(write=False)
        frozen.append(v)
    for pair, weights in (((a, b), w), ((frozen[0], frozen[1]), frozen[2]), ((a, frozen[1]), w),
                          ((frozen[0], frozen[1]), frozen[2])):
        out = np.zeros(1, np.float32)
        kernel(pair, weights, out)
        assert np.isclose(out[0], np.dot(a + b, w), rtol=1e-5)
        results.append(out[0])
    assert len(kernel.signatures) == 1 and all(t.mutable for t in kernel.signatures[0][1:])
    assert kernel.signatures[0][0].types[0].mutable
    assert len(set(results)) == 1
