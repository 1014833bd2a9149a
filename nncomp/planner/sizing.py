"""The file bytes that ``objective="size"`` minimises, and the candidates worth building for it.

Bytes are those of the file ``nc.save(model, path, huffman=True)`` writes, counted in memory
(:func:`nncomp.io.native.file_bytes`: the same writer, nothing written to disk or read back), per
candidate as the change of the whole file when only that layer takes it (:func:`size_delta`).

Before any refit, :func:`screen` bounds what a layer's candidate can bring: the planner has already
built and verified the best global allocation (:mod:`.allocation`), ``bound`` bytes, and the
per-layer search can only win with a smaller file. A candidate's file bytes barely depend on its
refit (the refit moves values, not the structure: the same number of weights kept, the same code
widths), so its proxy (built without refits, as the latency objective times them) gives them; a
candidate whose bytes, with the smallest proxy of every other layer, do not come within ``SLACK`` of
``bound`` cannot be part of a smaller file, and is not built and refit (it stays in the plan's table,
unscored).
"""
from .candidates import build_proxy, compose, size_delta
from .energy import energy
from .table import PROXY_SAMPLES

__all__ = ["SLACK", "screen", "sizes", "energies"]

SLACK = 0.02     # share of the bound that a proxy's bytes may miss its refit build's by


def screen(model, cands, x_fit, seed, dense_bytes, bound, notes):
    """``(proxies {(layer, index): patch}, candidates worth building)`` (see the module notes)."""
    proxies, deltas = {}, {}
    for n, cs in cands.items():
        memo = {}
        for j, c in enumerate(cs[1:], 1):
            patch = build_proxy(model, c, x_fit, seed, memo, PROXY_SAMPLES)
            if patch is not None:
                proxies[n, j] = patch
                deltas[n, j] = size_delta(model, {n: patch}, dense_bytes)
    least = {n: min([0] + [d for (m, _), d in deltas.items() if m == n]) for n in cands}
    room = bound - dense_bytes - sum(least.values()) + SLACK * bound
    wanted = {cands[n][j] for (n, j), d in deltas.items() if d - least[n] < room}
    if len(wanted) < len(deltas):
        notes.append(f"{len(deltas) - len(wanted)} candidates not built: with the smallest candidate of every other "
                     f"layer, their files (without refits) come no closer than {SLACK:.0%} to {bound:,} bytes")
    return proxies, wanted


def sizes(model, table, dense_bytes):
    """``{layer: [delta bytes per option]}`` of the planner's table (option 0: dense)."""
    return {n: [0] + [size_delta(model, {n: p}, dense_bytes) for _, p, _ in entries[1:]]
            for n, entries in table.items()}


def energies(model, table, batch):
    """``{layer: [delta of the estimated energy per sample, pJ, per option]}`` (:mod:`.energy`), for
    ``objective="energy"``."""
    dense = energy(model, batch)["total_pj"]
    return {n: [0.0] + [energy(compose(model, {n: p}), batch)["total_pj"] - dense for _, p, _ in entries[1:]]
            for n, entries in table.items()}
