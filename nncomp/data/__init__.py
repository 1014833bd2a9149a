"""The data shipped inside the package: 5,000 real MNIST digits and four trained models.

The files live in this package folder (``nncomp/data/``), so that they travel with an installed wheel;
provenance and licences are in the repository's ``data/README.md``. They are read through
:mod:`importlib.resources`::

    import nncomp as nc
    x, y = nc.data.mnist("test")                         # 1,000 test digits, NCHW float32
    model = nc.load(nc.data.model_path("lenet5"))        # works from any directory
    golden = np.load(nc.data.model_path("lenet5").with_suffix(".logits.npy"))   # PyTorch's logits

``DATA_DIR`` is the folder holding them (a :class:`pathlib.Path`; ``DATA_DIR / "lenet300.h5"``).
``CHECKOUT_DIR`` is the source checkout nncomp runs from (where ``data/keras/`` and ``bench/`` are), or
``None`` for an installed package.
"""
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import NncompError

# A wheel installs as plain files, so the package's resource root is a real folder.
DATA_DIR = Path(str(resources.files(__name__)))
LAYOUTS = ("NCHW", "NHWC", "NC")
MODELS = ("lenet300", "lenet5", "vgg_small", "resnet_small")
# Real-world ONNX models nobody here trained (rapidocr-onnxruntime 1.4.4; see data/real/README.md).
REAL_MODELS = {"ppocr_cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx", "ppocr_det": "ch_PP-OCRv4_det_infer.onnx",
               "ppocr_rec": "ch_PP-OCRv4_rec_infer.onnx"}


def _checkout():
    root = DATA_DIR.parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "data" / "README.md").is_file() else None


CHECKOUT_DIR = _checkout()


def _shipped(name):
    """The resource ``name`` in this package, or an NncompError saying it is missing and why."""
    res = resources.files(__name__).joinpath(name)
    if not res.is_file():
        raise NncompError(f"{DATA_DIR / name} is missing: it ships inside the nncomp package; reinstall nncomp "
                          "(or, in a source checkout, regenerate it: see data/README.md)")
    return res


def model_path(name):
    """The path of a shipped model file: ``"lenet300"``, ``"lenet5"``, ``"vgg_small"`` or ``"resnet_small"``.

    Its PyTorch logits on the 1,000 test digits are beside it: ``model_path(name).with_suffix(".logits.npy")``.
    See the repository's data/README.md for the architectures and how they were trained.

    Returns
    -------
    pathlib.Path
    """
    if name not in MODELS:
        raise NncompError(f"model_path() got {name!r}; the shipped models are {', '.join(MODELS)} "
                          "(to load a file of your own, pass its path to nc.load)")
    _shipped(f"{name}.h5")
    return DATA_DIR / f"{name}.h5"


def real_path(name):
    """The path of a file under ``nncomp/data/real/`` (``"config.yaml"``, ``"fonts/DejaVuSans.ttf"``)."""
    _shipped(f"real/{name}")
    return DATA_DIR / "real" / name


def real_model_path(name):
    """The path of a shipped real-world ONNX model: ``"ppocr_cls"`` (PP-OCR text-direction classifier,
    ``ch_ppocr_mobile_v2.0_cls_infer.onnx``), ``"ppocr_det"`` (PP-OCRv4 text detector,
    ``ch_PP-OCRv4_det_infer.onnx``) or ``"ppocr_rec"`` (PP-OCRv4 text recognizer, SVTR-LCNet with an
    attention block, ``ch_PP-OCRv4_rec_infer.onnx``), from rapidocr-onnxruntime 1.4.4 (Apache-2.0). Provenance, inputs,
    outputs and preprocessing: the repository's data/real/README.md; inputs: :mod:`nncomp.bench.ocr`.

    Returns
    -------
    pathlib.Path
    """
    if name not in REAL_MODELS:
        raise NncompError(f"real_model_path() got {name!r}; the shipped real-world models are "
                          f"{', '.join(REAL_MODELS)} (to load a file of your own, pass its path to nc.load)")
    return real_path(REAL_MODELS[name])


def mnist(split="test", *, layout="NCHW"):
    """Real MNIST digits: 4,000 training and 1,000 test images, scaled to [0, 1].

    Parameters
    ----------
    split : {"train", "test"}
    layout : {"NCHW", "NHWC", "NC"}
        ``(n, 1, 28, 28)`` for PyTorch CNNs, ``(n, 28, 28, 1)`` for Keras CNNs, ``(n, 784)`` for MLPs.

    Returns
    -------
    x : ndarray, float32
    y : ndarray, int64, shape (n,)
    """
    if split not in ("train", "test"):
        raise NncompError(f"mnist() got split={split!r}; choose 'train' or 'test'")
    if layout not in LAYOUTS:
        raise NncompError(f"mnist() got layout={layout!r}; choose one of {LAYOUTS}")
    with _shipped("mnist.npz").open("rb") as fh, np.load(fh) as d:
        x, y = d[f"x_{split}"], d[f"y_{split}"]
    x = x.astype(np.float32) / np.float32(255)
    shape = {"NCHW": (-1, 1, 28, 28), "NHWC": (-1, 28, 28, 1), "NC": (-1, 784)}[layout]
    return np.ascontiguousarray(x.reshape(shape)), y.astype(np.int64)


def for_model(model, split="test"):
    """The digits in the layout a loaded model expects."""
    return mnist(split, layout=model.input_layout)
