"""Real inputs for the three PP-OCR models: text lines and pages rendered with Pillow, preprocessed as
rapidocr-onnxruntime 1.4.4 does, the detector's DBNet post-processing and the recognizer's CTC decoding.

Rendering is seeded (``numpy.random.default_rng(seed)``) and uses the DejaVu Sans TTF shipped in
``nncomp/data/real/fonts/``, so the same seed gives the same pixels on every machine with the same
Pillow/FreeType. Images are ``(h, w, 3)`` uint8 with equal channels (rapidocr's BGR order is therefore
moot). Preprocessing follows the package's sources (``ch_ppocr_cls/text_cls.py``
and ``ch_ppocr_rec/text_recognize.py`` ``resize_norm_img``, ``ch_ppocr_det/utils.py`` ``DetPreProcess``,
``ch_ppocr_rec/utils.py`` ``CTCLabelDecode``) with ``cv2.resize``'s bilinear
interpolation rewritten in NumPy (:func:`resize_linear`: 99.7 % of pixels equal, the rest one grey level apart).
The DB post-processing (:func:`db_boxes`) follows ``DBPostProcess`` with scipy.ndimage connected
components in place of ``cv2.findContours`` and axis-aligned boxes in place of ``cv2.minAreaRect``
(the rendered text is axis-aligned); the unclip offset is the same ``area * ratio / perimeter``.

Pillow is needed to render (the bench and test extras); nothing here is imported by ``nncomp`` itself.
"""
import math

import numpy as np

from ..data import real_path

# The values of rapidocr-onnxruntime 1.4.4's config.yaml (tests/test_real.py checks them against it).
CLS_IMAGE_SHAPE = (3, 48, 192)
CLS_LABELS = ("0", "180")
CLS_THRESH = 0.9
REC_IMAGE_SHAPE = (3, 48, 320)
REC_BATCH = 6
DET_LIMIT_SIDE_LEN, DET_LIMIT_TYPE = 736, "min"
DET_MEAN, DET_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
DET_THRESH, DET_BOX_THRESH, DET_UNCLIP_RATIO, DET_MAX_CANDIDATES = 0.3, 0.5, 1.6, 1000
DET_MIN_SIZE = 3
PAGE_SIZE = 640

WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "invoice", "total", "amount",
         "due", "date", "page", "section", "chapter", "results", "model", "network", "memory", "speed",
         "accuracy", "weights", "compressed", "receipt", "order", "number", "customer", "address", "street",
         "station", "platform", "departure", "arrival", "price", "discount", "quantity", "warranty",
         "London", "Berlin", "Tuesday", "December", "Report", "Summary", "Notice", "Welcome", "Hello",
         "World", "Figure", "Table", "Open", "Closed", "Exit", "Entrance", "Kitchen", "Garden", "Coffee")


def font(size):
    """DejaVu Sans at ``size`` pixels (the TTF shipped with nncomp; needs Pillow)."""
    from PIL import ImageFont
    return ImageFont.truetype(str(real_path("fonts/DejaVuSans.ttf")), int(size))


def random_text(rng, n_words):
    """``n_words`` English words and numbers (a price, a year, a code) joined by spaces."""
    out = []
    for _ in range(n_words):
        kind = rng.integers(0, 8)
        if kind == 0:
            out.append(f"{rng.integers(1, 999)}.{rng.integers(0, 100):02d}")
        elif kind == 1:
            out.append(str(rng.integers(1900, 2100)))
        elif kind == 2:
            out.append(f"No.{rng.integers(10, 99999)}")
        else:
            out.append(str(WORDS[rng.integers(0, len(WORDS))]))
    return " ".join(out)


def _noisy(gray, rng, sigma):
    """``gray`` (h, w) float with Gaussian noise, as (h, w, 3) uint8."""
    g = np.clip(np.rint(gray + rng.normal(0.0, sigma, gray.shape)), 0, 255).astype(np.uint8)
    return np.repeat(g[:, :, None], 3, axis=2)


def render_line(text, size, rng, *, noise=None):
    """One text line on a light background, cropped with a small random margin.

    Returns ``(h, w, 3)`` uint8: ink of 0-110 grey on a background of 150-255, Gaussian noise of
    standard deviation ``noise`` (default: drawn from 2-20).
    """
    from PIL import Image, ImageDraw
    f = font(size)
    x0, y0, x1, y1 = f.getbbox(text)
    mx, my = int(rng.integers(2, 12)), int(rng.integers(2, 8))
    w, h = x1 - x0 + 2 * mx, y1 - y0 + 2 * my
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).text((mx - x0, my - y0), text, fill=255, font=f)
    a = np.asarray(mask, np.float32) / 255.0
    bg, ink = float(rng.integers(150, 256)), float(rng.integers(0, 111))
    return _noisy(bg * (1 - a) + ink * a, rng, float(rng.uniform(2, 20)) if noise is None else noise)


def text_lines(n=64, *, seed=0):
    """``n`` upright text lines and their 180-degree rotated copies.

    Returns ``(images, labels)``: a list of ``2n`` (h, w, 3) uint8 images (the upright ones first)
    and int64 labels, 0 for upright and 1 for rotated (``CLS_LABELS[1] == "180"``).
    """
    rng = np.random.default_rng(seed)
    up = [render_line(random_text(rng, int(rng.integers(1, 4))), int(rng.integers(10, 41)), rng)
          for _ in range(n)]
    images = up + [np.ascontiguousarray(im[::-1, ::-1]) for im in up]
    return images, np.repeat(np.array([0, 1], np.int64), n)


def render_page(rng, *, size=PAGE_SIZE, noise=4.0):
    """A white ``size`` x ``size`` page with 5-9 text lines at known places.

    Returns ``(image (size, size, 3) uint8, boxes (n, 4) int64)``: each line's ink box
    ``[x0, y0, x1, y1]`` (exclusive ends), measured from the rendered pixels.
    """
    from PIL import Image, ImageDraw
    acc = np.zeros((size, size), np.float32)
    boxes, y = [], int(rng.integers(10, 40))
    for _ in range(int(rng.integers(5, 10))):
        s = int(rng.integers(16, 37))
        f = font(s)
        text = random_text(rng, int(rng.integers(1, 5)))
        while f.getlength(text) > size - 40 and " " in text:
            text = text.rsplit(" ", 1)[0]
        bx0, by0, bx1, by1 = f.getbbox(text)
        if y + by1 - by0 > size - 10:
            break
        x = int(rng.integers(10, max(11, size - 10 - (bx1 - bx0))))
        layer = Image.new("L", (size, size), 0)
        ImageDraw.Draw(layer).text((x - bx0, y - by0), text, fill=255, font=f)
        a = np.asarray(layer, np.float32) / 255.0
        ys, xs = np.nonzero(a)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        acc = np.maximum(acc, a)
        y = ys.max() + 1 + int(rng.integers(int(0.6 * s), 2 * s))
    bg, ink = float(rng.integers(235, 256)), float(rng.integers(0, 60))
    return _noisy(bg * (1 - acc) + ink * acc, rng, noise), np.array(boxes, np.int64)


def text_pages(n=6, *, seed=0):
    """``n`` rendered pages: a list of (image, boxes) pairs (see :func:`render_page`)."""
    rng = np.random.default_rng(seed)
    return [render_page(rng) for _ in range(n)]


def _linear_taps(n_in, n_out):
    """cv2's bilinear taps along one axis: source indices and 11-bit fixed-point weights."""
    f = ((np.arange(n_out) + 0.5) * (1.0 / (n_out / n_in)) - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    frac = f - i0.astype(np.float32)
    frac[(i0 < 0) | (i0 >= n_in - 1)] = 0.0
    i0 = np.clip(i0, 0, n_in - 1)
    return (i0, np.minimum(i0 + 1, n_in - 1), np.rint((1 - frac) * 2048).astype(np.int64),
            np.rint(frac * 2048).astype(np.int64))


def resize_linear(img, width, height):
    """``cv2.resize(img, (width, height))`` (INTER_LINEAR) of an (h, w, c) uint8 image, in NumPy.

    Half-pixel centres, edges clamped, no antialiasing, and cv2's fixed-point arithmetic (11-bit
    weights; the vertical pass as its SIMD code rounds it): 99.7 % of pixels equal to OpenCV 4.14's
    on the rendered lines and pages, the rest one grey level apart.
    """
    x0, x1, ax0, ax1 = _linear_taps(img.shape[1], width)
    y0, y1, by0, by1 = _linear_taps(img.shape[0], height)
    src = img.astype(np.int64)
    rows = src[:, x0] * ax0[None, :, None] + src[:, x1] * ax1[None, :, None]
    out = ((((rows[y0] >> 4) * by0[:, None, None]) >> 16) + (((rows[y1] >> 4) * by1[:, None, None]) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def cls_preprocess(images, shape=CLS_IMAGE_SHAPE):
    """rapidocr's ``TextClassifier.resize_norm_img`` on each image: resize to height 48 keeping the
    aspect (width ``ceil(48 * w / h)``, at most 192), ``x / 255``, ``(x - 0.5) / 0.5``, zero-pad the
    width to 192. Returns ``(n, 3, 48, 192)`` float32 (NCHW, the model's input). ``shape``
    :data:`REC_IMAGE_SHAPE`: ``TextRecognizer.resize_norm_img``, the same steps at width 320 (for lines
    no wider than 320 / 48 of their height, the width rapidocr's batch then has)."""
    c, h_out, w_out = shape
    batch = np.zeros((len(images), c, h_out, w_out), np.float32)
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        rw = min(w_out, int(math.ceil(h_out * w / float(h))))
        x = resize_linear(img, rw, h_out).astype(np.float32).transpose(2, 0, 1) / 255
        batch[i, :, :, :rw] = (x - 0.5) / 0.5
    return batch


def cls_decode(probs):
    """rapidocr's ``ClsPostProcess``: the argmax label index (0: "0", 1: "180") and its probability."""
    probs = np.asarray(probs)
    idx = probs.argmax(axis=1)
    return idx, probs[np.arange(len(idx)), idx]


def rec_lines(n=64, *, seed=0, shape=REC_IMAGE_SHAPE):
    """``n`` rendered text lines for the recognizer and their texts: 1-3 words or numbers (words
    dropped until the line is at most ``w / h`` = 320 / 48 wide, so it fills at most the input).
    Returns ``(images, texts)``."""
    rng = np.random.default_rng(seed)
    images, texts = [], []
    while len(images) < n:
        text, size = random_text(rng, int(rng.integers(1, 4))), int(rng.integers(12, 41))
        while True:
            img = render_line(text, size, rng)
            if img.shape[1] * shape[1] <= shape[2] * img.shape[0] or " " not in text:
                break
            text = text.rsplit(" ", 1)[0]
        if img.shape[1] * shape[1] <= shape[2] * img.shape[0]:
            images.append(img)
            texts.append(text)
    return images, texts


def rec_decode(probs, characters):
    """rapidocr's ``CTCLabelDecode`` (greedy CTC): per line the argmax class of each time step,
    repeats merged, blanks (class 0) dropped, class ``k`` read as ``characters[k - 1]`` and the last
    class as a space; the confidence is the mean of the kept steps' probabilities (0 when none).
    ``characters``: the model's dictionary (its ``character`` metadata, one per line). Returns a list
    of ``(text, confidence)``."""
    table = ["blank", *characters, " "]
    probs = np.asarray(probs)
    idx, best = probs.argmax(axis=2), probs.max(axis=2)
    out = []
    for i, p in zip(idx, best):
        keep = np.ones(len(i), bool)
        keep[1:] = i[1:] != i[:-1]
        keep &= i != 0
        out.append(("".join(table[k] for k in i[keep]), float(np.mean(p[keep])) if keep.any() else 0.0))
    return out


def edit_distance(a, b):
    """Levenshtein distance between strings ``a`` and ``b`` (insertions, deletions, substitutions)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def det_size(h, w, *, limit_side_len=DET_LIMIT_SIDE_LEN, limit_type=DET_LIMIT_TYPE):
    """``DetPreProcess.resize``'s output (height, width): scale by the limit, round each to a multiple of 32."""
    if limit_type == "max":
        ratio = limit_side_len / max(h, w) if max(h, w) > limit_side_len else 1.0
    else:
        ratio = limit_side_len / min(h, w) if min(h, w) < limit_side_len else 1.0
    return int(round(int(h * ratio) / 32) * 32), int(round(int(w * ratio) / 32) * 32)


def det_preprocess(img, *, limit_side_len=DET_LIMIT_SIDE_LEN):
    """rapidocr's ``DetPreProcess``: resize (:func:`det_size`), ``(x / 255 - mean) / std``, HWC to CHW.
    Returns ``(1, 3, H, W)`` float32. ``limit_side_len=640`` keeps a 640 x 640 page at its size."""
    rh, rw = det_size(*img.shape[:2], limit_side_len=limit_side_len)
    x = resize_linear(img, rw, rh).astype(np.float32) * np.float32(1 / 255.0)
    x = (x - np.asarray(DET_MEAN)) / np.asarray(DET_STD)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None].astype(np.float32))


def binarize(prob, thresh=DET_THRESH):
    """The DB segmentation ``prob > thresh`` of a ``(1, 1, H, W)`` or ``(H, W)`` probability map."""
    prob = np.asarray(prob)
    return prob.reshape(prob.shape[-2:]) > thresh


def dilate_2x2(mask):
    """``cv2.dilate(mask, ones((2, 2)))`` (anchor at (1, 1)): a pixel is set when it or its up, left or
    up-left neighbour is."""
    out = mask.copy()
    out[1:, :] |= mask[:-1, :]
    out[:, 1:] |= mask[:, :-1]
    out[1:, 1:] |= mask[:-1, :-1]
    return out


def db_boxes(prob, src_hw, *, thresh=DET_THRESH, box_thresh=DET_BOX_THRESH, unclip_ratio=DET_UNCLIP_RATIO):
    """DBNet post-processing of a ``(1, 1, H, W)`` probability map into boxes on the source image.

    As ``DBPostProcess`` (use_dilation, score_mode "fast"): binarize at ``thresh``, dilate 2 x 2, and for
    each 8-connected component (at most 1000): skip it when its box's short side < 3 or the mean
    probability inside the box < ``box_thresh``; grow the box by ``area * unclip_ratio / perimeter`` on
    every side (the unclip); skip it when the short side < 5; scale to ``src_hw``; then as
    ``filter_tag_det_res``, clip to the image and drop boxes 3 pixels or thinner.
    Returns ``(n, 4)`` float64 boxes ``[x0, y0, x1, y1]`` and their scores.
    """
    from scipy import ndimage
    p = np.asarray(prob, np.float32).reshape(np.asarray(prob).shape[-2:])
    height, width = p.shape
    src_h, src_w = src_hw
    labels, _ = ndimage.label(dilate_2x2(p > thresh), structure=np.ones((3, 3), bool))
    boxes, scores = [], []
    for sl in ndimage.find_objects(labels)[:DET_MAX_CANDIDATES]:
        y0, y1, x0, x1 = sl[0].start, sl[0].stop - 1, sl[1].start, sl[1].stop - 1
        w, h = x1 - x0, y1 - y0
        if min(w, h) < DET_MIN_SIZE:
            continue
        score = float(p[y0:y1 + 1, x0:x1 + 1].mean())
        if score < box_thresh:
            continue
        d = w * h * unclip_ratio / (2.0 * (w + h))
        if min(w, h) + 2 * d < DET_MIN_SIZE + 2:
            continue
        box = np.array([x0 - d, y0 - d, x1 + d, y1 + d])
        box[0::2] = np.clip(np.round(box[0::2] / width * src_w), 0, src_w - 1)
        box[1::2] = np.clip(np.round(box[1::2] / height * src_h), 0, src_h - 1)
        if box[2] - box[0] <= 3 or box[3] - box[1] <= 3:
            continue
        boxes.append(box)
        scores.append(score)
    return np.array(boxes, np.float64).reshape(-1, 4), scores


def box_iou(a, b):
    """IoU of every box in ``a`` (n, 4) with every box in ``b`` (m, 4), boxes ``[x0, y0, x1, y1]``."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def matched(truth, found, *, iou=0.5):
    """How many ``truth`` boxes are matched one-to-one (greedily, best IoU first) by ``found`` boxes
    at IoU >= ``iou``."""
    m = box_iou(truth, found)
    n = 0
    while m.size and m.max() >= iou:
        i, j = np.unravel_index(m.argmax(), m.shape)
        m[i, :], m[:, j] = -1, -1
        n += 1
    return n
