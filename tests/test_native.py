"""nncomp's native file, format version 3 (docs/format.md): every weight format round-trips through
one packed dataset, the container adds under 5% to a Deep-Compressed LeNet-300-100, hostile packs and
deflated descriptions are refused, and files of format versions 1 and 2 still load."""
import hashlib
import json
import zlib
from pathlib import Path

import h5py
import numba
import numpy as np
import pytest

import nncomp as nc
from native_files import edit_native, entries, every_format_model, read_native, sha256
from nncomp.io import native

ROOT = Path(__file__).resolve().parents[1]
V1_FILE = ROOT / "data" / "fixtures" / "native_v1.h5"
V2_FILE = ROOT / "data" / "fixtures" / "native_v2.h5"     # every_format_model(), huffman=True, by nncomp 1613134
heavy = pytest.mark.skipif(numba.config.DISABLE_JIT, reason="pure-Python kernels (NUMBA_DISABLE_JIT): too slow")


def _x(n=7):
    return np.random.default_rng(5).standard_normal((n, 24)).astype(np.float32)


def _assert_same(a, b):
    """Same nodes, same weight formats, bit-identical arrays (dtypes included) and outputs."""
    assert [n.name for n in a.nodes] == [n.name for n in b.nodes]
    for na, nb in zip(a.nodes, b.nodes):
        ta, tb = na.layer.tensors(), nb.layer.tensors()
        assert ta.keys() == tb.keys()
        for k, va in ta.items():
            vb = tb[k]
            if isinstance(va, nc.Matrix):
                assert type(va) is type(vb)
                (xa, attrs_a), (xb, attrs_b) = va.to_arrays(), vb.to_arrays()
                assert attrs_a == attrs_b and xa.keys() == xb.keys()
                assert all(xa[i].dtype == xb[i].dtype and np.array_equal(xa[i], xb[i]) for i in xa)
            elif va is not None:
                assert va.dtype == vb.dtype and np.array_equal(va, vb)
    assert np.array_equal(a(_x()), b(_x())) and np.array_equal(a(_x(1)), b(_x(1)))


def payload(path):
    """Bytes the file's datasets occupy (as nncomp.bench.suite.payload_bytes counts them)."""
    sizes = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda _, obj: sizes.append(obj.id.get_storage_size()) if isinstance(obj, h5py.Dataset) else None)
    return sum(sizes)


@pytest.mark.parametrize("huffman", [False, True])
def test_every_format_round_trips_through_one_packed_dataset(tmp_path, huffman):
    model = every_format_model()
    assert {n.layer.weight.format for n in model.nodes if n.layer.kind == "dense"} == {
        "dense", "csr", "pruned_dense", "int8", "codebook", "csr_codebook", "csr_int8"}
    path = tmp_path / "m.h5"
    nc.save(model, path, huffman=huffman)
    _assert_same(model, nc.load(path))
    with h5py.File(path, "r") as f:
        assert list(f) == ["p0"] and sorted(f.attrs) == ["format_version", "model_nbytes", "model_sha256",
                                                         "nncomp_format"]
        ds = f["p0"]
        assert ds.dtype == np.uint8 and ds.ndim == 1 and ds.chunks is None and ds.compression is None
        assert int(f.attrs["format_version"]) == native.FORMAT_VERSION == 3
    meta, p0 = read_native(path)
    stored = [np.prod(e["shape"], dtype=np.int64) * np.dtype(e["dtype"]).itemsize for e in entries(meta)]
    assert p0.size == sum(stored) + int(h5py.File(path, "r").attrs["model_nbytes"])   # packed, no padding


def test_version_1_files_still_load(tmp_path):
    with h5py.File(V1_FILE, "r") as f:
        assert int(f.attrs["format_version"]) == 1 and "model" in f.attrs and "t" in f
    model = every_format_model()
    old = nc.load(V1_FILE)
    _assert_same(model, old)
    assert str(old) == str(model)
    path = tmp_path / "v2.h5"
    nc.save(old, path, huffman=True)                          # and it converts by a save
    _assert_same(model, nc.load(path))
    assert path.stat().st_size < V1_FILE.stat().st_size


def test_version_2_files_still_load(tmp_path):
    meta, p0 = read_native(V2_FILE)
    with h5py.File(V2_FILE, "r") as f:                        # the description in plain JSON
        assert int(f.attrs["format_version"]) == 2 and p0[p0.size - int(f.attrs["model_nbytes"])] == ord("{")
    model = every_format_model()
    old = nc.load(V2_FILE)
    _assert_same(model, old)
    path = tmp_path / "v3.h5"
    nc.save(old, path, huffman=True)                          # and it converts by a save, smaller
    _assert_same(model, nc.load(path))
    assert read_native(path)[0] == meta and path.stat().st_size < V2_FILE.stat().st_size


@pytest.mark.parametrize("huffman", [False, True])
def test_file_bytes_counts_the_file_save_writes(tmp_path, monkeypatch, huffman):
    monkeypatch.chdir(tmp_path)
    model = every_format_model()
    path = tmp_path / "m.h5"
    nc.save(model, path, huffman=huffman)
    assert native.file_bytes(model, huffman=huffman) == path.stat().st_size
    assert list(tmp_path.iterdir()) == [path]                  # nothing else written


def test_arrays_beyond_pack_bytes_go_to_further_packs(tmp_path, monkeypatch):
    monkeypatch.setattr(native, "PACK_BYTES", 1000)
    model = every_format_model()
    path = tmp_path / "m.h5"
    nc.save(model, path, huffman=True)
    _assert_same(model, nc.load(path))
    meta, _ = read_native(path)
    packs = {e["pack"] for e in entries(meta)}
    with h5py.File(path, "r") as f:
        assert len(packs) > 3 and sorted(f) == sorted(f"p{k}" for k in packs)
        n = int(f.attrs["model_nbytes"])
        assert all(f[f"p{k}"].size - (n if k == 0 else 0) <= 2304 for k in packs)   # 2304: the largest array


@heavy
def test_container_overhead_of_a_deep_compressed_lenet300_is_under_5_percent(tmp_path):
    model = nc.load(nc.data.model_path("lenet300"))
    calib, _ = nc.data.for_model(model, "train")
    dc = nc.deep_compression(model, calibration=calib)
    path = tmp_path / "dc.h5"
    nc.save(dc, path, huffman=True)
    size, stored = path.stat().st_size, payload(path)
    assert (size - stored) / size < 0.05, (size, stored)    # version 1: 13.5 kB of 39.9 kB (34%)
    meta, _ = read_native(path)
    arrays = sum(int(np.prod(e["shape"])) * np.dtype(e["dtype"]).itemsize for e in entries(meta))
    assert 20_000 < arrays < 30_000 and stored == arrays + int(h5py.File(path, "r").attrs["model_nbytes"])
    x, _ = nc.data.for_model(model, "test")
    assert np.array_equal(nc.load(path)(x[:50]), dc(x[:50]))


# ----------------------------------------------------------------------------- hostile packs
def _saved(tmp_path, model=None):
    path = tmp_path / "m.h5"
    nc.save(model or every_format_model(), path, huffman=True)
    return path


def _first_bias(meta):
    return meta["nodes"][0]["tensors"]["bias"]["array"]


@pytest.mark.parametrize("place, why", [
    ({"pack": 0, "offset": 10**9}, "out of range"),
    ({"pack": 0, "offset": -4}, "offset >= 0"),
    ({"pack": 0, "offset": 1.5}, "offset >= 0"),
    ({"pack": "0", "offset": 0}, "pack >= 0"),
    ({"pack": True, "offset": 0}, "pack >= 0"),
    ({"pack": 7, "offset": 0}, "missing"),
    ({"pack": 0, "offset": 0, "shape": [10**12]}, "out of range"),
    ({"pack": 0, "offset": 0, "shape": [2] * 9}, "invalid shape"),
])
def test_packed_entries_out_of_range_are_refused(tmp_path, place, why):
    def change(meta, arrays):
        entry = _first_bias(meta)
        del entry["data"]
        entry.update(place)
    path = edit_native(_saved(tmp_path), change)
    with pytest.raises(nc.CorruptModelFileError, match=why):
        nc.load(path)


def test_overlapping_arrays_are_refused(tmp_path):
    """Two layers with equal biases: the second one's entry points at the first one's bytes, with a
    valid checksum; only the overlap gives the crafted file away."""
    w = np.eye(6, dtype=np.float32)
    b = np.arange(6, dtype=np.float32)
    model = nc.Model([nc.Node("a", nc.Dense(w, b)), nc.Node("b", nc.Dense(w, b), ("a",))],
                     input_shape=(6,), input_layout="NC")
    path = _saved(tmp_path, model)
    at = _first_bias(read_native(path)[0])["offset"]      # repacking keeps it: the second bias is the last array

    def change(meta, arrays):
        first, second = (meta["nodes"][i]["tensors"]["bias"]["array"] for i in (0, 1))
        assert first["sha256"] == second["sha256"] == sha256(b)
        del second["data"]
        second["pack"], second["offset"] = 0, at
    edit_native(path, change)
    assert _first_bias(read_native(path)[0])["offset"] == at
    with pytest.raises(nc.CorruptModelFileError, match="overlap"):
        nc.load(path)


@pytest.mark.parametrize("case, why", [("truncated", "description"), ("cut", "description length"),
                                       ("zero", "description length"), ("missing", "description length"),
                                       ("flipped", "checksum")])
def test_damaged_packs_and_descriptions_are_refused(tmp_path, case, why):
    path = _saved(tmp_path)
    with h5py.File(path, "r+") as f:
        p0, n = f["p0"][()], int(f.attrs["model_nbytes"])
        if case in ("truncated", "cut"):              # the pack loses its end (and the description part of it)
            del f["p0"]
            f["p0"] = p0[:p0.size - 100] if case == "truncated" else p0[:n - 1]
        elif case == "zero":
            f.attrs["model_nbytes"] = np.int64(0)
        elif case == "missing":
            del f.attrs["model_nbytes"]
        else:                                         # one flipped bit in an array: its own checksum
            f["p0"][3] = p0[3] ^ 1
    with pytest.raises(nc.CorruptModelFileError, match=why):
        nc.load(path)


def _described(path, stored):
    """Replace the stored description of a saved file with ``stored`` bytes, its checksum recomputed."""
    with h5py.File(path, "r+") as f:
        p0, n = f["p0"][()], int(f.attrs["model_nbytes"])
        del f["p0"]
        f["p0"] = np.concatenate([p0[:p0.size - n], np.frombuffer(stored, np.uint8)])
        f.attrs["model_nbytes"] = np.int64(len(stored))
        f.attrs["model_sha256"] = np.bytes_(hashlib.sha256(stored).hexdigest().encode())
    return path


@pytest.mark.parametrize("case, why", [("plain", "not a valid zlib stream"), ("truncated", "truncated"),
                                       ("trailing", "stray bytes"), ("bomb", "inflates beyond")])
def test_hostile_deflated_descriptions_are_refused(tmp_path, case, why):
    path = _saved(tmp_path)
    meta, p0 = read_native(path)
    text = zlib.compress(json.dumps(meta).encode())
    stored = {"plain": text[2:], "truncated": text[:-9], "trailing": text + b"\x00" * 4,
              "bomb": zlib.compress(b" " * (64 << 20), 9)}[case]         # 64 MiB of blanks in 64 kB
    assert len(stored) < 100_000
    with pytest.raises(nc.CorruptModelFileError, match=why):
        nc.load(_described(path, stored))


def test_a_deflated_description_inflates_within_the_cap(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    n = len(json.dumps(read_native(path)[0], separators=(",", ":")))
    monkeypatch.setattr(native, "MAX_ATTR_BYTES", n)      # the cap is read at each load
    _assert_same(every_format_model(), nc.load(path))
    monkeypatch.setattr(native, "MAX_ATTR_BYTES", n - 1)
    with pytest.raises(nc.CorruptModelFileError, match=f"inflates beyond {n - 1} bytes"):
        nc.load(path)
