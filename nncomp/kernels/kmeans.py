"""One-dimensional k-means over sorted, deduplicated values (Lloyd's algorithm on prefix sums).

In one dimension every cluster of a nearest-centroid assignment is a run of the sorted values, cut
at the midpoints between neighbouring centroids, so an assignment costs ``k`` binary searches and an
update ``k`` differences of prefix sums, whatever the number of values.

Empty clusters are handled deterministically: an empty centroid moves onto the value farthest from
its own centroid (the first such value when several tie); centroids stay distinct and finite, never
NaN, as long as there are at least as many distinct values as centroids.
"""
import numpy as np

from ._jit import jit


def _lloyd(v, s0, s1, cent, max_iter):
    """Refine sorted centroids by Lloyd iterations; returns the number of iterations run.

    IN  v (m,) float64 sorted distinct values; s0, s1 (m+1,) float64 prefix sums of the weights
        (counts) and of weight*value; cent (k,) float64 ascending, 1 <= k <= m; max_iter >= 1.
    OUT cent (k,) updated in place: each centroid the weighted mean of its run (clamped into the
        run's range), ascending; stops when the runs no longer change.
    """
    m = v.shape[0]
    k = cent.shape[0]
    lo = np.zeros(k + 1, np.int64)
    old = np.full(k + 1, -1, np.int64)
    it = 0
    while it < max_iter:
        it += 1
        lo[0] = 0
        lo[k] = m
        for j in range(1, k):
            lo[j] = np.searchsorted(v, 0.5 * (cent[j - 1] + cent[j]), side="right")
        empty = -1
        for j in range(k):
            if lo[j + 1] <= lo[j]:
                empty = j
                break
        if empty >= 0:   # reseed at the value farthest from its centroid, keep centroids sorted
            best, arg = -1.0, 0
            for j in range(k):
                if lo[j + 1] > lo[j]:
                    for e in (lo[j], lo[j + 1] - 1):
                        d = abs(v[e] - cent[j])
                        if d > best or (d == best and e < arg):
                            best, arg = d, e
            cent[empty] = v[arg]
            cent.sort()
            old[:] = -1
            continue
        same = True
        for j in range(k + 1):
            same = same and lo[j] == old[j]
            old[j] = lo[j]
        if same:
            break
        for j in range(k):
            a, b = lo[j], lo[j + 1]
            c = (s1[b] - s1[a]) / (s0[b] - s0[a])
            cent[j] = min(max(c, v[a]), v[b - 1])
    return it


kmeans_lloyd = jit(_lloyd)


def _assign(w, cb, out):
    """Nearest codebook entry of every weight: the lowest index ``j`` minimising ``|w - cb[j]|``.

    IN  w (n,) float32; cb (k,) float32 ascending (duplicates allowed), k >= 1.
    OUT out (n,) uint8 (k <= 256) codes.
    """
    k = cb.shape[0]
    for i in range(w.shape[0]):
        x = np.float64(w[i])
        j = np.searchsorted(cb, w[i])          # first entry >= w
        if j >= k:
            j = k - 1
        elif j > 0 and abs(x - np.float64(cb[j - 1])) <= abs(np.float64(cb[j]) - x):
            j -= 1
        while j > 0 and cb[j - 1] == cb[j]:
            j -= 1
        out[i] = j


kmeans_assign = jit(_assign)
