"""nncomp.data: the digits and models shipped inside the package, and the wheel that carries them."""
import fnmatch
import tomllib
from pathlib import Path

import numpy as np
import pytest

import nncomp as nc

ROOT = Path(__file__).resolve().parent.parent


def test_data_dir_is_the_package_folder():
    assert nc.data.DATA_DIR == Path(nc.data.__file__).resolve().parent
    assert (nc.data.DATA_DIR / "lenet300.h5").is_file()


def test_checkout_dir_is_this_repository():
    """The tests run from a source checkout (an installed wheel has None: see .ci/run)."""
    assert nc.data.CHECKOUT_DIR == ROOT


@pytest.mark.parametrize("name", nc.data.MODELS)
def test_model_path_names_a_shipped_model_with_its_logits(name):
    path = nc.data.model_path(name)
    assert path == nc.data.DATA_DIR / f"{name}.h5" and path.is_file()
    assert np.load(path.with_suffix(".logits.npy")).shape == (1000, 10)


@pytest.mark.parametrize("name", ["lenet", "LeNet5", "lenet5.h5", "../mnist", "mnist", "", None, 3])
def test_model_path_refuses_other_names_and_lists_the_choices(name):
    with pytest.raises(nc.NncompError, match="lenet300, lenet5, vgg_small, resnet_small"):
        nc.data.model_path(name)


@pytest.mark.parametrize("split, n", [("train", 4000), ("test", 1000)])
@pytest.mark.parametrize("layout, shape", [("NCHW", (1, 28, 28)), ("NHWC", (28, 28, 1)), ("NC", (784,))])
def test_mnist_shapes_scale_and_labels(split, n, layout, shape):
    x, y = nc.data.mnist(split, layout=layout)
    assert x.shape == (n, *shape) and x.dtype == np.float32 and x.flags.c_contiguous
    assert 0.0 <= x.min() and x.max() == 1.0
    assert y.dtype == np.int64 and set(np.unique(y)) == set(range(10))


@pytest.mark.parametrize("kw, match", [({"split": "val"}, "split='val'"), ({"layout": "NWHC"}, "layout='NWHC'")])
def test_mnist_refuses_unknown_split_and_layout(kw, match):
    with pytest.raises(nc.NncompError, match=match):
        nc.data.mnist(**kw)


def test_every_shipped_file_is_declared_as_package_data():
    """pip builds the wheel from pyproject.toml: a file it does not declare is missing after install."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["nncomp.data"]
    files = [p.name for p in nc.data.DATA_DIR.iterdir() if p.is_file() and p.suffix != ".py"]
    assert len(files) == 1 + 2 * len(nc.data.MODELS)         # mnist.npz, and each model with its logits
    assert [f for f in files if not any(fnmatch.fnmatch(f, g) for g in globs)] == []
    real = [p.relative_to(nc.data.DATA_DIR).as_posix() for p in (nc.data.DATA_DIR / "real").rglob("*") if p.is_file()]
    assert len(real) == 3 + 4         # three models, config.yaml, the Apache licence, the font and its licence
    assert [f for f in real if not any(fnmatch.fnmatch(f, g) for g in globs)] == []
