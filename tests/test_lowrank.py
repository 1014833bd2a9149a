"""Low-rank factorization: exactness, Eckart-Young, scheme-2 pairs, data vs filter, bad parameters."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import reference as ref
from conftest import assert_close_f32
import nncomp as nc
from nncomp.compress import lowrank as lr
from nncomp.compress import lowrank_conv as lc
from nncomp.errors import CompressionParameterError


def dense_model(w, b=None):
    n_out, n_in = w.shape
    return nc.Model([nc.Node("fc", nc.Dense(w, b)), nc.Node("relu", nc.ReLU(), ("fc",)),
                     nc.Node("out", nc.Dense(np.eye(n_out, dtype=np.float32)), ("relu",))],
                    input_shape=(n_in,), input_layout="NC")


def conv_layer(w4, bias=None, groups=1, **kw):
    """A Conv2D from a PyTorch-layout weight (N, C/groups, kh, kw)."""
    wm = np.ascontiguousarray(w4.transpose(0, 2, 3, 1).reshape(w4.shape[0], -1))
    return nc.Conv2D(wm, bias, in_channels=w4.shape[1] * groups, kernel_size=w4.shape[2:], groups=groups, **kw)


def conv_model(layer, h, w):
    return nc.Model([nc.Node("conv", layer)], input_shape=(h, w, layer.in_channels), input_layout="NHWC")


def pair_weights(model, name="conv"):
    first, second = model[f"{name}/v"].layer, model[name].layer
    return first.weight.to_dense().astype(np.float64), second.weight.to_dense().astype(np.float64)


# ------------------------------------------------------------------ dense
def test_dense_exact_for_rank_r_weights():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((30, 4)) @ rng.standard_normal((4, 50))).astype(np.float32)
    b = rng.standard_normal(30).astype(np.float32)
    m = dense_model(w, b)
    f = nc.factorize(m, rank=4, layers="fc")
    assert [n.name for n in f.nodes] == ["fc/v", "fc", "relu", "out"]
    assert f["fc/v"].inputs == ("input",) and f["fc"].inputs == ("fc/v",)
    assert f["fc/v"].layer.bias is None and f["fc/v"].layer.weight.shape == (4, 50)
    assert f["fc"].layer.weight.shape == (30, 4)
    np.testing.assert_array_equal(f["fc"].layer.bias, b)
    v, u = pair_weights(f, "fc")
    np.testing.assert_allclose(u @ v, w, atol=2e-5 * np.abs(w).max())
    x = rng.standard_normal((7, 50)).astype(np.float32)
    np.testing.assert_allclose(f(x), m(x), atol=1e-4 * np.abs(m(x)).max())
    assert f.macs == m.macs - 30 * 50 + 4 * (30 + 50)
    assert m["fc"].layer.weight.shape == (30, 50)      # the input model is unchanged


@given(m=st.integers(1, 12), n=st.integers(1, 12), frac=st.floats(0, 1), seed=st.integers(0, 2**31))
def test_dense_error_is_discarded_singular_values(m, n, frac, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((m, n)).astype(np.float32)
    r = 1 + int(frac * (min(m, n) - 1))
    f = nc.factorize(dense_model(w), rank=r, layers="fc")
    v, u = pair_weights(f, "fc")
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    err = np.linalg.norm(w - u @ v)
    expect = np.sqrt(np.sum(s[r:] ** 2))
    assert abs(err - expect) <= 1e-5 * s[0] * (m + n)


def test_energy_picks_the_smallest_rank_keeping_it():
    rng = np.random.default_rng(1)
    q1, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    q2, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    s = np.array([10, 5, 3, 1] + [0.1] * 16)
    w = (q1 * s) @ q2.T
    e = np.cumsum(s ** 2) / np.sum(s ** 2)
    for energy, rank in [(e[0] - 1e-6, 1), (e[0] + 1e-6, 2), (e[2] - 1e-6, 3), (1.0, 20)]:
        f = nc.factorize(dense_model(w.astype(np.float32)), energy=float(energy), layers="fc")
        assert f["fc/v"].layer.weight.shape[0] == rank


# ------------------------------------------------------------------ convolutions
@st.composite
def conv_case(draw):
    c, n = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kh, kw = draw(st.integers(2, 3)), draw(st.integers(2, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad = tuple(draw(st.integers(0, 2)) for _ in range(4))
    h = draw(st.integers(dil[0] * (kh - 1) + 1, 9))
    w = draw(st.integers(dil[1] * (kw - 1) + 1, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    layer = conv_layer(rng.standard_normal((n, c, kh, kw)).astype(np.float32),
                       rng.standard_normal(n).astype(np.float32) if draw(st.booleans()) else None,
                       stride=stride, padding=pad, dilation=dil)
    x = rng.standard_normal((draw(st.integers(1, 3)), h, w, c)).astype(np.float32)
    return layer, x, draw(st.floats(0, 1))


@given(case=conv_case(), scheme=st.sampled_from(["jaderberg", "channel"]))
def test_pair_equals_the_reconstructed_kernels_convolution(case, scheme):
    layer, x, frac = case
    kh, kw = layer.kernel_size
    c, n = layer.in_channels, layer.out_channels
    max_rank = min(kh * c, n * kw) if scheme == "jaderberg" else min(n, kh * kw * c)
    r = 1 + int(frac * (max_rank - 1))
    m = conv_model(layer, *x.shape[1:3])
    f = nc.factorize(m, rank=r, layers="conv", scheme=scheme)
    first, second = f["conv/v"].layer, f["conv"].layer
    assert isinstance(first, nc.Conv2D) and isinstance(second, nc.Conv2D) and first.bias is None
    v, h = pair_weights(f)
    if scheme == "jaderberg":
        assert first.kernel_size == (kh, 1) and second.kernel_size == (1, kw)
        assert first.stride == (layer.stride[0], 1) and second.stride == (1, layer.stride[1])
        assert first.padding == layer.padding[:2] + (0, 0) and second.padding == (0, 0) + layer.padding[2:]
        kernel = lc.pair_kernel(v, h, kh, kw, c)
        s = np.linalg.svd(lc.kernel_matrix(layer.weight.w, kh, kw, c), compute_uv=False)
    else:
        assert first.kernel_size == (kh, kw) and second.kernel_size == (1, 1)
        kernel = h @ v
        s = np.linalg.svd(layer.weight.w.astype(np.float64), compute_uv=False)
    # Eckart-Young: the kernel's Frobenius error is the discarded singular values.
    err = np.linalg.norm(kernel - layer.weight.w)
    assert abs(err - np.sqrt(np.sum(s[r:] ** 2))) <= 1e-5 * s[0] * (max_rank + 4)
    # The two convolutions compute the reconstructed kernel's convolution.
    w4 = kernel.reshape(n, kh, kw, c).transpose(0, 3, 1, 2)
    args = (layer.stride, layer.padding, layer.dilation, 1)
    expect = ref.conv2d_nhwc(x, w4, layer.bias, *args)
    # Two chained products: bound each by the magnitudes of its factors.
    if scheme == "jaderberg":
        mag2 = lc.pair_kernel(np.abs(v), np.abs(h), kh, kw, c)
    else:
        mag2 = np.abs(h) @ np.abs(v)
    mag = ref.conv2d_nhwc(np.abs(x), mag2.reshape(n, kh, kw, c).transpose(0, 3, 1, 2),
                          None if layer.bias is None else np.abs(layer.bias), *args)
    assert_close_f32(f(x), expect, mag, kh * kw * c + r * kw + 1, c=4.0)


def test_conv_exact_for_rank_k_kernels():
    rng = np.random.default_rng(2)
    c, n, k = 5, 6, 2
    v = rng.standard_normal((k, 3 * c))
    h = rng.standard_normal((n, 3 * k))
    wm = lc.pair_kernel(v, h, 3, 3, c).astype(np.float32)
    layer = nc.Conv2D(wm, rng.standard_normal(n).astype(np.float32), in_channels=c, kernel_size=3, padding=1)
    m = conv_model(layer, 8, 7)
    f = nc.factorize(m, rank=k, layers="conv", scheme="jaderberg")
    x = rng.standard_normal((2, 8, 7, c)).astype(np.float32)
    y = m(x)
    np.testing.assert_allclose(f(x), y, atol=1e-4 * np.abs(y).max())
    assert f.macs < m.macs


# ------------------------------------------------------------------ data reconstruction
def _data_error(model, f, x, name):
    y0 = model.activations(x, [name])[name]
    y1 = f.activations(x, [name])[name]
    return float(np.sum((y0.astype(np.float64) - y1) ** 2))


@pytest.mark.parametrize("scheme", ["jaderberg", "channel"])
@pytest.mark.parametrize("geometry", [dict(padding=1), dict(stride=(2, 1), dilation=(1, 2), padding=(0, 1, 2, 0))])
def test_data_reconstruction_never_worse_than_filter_conv(scheme, geometry):
    rng = np.random.default_rng(3)
    c, n = 4, 6
    layer = conv_layer(rng.standard_normal((n, c, 3, 3)).astype(np.float32),
                       rng.standard_normal(n).astype(np.float32), **geometry)
    m = conv_model(layer, 9, 9)
    # correlated, non-centered inputs: where data reconstruction has something to exploit
    x = (rng.standard_normal((40, 9, 9, 2)) @ rng.standard_normal((2, c)) + 0.5
         + 0.05 * rng.standard_normal((40, 9, 9, c))).astype(np.float32)
    for r in (1, 2, 3):
        filt = nc.factorize(m, rank=r, layers="conv", scheme=scheme)
        data = nc.factorize(m, rank=r, layers="conv", scheme=scheme, calibration=x)
        e_f, e_d = _data_error(m, filt, x, "conv"), _data_error(m, data, x, "conv")
        assert e_d <= e_f * (1 + 1e-4) + 1e-6, (r, e_d, e_f)
        assert e_d < 0.95 * e_f


def test_data_reconstruction_never_worse_than_filter_dense():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((12, 20)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    m = dense_model(w, b)
    x = (rng.standard_normal((300, 5)) @ rng.standard_normal((5, 20)) + 1.0).astype(np.float32)
    for r in (1, 3, 6, 12):
        e_f = _data_error(m, nc.factorize(m, rank=r, layers="fc"), x, "fc")
        e_d = _data_error(m, nc.factorize(m, rank=r, layers="fc", calibration=x), x, "fc")
        assert e_d <= e_f * (1 + 1e-4) + 1e-6
    # inputs of rank 5: rank 5 fits them exactly (the ridge anchor costs ~1e-6 relative)
    e_d = _data_error(m, nc.factorize(m, rank=5, layers="fc", calibration=x), x, "fc")
    assert e_d <= 1e-6 * float(np.sum((x @ w.T) ** 2))


def test_scheme2_data_steps_are_monotone():
    rng = np.random.default_rng(5)
    c, n, kh, kw = 3, 5, 3, 3
    w = rng.standard_normal((n, kh * kw * c))
    p = rng.standard_normal((500, kh * kw * c)) @ rng.standard_normal((kh * kw * c, kh * kw * c)) * 0.3
    prob = lc.PatchProblem(p, p @ w.T, kh, kw, c)
    v, h, bias, errors = lc.jaderberg_data(w, None, 2, prob, iterations=4)
    assert all(b <= a * (1 + 1e-9) for a, b in zip(errors[2:], errors[3:]))
    assert prob.error(v, h) <= min(errors[:2]) * (1 + 1e-9)


# ------------------------------------------------------------------ rank selection
def _small_cnn(rng):
    def conv(c, n):
        return conv_layer(rng.standard_normal((n, c, 3, 3)).astype(np.float32) / np.sqrt(9 * c),
                          np.zeros(n, np.float32), padding=1)
    nodes = [nc.Node("c1", conv(3, 8)), nc.Node("r1", nc.ReLU(), ("c1",)),
             nc.Node("c2", conv(8, 16), ("r1",)), nc.Node("r2", nc.ReLU(), ("c2",)),
             nc.Node("p", nc.GlobalAvgPool2D(), ("r2",)),
             nc.Node("fc", nc.Dense(rng.standard_normal((10, 16)).astype(np.float32)), ("p",))]
    return nc.Model(nodes, input_shape=(3, 10, 10), input_layout="NCHW")


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_speedup_meets_the_mac_budget(allocation):
    rng = np.random.default_rng(6)
    m = _small_cnn(rng)
    names = ["c1", "c2"]
    macs = lambda model, ns: sum(n.layer.macs(model.shapes[n.inputs[0]]) for n in model.nodes  # noqa: E731
                                 if n.name.split("/")[0] in ns)
    for s in (1.5, 2.0, 3.0):
        f = nc.factorize(m, speedup=s, layers=names, allocation=allocation, scheme="jaderberg")
        assert macs(m, names) / macs(f, names) >= s * (1 - 1e-9) or allocation == "uniform"
        if allocation == "uniform":
            for nm in names:
                assert macs(m, [nm]) / macs(f, [nm]) >= s * (1 - 1e-9)
    x = rng.standard_normal((3, 3, 10, 10)).astype(np.float32)
    assert f(x).shape == m(x).shape


def test_default_allocation_is_global_and_loses_no_more_than_uniform_on_lenet300():
    # docs/defaults_study.md: at 2x with 512 calibration digits "global" lost 0.1 point on the
    # shipped LeNet-300-100 where "uniform" lost 10.9 (fc3, 10 x 100, gains nothing from a low rank)
    import inspect
    assert inspect.signature(nc.factorize).parameters["allocation"].default == "global"
    m = nc.load(nc.data.model_path("lenet300"))
    x, y = nc.data.mnist("test", layout="NC")
    xc = nc.data.mnist("train", layout="NC")[0][:512]
    acc = lambda mm: float((mm(x).argmax(1) == y).mean())  # noqa: E731
    default = nc.factorize(m, speedup=2.0, calibration=xc)
    uniform = nc.factorize(m, speedup=2.0, calibration=xc, allocation="uniform")
    assert m.macs / default.macs >= 2.0 * (1 - 1e-9)
    assert acc(default) >= acc(uniform) and acc(m) - acc(default) <= 0.01


def test_global_allocation_leaves_unprofitable_layers_alone():
    rng = np.random.default_rng(7)
    m = _small_cnn(rng)
    f = nc.factorize(m, speedup=1.05, layers=["c1", "c2", "fc"], scheme="jaderberg")
    # c1 (3 -> 8 channels) gains little from factorizing: with a slack budget it may stay dense,
    # and any layer left alone keeps its node untouched
    for name in ("c1", "c2", "fc"):
        if f"{name}/v" not in f.shapes:
            assert f[name].layer is m[name].layer


@pytest.mark.parametrize("max_drop", [0.0, 0.1, 0.5])
def test_max_drop_holds_on_the_held_out_quarter(max_drop):
    rng = np.random.default_rng(13)
    m = _small_cnn(rng)
    x = rng.standard_normal((48, 3, 10, 10)).astype(np.float32)
    f = nc.factorize(m, max_drop=max_drop, calibration=x)
    held = x[36:]
    agree = np.mean(f(held).argmax(1) == m(held).argmax(1))
    assert agree >= 1 - max_drop
    if max_drop == 0.5:
        assert f.macs < m.macs


def test_selects_kxk_convs_and_dense_by_default():
    rng = np.random.default_rng(8)
    layers = [nc.Node("a", conv_layer(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), padding=1)),
              nc.Node("one", conv_layer(rng.standard_normal((4, 4, 1, 1)).astype(np.float32)), ("a",)),
              nc.Node("dw", conv_layer(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), groups=4), ("one",)),
              nc.Node("flat", nc.Flatten(), ("dw",)),
              nc.Node("fc", nc.Dense(rng.standard_normal((3, 4 * 6 * 4)).astype(np.float32)), ("flat",))]
    m = nc.Model(layers, input_shape=(8, 6, 2), input_layout="NHWC")
    f = nc.factorize(m, rank=2)
    assert {n.name for n in f.nodes} - {n.name for n in m.nodes} == {"a/v", "fc/v"}
    # a 1x1 conv named explicitly is a plain matrix: the channel scheme (its SVD) applies
    f = nc.factorize(m, rank=2, layers=["one"])
    assert f["one/v"].layer.kernel_size == (1, 1)


# ------------------------------------------------------------------ composition and files
def test_factorized_model_round_trips_through_the_native_file(tmp_path):
    rng = np.random.default_rng(9)
    m = _small_cnn(rng)
    f = nc.factorize(m, speedup=2.0, layers=["c2", "fc"], allocation="uniform")
    nc.save(f, tmp_path / "f.h5")
    g = nc.load(tmp_path / "f.h5")
    x = rng.standard_normal((2, 3, 10, 10)).astype(np.float32)
    np.testing.assert_array_equal(g(x), f(x))


def test_lowrank_then_int8_composes():
    quant = pytest.importorskip("nncomp.compress.quantization")
    rng = np.random.default_rng(10)
    m = _small_cnn(rng)
    x = rng.standard_normal((16, 3, 10, 10)).astype(np.float32)
    f = nc.factorize(m, rank={"c2": 6, "fc": 4}, calibration=x)
    q = quant.quantize(f, calibration=x)
    assert q["c2/v"].layer.weight.format == "int8" and q["c2"].layer.weight.format == "int8"
    y, yq = f(x), q(x)
    assert np.abs(yq - y).max() <= 0.1 * np.abs(y).max()


# ------------------------------------------------------------------ bad parameters
@pytest.mark.parametrize("kwargs", [
    dict(rank=0), dict(rank=-1), dict(rank=9), dict(rank=2.0), dict(rank=2.5), dict(rank=True),
    dict(rank="2"), dict(rank={"fc": 0}), dict(rank={"fc": True}), dict(rank={"nope": 2}),
    dict(rank=2, energy=0.9), dict(rank=2, speedup=2.0), dict(),
    dict(energy=0.0), dict(energy=1.5), dict(energy=float("nan")), dict(energy=True),
    dict(speedup=1.0), dict(speedup=0.5), dict(speedup=float("nan")), dict(speedup=float("inf")),
    dict(speedup=True), dict(speedup={"fc": 1.0}), dict(speedup=1000.0),
    dict(rank=2, scheme="tucker"), dict(rank=2, allocation="greedy"), dict(rank=2, iterations=-1),
    dict(rank=2, iterations=True), dict(rank=2, seed=1.5),
    dict(rank=2, calibration=np.zeros((3, 7), np.float32)),
    dict(rank=2, calibration=np.full((3, 9), np.nan, np.float32)),
    dict(rank=2, layers=["relu"]), dict(rank=2, layers=["missing"]),
    dict(max_drop=0.01), dict(max_drop=1.5, calibration=np.zeros((9, 9), np.float32)),
    dict(max_drop=True, calibration=np.zeros((9, 9), np.float32)),
    dict(max_drop=0.01, calibration=np.zeros((7, 9), np.float32)), dict(max_drop=0.01, rank=2),
])
def test_bad_parameters_raise(kwargs):
    w = np.random.default_rng(11).standard_normal((8, 9)).astype(np.float32)
    if "layers" not in kwargs and not any(isinstance(v, dict) for v in kwargs.values()):
        kwargs["layers"] = "fc"
    with pytest.raises(CompressionParameterError):
        nc.factorize(dense_model(w), **kwargs)


def test_non_finite_weights_raise():
    w = np.ones((4, 5), np.float32)
    w[1, 2] = np.nan
    with pytest.raises(CompressionParameterError):
        nc.factorize(dense_model(w), rank=1, layers="fc")


def test_bad_convolutions_raise():
    rng = np.random.default_rng(12)
    nodes = [nc.Node("dw", conv_layer(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), groups=4)),
             nc.Node("one", conv_layer(rng.standard_normal((4, 4, 1, 1)).astype(np.float32)), ("dw",)),
             nc.Node("wide", conv_layer(rng.standard_normal((4, 4, 1, 3)).astype(np.float32)), ("one",))]
    m = nc.Model(nodes, input_shape=(6, 6, 4), input_layout="NHWC")
    for name in ("dw", "one", "wide"):
        with pytest.raises(CompressionParameterError):
            nc.factorize(m, rank=1, layers=[name], scheme="jaderberg")
    with pytest.raises(CompressionParameterError):
        nc.factorize(m, rank=1, layers=["dw"], scheme="channel")
    with pytest.raises(CompressionParameterError):
        nc.factorize("not a model", rank=1)
    with pytest.raises(CompressionParameterError):     # refactorizing by the same name collides
        f = nc.factorize(m, rank=1, layers=["one"])
        nc.factorize(f, rank=1, layers=["one"])
