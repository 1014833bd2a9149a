"""Regenerate data/fixtures/real_rapidocr.npz: what rapidocr-onnxruntime 1.4.4's own code (OpenCV,
pyclipper, shapely) makes of nncomp.bench.ocr's rendered lines and pages, so that tests/test_real.py
checks nncomp's NumPy rewrite of its preprocessing and DB post-processing against the original.

    pip install --target /tmp/cvenv "opencv-python-headless<5" pyclipper shapely   # not nncomp's deps
    PYTHONPATH=/tmp/cvenv:. python tools/make_real_goldens.py

The pinned wheel is fetched and verified by tools/fetch_real_models.py's WHEEL_SHA256 and imported
from the zip itself (pure Python). Written with OpenCV 4.14.0 (opencv-python-headless 4.14.0.94).
The inputs are stored too, so that the test checks the preprocessing on the very pixels rapidocr saw
(another Pillow/FreeType may render the fonts a little differently). Keys:
- ``line_0`` .. ``line_15`` (h, w) uint8: the first 16 lines of ``text_lines(128, seed=0)``, channel 0
  (the three channels are equal); ``cls_u8`` (16, 48, 192) uint8: ``TextClassifier.resize_norm_img``
  of each, channel 0, mapped back to grey levels (``x * 127.5 + 127.5``; the zero padding reads 128);
  ``cls_width`` (16,) int64: the resized width of each (the rest is padding).
- ``page`` (640, 640) uint8: page 0 of ``text_pages(6, seed=0)``, channel 0; ``page_truth`` its line
  boxes; ``det_rows_u8`` (96, 736) uint8, the first 96 rows of
  ``DetPreProcess`` (limit 736, "min") of it, channel 0, as grey levels; ``det_boxes`` (n, 4) float64
  ``[x0, y0, x1, y1]``, the axis-aligned hull of each quadrilateral that ``TextDetector``
  (DetPreProcess, ONNX Runtime, DBPostProcess, filter_tag_det_res) finds on it.
"""
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.fetch_real_models import WHEEL, WHEEL_SHA256, sha256  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "real_rapidocr.npz"


def main():
    import onnxruntime as ort

    from nncomp.bench import ocr
    from nncomp.data import real_model_path
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
                        "rapidocr-onnxruntime==1.4.4"], check=True)
        wheel = Path(tmp) / WHEEL
        assert sha256(wheel.read_bytes()) == WHEEL_SHA256, "the wheel does not match its pinned SHA-256"
        sys.path.insert(0, str(wheel))
        import cv2
        from rapidocr_onnxruntime.ch_ppocr_cls.text_cls import TextClassifier
        from rapidocr_onnxruntime.ch_ppocr_det.text_detect import TextDetector
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess, DetPreProcess

        lines = [im[:, :, :1].repeat(3, axis=2) for im in ocr.text_lines(128, seed=0)[0][:16]]
        tc = TextClassifier.__new__(TextClassifier)      # only resize_norm_img: no session needed
        tc.cls_image_shape = list(ocr.CLS_IMAGE_SHAPE)
        cls = np.stack([tc.resize_norm_img(im)[0] for im in lines])
        widths = [min(192, int(math.ceil(48 * im.shape[1] / im.shape[0]))) for im in lines]

        page, truth = ocr.text_pages(1, seed=0)[0]
        x = DetPreProcess(736, "min", [0.5] * 3, [0.5] * 3)(page)
        post = DBPostProcess(thresh=0.3, box_thresh=0.5, max_candidates=1000, unclip_ratio=1.6,
                             use_dilation=True, score_mode="fast")
        td = TextDetector.__new__(TextDetector)          # only filter_tag_det_res
        sess = ort.InferenceSession(str(real_model_path("ppocr_det")), providers=["CPUExecutionProvider"])
        quads, _ = post(sess.run(None, {"x": x})[0], page.shape[:2])
        boxes = [[q[:, 0].min(), q[:, 1].min(), q[:, 0].max(), q[:, 1].max()]
                 for q in td.filter_tag_det_res(quads, page.shape[:2])]
    grey = lambda a: np.clip(np.rint(a * 127.5 + 127.5), 0, 255).astype(np.uint8)  # noqa: E731
    np.savez_compressed(OUT, **{f"line_{i}": im[:, :, 0] for i, im in enumerate(lines)},
                        cls_u8=grey(cls), cls_width=np.array(widths, np.int64), page=page[:, :, 0],
                        page_truth=truth, det_rows_u8=grey(x[0, 0, :96]), det_boxes=np.array(boxes, np.float64))
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes) with OpenCV {cv2.__version__}: {len(boxes)} boxes")


if __name__ == "__main__":
    main()
