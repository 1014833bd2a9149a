"""Export the shipped PyTorch models to ONNX (data/onnx/), for the ONNX importer's tests.

    pip install torch==2.13.0 onnx onnxscript     # onnxscript: the default (dynamo) exporter only
    python tools/export_onnx.py                   # every model, both exporters
    python tools/export_onnx.py lenet5            # some of them

For each of lenet300, lenet5, vgg_small, resnet_small (nncomp/data/<name>.h5, the weights the
PyTorch models were trained to) and the layer-zoo fixture torch_misc (data/fixtures/torch_misc.h5):
the module of tools/train_torch.py is rebuilt, its state_dict loaded from the h5 file, and written
with a dynamic batch axis as

* ``<name>.op13.onnx``: ``torch.onnx.export(..., opset_version=13, dynamo=False)`` (TorchScript);
* ``<name>.op18.onnx``: ``torch.onnx.export(..., opset_version=18, dynamo=True)`` (the default
  exporter), with its weights inlined in the file.

The script checks each file with onnxruntime against the module on the MNIST test digits (max abs
difference printed) before keeping it.
"""
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from train_torch import MODELS, Misc  # noqa: E402

OUT = ROOT / "data" / "onnx"
SOURCES = {name: (ctor, ROOT / "nncomp" / "data" / f"{name}.h5", shape) for name, (ctor, shape, _, _) in MODELS.items()}
SOURCES["torch_misc"] = (Misc, ROOT / "data" / "fixtures" / "torch_misc.h5", (3, 17, 19))


def state_dict(path):
    """The torch state_dict stored in an export_torch h5 file (flat or nested keys)."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name.replace("/", ".")] = torch.from_numpy(np.asarray(obj[()]))
        f.visititems(visit)
    return out


def module(name):
    ctor, path, shape = SOURCES[name]
    m = ctor()
    m.load_state_dict(state_dict(path))
    return m.eval(), shape


def sample(name, shape):
    if name == "torch_misc":
        return torch.from_numpy(np.load(ROOT / "data" / "fixtures" / "torch_misc.input.npy"))
    x = np.load(ROOT / "nncomp" / "data" / "mnist.npz")["x_test"][:64].astype(np.float32) / 255
    return torch.from_numpy(x.reshape((-1,) + shape))


def export(name, opset):
    m, shape = module(name)
    x = sample(name, shape)
    path = OUT / f"{name}.op{opset}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if opset == 13:
            torch.onnx.export(m, (x[:1],), str(path), opset_version=13, dynamo=False, input_names=["x"],
                              output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
        else:
            batch = torch.export.Dim("batch")
            prog = torch.onnx.export(m, (x[:2],), opset_version=opset, dynamo=True, input_names=["x"],
                                     output_names=["logits"], dynamic_shapes=({0: batch},), external_data=False)
            prog.save(str(path), external_data=False)
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = m(x).numpy()
    print(f"{path.name}: {path.stat().st_size:,} bytes, max |ort - torch| = {np.abs(got - want).max():.2e}")


def main(names):
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for name in names:
        for opset in (13, 18):
            export(name, opset)


if __name__ == "__main__":
    main(sys.argv[1:] or list(SOURCES))
