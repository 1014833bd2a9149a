"""One method's benchmark tables: ``python -m nncomp.bench --suite NAME``.

Each suite is a module here with ``THREADS`` (its default thread count), ``PARTS`` (the parts
``--parts`` can pick; ``QUICK_PARTS`` with ``--quick``), ``run(result, opts)`` that fills the result
dict, and ``markdown(result)`` that renders it. :func:`run_suite` records the machine, versions,
threads and load average with every result and writes ``NAME.json`` and ``NAME.md`` into ``--out``
(the committed runs are in the repository's bench/results/). ``--quick`` runs small shapes and few
repeats in seconds (tests/test_bench.py checks the outputs' structure, never speed).
"""
import importlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SUITES = ("dense", "conv_algos", "quant", "codebook", "sparse", "sparse_int8", "lowrank", "vs_ort", "real", "optimize")


def module(name):
    """The module of suite ``name``."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")
    return importlib.import_module(f"{__name__}.{name}")


def parts_of(name):
    return tuple(module(name).PARTS)


@dataclass
class Options:
    """What a suite's ``run`` gets: ``--quick``, ``--repeat`` (None: the suite's default), the parts
    to run, the output folder (a suite may read its previous result there) and a print function."""

    quick: bool
    repeat: object
    parts: tuple
    out: Path
    say: object = print

    def repeats(self, default, quick=3):
        return quick if self.quick else (self.repeat or default)


def fc_layers(quick):
    """``(name, n_in, w, model)`` for VGG-16's fc6 and fc7 (a small layer with ``quick``): He-scaled
    random float32 weights, seed 0, each as a one-node Dense model (the int8 and codebook suites)."""
    import numpy as np

    import nncomp as nc
    shapes = [("fc_small", 512, 2048)] if quick else [("fc6", 4096, 25088), ("fc7", 4096, 4096)]
    for name, n_out, n_in in shapes:
        rng = np.random.default_rng(0)
        w = (rng.standard_normal((n_out, n_in), dtype=np.float32) * np.sqrt(2.0 / n_in)).astype(np.float32)
        yield name, n_in, w, nc.Model([nc.Node(name, nc.Dense(w))], input_shape=(n_in,), input_layout="NC")


def write_text(path, text):
    """Write-then-rename, so that an interrupted run never leaves half a table."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_tool_report(path, title, doc, lines):
    """A ``tools/`` script's result as Markdown at ``path``: the suites' opening (this machine; the
    protocol: the last paragraph of the script's ``doc``), then ``lines``; written, then renamed."""
    from ..timing import header, machine_info
    opening = header(title, {"machine": machine_info(), "protocol": doc.split("\n\n")[-1].strip()})
    write_text(Path(path), "\n".join(opening + list(lines)) + "\n")


def run_suite(name, args, out):
    """Run suite ``name`` with the parsed options ``args``; writes ``out/NAME.json`` and ``out/NAME.md``."""
    from ..timing import machine_info, set_threads
    mod = module(name)
    out = Path(out)
    parts = tuple(args.part_list or (mod.QUICK_PARTS if args.quick else mod.PARTS))
    opts = Options(quick=args.quick, repeat=args.suite_repeat, parts=parts, out=out,
                   say=lambda s: print(s, flush=True))
    start = time.perf_counter()
    threads = set_threads(args.threads or mod.THREADS, peers=not args.no_peers)
    result = {"suite": name, "command": " ".join(["python -m nncomp.bench"] + list(sys.argv[1:])),
              "machine": machine_info(), "threads": threads, "quick": args.quick, "parts": list(parts),
              "thread_counts": [threads] if args.threads else list(getattr(mod, "THREAD_COUNTS", [threads])),
              "loadavg_before": list(os.getloadavg()), "protocol": mod.__doc__}
    opts.say(f"nncomp.bench --suite {name}: {threads} threads, parts {', '.join(parts)}; output {out}")
    mod.run(result, opts)
    set_threads(threads)
    result["loadavg_after"] = list(os.getloadavg())
    result["seconds"] = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / f"{name}.json", json.dumps(result, indent=1, default=float))
    write_text(out / f"{name}.md", mod.markdown(result))
    opts.say(f"wall time {result['seconds']:.1f} s; wrote {out / (name + '.json')} and {out / (name + '.md')}")
    return result
