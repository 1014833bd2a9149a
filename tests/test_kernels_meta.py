"""Every Numba kernel has a NumPy twin of the same name in tests/reference.py."""
import importlib
import pkgutil

import numba.core.registry

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
