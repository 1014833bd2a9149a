"""Pure Numba kernels: module-level functions over arrays and ints, no classes, no validation.

The layer above validates shapes and dtypes once and picks the kernel; every kernel has a NumPy
twin of the same name in ``tests/reference.py``.
"""
