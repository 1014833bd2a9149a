"""Model graph, forward-pass input checks, PyTorch fixtures, native save/load."""
import json
import os
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

import reference as ref
from native_files import read_native
import nncomp as nc
from nncomp.model import Node

DATA = nc.data.DATA_DIR                                         # the shipped models, inside the package
FIXTURES = Path(__file__).resolve().parent.parent / "data" / "fixtures"   # test-only, in the checkout
TORCH_MODELS = ["lenet300", "lenet5", "vgg_small", "resnet_small"]


@pytest.fixture(scope="module")
def lenet5():
    return nc.load(DATA / "lenet5.h5")


# ----------------------------------------------------------------------------- PyTorch fixtures
@pytest.mark.parametrize("name", TORCH_MODELS)
def test_torch_fixture_matches_pytorch_logits(name):
    model = nc.load(nc.data.model_path(name))
    x, y = nc.data.for_model(model)
    want = np.load(DATA / f"{name}.logits.npy")
    got = model(x)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got.argmax(1), want.argmax(1))
    assert np.abs(got - want).max() <= 1e-3
    assert (got.argmax(1) == y).mean() > 0.9          # a real, trained model


def test_torch_misc_fixture_covers_the_layer_zoo():
    base = FIXTURES / "torch_misc"
    if not Path(f"{base}.h5").is_file():
        pytest.skip("data/fixtures/torch_misc.h5 not generated yet")
    model = nc.load(f"{base}.h5")
    x = np.load(f"{base}.input.npy")
    want = np.load(f"{base}.logits.npy")
    got = model(x)
    assert np.abs(got - want).max() <= 1e-3 * max(1.0, np.abs(want).max())


def test_model_equals_reference_graph(lenet5):
    """The whole model against the same graph run through the NumPy references (float64)."""
    x, _ = nc.data.mnist("test")
    x = x[:16]
    h = x.transpose(0, 2, 3, 1).astype(np.float64)
    for node in lenet5.nodes:
        layer = node.layer
        if isinstance(layer, nc.Conv2D):
            w = layer.weight.to_dense().reshape(layer.out_channels, *layer.kernel_size, -1).transpose(0, 3, 1, 2)
            h = ref.conv2d_nhwc(h, w, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
        elif isinstance(layer, nc.MaxPool2D):
            oh, ow, _ = layer.output_shape(h.shape[1:])
            h = ref.maxpool_nhwc(h, *layer.kernel_size, *layer.stride, layer.padding[0], layer.padding[2],
                                 *layer.dilation, oh, ow)
        elif isinstance(layer, nc.Flatten):
            h = h.transpose(0, 3, 1, 2).reshape(len(h), -1)
        elif isinstance(layer, nc.Dense):
            h = h @ layer.weight.to_dense().T.astype(np.float64) + layer.bias
        elif isinstance(layer, nc.ReLU):
            h = np.maximum(h, 0)
        else:
            raise AssertionError(f"unexpected layer {layer.kind}")
    got = lenet5(x)
    assert np.allclose(got, h, rtol=1e-4, atol=1e-5 * np.abs(h).max())


# ----------------------------------------------------------------------------- input checks
def test_wrong_shapes_and_dtypes_are_refused_before_any_kernel(lenet5):
    x, _ = nc.data.mnist("test")
    with pytest.raises(nc.InputError):
        lenet5(x[0])                                      # I2: no batch axis
    with pytest.raises(nc.InputError):
        lenet5(x[:2, :, :27])                             # I1: wrong size
    with pytest.raises(nc.InputError):
        lenet5(x[:2].astype(bool))                        # I3: bool
    with pytest.raises(nc.InputError):
        lenet5(x[:2].astype(np.complex64))
    with pytest.raises(nc.InputError):
        lenet5(np.array([[1, 2], [3]], dtype=object))     # I4: ragged/object
    with pytest.raises(nc.InputError):
        lenet5(np.full((1, 1, 28, 28), 1e300))            # float64 beyond float32
    with pytest.raises(nc.InputError):
        lenet5(np.full((1, 1, 28, 28), np.nan, np.float32), check_finite=True)   # I9


def test_conversions_and_views_give_identical_results(lenet5):
    x, _ = nc.data.mnist("test")
    x = x[:8]
    base = lenet5(x)
    assert np.array_equal(lenet5(x.astype(np.float64)), base)                     # I3
    assert np.array_equal(lenet5(np.asfortranarray(x)), base)                      # I5
    rev = np.ascontiguousarray(x[::-1])[::-1]
    assert np.array_equal(lenet5(rev), base)
    ro = x.copy()
    ro.setflags(write=False)
    assert np.array_equal(lenet5(ro), base)                                        # I6
    assert np.array_equal(lenet5(x.tolist()), base)                                # nested lists
    assert lenet5(x[:0]).shape == (0, 10)                                          # I7: empty batch
    assert not np.shares_memory(lenet5(x), lenet5(x))


def test_large_batches_are_split(lenet5, monkeypatch):
    import nncomp.model as M
    x, _ = nc.data.mnist("test")
    x = x[:20]
    full = lenet5(x)
    monkeypatch.setattr(M, "MAX_ACTIVATION_BYTES", 1)    # one sample at a time
    # one sample runs BLAS's gemv, twenty its gemm: the 500-term sums round differently, so the
    # tolerance is relative to the logits' scale (a near-zero logit is a cancelling sum)
    assert np.allclose(lenet5(x), full, rtol=1e-5, atol=1e-6 * np.abs(full).max())


def _node_by_node(model, x):
    """The model run one ``layer.forward`` at a time (no plan), on internal NHWC activations."""
    values = {"input": np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if model.input_layout == "NCHW" else x}
    for node in model.nodes:
        values[node.name] = node.layer.forward(*(values[s] for s in node.inputs))
    return values[model.outputs[0]]


@pytest.mark.parametrize("name", ["lenet5", "resnet_small"])
def test_forward_plans_match_layer_by_layer(name, monkeypatch):
    """The model's prepared steps (per batch size and thread count) compute what the layers'
    own forward computes, on a chain and on a graph with shortcuts; old plans are dropped."""
    import numba

    import nncomp.model as M
    model = nc.load(DATA / f"{name}.h5")
    x, _ = nc.data.mnist("test")
    monkeypatch.setattr(M, "PLANS_KEPT", 3)
    for n in (1, 3, 17, 1):
        assert np.array_equal(model(x[:n]), _node_by_node(model, x[:n]))
    assert len(model._plans) == 3
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        one = model(x[:17])
    finally:
        numba.set_num_threads(threads)
    assert ((28, 28, 1), 17, 1, model.outputs) in model._plans
    full = model(x[:17])
    assert np.allclose(one, full, rtol=1e-5, atol=1e-6 * np.abs(full).max())


def test_a_called_model_pickles(lenet5):
    """Its forward plans are not pickled (closures); the copy rebuilds them and computes the same."""
    import pickle
    x, _ = nc.data.mnist("test")
    want = lenet5(x[:3])
    copy = pickle.loads(pickle.dumps(lenet5))
    assert copy._plans == {} and np.array_equal(copy(x[:3]), want)


def test_two_threads_share_a_model(lenet5):
    x, _ = nc.data.mnist("test")
    want = lenet5(x[:64])
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(np.array_equal(lenet5(x[:64]), want))
        except Exception as e:   # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(results) and len(results) == 10


def test_graph_errors():
    w = np.zeros((4, 3), np.float32)
    with pytest.raises(nc.NncompError):
        nc.Model([Node("a", nc.Dense(w), ("nope",))], input_shape=(3,), input_layout="NC")
    with pytest.raises(nc.NncompError):
        nc.Model([Node("a", nc.Dense(w)), Node("a", nc.ReLU(), ("a",))], input_shape=(3,), input_layout="NC")
    with pytest.raises(nc.NncompError):
        nc.Model([Node("a", nc.Dense(w))], input_shape=(5,), input_layout="NC")
    with pytest.raises(nc.NncompError):
        nc.Model([Node("a", nc.Dense(w))], input_shape=(3,), input_layout="NCHW")


def test_summary_lists_every_node(lenet5):
    text = str(lenet5)
    for node in lenet5.nodes:
        assert node.name in text
    assert "MACs" in text and f"{lenet5.nbytes:,}" in text


def test_residual_graph_and_fold_batchnorm():
    model = nc.load(DATA / "resnet_small.h5")
    assert any(isinstance(n.layer, nc.Add) for n in model.nodes)
    folded = nc.fold_batchnorm(model)
    assert not any(isinstance(n.layer, nc.BatchNorm) for n in folded.nodes)
    x, _ = nc.data.for_model(model)
    a, b = model(x[:100]), folded(x[:100])
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()


# ----------------------------------------------------------------------------- native format
def test_save_load_is_bit_identical(tmp_path, lenet5):
    path = tmp_path / "m.h5"
    nc.save(lenet5, path)
    again = nc.load(path)
    x, _ = nc.data.mnist("test")
    assert np.array_equal(again(x[:50]), lenet5(x[:50]))
    assert str(again) == str(lenet5)


def test_save_is_atomic(tmp_path, lenet5, monkeypatch):
    path = tmp_path / "m.h5"
    nc.save(lenet5, path)
    before = path.read_bytes()
    import nncomp.io.native as native

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(native, "model_to_json", boom)
    with pytest.raises(RuntimeError):
        nc.save(lenet5, path)
    assert path.read_bytes() == before                                  # T7: original untouched
    assert [p.name for p in tmp_path.iterdir()] == ["m.h5"]             # temp file removed


def test_native_checksum_and_version_are_checked(tmp_path, lenet5):
    path = tmp_path / "m.h5"
    nc.save(lenet5, path)
    meta, p0 = read_native(path)
    w = meta["nodes"][0]["tensors"]["weight"]["arrays"]["w"]
    with h5py.File(path, "r+") as f:                      # one weight changed in the pack
        f["p0"][w["offset"]:w["offset"] + 4] = (np.frombuffer(p0, "<f4", 1, w["offset"]) + 1.0).view(np.uint8)
    with pytest.raises(nc.CorruptModelFileError, match="checksum"):
        nc.load(path)
    nc.save(lenet5, path)
    _, p0 = read_native(path)
    with h5py.File(path, "r+") as f:                      # a flipped bit in the (deflated) description
        at = p0.size - int(f.attrs["model_nbytes"]) // 2
        f["p0"][at] = p0[at] ^ 1
    with pytest.raises(nc.CorruptModelFileError, match="description"):
        nc.load(path)
    nc.save(lenet5, path)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = np.int64(99)
    with pytest.raises(nc.UnsupportedModelError):
        nc.load(path)


def test_state_dict_with_separate_architecture(tmp_path):
    src = DATA / "lenet300.h5"
    with h5py.File(src, "r") as f:
        arch = f.attrs["architecture"]
        arch = arch.decode() if isinstance(arch, bytes) else str(arch)
        plain = tmp_path / "plain.h5"
        with h5py.File(plain, "w") as g:
            for k in f:
                f.copy(k, g)
    with pytest.raises(nc.UnsupportedModelError):
        nc.load(plain)                                    # no architecture: clear error
    model = nc.load(plain, architecture=arch)
    x, _ = nc.data.for_model(model)
    assert np.abs(model(x) - np.load(DATA / "lenet300.logits.npy")).max() <= 1e-3
    with pytest.raises(nc.ModelFileError):
        nc.load(plain, architecture=arch.replace('"version": 1', '"version": 7').replace('"version":1', '"version":7'))


@pytest.mark.parametrize("acts", [("silu", "gelu"), ("sigmoid", "tanh"), ("hardswish", "relu6")])
def test_architecture_activations_beyond_relu(acts):
    """nncomp-arch layer types silu, gelu (approximate='none'), sigmoid, tanh, hardswish: LeNet-300's
    state dict under an architecture with these in place of its ReLUs gives the NumPy forward pass
    of the same weights; gelu's tanh form is refused, naming the layer."""
    from scipy import special
    with h5py.File(DATA / "lenet300.h5", "r") as f:
        arch = f.attrs["architecture"]
        arch = arch.decode() if isinstance(arch, bytes) else str(arch)
        w = {k: f[k][()].astype(np.float64) for k in f}
    spec = json.loads(arch)
    for layer in spec["layers"]:
        if layer["name"] in ("relu", "relu_1"):
            layer["type"] = acts[0] if layer["name"] == "relu" else acts[1]
    funcs = {"silu": lambda v: v / (1 + np.exp(-v)), "gelu": lambda v: 0.5 * v * (1 + special.erf(v / np.sqrt(2))),
             "sigmoid": lambda v: 1 / (1 + np.exp(-v)), "tanh": np.tanh, "relu6": lambda v: np.clip(v, 0, 6),
             "hardswish": lambda v: v * np.clip(v / 6 + 0.5, 0, 1)}
    model = nc.load(DATA / "lenet300.h5", architecture=json.dumps(spec))
    x, _ = nc.data.for_model(model)
    h = funcs[acts[0]](x[:64].astype(np.float64) @ w["fc1.weight"].T + w["fc1.bias"])
    h = funcs[acts[1]](h @ w["fc2.weight"].T + w["fc2.bias"])
    want = h @ w["fc3.weight"].T + w["fc3.bias"]
    assert np.abs(model(x[:64]) - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
    if "gelu" in acts:
        next(layer for layer in spec["layers"] if layer["type"] == "gelu")["approximate"] = "tanh"
        with pytest.raises(nc.UnsupportedModelError, match="approximate"):
            nc.load(DATA / "lenet300.h5", architecture=json.dumps(spec))


def test_forward_leaves_the_callers_cpu_set_alone(lenet5):
    """GNU OpenMP binds a thread at its first parallel region; nncomp gives the CPU set back."""
    import os
    import threading
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no sched_getaffinity here")
    x, _ = nc.data.mnist("test")
    seen = {}

    def work():
        before = os.sched_getaffinity(0)
        lenet5(x[:64])                       # large enough for parallel kernels
        seen["before"], seen["after"] = before, os.sched_getaffinity(0)
    t = threading.Thread(target=work)        # a fresh thread: its first parallel region is here
    t.start()
    t.join()
    assert seen["after"] == seen["before"]


def _timed_choice():
    """A MeasuredChoice of forwards "a" (1 s a call) and "b" (2 s) on a fake clock: ``(choice, cost
    {name: seconds}, names in the order they ran)``."""
    from nncomp.plan import MeasuredChoice
    now, cost, ran = [0.0], {"a": 1.0, "b": 2.0}, []

    def forward(name):
        def run(x):
            now[0] += cost[name]
            ran.append(name)
            return (name, x)
        return run
    return MeasuredChoice(forward("a"), forward("b"), clock=lambda: now[0]), cost, ran


def test_measured_choice_runs_the_faster_forward_and_notices_a_change():
    """Each forward's first call is not counted; after a warm-up the faster one runs, the other
    is retried at growing intervals, BURST calls in a row, and a forward that becomes the faster one
    takes over."""
    from nncomp.plan import MeasuredChoice
    choice, cost, ran = _timed_choice()
    assert choice(7) in (("a", 7), ("b", 7))
    for _ in range(100):
        choice(0)
    burst = MeasuredChoice.BURST
    assert ran[-40:].count("a") >= 40 - 2 * burst and "b" in ran[-40:]     # explored, but rarely
    starts = [i for i in range(8, len(ran)) if ran[i] == "b" and ran[i - 1] == "a"]   # after the warm-up
    assert len(starts) >= 3 and starts[-1] - starts[-2] > starts[-2] - starts[-3] >= 8   # less and less often
    assert all(ran[i:i + burst] == ["b"] * burst for i in starts)     # in bursts: its threads awake
    cost["a"] = 3.0                                              # "a" gets slow (a busy core)
    for _ in range(200):
        choice(0)
    assert ran[-20:].count("b") >= 19


def test_measured_choice_drops_an_incumbent_that_got_slower_without_waiting_to_explore():
    """Once the incumbent's last WINDOW calls are all slower than the other's best (by MARGIN), the
    other runs at the next call, even when the next exploration is far off."""
    from nncomp.plan import MeasuredChoice
    choice, cost, ran = _timed_choice()
    for _ in range(300):
        choice(0)
    assert choice.explore == MeasuredChoice.EXPLORE_MAX and ran[-30:].count("a") >= 29
    cost["a"] = 3.0
    start = len(ran)
    for _ in range(MeasuredChoice.WINDOW + 4):
        choice(0)
    assert ran[start:start + MeasuredChoice.WINDOW] == ["a"] * MeasuredChoice.WINDOW
    assert ran[start + MeasuredChoice.WINDOW] == "b" and ran[start + MeasuredChoice.WINDOW:].count("b") >= 3


def test_glibc_is_asked_once_to_keep_freed_activation_memory(monkeypatch):
    """On glibc the allocator keeps freed blocks for the next pass; NNCOMP_MALLOPT=0 opts out."""
    import ctypes

    import nncomp.plan as P
    glibc = hasattr(ctypes.CDLL(None), "gnu_get_libc_version")
    assert P.MALLOPT == (glibc and os.environ.get("NNCOMP_MALLOPT", "1") != "0")
    monkeypatch.setenv("NNCOMP_MALLOPT", "0")
    assert P.keep_freed_memory() is False


def test_run_mode_names_the_engines_choice_and_refuses_bad_arguments(lenet5, monkeypatch):
    import nncomp.plan as P
    single = "serial" if P.SERIAL_SINGLE else "measured"      # AVX2: one sample serial or parallel as measured
    assert lenet5.run_mode(1, threads=1) == "serial" and lenet5.run_mode(1, threads=2) == single
    monkeypatch.setattr(P, "SERIAL_SINGLE", True)          # AVX-512: one sample always serial
    assert lenet5.run_mode(1, threads=2) == "serial"
    monkeypatch.setattr(P, "SERIAL_SINGLE_MAX_BYTES", lenet5.nbytes - 1)   # a weight that streams from L3 or DRAM
    assert lenet5.run_mode(1, threads=2) == "measured"
    monkeypatch.setattr(P, "SERIAL_SINGLE_MAX_BYTES", lenet5.nbytes)
    assert lenet5.run_mode(1, threads=2) == "serial"
    assert lenet5.run_mode(64, threads=2) == "parallel"          # 5 MACs per weight: never split
    for bad in [dict(batch="x"), dict(batch=0), dict(batch=2, threads=0), dict(batch=1.5)]:
        with pytest.raises(nc.NncompError, match="run_mode"):
            lenet5.run_mode(**bad)


def test_measured_choice_does_not_count_the_first_call_of_an_exploration():
    """An exploration's first call can find the other forward's threads asleep: a slow first call
    of "b" (10 s) does not keep the faster "b" (0.5 s a call after it) from taking over."""
    from nncomp.plan import MeasuredChoice
    choice, cost, ran = _timed_choice()
    for _ in range(60):
        choice(0)
    assert ran[-10:].count("a") >= 9
    now, last = [0.0], [None]

    def timed(name):
        def run(x):
            slow = name == "b" and last[0] != "b"        # b's first call after a's: its threads slept
            now[0] += 10.0 if slow else (0.5 if name == "b" else 1.0)
            last[0] = name
            return name, x
        return run
    choice.forwards, choice.clock = (timed("a"), timed("b")), lambda: now[0]
    for _ in range(3 * MeasuredChoice.EXPLORE_MAX):
        choice(0)
    assert choice.best == 1 and [f(0)[0] for f in choice.forwards] == ["a", "b"]
