"""Where a forward pass spends its time: each step of a model's plan timed alone, with its kernel,
shape, multiply-adds and GFLOP/s, slowest first, and the whole pass for comparison.

    python tools/profile_steps.py MODEL [--batch 8] [--threads 1] [--reps 5] [--top 40]
    python tools/profile_steps.py --mobilenet [--size 224] ...   # tools/mobilenet_vs_ort.py's network (torch)
    python tools/profile_steps.py MODEL.onnx --ort ...            # and ONNX Runtime's own per-node profile

MODEL is any file ``nc.load`` reads (ONNX, Keras HDF5, nncomp). The plan runs as a model's pass runs
it (OpenBLAS at one thread), its Python steps one by one, each timed around its call; a compiled run
of convolution steps (nncomp/layers/conv_chain.py) is one call, and each of its steps is timed inside
it by the CPU's time-stamp counter, read by the compiled code between the steps (the run's Python
call counted with its first step; kernel "chain"). The sum of the steps is close to (a little above)
the pass, which is printed too. Steps of the same kind and shape are added up on one line (``xN``). Random inputs: this is about speed, not values.
Timing: ``--reps`` passes after two warm-up passes, each step's time summed over them, on one
process, no pauses (a loop, as a server in steady state runs); the machine's noise applies (say which
CPU it ran on when quoting). ``--ort`` (an ONNX file) also runs ONNX Runtime on the same file at
the same threads with its profiler on and prints its nodes the same way (ORT's kernel time of each
node, from the events after the warm-up runs): a per-layer comparison, by shape.
"""
import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def mobilenet_file(folder, size):
    """tools/mobilenet_vs_ort.py's MobileNetV3-Small, exported by torch.onnx into ``folder``."""
    import torch
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from mobilenet_vs_ort import model
    path = Path(folder) / "mobilenet_v3_small.onnx"
    torch.onnx.export(model(), torch.zeros(1, 3, size, size), str(path), opset_version=13, dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "n"}})
    return path


def describe(layer, out):
    """``(key, kernel-free description)`` of a plan step's layer (a fused step: its base layer and the ops)."""
    base = getattr(layer, "base", layer)
    ops = [type(op).__name__ for _, _, op in getattr(layer, "ops", ())]
    kind = type(base).__name__
    if hasattr(base, "kernel_size"):
        dw = " depthwise" if getattr(base, "depthwise", False) else ""
        kind = f"{kind} {base.kernel_size[0]}x{base.kernel_size[1]}/{base.stride[0]}{dw}"
        if hasattr(base, "in_channels"):
            kind += f" {base.in_channels}->{base.out_channels}"
    shape = "x".join(map(str, out.shape[1:])) if out is not None else "-"
    return f"{kind}{' +' + '+'.join(ops) if ops else ''} -> {shape}"


def macs(layer, inputs):
    """Multiply-adds of a step for its batch (0 where the layer does not say)."""
    base = getattr(layer, "base", layer)
    try:
        return int(base.macs(*[v.shape[1:] for v in inputs[:1]])) * inputs[0].shape[0]
    except Exception:  # noqa: BLE001 - a layer without a MAC count
        return 0


def ort_profile(path, x, threads, reps, top):
    """ONNX Runtime's per-node kernel times (ms a pass) of the ONNX file ``path`` on ``x``, printed slowest first."""
    import json

    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        t = time.perf_counter()
        for _ in range(reps + 2):
            sess.run(None, {name: x})
        wall = (time.perf_counter() - t) / (reps + 2)
        events = json.loads(Path(sess.end_profiling()).read_text())
    seen, times, counts = defaultdict(int), defaultdict(float), defaultdict(int)
    for e in sorted((e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")),
                    key=lambda e: e["ts"]):
        seen[e["name"]] += 1
        if seen[e["name"]] <= 2:
            continue
        a = e["args"]
        shapes = [list(d.values())[0] for d in a.get("input_type_shape", [])[1:2] + a.get("output_type_shape", [])]
        key = f"{a.get('op_name', '?')} {' -> '.join('x'.join(map(str, s_)) for s_ in shapes)}"
        times[key] += e["dur"] / 1e3 / reps
        counts[key] += seen[e["name"]] == 3
    total = sum(times.values())
    print(f"\nONNX Runtime {ort.__version__}: nodes {total:.3f} ms, a pass {wall * 1e3:.3f} ms (profiling on)")
    print(f"{'ms':>8} {'%':>5}  node (weight shape -> output shape)")
    for key, v in sorted(times.items(), key=lambda kv: -kv[1])[:top]:
        n = f" x{counts[key]}" if counts[key] > 1 else ""
        print(f"{v:8.3f} {100 * v / total:5.1f}  {key}{n}")


def step_shapes(m, xi, batch):
    """``{step index: (its inputs, its output)}`` of ``m``'s plan at ``batch`` for the internal-layout
    ``xi``, as zero-byte arrays of their shapes, from one pass of the plan with the compiled runs off
    (the steps are the same; a compiled run only calls several of them at once)."""
    from nncomp import plan as plan_module
    from nncomp.kernels import blas
    plan_module.CHAIN = False
    m._plans.clear()
    try:
        plan = m._plan(xi.shape[1:], batch, tuple(m.outputs))
    finally:
        plan_module.CHAIN = True
        m._plans.clear()
    values, out = [xi], {}
    with blas.ONE_THREAD:
        for k, (step, ins, _) in enumerate(plan.steps):
            inputs = [values[j] for j in ins]
            values.append(step(*inputs))
            out[k] = ([np.broadcast_to(np.float32(0), v.shape) for v in inputs],
                      np.broadcast_to(np.float32(0), values[-1].shape))
    return out


def tsc_hz():
    """The time-stamp counter's ticks a second, against perf_counter over 50 ms."""
    import numba

    from nncomp.kernels.conv_chain import cycles
    clock = numba.njit(lambda: cycles())
    c0, t0 = clock(), time.perf_counter()
    while time.perf_counter() - t0 < 0.05:
        pass
    return (clock() - c0) / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", type=Path)
    ap.add_argument("--mobilenet", action="store_true", help="profile tools/mobilenet_vs_ort.py's network")
    ap.add_argument("--size", type=int, default=224, help="--mobilenet: the image size")
    ap.add_argument("--input-shape", help="a file whose input leaves dims free: its per-sample shape, e.g. 3,640,640")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--top", type=int, default=40, help="lines to print")
    ap.add_argument("--ort", action="store_true", help="also ONNX Runtime's per-node profile (ONNX files)")
    args = ap.parse_args(argv)
    if (args.model is None) == (not args.mobilenet):
        ap.error("give a MODEL file or --mobilenet")
    import numba

    import nncomp as nc
    from nncomp.bench.timing import machine_info
    from nncomp.kernels import layout
    from nncomp.kernels import blas
    from nncomp.layers import conv_chain as chain_module
    numba.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    path = mobilenet_file(tmp.name, args.size) if args.mobilenet else args.model
    given = tuple(int(d) for d in args.input_shape.split(",")) if args.input_shape else None
    m = nc.load(str(path), input_shape=given)
    shape = m.input_shape
    x = np.random.default_rng(0).standard_normal((args.batch, *shape)).astype(np.float32)
    for _ in range(2):
        m(x)
    t = time.perf_counter()
    for _ in range(args.reps):
        m(x)
    chained = (time.perf_counter() - t) / args.reps
    xi = layout.nhwc(x) if x.ndim == 4 and m.input_layout == "NCHW" else x
    shapes = step_shapes(m, xi, args.batch)
    plan = m._plan(m.to_internal(x.shape[1:]), args.batch, tuple(m.outputs))
    tsc = tsc_hz()
    times, counts, work = defaultdict(float), defaultdict(int), defaultdict(int)
    chain_module.PROFILE = []
    try:
        with blas.ONE_THREAD:               # as Plan.run: OpenBLAS at one thread during the pass
            for rep in range(args.reps + 2):
                values = [xi]
                for i, (step, ins, _) in enumerate(plan.steps):
                    inputs = [values[j] for j in ins]
                    chain_module.PROFILE.clear()
                    t = time.perf_counter()
                    values.append(step(*inputs))
                    dt = time.perf_counter() - t
                    if rep < 2 or not ins:          # a step a compiled run computes (chain_module._nothing)
                        continue
                    if chain_module.PROFILE:        # a compiled run: each of its steps by the time-stamp counter
                        run, stamps = chain_module.PROFILE[0]
                        parts = [(run.first + j, (stamps[j + 1] - stamps[j]) / tsc) for j in range(len(stamps) - 1)]
                        parts[0] = (parts[0][0], parts[0][1] + dt - (stamps[-1] - stamps[0]) / tsc)  # its call
                    else:
                        parts = [(i, dt)]
                    for k, secs in parts:
                        layer, (ins_k, out_k) = plan.layers[k][1], shapes[k]
                        key = (describe(layer, out_k), "chain" if chain_module.PROFILE else
                               getattr(step, "__qualname__", type(step).__name__))
                        times[key] += secs / args.reps
                        if rep == 2:
                            counts[key] += 1
                            work[key] += macs(layer, ins_k)
    finally:
        chain_module.PROFILE = None
    total = sum(times.values())
    info = machine_info()
    print(f"# {path.name if args.model else 'MobileNetV3-Small'}: batch {args.batch}, {args.threads} thread(s), "
          f"{info['cpu']} ({info['cpu_record']['results_folder']}), {info['date']}")
    print(f"steps {total * 1e3:.3f} ms, the pass {chained * 1e3:.3f} ms")
    print(f"{'ms':>8} {'%':>5} {'GFLOP/s':>8}  step (kernel)")
    for key, v in sorted(times.items(), key=lambda kv: -kv[1])[:args.top]:
        gf = f"{2 * work[key] / v / 1e9:8.1f}" if work[key] else f"{'':8}"
        n = f" x{counts[key]}" if counts[key] > 1 else ""
        print(f"{v * 1e3:8.3f} {100 * v / total:5.1f} {gf}  {key[0]}{n} ({key[1].split('.')[0]})")
    if args.ort:
        ort_profile(path, x, args.threads, args.reps, args.top)
    tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
