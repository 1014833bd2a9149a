"""Measured interactions of filter-pruned channel groups that share a layer.

The latency table is additive: each entry is the whole model's change with one candidate alone. Two
channel groups whose patches change the same node do not add. In a chain, one group's consumer is
the next group's producer: that layer's time falls with the *product* of its kept input and output
channels (half of each: a quarter of the work left), where the sum of the two entries counts its
whole time saved (VGG-small at batch 64: four such groups predicted at 0.44 ms, measured 2.79 ms).
So for every pair of groups that share a node, and every pair of their options the search may take,
the two groups are built together without refits (their shapes, as every table entry) and timed in
the table; the pair's *interaction* is that delta minus the two single ones, a cost the search adds
when both are chosen (:func:`nncomp.planner.search.exact` models it exactly).
"""
from .candidates import changed_nodes, structured, touched

__all__ = ["overlapping", "measure", "costs"]


def overlapping(table, names):
    """Pairs ``(a, b)`` of channel-group keys of ``table`` (not in ``names``, the weighted layers)
    whose patches change a node in common."""
    changed = {k: touched(entries) for k, entries in table.items() if k not in names}
    keys = sorted(changed)
    return [(a, b) for i, a in enumerate(keys) for b in keys[i + 1:] if changed[a] & changed[b]]


def measure(lat, model, table, options, names, seed=0):
    """Time the joint builds of the overlapping groups' options worth choosing (a finite cost and a
    scored drop within reach in ``options``, as the search sees them); returns ``{((a, i), (b, j)):
    table key of the joint entry}`` of those that run in the table's mode."""
    worth = {k: [i for i in range(1, len(opts)) if opts[i][1] < 1e8] for k, opts in options.items()}
    entries, joints = {}, {}
    for a, b in overlapping(table, names):
        for i in worth.get(a, ()):
            for j in worth.get(b, ()):
                ca, cb = table[a][i][0], table[b][j][0]
                patch = changed_nodes(model, structured(model, [ca, cb], None, seed))
                name = f"{a}+{b}"
                if not lat.eligible(name, patch):
                    continue
                key = lat.key(name, f"{ca.label}+{cb.label}", patch)
                entries[key] = (name, patch)
                joints[(a, i), (b, j)] = key
    if entries:
        lat.measure(entries)
    return joints


def costs(lat, joints, deltas):
    """``{((a, i), (b, j)): ms}``: each joint entry's delta minus its two single ones (``deltas``
    ``{key: [ms per option]}``), for the search's ``pairs``."""
    out = {}
    for (a, i), (b, j) in joints:
        joint = lat.delta(joints[(a, i), (b, j)])
        if joint != float("inf"):
            out[(a, i), (b, j)] = joint - deltas[a][i] - deltas[b][j]
    return out
