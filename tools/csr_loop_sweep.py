"""Batch-1 sparse kernels on this CPU: one loop per row against prefetching chunks.

``csr_matvec``, ``csr_codebook_matvec`` and ``csr_int8_matvec_float`` each have two builds
(``*_rows``, ``*_chunked``) and pick one by ``isa.HAVE_AVX512`` (nncomp/kernels/csr.py): chunks were
measured to pay on a Xeon with AVX-512, rows on a Zen 3 guest without it. This times both builds of
each on random rows, so the choice can be checked on the CPU at hand.

    python tools/csr_loop_sweep.py [--out FILE.md]

Protocol: random sorted columns, uint16 indices, float32 values (codes 0..31 into a 32-value
codebook; int8 codes); one thread: rows of 8..409 nonzeros over 4,096 inputs, about 50,000 nonzeros
a call, 5 calls a sample, 30 samples alternating the builds; then 2 threads on fc7 (4096 x 4096) and
fc6 (4096 x 25088) at 10% density, warm and with the caches flushed before every call (15 samples).
Medians in ns per nonzero.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

from nncomp.bench.suites import write_tool_report
from nncomp.bench.timing import flush_caches
from nncomp.kernels import codebook as CB, csr as C, csr_int8 as I8


def problem(rng, n_out, n_in, per_row):
    idx = np.sort(np.stack([rng.choice(n_in, per_row, replace=False) for _ in range(n_out)]), axis=1)
    indptr = (np.arange(n_out + 1) * per_row).astype(np.int32)
    x = rng.standard_normal(n_in).astype(np.float32)
    return idx.reshape(-1).astype(np.uint16), indptr, x


def builds(rng, idx, indptr, x, parallel):
    """``{kernel family: {build: callable()}}`` on one problem."""
    nnz, n_out = idx.size, indptr.size - 1
    data = rng.standard_normal(nnz).astype(np.float32)
    codes, cb = rng.integers(0, 32, nnz).astype(np.uint8), rng.standard_normal(32).astype(np.float32)
    q, scale = rng.integers(-127, 128, nnz).astype(np.int8), rng.random(n_out).astype(np.float32)
    out = np.empty(n_out, np.float32)
    sfx = "_parallel" if parallel else ""
    get = lambda mod, name, b: getattr(mod, f"{name}_{b}{sfx}")  # noqa: E731
    return {
        "csr": {b: (lambda k=get(C, "csr_matvec", b): k(data, idx, indptr, x, out)) for b in ("rows", "chunked")},
        "csr codebook": {b: (lambda k=get(CB, "csr_codebook_matvec", b): k(codes, idx, indptr, cb, x, out))
                         for b in ("rows", "chunked")},
        "csr int8": {b: (lambda k=get(I8, "csr_int8_matvec_float", b): k(q, idx, indptr, scale, x, out))
                     for b in ("rows", "chunked")}}


def timed(fns, nnz, samples, calls, flush):
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(samples):
        for k, fn in fns.items():
            if flush:
                flush_caches()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[k].append((time.perf_counter() - t0) / calls)
    return {k: float(np.median(v)) * 1e9 / nnz for k, v in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="also write the table as Markdown with the machine")
    args = ap.parse_args(argv)
    import numba
    rng = np.random.default_rng(0)
    rows = ["| case | kernel | rows ns/nnz | chunked ns/nnz | chunked / rows |", "|---|---|---|---|---|"]
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    cases = [(f"1 thread, {n} per row", (max(64, 50000 // n), 4096, n), False, 30, 5, False)
             for n in (8, 16, 48, 128, 409)]
    cases += [(f"{threads} threads, {name}{' flushed' if flush else ''}", shape, True, 15, 1, flush)
              for name, shape in (("fc7", (4096, 4096, 409)), ("fc6", (4096, 25088, 2508)))
              for flush in (False, True)]
    for label, shape, parallel, samples, calls, flush in cases:
        numba.set_num_threads(threads if parallel else 1)
        idx, indptr, x = problem(rng, *shape)
        for family, fns in builds(rng, idx, indptr, x, parallel).items():
            r = timed(fns, idx.size, samples, calls, flush)
            ratio = r["chunked"] / r["rows"]
            rows.append(f"| {label} | {family} | {r['rows']:.3f} | {r['chunked']:.3f} | {ratio:.2f} |")
            print(rows[-1], flush=True)
    numba.set_num_threads(threads)
    if args.out:
        write_tool_report(args.out, "# Batch-1 sparse kernels: one loop per row against prefetching chunks", __doc__,
                          rows)


if __name__ == "__main__":
    sys.exit(main())
