"""Mutation fuzzing of real model files: truncations, bit flips and byte mutations.

Only NncompError may come out of ``nc.load``; a model that loads must run and give finite outputs
on real digits. Every mutant is loaded in a worker process with a per-mutant timeout and an
address-space limit, so that a crash or hang inside HDF5 (reliability.md F22: corrupted
variable-length strings) is counted instead of taking the suite down; the mutants that crash or
hang a worker must then be refused cleanly by ``load(..., isolate=True)`` (T9).

``NNCOMP_FUZZ=N`` sets the number of mutants (default 150), ``NNCOMP_FUZZ_SEED`` the seed.
Statistics are printed (``pytest -s``), including per file how many mutants loaded with the same
outputs as the pristine file ("loaded-same") or silently different ones ("loaded-changed": formats
without checksums), and failing mutants are kept in the test's tmp folder.
"""
import collections
import json
import os
import select
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import nncomp as nc
from nncomp.io.isolate import load_isolated

ROOT = Path(__file__).resolve().parent.parent
N_MUTANTS = int(os.environ.get("NNCOMP_FUZZ", "150"))
SEED = int(os.environ.get("NNCOMP_FUZZ_SEED", "0"))
TIMEOUT = 30.0            # per mutant; a sound load takes well under a second here
WORKER_MEMORY = 2 << 30   # address space a worker may add after start-up

WORKER = r"""
import hashlib, json, os, resource, sys, traceback
import numpy as np
import nncomp as nc
with open("/proc/self/statm") as fh:
    now = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
extra = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (now + extra, now + extra))
digits = {layout: nc.data.mnist("test", layout=layout)[0][:4] for layout in ("NHWC", "NC", "NCHW")}
print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    try:
        model = nc.load(req["path"], architecture=req["arch"])
    except nc.NncompError as e:
        out = {"status": "refused", "type": type(e).__name__}
    except BaseException as e:
        out = {"status": "escape", "where": "load", "type": type(e).__name__, "trace": traceback.format_exc()[-1500:]}
    else:
        x = digits[model.input_layout]
        if x.shape[1:] != model.input_shape:
            x = np.random.default_rng(0).random((4,) + model.input_shape, dtype=np.float32)
        try:
            ys = model(x)
            ys = ys if isinstance(ys, tuple) else (ys,)
            out = {"status": "loaded" if all(np.isfinite(y).all() for y in ys) else "nonfinite",
                   "digest": hashlib.sha256(b"".join(np.ascontiguousarray(y).tobytes() for y in ys)).hexdigest()}
        except nc.NncompError as e:
            out = {"status": "refused-at-run", "type": type(e).__name__}
        except BaseException as e:
            out = {"status": "escape", "where": "run", "type": type(e).__name__, "trace": traceback.format_exc()[-1500:]}
    print(json.dumps(out), flush=True)
"""


class Worker:
    """A loader process fed one mutant per line; killed and replaced when it crashes or hangs."""

    def __init__(self, log):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        self.log = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(WORKER_MEMORY)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, env=env, text=True)
        assert self._line(300) == "ready", "fuzz worker did not start"

    def _line(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        return self.proc.stdout.readline().strip()

    def ask(self, path, arch, timeout=TIMEOUT):
        """The worker's verdict dict, or {"status": "hang"} / {"status": "crash", "rc": ...}."""
        try:
            self.proc.stdin.write(json.dumps({"path": str(path), "arch": arch}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return {"status": "crash", "rc": self.proc.wait()}
        line = self._line(timeout)
        if line is None:
            self.close()
            return {"status": "hang"}
        if line == "":
            return {"status": "crash", "rc": self.proc.wait()}
        return json.loads(line)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


def data_ranges(path):
    """Byte ranges of raw dataset storage (contiguous data and chunks); the rest is metadata."""
    ranges = []

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset):
            return
        dsid = obj.id
        offset = dsid.get_offset()
        if offset is not None:
            ranges.append((offset, offset + dsid.get_storage_size()))
        elif obj.chunks is not None:
            for i in range(dsid.get_num_chunks()):
                info = dsid.get_chunk_info(i)
                ranges.append((info.byte_offset, info.byte_offset + info.size))
    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return ranges


def sources(tmp_path):
    """(name, bytes, architecture, metadata byte offsets) of every real file the fuzzer mutates."""
    keras = ROOT / "data" / "keras"
    out = []
    for name in ("mlp", "lenet5", "mobilenet", "residual"):
        for path, arch in [(keras / f"{name}.h5", None), (keras / f"{name}.weights.h5", str(keras / f"{name}.config.json"))]:
            if path.is_file() and (arch is None or Path(arch).is_file()):
                out.append((path.name, path, arch))
    if (keras / "mobilenet.h5").is_file():                   # nncomp's own format, written from a Keras model
        native = tmp_path / "mobilenet.native.h5"
        nc.save(nc.load(keras / "mobilenet.h5"), native)
        out.append((native.name, native, None))
    out.append(("lenet300.h5", nc.data.model_path("lenet300"), None))   # a PyTorch state dict with nncomp-arch
    result = []
    for name, path, arch in out:
        data = path.read_bytes()
        meta = np.ones(len(data), bool)
        for a, b in data_ranges(path):
            meta[a:b] = False
        result.append((name, data, arch, np.flatnonzero(meta)))
    return result


def mutate(rng, data, meta):
    """One mutant of ``data`` and a short description of what was done."""
    data = bytearray(data)
    kind = rng.choice(["truncate", "flip-meta", "flip-any", "bytes-meta", "bytes-any"], p=[.15, .35, .15, .2, .15])
    if kind == "truncate":
        n = int(rng.integers(0, len(data)))
        return bytes(data[:n]), f"truncate to {n}"
    if kind.startswith("flip"):
        where = meta if kind == "flip-meta" else np.arange(len(data))
        pos = rng.choice(where, size=int(rng.integers(1, 9)))
        for p in pos:
            data[p] ^= 1 << int(rng.integers(0, 8))
        return bytes(data), f"{kind} at {sorted(int(p) for p in pos)}"
    where = meta if kind == "bytes-meta" else np.arange(len(data))
    start = int(rng.choice(where))
    n = int(rng.integers(1, 17))
    fill = rng.choice(["random", "zero", "ff"])
    block = {"random": rng.integers(0, 256, n, dtype=np.uint8).tobytes(), "zero": b"\0" * n, "ff": b"\xff" * n}[fill]
    data[start:start + n] = block[:len(data) - start]
    return bytes(data), f"{kind} {fill} x{n} at {start}"


def test_mutated_files_raise_only_nncomp_errors(tmp_path):
    srcs = sources(tmp_path)
    if not srcs:
        pytest.skip("no fixture files to mutate")
    keep = tmp_path / "failures"
    keep.mkdir()
    worker = Worker(tmp_path / "worker.log")
    stats, failures, by_kind, by_file = collections.Counter(), [], collections.Counter(), collections.Counter()
    pristine = {}
    try:
        for name, data, arch, _ in srcs:                     # the pristine files load: the harness works
            path = tmp_path / "pristine.h5"
            path.write_bytes(data)
            verdict = worker.ask(path, arch, timeout=300)
            assert verdict["status"] == "loaded", (name, verdict)
            pristine[name] = verdict["digest"]
        for i in range(N_MUTANTS):
            rng = np.random.default_rng([SEED, i])
            name, data, arch, meta = srcs[int(rng.integers(len(srcs)))]
            mutant, what = mutate(rng, data, meta)
            path = tmp_path / "mutant.h5"
            path.write_bytes(mutant)
            verdict = worker.ask(path, arch)
            stats[verdict["status"]] += 1
            by_kind[(what.split()[0], verdict["status"])] += 1
            same = verdict.get("digest") == pristine[name]
            by_file[(name, verdict["status"] + ("" if "digest" not in verdict else "-same" if same else "-changed"))] += 1
            if verdict["status"] in ("escape", "crash", "hang", "nonfinite"):
                saved = keep / f"{i:05d}-{verdict['status']}-{name}"
                shutil.copy(path, saved)
                failures.append((i, name, what, verdict, saved, arch))
                if verdict["status"] in ("crash", "hang"):
                    worker.close()
                    worker = Worker(tmp_path / "worker.log")
    finally:
        worker.close()
    print(f"\nfuzz: {N_MUTANTS} mutants (seed {SEED}) of {len(srcs)} files: {dict(stats)}")
    print("by kind:", dict(sorted(by_kind.items())))
    print("by file:", dict(sorted(by_file.items())))
    for i, name, what, verdict, saved, arch in failures:
        print(f"  #{i} {name} {what}: {verdict}")
    escapes = [f for f in failures if f[3]["status"] in ("escape", "nonfinite")]
    assert not escapes, f"{len(escapes)} mutants let a non-nncomp error or a non-finite output through: {escapes[:3]}"
    assert stats["refused"] > N_MUTANTS // 10                 # the mutations do reach the parser
    for i, name, what, verdict, saved, arch in failures:     # crashed or hung a worker: isolation contains it
        with pytest.raises(nc.ModelFileError):
            load_isolated(saved, architecture=arch, timeout=TIMEOUT, max_memory=WORKER_MEMORY)
