"""A MobileNetV3-Small-shaped network (random weights) exported by torch.onnx, run by nncomp and ONNX
Runtime side by side: a depthwise-separable CNN with squeeze-and-excitation blocks that nobody here
trained, for the speed of its layer shapes (random weights are fine for speed; outputs are compared).

    pip install torch==2.13.0 onnx onnxruntime
    python tools/mobilenet_vs_ort.py [--size 224] [--batches 1 8] [--out FILE.md]

The blocks follow Howard et al. 2019, table 2 (MobileNetV3-Small: kernel, expansion, output channels,
SE, activation, stride); the SE block is torchvision's (global average, 1x1 conv, ReLU, 1x1 conv,
hard sigmoid, scale). Timing: 2 threads each, alternating (the order reversed every other round), a
50 ms pause before each block of calls,
medians of 21 blocks, in a loop and as lone calls (one call after each pause). ``--out`` writes the
lines under the machine, versions and threads (nncomp.bench.timing.machine_info).
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

# (kernel, expanded channels, out channels, SE, activation, stride)
SMALL = [(3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
         (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
         (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
         (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1)]


def act(kind):
    return nn.ReLU() if kind == "RE" else nn.Hardswish()


class SE(nn.Module):
    def __init__(self, c):
        super().__init__()
        squeeze = max(8, (c // 4 + 4) // 8 * 8)
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)

    def forward(self, x):
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        return nn.functional.hardsigmoid(self.fc2(nn.functional.relu(self.fc1(s)))) * x


class Block(nn.Module):
    def __init__(self, cin, k, exp, cout, se, kind, stride):
        super().__init__()
        layers = []
        if exp != cin:
            layers += [nn.Conv2d(cin, exp, 1, bias=False), nn.BatchNorm2d(exp), act(kind)]
        layers += [nn.Conv2d(exp, exp, k, stride, k // 2, groups=exp, bias=False), nn.BatchNorm2d(exp), act(kind)]
        if se:
            layers.append(SE(exp))
        layers += [nn.Conv2d(exp, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body, self.residual = nn.Sequential(*layers), stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV3Small(nn.Module):
    def __init__(self, classes=1000):
        super().__init__()
        layers, c = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish()], 16
        for k, exp, out, se, kind, stride in SMALL:
            layers.append(Block(c, k, exp, out, se, kind, stride))
            c = out
        layers += [nn.Conv2d(c, 576, 1, bias=False), nn.BatchNorm2d(576), nn.Hardswish()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(576, 1024), nn.Hardswish(), nn.Linear(1024, classes))

    def forward(self, x):
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def model(seed=0):
    torch.manual_seed(seed)
    m = MobileNetV3Small()
    for mod in m.modules():          # BatchNorm statistics as a trained network has them
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def timed(fns, mode, rounds=21, reps=10):
    """Medians over ``rounds`` of each contender's block (``reps`` calls in a loop, one lone call),
    a 50 ms pause before each block, the contenders' order reversed every other round."""
    out = {k: [] for k in fns}
    for r in range(rounds):
        for k, fn in (list(fns.items()) if r % 2 else list(fns.items())[::-1]):
            time.sleep(0.05)
            n = reps if mode == "loop" else 1
            t = time.perf_counter()
            for _ in range(n):
                fn()
            out[k].append((time.perf_counter() - t) / n * 1e3)
    return {k: float(np.median(v)) for k, v in out.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--out", type=Path, help="also write the results as Markdown with the machine")
    args = ap.parse_args(argv)
    import numba
    import onnxruntime as ort

    import nncomp as nc
    numba.set_num_threads(2)
    torch.set_num_threads(2)
    lines = []
    net = model()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mobilenet_v3_small.onnx"
        x0 = torch.zeros(1, 3, args.size, args.size)
        torch.onnx.export(net, x0, str(path), opset_version=13, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "n"}})
        m = nc.load(str(path))
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        for b in args.batches:
            x = rng.standard_normal((b, 3, args.size, args.size)).astype(np.float32)
            want = net(torch.from_numpy(x)).detach().numpy()
            got = m(x)
            fns = {"nncomp": lambda: m(x), "ort": lambda: sess.run(None, {"x": x})}
            for fn in fns.values():
                fn()
                fn()
            plan = m._plan(m.to_internal(x.shape[1:]), b, tuple(m.outputs))
            calls = sum(getattr(s, "__name__", "") != "_nothing" for s, _, _ in plan.steps)
            line = [f"batch {b}: max |nncomp - torch| {np.abs(got - want).max():.2e}, {calls} Python steps"]
            for mode in (("loop", "lone") if b == 1 else ("loop",)):
                t = timed(fns, mode)
                line.append(f"{mode} nncomp {t['nncomp']:.3f} ms, ORT {t['ort']:.3f} ms ({t['nncomp'] / t['ort']:.2f}x)")
            print("; ".join(line), flush=True)
            lines.append("- " + "; ".join(line))
    if args.out is not None:
        from nncomp.bench.suites import write_tool_report
        write_tool_report(args.out, f"# MobileNetV3-Small ({args.size} x {args.size}, random weights): nncomp against "
                          "ONNX Runtime", __doc__, ["2 Numba, 2 ORT intra-op and 2 torch threads.", ""] + lines)


if __name__ == "__main__":
    sys.exit(main())
