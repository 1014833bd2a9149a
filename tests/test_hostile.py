"""Hostile model files: every case F1-F28 of shared/reliability.md section 4.1, built with h5py in tmp_path.

Tests match exception types, never message text. Most cases start from a real Keras file
(data/keras/residual.h5) and change one thing, so that the same file without the change loads.
"""
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

import nncomp as nc
from nncomp.io import safe
from nncomp.io.isolate import load_isolated
from native_files import edit_native, read_native

ROOT = Path(__file__).resolve().parent.parent
KERAS = ROOT / "data" / "keras"
KERNEL = "model_weights/conv_in/conv_in/kernel"           # (3, 3, 1, 16) float32 in residual.h5
BIAS = "model_weights/conv_in/conv_in/bias"


def real(name="residual.h5"):
    path = KERAS / name
    if not path.is_file():
        pytest.skip(f"data/keras/{name} not generated yet")
    return path


@pytest.fixture
def keras_file(tmp_path):
    """A private copy of a real Keras legacy file (Functional, 175 KB)."""
    path = tmp_path / "residual.h5"
    shutil.copy(real(), path)
    return path


@pytest.fixture(scope="module")
def reference():
    model = nc.load(real())
    x, _ = nc.data.for_model(model)
    return model, x[:32], model(x[:32])


def edit(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)
    return path


def replace(path, name, **create):
    def fn(f):
        del f[name]
        f.create_dataset(name, **create)
    return edit(path, fn)


def kernel():
    with h5py.File(real(), "r") as f:
        return f[KERNEL][()]


def set_config(path, fn):
    def change(f):
        cfg = json.loads(f.attrs["model_config"])
        fn(cfg)
        f.attrs["model_config"] = json.dumps(cfg)
    return edit(path, change)


def layer_cfg(cfg, name):
    return next(layer for layer in cfg["config"]["layers"] if layer["name"] == name)


def test_the_untouched_copy_loads(keras_file, reference):
    model, x, y = reference
    assert np.array_equal(nc.load(keras_file)(x), y)


# ----------------------------------------------------------------------------- F1-F3: the file itself
def test_F1_missing_directory_fifo_device(tmp_path):
    with pytest.raises(nc.ModelFileError):
        nc.load(tmp_path / "missing.h5")
    with pytest.raises(nc.ModelFileError):
        nc.load(tmp_path)
    fifo = tmp_path / "fifo.h5"
    os.mkfifo(fifo)
    with pytest.raises(nc.ModelFileError):                   # refused by stat: h5py would block forever
        nc.load(fifo)
    with pytest.raises(nc.ModelFileError):
        nc.load("/dev/null")
    with pytest.raises(nc.ModelFileError):
        nc.load(str(tmp_path / "nul\0.h5"))


def test_F2_not_hdf5(tmp_path):
    text = tmp_path / "passwd.h5"
    text.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 40)
    with pytest.raises(nc.CorruptModelFileError):
        nc.load(text)
    pickle_file = tmp_path / "model.pt"
    pickle_file.write_bytes(b"\x80\x04\x95" + b"\0" * 100)
    with pytest.raises(nc.UnsupportedModelError):            # code-executing formats: refused by magic bytes
        nc.load(pickle_file)
    keras3 = tmp_path / "model.keras"
    with zipfile.ZipFile(keras3, "w") as z:
        z.writestr("config.json", "{}")
    with pytest.raises(nc.UnsupportedModelError):
        nc.load(keras3)
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    with pytest.raises(nc.CorruptModelFileError):
        nc.load(empty)


def test_F2_hdf5_after_a_user_block_is_found(tmp_path, reference):
    model, x, y = reference
    dst = tmp_path / "userblock.h5"
    with h5py.File(real(), "r") as a, h5py.File(dst, "w", userblock_size=1024) as b:
        for k in a:
            a.copy(k, b)
        for k, v in a.attrs.items():
            b.attrs[k] = v
    assert np.array_equal(nc.load(dst)(x), y)


@pytest.mark.parametrize("keep", [0, 7, 100, 2048, 0.5, -1])
def test_F3_truncated(tmp_path, keep):
    data = real().read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (len(data) - 1 if keep == -1 else keep)
    path = tmp_path / "cut.h5"
    path.write_bytes(data[:n])
    with pytest.raises(nc.ModelFileError):
        nc.load(path)


@pytest.mark.parametrize("signature", [b"TREE", b"HEAP", b"SNOD"])
@pytest.mark.parametrize("where", ["signature", "fields"])
def test_F4_damaged_metadata(tmp_path, signature, where):
    data = bytearray(real().read_bytes())
    pos = data.index(signature)
    if where == "signature":
        data[pos:pos + 4] = b"XXXX"
    else:
        data[pos + 4:pos + 24] = b"\xff" * 20
    path = tmp_path / "bad.h5"
    path.write_bytes(bytes(data))
    try:
        nc.load(path)
    except nc.ModelFileError:
        pass                        # the usual outcome; anything else escaping would fail the test


def test_F5_fletcher32_catches_a_flipped_byte(keras_file, reference):
    model, x, y = reference
    path = replace(keras_file, KERNEL, data=kernel(), chunks=(3, 3, 1, 16), fletcher32=True)
    assert np.array_equal(nc.load(path)(x), y)               # intact: loads
    with h5py.File(path, "r") as f:
        offset = f[KERNEL].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 5)
        b = fh.read(1)
        fh.seek(offset + 5)
        fh.write(bytes([b[0] ^ 0x10]))
    with pytest.raises(nc.CorruptModelFileError):
        nc.load(path)


def test_F6_native_checksum_mismatch(tmp_path, reference):
    model, x, y = reference
    path = tmp_path / "native.h5"
    nc.save(model, path)
    assert np.array_equal(nc.load(path)(x), y)
    meta, _ = read_native(path)
    with h5py.File(path, "r") as f:
        offset = f["p0"].id.get_offset() + meta["nodes"][0]["tensors"]["weight"]["arrays"]["w"]["offset"]
    with open(path, "r+b") as fh:                             # one flipped bit in the raw data
        fh.seek(offset + 3)
        b = fh.read(1)
        fh.seek(offset + 3)
        fh.write(bytes([b[0] ^ 0x01]))
    with pytest.raises(nc.CorruptModelFileError):
        nc.load(path)


# ----------------------------------------------------------------------------- F7-F11: links and storage
@pytest.mark.parametrize("target_exists", [True, False])
def test_F7_external_link(keras_file, tmp_path, target_exists):
    other = tmp_path / "other.h5"
    if target_exists:
        with h5py.File(other, "w") as g:
            g["kernel"] = kernel()

    def link(f):
        del f[KERNEL]
        f[KERNEL] = h5py.ExternalLink(str(other), "/kernel")
    edit(keras_file, link)
    with pytest.raises(nc.UnsafeModelFileError):
        nc.load(keras_file)


@pytest.mark.parametrize("kind", ["soft", "dangling", "cycle"])
def test_F8_soft_links(keras_file, kind):
    def link(f):
        if kind == "soft":
            f["model_weights/conv_in/conv_in/alias"] = h5py.SoftLink("/" + KERNEL)
        elif kind == "dangling":
            f["model_weights/dangling"] = h5py.SoftLink("/nowhere/at/all")
        else:
            f["a"] = h5py.SoftLink("/b")
            f["b"] = h5py.SoftLink("/a")
    edit(keras_file, link)
    with pytest.raises(nc.UnsafeModelFileError):
        nc.load(keras_file)


def test_F9_group_cycle_is_walked_once(keras_file, reference):
    model, x, y = reference
    edit(keras_file, lambda f: f["model_weights/conv_in"].__setitem__("loop", f["model_weights/conv_in"]))
    assert np.array_equal(nc.load(keras_file)(x), y)          # no recursion, same model
    edit(keras_file, lambda f: f.__setitem__("optimizer_weights/again", f["/"]))
    assert np.array_equal(nc.load(keras_file)(x), y)


def test_F9_one_dataset_under_two_names_is_refused(keras_file):
    def alias(f):
        del f["model_weights/res_conv1/res_conv1/kernel"]
        f["model_weights/res_conv1/res_conv1/kernel"] = f["model_weights/res_conv2/res_conv2/kernel"]
    edit(keras_file, alias)
    with pytest.raises(nc.UnsafeModelFileError):
        nc.load(keras_file)


@pytest.mark.parametrize("target", ["/etc/passwd", "../../../etc/hostname", "fifo", "missing"])
def test_F10_external_raw_storage(keras_file, tmp_path, target):
    if target == "fifo":
        target = str(tmp_path / "pipe")
        os.mkfifo(target)
    elif target == "missing":
        target = str(tmp_path / "missing.bin")
    n = 3 * 3 * 1 * 16 * 4
    replace(keras_file, KERNEL, shape=(3, 3, 1, 16), dtype="<f4", external=[(target, 0, n)])
    with pytest.raises(nc.UnsafeModelFileError):             # refused before any read: no bytes, no hang
        nc.load(keras_file)


@pytest.mark.parametrize("source_exists", [True, False])
def test_F11_virtual_dataset(keras_file, tmp_path, source_exists):
    src = tmp_path / "src.h5"
    if source_exists:
        with h5py.File(src, "w") as g:
            g["k"] = kernel()
    layout = h5py.VirtualLayout(shape=(3, 3, 1, 16), dtype="f4")
    layout[:] = h5py.VirtualSource(str(src), "k", shape=(3, 3, 1, 16))

    def vds(f):
        del f[KERNEL]
        f.create_virtual_dataset(KERNEL, layout, fillvalue=-1.0)
    edit(keras_file, vds)
    with pytest.raises(nc.UnsafeModelFileError):
        nc.load(keras_file)


# ----------------------------------------------------------------------------- F12-F16: sizes and filters
def test_F12_shape_bomb(keras_file):
    edit(keras_file, lambda f: f.create_dataset("optimizer_weights/bomb", shape=(10**6, 10**6), dtype="f4",
                                                chunks=(1, 1024)))
    assert keras_file.stat().st_size < 400_000
    with pytest.raises(nc.UnsafeModelFileError):
        nc.load(keras_file)


def test_F12_F13_caps_are_keywords(reference):
    model, x, y = reference
    with pytest.raises(nc.UnsafeModelFileError):
        nc.load(real(), max_tensor_bytes=4 * 100)            # res/conv kernels are 9,216 bytes
    with pytest.raises(nc.UnsafeModelFileError):
        nc.load(real(), max_file_bytes=20_000)               # each tensor fits, the total does not
    assert np.array_equal(nc.load(real(), max_tensor_bytes=1 << 20, max_file_bytes=1 << 21)(x), y)
    with pytest.raises(nc.NncompError):
        nc.load(real(), max_tensor_bytes=True)


def test_F14_gzip_bomb(keras_file, reference):
    model, x, y = reference
    edit(keras_file, lambda f: f.create_dataset("optimizer_weights/zeros", data=np.zeros(1 << 24, np.float32),
                                                chunks=(1 << 20,), compression="gzip", compression_opts=9))
    assert keras_file.stat().st_size < 2_000_000             # 64 MiB of zeros in well under 2 MB
    assert np.array_equal(nc.load(keras_file)(x), y)         # under the caps: accepted (and never read)
    with pytest.raises(nc.UnsafeModelFileError):
        nc.load(keras_file, max_tensor_bytes=16 << 20)


def test_F14_expansion_ratio(keras_file):
    edit(keras_file, lambda f: f.create_dataset("optimizer_weights/air", shape=(1 << 29,), dtype="f4",
                                                chunks=(1 << 20,), compression="gzip"))
    with pytest.raises(nc.UnsafeModelFileError):             # 2 GiB declared, nothing stored
        nc.load(keras_file)


def _filtered_file(path, filter_id):
    with h5py.File(path, "w") as f:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((4,))
        dcpl.set_filter(filter_id, h5py.h5z.FLAG_OPTIONAL, ())
        space = h5py.h5s.create_simple((16,))
        dset = h5py.h5d.create(f.id, b"x", h5py.h5t.IEEE_F32LE, space, dcpl=dcpl)
        for i in range(4):                                   # stored as if filtered: reading needs the filter
            dset.write_direct_chunk((4 * i,), np.arange(4, dtype=np.float32).tobytes(), filter_mask=0)
    return path


def test_F15_unknown_filter_is_refused(tmp_path):
    with pytest.raises(nc.UnsafeModelFileError):
        nc.load(_filtered_file(tmp_path / "blosc.h5", 32001))


def test_F15_no_plugin_is_ever_loaded(tmp_path):
    """A plugin directory holds a library whose constructor writes a marker; plain h5py loads it, nncomp never."""
    if shutil.which("cc") is None:
        pytest.skip("needs a C compiler")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (tmp_path / "mark.c").write_text('#include <stdio.h>\n#include <stdlib.h>\n__attribute__((constructor)) '
                                     'static void mark(void) { FILE *f = fopen(getenv("MARK"), "w"); '
                                     'if (f) { fputs("loaded", f); fclose(f); } }\n')
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(plugins / "libmark.so"), str(tmp_path / "mark.c")], check=True)
    path = _filtered_file(tmp_path / "blosc.h5", 32001)
    marks = {}
    for who, code in [("nncomp", f"import nncomp as nc\ntry:\n    nc.load({str(path)!r})\nexcept nc.UnsafeModelFileError:\n    pass"),
                      ("h5py", f"import h5py\ntry:\n    h5py.File({str(path)!r}, 'r')['x'][()]\nexcept Exception:\n    pass")]:
        marks[who] = tmp_path / f"{who}.mark"
        env = dict(os.environ, HDF5_PLUGIN_PATH=str(plugins), MARK=str(marks[who]))
        subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    assert marks["h5py"].exists()                            # the trap works...
    assert not marks["nncomp"].exists()                      # ...and nncomp never springs it


def test_F15_plugin_path_is_restored_after_loading(reference):
    before = [h5py.h5pl.get(i) for i in range(h5py.h5pl.size())]
    with safe.SafeFile(real()):
        assert h5py.h5pl.size() == 0                         # emptied while a file is open
    assert [h5py.h5pl.get(i) for i in range(h5py.h5pl.size())] == before


def test_F16_null_dataspace(keras_file):
    edit(keras_file, lambda f: f.create_dataset("optimizer_weights/null", data=h5py.Empty("f4")))
    with pytest.raises(nc.CorruptModelFileError):
        nc.load(keras_file)


# ----------------------------------------------------------------------------- F17-F21: shapes, types, values
@pytest.mark.parametrize("case,error", [("rank9", nc.UnsupportedModelError), ("scalar", nc.CorruptModelFileError),
                                        ("zero", nc.CorruptModelFileError), ("vector", nc.CorruptModelFileError)])
def test_F17_shapes(keras_file, case, error):
    data = {"rank9": np.zeros((1,) * 9, np.float32), "scalar": np.float32(1.0),
            "zero": np.zeros((3, 3, 0, 16), np.float32), "vector": np.zeros(144, np.float32)}[case]
    replace(keras_file, KERNEL, data=data)
    with pytest.raises(error):
        nc.load(keras_file)


def _weird(kind):
    if kind == "string":
        return dict(data=np.array([b"1.0"] * 16, "S3"))
    if kind == "vlen-string":
        return dict(data=np.array(["1.0"] * 16, object), dtype=h5py.string_dtype())
    if kind == "vlen":
        ds = np.empty(2, object)
        ds[:] = [np.zeros(3, np.float32), np.zeros(2, np.float32)]
        return dict(data=ds, dtype=h5py.vlen_dtype(np.float32))
    if kind == "compound":
        return dict(data=np.zeros(16, [("a", "<f4"), ("b", "<i4")]))
    if kind == "complex":
        return dict(data=np.zeros(16, np.complex64))
    if kind == "bool":
        return dict(data=np.ones(16, bool))
    if kind == "enum":
        return dict(data=np.zeros(16, np.int8), dtype=h5py.enum_dtype({"a": 0, "b": 1}, basetype="i1"))
    if kind == "opaque":
        return dict(data=np.zeros(16, "V4"))
    if kind == "reference":
        return dict(shape=(4,), dtype=h5py.ref_dtype)
    if kind == "array":
        return dict(shape=(16,), dtype=np.dtype(("<f4", (3,))))   # HDF5 ARRAY class
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["string", "vlen-string", "vlen", "compound", "complex", "bool", "enum", "opaque",
                                  "reference", "array"])
@pytest.mark.parametrize("where", [KERNEL, "optimizer_weights/weird"])
def test_F18_F19_non_numeric_dtypes(keras_file, kind, where):
    """Refused wherever they are, even in parts of the file nncomp would never read."""
    if where == KERNEL:
        replace(keras_file, KERNEL, **_weird(kind))
    else:
        edit(keras_file, lambda f: f.create_dataset(where, **_weird(kind)))
    with pytest.raises(nc.UnsupportedModelError):
        nc.load(keras_file)


@pytest.mark.parametrize("dtype", [">f4", "<f8", ">f8", "<f2", "<i2"])
def test_F20_other_numeric_types_are_converted(keras_file, reference, dtype):
    model, x, y = reference
    k = kernel()
    if dtype == "<i2":
        k = np.round(k * 8)
    replace(keras_file, KERNEL, data=k.astype(dtype))
    got = nc.load(keras_file)(x)
    if dtype in (">f4", "<f8", ">f8"):
        assert np.array_equal(got, y)                        # exact: the same float32 values
    assert np.isfinite(got).all()


def test_F20_float64_beyond_float32_range(keras_file):
    k = kernel().astype(np.float64)
    k[0, 0, 0, 0] = 1e300
    replace(keras_file, KERNEL, data=k)
    with pytest.raises(nc.CorruptModelFileError):
        nc.load(keras_file)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_F21_nonfinite_weights(keras_file, value):
    k = kernel()
    k[1, 1, 0, 3] = value
    replace(keras_file, KERNEL, data=k)
    with pytest.raises(nc.CorruptModelFileError):
        nc.load(keras_file)
    assert not np.isfinite(nc.load(keras_file, allow_nonfinite=True)["conv_in"].layer.weight.to_dense()).all()


def test_F21_weights_that_overflow_float32(keras_file, reference):
    """An exponent bit flip of an ordinary weight (x 2**128, found by tests/test_fuzz.py) gives a finite
    weight that turns the outputs into inf: refused with the non-finite values."""
    model, x, y = reference
    k = kernel()
    k[0, 0, 0, 0] = (np.array([0.05], np.float32).view(np.uint32) ^ np.uint32(1 << 30)).view(np.float32)[0]
    assert np.isfinite(k).all() and np.abs(k).max() > 1e36
    replace(keras_file, KERNEL, data=k)
    with pytest.raises(nc.CorruptModelFileError):
        nc.load(keras_file)
    with np.errstate(over="ignore", invalid="ignore"):
        assert not np.isfinite(nc.load(keras_file, allow_nonfinite=True)(x)).all()


# ----------------------------------------------------------------------------- F22-F23: attributes
def test_F22_native_format_refuses_vlen_attributes(tmp_path, reference):
    model, x, y = reference
    path = tmp_path / "native.h5"
    nc.save(model, path)
    text = h5py.File(path, "r").attrs["model_sha256"]
    edit(path, lambda f: f.attrs.__setitem__("model_sha256", text.decode()))      # now a vlen string
    with pytest.raises(nc.UnsupportedModelError):
        nc.load(path)


@pytest.mark.parametrize("value", [np.arange(3), np.float64(1.5), np.array([b"{}", b"{}"])])
def test_F22_model_config_of_the_wrong_type(keras_file, value):
    edit(keras_file, lambda f: f.attrs.__setitem__("model_config", value))
    with pytest.raises(nc.CorruptModelFileError):
        nc.load(keras_file)


def _vlen_length_bomb(path):
    """Set the stored length of the model_config string to 2**32 - 1: HDF5 then allocates and fills 4 GiB."""
    data = bytearray(path.read_bytes())
    with h5py.File(path, "r") as f:
        n = len(f.attrs["model_config"].encode())
    gcol = data.index(b"GCOL")
    pos = data.index(struct.pack("<IQ", n, gcol))
    data[pos:pos + 4] = struct.pack("<I", 2 ** 32 - 1)
    path.write_bytes(bytes(data))
    return path


def test_F22_corrupted_vlen_heap_is_contained_by_isolation(keras_file):
    """In-process this file makes HDF5 allocate and fill 4 GiB (minutes here); isolated, it is an error."""
    _vlen_length_bomb(keras_file)
    with pytest.raises(nc.ModelFileError):
        load_isolated(keras_file, timeout=60, max_memory=1 << 30)


@pytest.mark.parametrize("field", ["signature", "size", "object"])
def test_F22_damaged_global_heap(keras_file, field):
    data = bytearray(keras_file.read_bytes())
    pos = data.index(b"GCOL")
    if field == "signature":
        data[pos:pos + 4] = b"GCOX"
    elif field == "size":
        data[pos + 8:pos + 16] = struct.pack("<Q", 16)
    else:
        data[pos + 24:pos + 32] = struct.pack("<Q", 2 ** 62)
    keras_file.write_bytes(bytes(data))
    with pytest.raises(nc.CorruptModelFileError):
        nc.load(keras_file)


def test_F22_heap_object_size_that_hangs_hdf5_is_caught_in_process(keras_file):
    """Found by tests/test_fuzz.py: one flipped bit in a heap object's size made HDF5 loop forever while
    reading model_config (GIL held). nncomp checks the heap's structure first, in Python. The load runs in
    a child here only so that a regression fails the test instead of hanging it."""
    data = bytearray(keras_file.read_bytes())
    g = data.index(b"GCOL")
    p, end = g + 16, g + int.from_bytes(data[g + 8:g + 16], "little")
    while int.from_bytes(data[p:p + 2], "little") not in (0, 52):
        p += 16 + (int.from_bytes(data[p + 8:p + 16], "little") + 7) // 8 * 8
    assert p < end and int.from_bytes(data[p:p + 2], "little") == 52
    data[p + 9] |= 0x08                                      # size += 2048
    keras_file.write_bytes(bytes(data))
    code = (f"import nncomp as nc\ntry:\n    nc.load({str(keras_file)!r})\nexcept nc.CorruptModelFileError:\n"
            f"    print('refused')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "refused", out.stderr[-500:]


def test_F23_huge_fixed_length_attribute(tmp_path):
    path = tmp_path / "big.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f.attrs["model_config"] = np.bytes_(b"{" + b" " * (17 << 20) + b"}")
        f.create_group("model_weights")
    with pytest.raises(nc.UnsafeModelFileError):
        nc.load(path)


def test_F23_huge_vlen_model_config(keras_file):
    edit(keras_file, lambda f: f.attrs.__setitem__("model_config", '{"a": "' + "x" * (17 << 20) + '"}'))
    with pytest.raises(nc.UnsafeModelFileError):
        nc.load(keras_file)


@pytest.mark.parametrize("depth", [65, 100_000])
def test_F23_deeply_nested_model_config(keras_file, depth):
    edit(keras_file, lambda f: f.attrs.__setitem__("model_config", "[" * depth + "]" * depth))
    with pytest.raises(nc.ModelFileError):
        nc.load(keras_file)


# ----------------------------------------------------------------------------- F24-F26: content
LAMBDA = {"class_name": "Lambda", "config": {"name": "lam", "function": {"class_name": "__lambda__", "config": {
    "code": "4wEAAAAAAAAAAAAAAAEAAAADAAAA", "defaults": None, "closure": None}}, "output_shape": None},
    "name": "lam", "module": "keras.layers", "registered_name": None}


def _insert_after_conv_in(cfg, entry):
    layers = cfg["config"]["layers"]
    i = next(k for k, layer in enumerate(layers) if layer["name"] == "conv_in")
    entry = json.loads(json.dumps(entry))
    entry["inbound_nodes"] = json.loads(json.dumps(layers[i + 1]["inbound_nodes"]))
    layers.insert(i + 1, entry)
    layers[i + 2]["inbound_nodes"][0]["args"][0]["config"]["keras_history"] = [entry["name"], 0, 0]


@pytest.mark.parametrize("case", ["lambda", "custom-module", "registered", "vocabulary", "nested-model",
                                  "subclassed-model", "activation", "activation-dict", "leaky", "quantized",
                                  "private-name", "dunder"])
def test_F24_unsupported_content_is_named_not_run(keras_file, case):
    def change(cfg):
        if case == "lambda":
            _insert_after_conv_in(cfg, LAMBDA)
        elif case == "custom-module":
            layer_cfg(cfg, "res_relu1").update(module="evil.layers", class_name="ReLU")
        elif case == "registered":
            layer_cfg(cfg, "res_relu1")["registered_name"] = "Custom>ReLU"
        elif case == "vocabulary":
            _insert_after_conv_in(cfg, {"class_name": "StringLookup", "name": "lookup",
                                        "config": {"name": "lookup", "vocabulary": "/etc/passwd"}})
        elif case == "nested-model":
            layer_cfg(cfg, "res_relu1").update(class_name="Sequential")
        elif case == "subclassed-model":
            cfg.update(class_name="MyModel", module="my_project.models")
        elif case == "activation":
            layer_cfg(cfg, "conv_in")["config"]["activation"] = "selu"
        elif case == "activation-dict":
            layer_cfg(cfg, "conv_in")["config"]["activation"] = {"module": "my.acts", "class_name": "function",
                                                                 "config": "my_act", "registered_name": "my_act"}
        elif case in ("private-name", "dunder"):           # never reaches a private helper by name
            layer_cfg(cfg, "res_relu1")["class_name"] = "_layer" if case == "private-name" else "__init__"
        elif case == "leaky":
            layer_cfg(cfg, "res_relu1")["config"]["negative_slope"] = 0.1
        else:
            layer_cfg(cfg, "conv_in")["config"]["dtype"] = {"module": "keras", "class_name": "QuantizedDTypePolicy",
                                                            "config": {"name": "int8_from_float32"}}
    set_config(keras_file, change)
    with pytest.raises(nc.UnsupportedModelError):
        nc.load(keras_file)


@pytest.mark.parametrize("case", ["missing", "extra-role", "extra-layer", "units", "filters", "eps", "cycle",
                                  "unknown-input"])
def test_F25_weights_that_do_not_fit_the_config(keras_file, case):
    if case == "missing":
        edit(keras_file, lambda f: f.__delitem__(BIAS))
    elif case == "extra-role":
        edit(keras_file, lambda f: f.create_dataset("model_weights/conv_in/conv_in/gamma", data=np.ones(16, "f4")))
    elif case == "extra-layer":
        edit(keras_file, lambda f: f.create_dataset("model_weights/ghost/ghost/kernel", data=np.ones((2, 2), "f4")))
    elif case == "units":
        set_config(keras_file, lambda cfg: layer_cfg(cfg, "logits")["config"].update(units=100))
    elif case == "filters":
        set_config(keras_file, lambda cfg: layer_cfg(cfg, "res_conv1")["config"].update(filters=12))
    elif case == "eps":
        set_config(keras_file, lambda cfg: layer_cfg(cfg, "res_bn1")["config"].update(epsilon="0.001"))
    elif case == "cycle":
        set_config(keras_file, lambda cfg: layer_cfg(cfg, "conv_in")["inbound_nodes"][0]["args"][0]["config"]
                   .update(keras_history=["res_relu_out", 0, 0]))
    else:
        set_config(keras_file, lambda cfg: layer_cfg(cfg, "conv_in")["inbound_nodes"][0]["args"][0]["config"]
                   .update(keras_history=["nowhere", 0, 0]))
    with pytest.raises(nc.CorruptModelFileError):
        nc.load(keras_file)


def test_F23_large_graph_listed_backwards_loads_in_linear_time(keras_file, reference):
    """20,000 identity layers in reverse order: sorted by their inputs (not quadratically)."""
    model, x, y = reference

    def chain(cfg):
        layers = cfg["config"]["layers"]
        i = next(k for k, layer in enumerate(layers) if layer["name"] == "gap")
        ref = layers[i + 1]["inbound_nodes"][0]["args"][0]
        prev, extra = "gap", []
        for k in range(20_000):
            t = json.loads(json.dumps(ref))
            t["config"]["keras_history"] = [prev, 0, 0]
            extra.append({"class_name": "Dropout", "name": f"d{k}", "config": {"name": f"d{k}", "rate": 0.5},
                          "inbound_nodes": [{"args": [t], "kwargs": {}}]})
            prev = f"d{k}"
        layers[i + 1]["inbound_nodes"][0]["args"][0]["config"]["keras_history"] = [prev, 0, 0]
        layers[i + 1:i + 1] = extra[::-1]
    set_config(keras_file, chain)
    loaded = nc.load(keras_file)
    assert len(loaded.nodes) == len(model.nodes) + 20_000
    assert np.array_equal(loaded(x), y)


@pytest.mark.parametrize("case", ["missing-group", "extra-group", "var-count"])
def test_F25_weights_h5_that_does_not_fit(tmp_path, case):
    path = tmp_path / "m.weights.h5"
    shutil.copy(real("residual.weights.h5"), path)
    if case == "missing-group":
        edit(path, lambda f: f.__delitem__("layers/conv2d/vars/1"))
    elif case == "extra-group":
        edit(path, lambda f: f.create_dataset("layers/conv2d_99/vars/0", data=np.ones(3, "f4")))
    else:
        edit(path, lambda f: f.create_dataset("layers/batch_normalization/vars/4", data=np.ones(16, "f4")))
    with pytest.raises(nc.CorruptModelFileError):
        nc.load(path, architecture=real())


def test_F26_pytorch_layout_in_a_keras_file(keras_file):
    with h5py.File(keras_file, "r") as f:
        k = f["model_weights/logits/logits/kernel"][()]      # Keras (in, out) = (32, 10)
    replace(keras_file, "model_weights/logits/logits/kernel", data=np.ascontiguousarray(k.T))
    with pytest.raises(nc.CorruptModelFileError):            # never a silent transpose guess
        nc.load(keras_file)


def test_F26_keras_layout_in_a_state_dict(tmp_path):
    src = nc.data.model_path("lenet300")
    path = tmp_path / "sd.h5"
    shutil.copy(src, path)
    with h5py.File(path, "r") as f:
        w = f["fc2.weight"][()]                              # PyTorch (out, in) = (100, 300)
    replace(path, "fc2.weight", data=np.ascontiguousarray(w.T))
    with pytest.raises(nc.CorruptModelFileError):
        nc.load(path)


# ----------------------------------------------------------------------------- F27-F28: nncomp's own format
def _native(tmp_path, model, change):
    path = tmp_path / "native.h5"
    nc.save(model, path)
    # A crafted file recomputes the description's checksum: deeper checks must still hold.
    return edit_native(path, change)


@pytest.mark.parametrize("case,error", [("format", nc.UnsupportedModelError), ("encoding", nc.UnsupportedModelError),
                                        ("dtype", nc.CorruptModelFileError), ("rank", nc.CorruptModelFileError),
                                        ("shape", nc.CorruptModelFileError), ("missing", nc.CorruptModelFileError),
                                        ("kind", nc.UnsupportedModelError), ("json", nc.CorruptModelFileError)])
def test_F27_damaged_native_description(tmp_path, reference, case, error):
    model, x, y = reference

    def change(meta, arrays):
        weight = meta["nodes"][0]["tensors"]["weight"]
        arr = weight["arrays"]["w"]
        if case == "format":
            weight["matrix"] = "no-such-format"
        elif case == "encoding":
            weight["arrays"]["w"] = {"encoding": "lzma", "parts": {}, "dtype": "<f4", "shape": arr["shape"]}
        elif case == "dtype":
            arr["dtype"] = "|O"
        elif case == "rank":
            data = arrays[arr["data"]].reshape(-1)
            arrays[arr["data"]] = data
            arr["shape"] = list(data.shape)
            arr["sha256"] = hashlib.sha256(data.tobytes()).hexdigest()
        elif case == "shape":
            arr["shape"] = [1, 2]
        elif case == "missing":
            del arr["data"]
            arr["pack"], arr["offset"] = 999, 0         # no dataset /p999
        elif case == "kind":
            meta["nodes"][0]["kind"] = "lambda"
        else:
            meta["nodes"] = "not a list"
    with pytest.raises(error):
        nc.load(_native(tmp_path, model, change))


@pytest.mark.parametrize("version,error", [(np.int64(99), nc.UnsupportedModelError), (np.int64(0), nc.CorruptModelFileError),
                                           (np.bytes_(b"1"), nc.CorruptModelFileError),
                                           (np.float64(1.0), nc.CorruptModelFileError)])
def test_F28_format_version(tmp_path, reference, version, error):
    model, x, y = reference
    path = tmp_path / "native.h5"
    nc.save(model, path)
    edit(path, lambda f: f.attrs.__setitem__("format_version", version))
    with pytest.raises(error):
        nc.load(path)


# ----------------------------------------------------------------------------- T5, T9
def test_T5_concurrent_loads_of_one_file(reference):
    model, x, y = reference
    before = [h5py.h5pl.get(i) for i in range(h5py.h5pl.size())]
    results, errors = [None] * 4, []

    def work(i):
        try:
            results[i] = nc.load(real())(x)
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(np.array_equal(r, y) for r in results)
    assert [h5py.h5pl.get(i) for i in range(h5py.h5pl.size())] == before


def test_T9_isolated_load_gives_the_same_model(reference):
    model, x, y = reference
    isolated = load_isolated(real(), timeout=120)
    assert np.array_equal(isolated(x), y) and str(isolated) == str(model)


def test_T9_isolated_errors_keep_their_type(keras_file, tmp_path):
    edit(keras_file, lambda f: f.__delitem__(BIAS))
    with pytest.raises(nc.CorruptModelFileError):
        load_isolated(keras_file, timeout=120)
    with pytest.raises(nc.UnsupportedModelError):
        load_isolated(real("residual.weights.h5"), timeout=120)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(nc.ModelFileError):
        load_isolated(fifo)
    with pytest.raises(nc.NncompError):
        load_isolated(real(), timeout=-1)


def test_T9_load_isolate_keyword(reference):
    import inspect
    if "isolate" not in inspect.signature(nc.load).parameters:
        pytest.skip("nc.load(..., isolate=True) is not wired into nncomp/io/__init__.py yet")
    model, x, y = reference
    assert np.array_equal(nc.load(real(), isolate=True, timeout=120)(x), y)


def test_T9_timeout_and_memory_limit(keras_file):
    with pytest.raises(nc.ModelFileError):                   # too short even to start: killed, reported
        load_isolated(keras_file, timeout=0.01)
    with pytest.raises(nc.ModelFileError):                   # no memory to parse with
        load_isolated(keras_file, timeout=120, max_memory=1 << 20)


# ------------------------------------------------------------------ ONNX files (issue 15)
# Every case of shared/reliability.md that applies to ONNX, and the CVE patterns of ONNX loaders:
# external data through ../, absolute paths, symbolic and hard links (CVE-2022-25882, CVE-2024-27318,
# CVE-2026-27489, CVE-2026-34446), offset/length beyond the file (CVE-2024-27319).
ONNX_MODEL = ROOT / "data" / "onnx" / "torch_misc.op13.onnx"


@pytest.fixture
def og():
    """tests/onnx_graphs.py (its graph builders need the onnx package; these tests skip without it)."""
    pytest.importorskip("onnx")
    import onnx_graphs
    return onnx_graphs


def _onnx_weight_model(onnx_graphs, w, **tensor_fields):
    """y = x @ w for x of shape (n, 4): one initializer ``w`` the cases below damage."""
    from onnx import TensorProto, helper
    t = helper.make_tensor("w", TensorProto.FLOAT, list(w.shape), w.reshape(-1).tolist())
    for k, v in tensor_fields.items():
        if k == "dims":
            del t.dims[:]
            t.dims.extend(v)
        else:
            setattr(t, k, v)
    return onnx_graphs.graph_model([helper.make_node("MatMul", ["x", "w"], ["y"])], ["n", 4], inits=[t])


def _external(onnx_graphs, tmp_path, location, *, offset=0, length=None):
    """A model whose initializer ``w`` (4 x 3 float32) lives in external data at ``location``."""
    from onnx import TensorProto, helper
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 3])
    t.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": str(offset), "length": str(48 if length is None else length)}
    for k, v in entries.items():
        e = t.external_data.add()
        e.key, e.value = k, v
    model = onnx_graphs.graph_model([helper.make_node("MatMul", ["x", "w"], ["y"])], ["n", 4], inits=[t])
    (tmp_path / "model").mkdir(exist_ok=True)
    return onnx_graphs.save(model, tmp_path / "model" / "m.onnx"), w


def test_onnx_fifo_is_refused_without_opening_it(og, tmp_path):
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    result = []
    t = threading.Thread(target=lambda: result.append(pytest.raises(nc.ModelFileError, nc.load, fifo)), daemon=True)
    t.start()
    t.join(20)
    assert result, "nc.load blocked on a FIFO"


def test_onnx_truncated_and_random_bytes(og, tmp_path):
    data = ONNX_MODEL.read_bytes()
    for n in (0, 1, 7, 100, len(data) // 2, len(data) - 1):
        path = tmp_path / f"cut{n}.onnx"
        path.write_bytes(data[:n])
        with pytest.raises(nc.ModelFileError):
            nc.load(path)
    rng = np.random.default_rng(0)
    for i in range(20):
        path = tmp_path / f"random{i}.onnx"
        path.write_bytes((b"\x08" if i % 2 else b"") + rng.bytes(int(rng.integers(1, 5000))))
        with pytest.raises(nc.ModelFileError):
            nc.load(path)


def test_onnx_declared_dims_are_capped_before_allocation(og, tmp_path):
    import time
    model = _onnx_weight_model(og, np.ones((4, 3), np.float32), dims=[1 << 20, 1 << 20])
    path = og.save(model, tmp_path / "bomb.onnx")
    t = time.perf_counter()
    with pytest.raises(nc.UnsafeModelFileError):
        nc.load(path)
    assert time.perf_counter() - t < 1.0
    with pytest.raises(nc.ModelFileError):
        nc.load(og.save(_onnx_weight_model(og, np.ones((4, 3), np.float32), dims=[4, -3]), tmp_path / "neg.onnx"))
    with pytest.raises(nc.UnsafeModelFileError):           # the per-tensor cap is a keyword
        nc.load(og.save(_onnx_weight_model(og, np.ones((4, 3), np.float32)), tmp_path / "ok.onnx"),
                max_tensor_bytes=16)
    with pytest.raises(nc.UnsafeModelFileError):           # and so is the file cap (protobuf size first)
        nc.load(ONNX_MODEL, max_file_bytes=1000)


def test_onnx_data_of_the_wrong_length(og, tmp_path):
    w = np.ones((4, 3), np.float32)
    for fields in (dict(raw_data=b"\0" * 44), dict(raw_data=b"\0" * 52)):
        bad = _onnx_weight_model(og, w)
        bad.graph.initializer[0].ClearField("float_data")
        bad.graph.initializer[0].raw_data = fields["raw_data"]
        with pytest.raises(nc.CorruptModelFileError):
            nc.load(og.save(bad, tmp_path / "raw.onnx"))
    bad = _onnx_weight_model(og, w)
    del bad.graph.initializer[0].float_data[-1]
    with pytest.raises(nc.CorruptModelFileError):
        nc.load(og.save(bad, tmp_path / "typed.onnx"))


@pytest.mark.parametrize("value", [np.nan, np.inf, 1e35])
def test_onnx_nonfinite_weights(og, tmp_path, value):
    w = np.ones((4, 3), np.float32)
    w[1, 2] = value
    path = og.save(_onnx_weight_model(og, w), tmp_path / "m.onnx")
    with pytest.raises(nc.CorruptModelFileError):
        nc.load(path)
    assert nc.load(path, allow_nonfinite=True).nodes[0].layer.kind == "dense"


def test_onnx_external_data_is_refused_by_default_and_read_inside_the_folder(og, tmp_path):
    path, w = _external(og, tmp_path, "w.bin")
    (tmp_path / "model" / "w.bin").write_bytes(w.tobytes())
    with pytest.raises(nc.UnsafeModelFileError):
        nc.load(path)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(nc.load(path, external_data=True)(x), x @ w)


@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlink_out", "symlink_in", "hardlink", "fifo",
                                   "beyond", "negative_offset", "short_length", "missing", "directory"])
def test_onnx_external_data_attacks(og, tmp_path, where):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.full(12, 7, np.float32).tobytes())
    path, w = _external(og, tmp_path, "w.bin")
    folder = tmp_path / "model"
    location, kw = "w.bin", {}
    (folder / "w.bin").write_bytes(w.tobytes())
    if where == "dotdot":
        location = "../secret.bin"
    elif where == "absolute":
        location = str(secret)
    elif where == "symlink_out":
        location = "link.bin"
        os.symlink(secret, folder / "link.bin")
    elif where == "symlink_in":
        location = "link.bin"
        os.symlink(folder / "w.bin", folder / "link.bin")
    elif where == "hardlink":
        location = "hard.bin"
        os.link(secret, folder / "hard.bin")
    elif where == "fifo":
        location = "fifo.bin"
        os.mkfifo(folder / "fifo.bin")
    elif where == "beyond":
        kw = dict(offset=8)
    elif where == "negative_offset":
        kw = dict(offset=-4)
    elif where == "short_length":
        kw = dict(length=40)
    elif where == "missing":
        location = "nothing.bin"
    elif where == "directory":
        location = "sub"
        (folder / "sub").mkdir()
    path, _ = _external(og, tmp_path, location, **kw)
    with pytest.raises(nc.ModelFileError):
        nc.load(path, external_data=True)


def _graph_case(onnx_graphs, case):
    from onnx import helper
    relu = lambda i, o, **kw: helper.make_node("Relu", [i], [o], **kw)  # noqa: E731
    if case == "cycle":
        nodes = [relu("b", "a"), relu("a", "b"), relu("b", "y")]
    elif case == "undefined":
        nodes = [relu("nowhere", "y")]
    elif case == "duplicate_output":
        nodes = [relu("x", "a"), relu("x", "a"), relu("a", "y")]
    elif case == "output_not_defined":
        nodes = [relu("x", "a")]
    elif case == "bad_attribute_type":
        nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2.0, 2.0])]
    elif case == "bad_attribute_value":
        nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], pads=[-1, 0, 0, 0])]
    elif case == "unknown_domain":
        nodes = [helper.make_node("Relu", ["x"], ["y"], domain="com.evil")]
    elif case == "constant_output":
        nodes = [helper.make_node("Constant", [], ["y"], value_float=1.0)]
    elif case == "second_input":
        nodes = [relu("x", "y")]
    elif case == "huge_activation":
        nodes = [helper.make_node("Pad", ["x", "p"], ["y"])]
    elif case == "huge_fold":
        nodes = [helper.make_node("ConstantOfShape", ["p"], ["c"]), helper.make_node("Add", ["x", "c"], ["y"])]
    pads = onnx_graphs.init("p", np.array([0, 0, 1 << 20, 1 << 20, 0, 0, 1 << 20, 1 << 20]))
    model = onnx_graphs.graph_model(nodes, ["n", 3, 4, 4], inits=[pads] if case.startswith("huge") else [])
    if case == "second_input":
        model.graph.input.append(helper.make_tensor_value_info("z", 1, ["n", 3]))
    return model


@pytest.mark.parametrize("case", ["cycle", "undefined", "duplicate_output", "output_not_defined",
                                  "bad_attribute_type", "bad_attribute_value", "unknown_domain", "constant_output",
                                  "second_input", "huge_activation", "huge_fold"])
def test_onnx_malformed_graphs(og, tmp_path, case):
    path = og.save(_graph_case(og, case), tmp_path / "m.onnx")
    with pytest.raises(nc.ModelFileError) as e:
        nc.load(path)
    assert e.value.path == str(path)
    if case in ("cycle", "undefined", "duplicate_output", "output_not_defined", "bad_attribute_type"):
        assert isinstance(e.value, nc.CorruptModelFileError)


def test_onnx_isolated_load(og, tmp_path):
    m = nc.load(ONNX_MODEL, isolate=True, timeout=120)
    x = np.random.default_rng(0).random((2, 3, 17, 19), dtype=np.float32)
    np.testing.assert_array_equal(m(x), nc.load(ONNX_MODEL)(x))
    with pytest.raises(nc.ModelFileError):
        nc.load(og.save(_graph_case(og, "cycle"), tmp_path / "m.onnx"), isolate=True, timeout=120)


@pytest.mark.parametrize("name", ["torch_misc.op13.onnx", "resnet_small.op18.onnx"])
def test_onnx_mutation_fuzz_has_no_escapes(og, tmp_path, name):
    """Random byte flips, insertions and cuts of real ONNX files: each either loads (and runs) or
    raises a ModelFileError; nothing else escapes."""
    data = (og.ONNX_DIR / name).read_bytes()
    rng = np.random.default_rng(15)
    x = np.random.default_rng(1).random((1, 3, 17, 19) if "misc" in name else (1, 1, 28, 28), dtype=np.float32)
    loaded = 0
    for i in range(150):
        buf = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(0, len(buf)))
            kind = rng.integers(0, 3)
            if kind == 0:
                buf[pos] ^= 1 << int(rng.integers(0, 8))
            elif kind == 1:
                buf[pos] = int(rng.integers(0, 256))
            else:
                buf[pos:pos + int(rng.integers(1, 16))] = b""
        path = tmp_path / f"m{i}.onnx"
        path.write_bytes(bytes(buf))
        try:
            m = nc.load(path)
        except nc.ModelFileError:
            continue
        loaded += 1
        try:
            m(x)
        except nc.InputError:
            pass
    assert loaded > 0                 # flips in weights load: the test exercised both paths
