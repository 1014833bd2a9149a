"""Huffman coding: kernels against their twins, canonical and length-limited codes, hostile tables
and streams (F27), save/load with huffman=True, and the size report."""
import numba
import numpy as np
import pytest
from hypothesis import example, given, strategies as st

import nncomp as nc
import reference as ref
from native_files import edit_native, sha256
from nncomp.coding import huffman as H
from nncomp.errors import CorruptModelFileError
from nncomp.kernels import huffman as K

seeds = st.integers(0, 2**31 - 1)
# Under NUMBA_DISABLE_JIT the kernels run as Python loops: skip the tests that compress whole models.
heavy = pytest.mark.skipif(numba.config.DISABLE_JIT, reason="pure-Python kernels (NUMBA_DISABLE_JIT): too slow")


def _code(counts):
    lengths = H.code_lengths(np.asarray(counts))
    return H.canonical_codes(lengths), lengths.astype(np.uint8)


@given(nsym=st.integers(1, 40), n=st.integers(0, 300), seed=seeds)
def test_huffman_encode_matches_reference(nsym, n, seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 50, nsym)
    code, length = _code(counts)
    sym = rng.integers(0, nsym, n).astype(np.int32)
    want, nbits = ref.huffman_encode(sym, code, length)
    out = np.zeros(-(-int(length[sym].sum()) // 8), np.uint8)
    bits = K.huffman_encode(sym, code, length, out)
    assert bits == int(length[sym].astype(np.int64).sum()) and np.array_equal(out, want)


@given(nsym=st.integers(2, 300), n=st.integers(0, 300), seed=seeds, cut=st.integers(0, 64))
@example(nsym=2, n=5, seed=0, cut=0)
def test_huffman_decode_matches_reference(nsym, n, seed, cut):
    rng = np.random.default_rng(seed)
    counts = rng.geometric(0.05, nsym)             # skewed: codes longer than the 11-bit lookup table
    code, length = _code(counts)
    sym = rng.integers(0, nsym, n).astype(np.int32)
    stream, _ = ref.huffman_encode(sym, code, length)
    nbits = max(int(length[sym].astype(np.int64).sum()) - cut, 0)     # possibly a truncated stream
    padded = np.zeros(stream.size + 4, np.uint8)
    padded[:stream.size] = stream
    out = np.full(n, -1, np.int32)
    done, used = K.huffman_decode(padded, nbits, *H.decoder_tables(length.astype(np.int64)), out)
    want = ref.huffman_decode(stream, nbits, code, length, n)
    assert done == want.size and np.array_equal(out[:done], want)
    assert used == int(length[want].astype(np.int64).sum())


@given(counts=st.lists(st.integers(1, 10**6), min_size=1, max_size=60))
def test_code_lengths_are_optimal_complete_and_canonical(counts):
    counts = np.array(counts)
    lengths = H.code_lengths(counts)
    if counts.size == 1:
        assert lengths.tolist() == [0]
        return
    assert (2.0 ** -lengths.astype(float)).sum() == 1.0          # Kraft: complete, never oversubscribed
    pm = H.package_merge(counts, 24)
    assert (counts * pm).sum() == (counts * lengths).sum()      # package-merge = Huffman when unconstrained
    codes = H.canonical_codes(lengths)
    words = {format(int(c), f"0{int(l)}b") for c, l in zip(codes, lengths)}
    assert not any(a != b and b.startswith(a) for a in words for b in words)      # prefix-free


@given(nsym=st.integers(2, 40), seed=seeds, limit=st.integers(1, 8))
def test_package_merge_respects_the_limit_optimally(nsym, seed, limit):
    if nsym > 2 ** limit:
        return
    counts = np.random.default_rng(seed).geometric(0.2, nsym) ** 3
    pm = H.package_merge(counts, limit)
    assert pm.max() <= limit and (2.0 ** -pm.astype(float)).sum() == 1.0
    if limit ** nsym <= 5000:                      # brute force over all length vectors
        import itertools
        best = min((counts * np.array(ls)).sum() for ls in itertools.product(range(1, limit + 1), repeat=nsym)
                   if (2.0 ** -np.array(ls, float)).sum() <= 1)
        assert (counts * pm).sum() == best


def test_fibonacci_frequencies_are_length_limited_and_round_trip():
    fib = [1, 1]
    while len(fib) < 30:
        fib.append(fib[-1] + fib[-2])
    assert H.huffman_lengths(np.array(fib)).max() == 29          # plain Huffman would exceed 24 bits
    arr = np.repeat(np.arange(30, dtype=np.uint8), fib)
    parts, attrs = H.encode(arr)
    assert parts["lengths"].max() == H.MAX_LEN
    assert np.array_equal(H.decode(parts, attrs, list(arr.shape), arr.dtype), arr)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint32, np.int64])
@given(n=st.integers(0, 500), span=st.integers(1, 1000), seed=seeds)
@example(n=0, span=1, seed=0)
@example(n=7, span=1, seed=0)          # a single-symbol alphabet
def test_round_trip_is_exact(dtype, n, span, seed):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    lo = int(rng.integers(info.min, info.max - min(span, info.max - info.min) + 1, dtype=np.int64)) \
        if info.max - info.min > span else int(info.min)
    arr = (lo + rng.integers(0, min(span, info.max - lo + 1), n)).astype(dtype).reshape(-1, 1)
    parts, attrs = H.encode(arr)
    back = H.decode(parts, attrs, list(arr.shape), arr.dtype)
    assert back.dtype == arr.dtype and np.array_equal(back, arr)
    if np.unique(arr).size <= 1:
        assert attrs["nbits"] == 0 and parts["stream"].size == 0


def _parts(arr):
    parts, attrs = H.encode(arr)
    return dict(parts), dict(attrs)


def test_hostile_tables_and_streams_are_refused_before_decoding():
    arr = np.random.default_rng(0).integers(0, 6, 200).astype(np.uint8)
    cases = []
    p, a = _parts(arr)
    p["lengths"] = np.full_like(p["lengths"], 1)                                  # oversubscribed
    cases.append((p, a, "Kraft"))
    p, a = _parts(arr)
    p["lengths"] = p["lengths"].copy()
    p["lengths"][0] += 1                                                          # incomplete
    cases.append((p, a, "Kraft"))
    p, a = _parts(arr)
    p["lengths"] = np.full_like(p["lengths"], 30)
    cases.append((p, a, "1..24"))
    p, a = _parts(arr)
    p["stream"], a["nbits"] = p["stream"][:10], 80                                # short bitstream
    cases.append((p, a, r"ended after \d+ of 200 symbols"))
    p, a = _parts(arr)
    p["stream"] = p["stream"][:-1]                                                # bytes vs nbits
    cases.append((p, a, "bytes"))
    p, a = _parts(arr)
    p["stream"], a["nbits"] = np.append(p["stream"], np.uint8(0)), a["nbits"] + 8  # trailing bits
    cases.append((p, a, "after the last"))
    p, a = _parts(arr)
    a["count"] = 300
    cases.append((p, a, "count"))
    p, a = _parts(arr)
    p["lengths"] = p["lengths"].astype(np.int64)
    cases.append((p, a, "uint8"))
    p, a = _parts(np.full(5, 3, np.uint8))
    p["lengths"] = np.array([1], np.uint8)                                         # single symbol, 1 bit
    a["count"] = 200
    cases.append((p, a, "length 0"))
    p, a = _parts(arr)
    a["first"] = 255                                                              # table runs past uint8
    cases.append((p, a, "does not fit"))
    for parts, attrs, why in cases:
        with pytest.raises(CorruptModelFileError, match=why):
            H.decode(parts, attrs, [200], np.uint8, "f.h5", "fc/weight/codes")


def _lenet300_shared():
    return nc.share(nc.prune(nc.load(nc.data.model_path("lenet300")), sparsity=0.9, scope="layer", storage="csr"), 5)


@heavy
def test_save_load_round_trip_with_huffman(tmp_path):
    model = _lenet300_shared()
    dense = nc.share(nc.load(nc.data.model_path("lenet300")), 4)
    x, _ = nc.data.for_model(model, "test")
    for m in (model, dense):
        plain, coded = tmp_path / "plain.h5", tmp_path / "coded.h5"
        nc.save(m, plain)
        nc.save(m, coded, huffman=True)
        for path in (plain, coded):
            back = nc.load(path)
            for name in ("fc1", "fc2", "fc3"):
                a, b = back[name].layer.weight, m[name].layer.weight
                assert type(a) is type(b) and np.array_equal(a.to_dense(), b.to_dense())
            assert np.array_equal(back(x[:20]), m(x[:20]))
        saved = plain.stat().st_size - coded.stat().st_size
        report = nc.size_report(m)
        layers = [m[name].layer for name in ("fc1", "fc2", "fc3")]
        raw = sum(sum(a.nbytes for a in layer.weight.to_arrays()[0].values()) for layer in layers)
        coded_arrays = report.total["huffman"] - sum(layer.bias.nbytes for layer in layers)
        assert saved > 0.8 * (raw - coded_arrays)        # the file shrinks by (about) the Huffman savings


def _rewrite(path, edit):
    """Rewrite one stored part of a saved file and its checksum: a consistent but hostile file."""
    def change(meta, arrays):
        spec = meta["nodes"][0]["tensors"]["weight"]["arrays"]["codes"]
        name, arr = edit(arrays, spec)
        arrays[name] = arr
        for part in [*spec.get("parts", {}).values(), spec]:
            if part.get("data") == name:
                part["sha256"] = sha256(arr)
                part["shape"] = list(arr.shape)
    edit_native(path, change)


@heavy
@pytest.mark.parametrize("what, why", [("kraft", "Kraft"), ("short", "ended after"), ("code", "out of range")])
def test_hostile_files_are_refused(tmp_path, what, why):
    model = _lenet300_shared()
    path = tmp_path / "m.h5"
    nc.save(model, path, huffman=what != "code")

    def edit(arrays, spec):
        if what == "kraft":
            name = spec["parts"]["lengths"]["data"]
            return name, np.ones_like(arrays[name])
        if what == "short":
            name = spec["parts"]["stream"]["data"]
            spec["attrs"]["nbits"] = 64
            return name, arrays[name][:8]
        name = spec["data"]                  # plain codes: one beyond the codebook
        codes = arrays[name].copy()
        codes[3] = 200
        return name, codes

    _rewrite(path, edit)
    with pytest.raises(CorruptModelFileError, match=why):
        nc.load(path)


@heavy
def test_size_report_stages():
    model = _lenet300_shared()
    report = nc.size_report(model)
    fc1 = report.rows[0]
    assert fc1["layer"] == "fc1" and fc1["dense"] == 300 * 784 * 4 + 300 * 4
    assert fc1["huffman"] < fc1["shared"] < fc1["pruned"] < fc1["dense"]
    assert abs(fc1["density"] - 0.1) < 0.001
    assert report.total["dense"] == nc.load(nc.data.model_path("lenet300")).nbytes
    text = str(report)
    assert "weight bits (P+Q+H)" in text and "compression:" in text
    dense = nc.size_report(nc.load(nc.data.model_path("lenet300")))
    assert dense.total["dense"] == dense.total["pruned"] == dense.total["shared"] == dense.total["huffman"]
