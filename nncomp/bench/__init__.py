"""Benchmarks: ``python -m nncomp.bench`` (see bench/README.md)."""
