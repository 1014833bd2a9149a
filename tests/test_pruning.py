"""Pruning invariants: exact counts, largest magnitudes kept, storage, calibration, structured pruning."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import nncomp as nc
from nncomp.compress import pruning
from nncomp.errors import CompressionParameterError
from nncomp.matrices.csr import CSRMatrix, PrunedDenseMatrix


def mlp(seed=0, sizes=(20, 16, 12, 5)):
    rng = np.random.default_rng(seed)
    nodes, src = [], "input"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        nodes.append(nc.Node(f"fc{i}", nc.Dense(rng.standard_normal((b, a)).astype(np.float32),
                                               rng.standard_normal(b).astype(np.float32)), (src,)))
        src = f"fc{i}"
        if i < len(sizes) - 2:
            nodes.append(nc.Node(f"relu{i}", nc.ReLU(), (src,)))
            src = f"relu{i}"
    return nc.Model(nodes, input_shape=(sizes[0],), input_layout="NC")


def convnet(seed=0, bn=True):
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    nodes = [nc.Node("c1", nc.Conv2D(r(6, 9 * 2), r(6), in_channels=2, kernel_size=3, padding=1))]
    src = "c1"
    if bn:
        nodes.append(nc.Node("bn", nc.BatchNorm(r(6), r(6), r(6), np.abs(r(6)) + 0.5), (src,)))
        src = "bn"
    nodes += [nc.Node("relu", nc.ReLU(), (src,)),
              nc.Node("dw", nc.Conv2D(r(6, 9), r(6), in_channels=6, kernel_size=3, padding=1, groups=6), ("relu",)),
              nc.Node("c2", nc.Conv2D(r(4, 9 * 6), r(4), in_channels=6, kernel_size=3), ("dw",)),
              nc.Node("pool", nc.MaxPool2D(2), ("c2",)),
              nc.Node("flat", nc.Flatten("chw"), ("pool",)),
              nc.Node("fc", nc.Dense(r(3, 4 * 2 * 2), r(3)), ("flat",))]
    return nc.Model(nodes, input_shape=(2, 6, 6), input_layout="NCHW")


# ----------------------------------------------------------------------------- unstructured
@given(s=st.floats(0, 1), seed=st.integers(0, 2**31), ties=st.booleans())
def test_exact_count_and_largest_magnitudes_kept(s, seed, ties):
    m = mlp(seed % 1000)
    if ties:   # many equal magnitudes straddle the threshold
        w = np.sign(m["fc0"].layer.weight.w) * np.round(np.abs(m["fc0"].layer.weight.w))
        m = m.replace_layers({"fc0": m["fc0"].layer.replace(weight=w + (w == 0))})
    n0 = m["fc0"].layer.weight.w.size
    if s < 1 and int(np.floor(s * n0 + 0.5)) == n0:
        # A fraction below 1 that rounds to every weight is refused: emptying a layer must be explicit.
        with pytest.raises(nc.CompressionParameterError):
            nc.prune(m, {"fc0": s}, storage="csr")
        return
    p = nc.prune(m, {"fc0": s, "fc1": 1.0 if s == 1 else s / 2}, storage="csr")
    for name, frac in (("fc0", s), ("fc1", 1.0 if s == 1 else s / 2)):
        w0 = m[name].layer.weight.w
        w1 = p[name].layer.weight.to_dense()
        assert isinstance(p[name].layer.weight, CSRMatrix)
        kept = w1 != 0
        assert w0.size - kept.sum() == int(np.floor(frac * w0.size + 0.5))
        assert np.array_equal(w1[kept], w0[kept])                        # survivors unchanged
        if kept.any() and (~kept).any():
            assert np.abs(w0[~kept]).max() <= np.abs(w0[kept]).min()     # largest magnitudes kept
        assert np.array_equal(p[name].layer.bias, m[name].layer.bias)    # biases never pruned
    assert np.array_equal(p["fc2"].layer.weight.to_dense(), m["fc2"].layer.weight.w)   # unselected


def test_global_scope_and_quality_rule():
    m = mlp(1)
    p = nc.prune(m, 0.6, scope="global")
    ws = {n: m[n].layer.weight.w for n in ("fc0", "fc1", "fc2")}
    total = sum(w.size for w in ws.values())
    kept = {n: p[n].layer.weight.to_dense() != 0 for n in ws}
    assert total - sum(k.sum() for k in kept.values()) == round(0.6 * total)
    lo = max(np.abs(w[~kept[n]]).max(initial=0) for n, w in ws.items())
    hi = min(np.abs(w[kept[n]]).min(initial=np.inf) for n, w in ws.items())
    assert lo <= hi                                                      # one threshold for all
    q = nc.prune(m, quality=0.8, layers=["fc0"])
    w = ws["fc0"]
    assert np.array_equal(q["fc0"].layer.weight.to_dense() != 0, np.abs(w) >= 0.8 * w.std())


def test_default_scope_is_global_for_one_sparsity_and_per_layer_otherwise():
    m = mlp(4)
    masks = lambda p: [p[n].layer.weight.to_dense() != 0 for n in ("fc0", "fc1", "fc2")]  # noqa: E731
    for a, b in zip(masks(nc.prune(m, 0.7)), masks(nc.prune(m, 0.7, scope="global"))):
        assert np.array_equal(a, b)
    layer = masks(nc.prune(m, 0.7, scope="layer"))     # still there when asked for, and different
    assert any(not np.array_equal(a, b) for a, b in zip(layer, masks(nc.prune(m, 0.7))))
    per = {"fc0": 0.5, "fc1": 0.7}                       # a dict or quality= is per layer, as before
    for a, b in zip(masks(nc.prune(m, per)), masks(nc.prune(m, per, scope="layer"))):
        assert np.array_equal(a, b)
    q, ql = nc.prune(m, quality=0.5), nc.prune(m, quality=0.5, scope="layer")
    assert all(np.array_equal(a, b) for a, b in zip(masks(q), masks(ql)))


def test_default_scope_loses_no_more_than_per_layer_on_lenet300():
    # docs/defaults_study.md: at 92% with 512 calibration digits, "global" lost 0.3 points on the
    # shipped LeNet-300-100 where "layer" lost 8.9 (fc3's 1,000 weights cannot lose 92%)
    m = nc.load(nc.data.model_path("lenet300"))
    x, y = nc.data.mnist("test", layout="NC")
    xc = nc.data.mnist("train", layout="NC")[0][:512]
    acc = lambda mm: float((mm(x).argmax(1) == y).mean())  # noqa: E731
    default, layer = (acc(nc.prune(m, 0.92, calibration=xc, **kw)) for kw in ({}, {"scope": "layer"}))
    assert default >= layer + 0.02
    assert acc(m) - default <= 0.01


def test_storage_auto_keeps_dense_above_the_threshold():
    m = mlp(2)
    p = nc.prune(m, {"fc0": 0.5, "fc1": 0.9})
    assert type(p["fc0"].layer.weight) is PrunedDenseMatrix and "kept dense" in p["fc0"].layer.describe()
    assert type(p["fc1"].layer.weight) is CSRMatrix and p["fc1"].layer.describe() == "csr 90% (uint16)"
    d = nc.prune(m, 0.9, storage="dense", layers=["fc1"])
    assert type(d["fc1"].layer.weight) is PrunedDenseMatrix and "on request" in d["fc1"].layer.describe()
    x = np.random.default_rng(0).standard_normal((7, 20)).astype(np.float32)
    assert np.allclose(p(x), nc.prune(m, {"fc0": 0.5, "fc1": 0.9}, storage="csr")(x), rtol=1e-5, atol=1e-5)
    assert np.array_equal(m["fc0"].layer.weight.w, mlp(2)["fc0"].layer.weight.w)   # input untouched


def test_sparsity_one_gives_the_bias_and_emptying_otherwise_refused():
    m = mlp(3)
    p = nc.prune(m, {"fc1": 1.0})
    x = np.random.default_rng(1).standard_normal((4, 20)).astype(np.float32)
    hidden = p(x)   # fc1 outputs its bias, so the model output is constant over inputs
    assert np.allclose(hidden, hidden[0], atol=1e-6)
    assert p["fc1"].layer.weight.nnz == 0
    with pytest.raises(CompressionParameterError):
        nc.prune(m, quality=1e9, layers=["fc1"])
    with pytest.raises(CompressionParameterError):
        nc.prune(m, 1.0, scope="global")


@pytest.mark.parametrize("kw", [dict(sparsity=1.5), dict(sparsity=-0.1), dict(sparsity=float("nan")),
                                dict(sparsity=True), dict(sparsity="0.5"), dict(sparsity={"fc0": 2.0}),
                                dict(sparsity=0.5, quality=1.0), dict(),
                                dict(quality=-1.0), dict(quality=float("inf")),
                                dict(sparsity=0.5, layers=["nope"]), dict(sparsity={"nope": 0.5}),
                                dict(sparsity=0.5, layers=["relu0"]), dict(sparsity=0.5, scope="all"),
                                dict(sparsity=0.5, storage="coo"), dict(sparsity=0.5, seed=True),
                                dict(sparsity={"fc0": 0.5}, scope="global"),
                                dict(sparsity={"fc0": 0.5}, layers=["fc0"]),
                                dict(sparsity=0.5, calibration=np.zeros((3, 7), np.float32))])
def test_bad_parameters(kw):
    with pytest.raises(CompressionParameterError):
        nc.prune(mlp(), **kw)


def test_prune_refuses_grouped_convolutions_by_name():
    with pytest.raises(CompressionParameterError):
        nc.prune(convnet(), 0.5, layers=["dw"])
    p = nc.prune(convnet(), 0.5)   # default selection leaves the depthwise layer alone
    assert type(p["dw"].layer.weight).__name__ == "DenseMatrix"


# ----------------------------------------------------------------------------- calibration
@given(seed=st.integers(0, 2**31), density=st.floats(0.0, 1.0), bias=st.booleans())
def test_refit_never_increases_the_reconstruction_error(seed, density, bias):
    rng = np.random.default_rng(seed)
    n, k, o = int(rng.integers(3, 40)), int(rng.integers(1, 12)), int(rng.integers(1, 6))
    x = rng.standard_normal((n, k)).astype(np.float32) * rng.choice([0.0, 1.0, 100.0], k).astype(np.float32)
    w_ref = rng.standard_normal((o, k)).astype(np.float32)
    b_ref = rng.standard_normal(o).astype(np.float32) if bias else None
    y = x @ w_ref.T
    mask = rng.random((o, k)) < density
    layer = nc.Dense(np.where(mask, w_ref, 0), b_ref)
    new = pruning.refit_rows(layer, mask, pruning.gram_of(x, y), b_ref)
    w1 = new.weight.to_dense()
    assert not (w1[~mask]).any()                                         # support kept
    target = y.astype(np.float64) + (0 if b_ref is None else b_ref)
    err = lambda lay: ((lay.forward(x).astype(np.float64) - target) ** 2).sum(axis=0)  # noqa: E731
    assert np.all(err(new) <= err(layer) * (1 + 1e-5) + 1e-4)


def test_calibration_recovers_accuracy_on_real_digits():
    m = nc.load(nc.data.model_path("lenet300"))
    x, y = nc.data.mnist("test", layout="NC")
    xc, _ = nc.data.mnist("train", layout="NC")
    sp = {"fc1": 0.9, "fc2": 0.9, "fc3": 0.5}
    plain = nc.prune(m, sp)
    cal = nc.prune(m, sp, calibration=xc[:256])
    acc = lambda mm: (mm(x[:500]).argmax(1) == y[:500]).mean()  # noqa: E731
    assert acc(cal) > acc(plain) + 0.02
    for n, s in sp.items():   # same number of weights removed (calibration may zero more: dead inputs)
        w = cal[n].layer.weight.to_dense()
        assert np.count_nonzero(w) <= w.size - round(s * w.size)


# ----------------------------------------------------------------------------- structured
def test_structured_removes_zero_filters_with_identical_outputs():
    m = convnet(bn=True)
    c1 = m["c1"].layer
    w = c1.weight.w.copy()
    w[[1, 4]] = 0
    b = c1.bias.copy()
    b[[1, 4]] = 0
    bn = m["bn"].layer
    mean, beta = bn.mean.copy(), bn.beta.copy()
    mean[[1, 4]] = 0
    beta[[1, 4]] = 0   # the zero channels stay zero through BatchNorm
    dw = m["dw"].layer
    dwb = dw.bias.copy()
    dwb[[1, 4]] = 0
    m = m.replace_layers({"c1": c1.replace(weight=w, bias=b), "bn": bn.replace(mean=mean, beta=beta),
                          "dw": dw.replace(bias=dwb)})
    p = nc.prune_filters(m, {"c1": 2 / 6})
    assert p["c1"].layer.weight.shape == (4, 18) and p["bn"].layer.mean.shape == (4,)
    assert p["dw"].layer.groups == 4 and p["c2"].layer.in_channels == 4
    x = np.random.default_rng(0).standard_normal((3, 2, 6, 6)).astype(np.float32)
    assert np.allclose(p(x), m(x), rtol=1e-5, atol=1e-5)
    q = nc.prune_filters(m, {"c2": 0.5}, criterion="l2")   # through maxpool and flatten into the dense
    assert q["c2"].layer.weight.n_out == 2 and q["fc"].layer.weight.n_in == 8
    assert q(x).shape == (3, 3)


def test_structured_flatten_columns_match_dropped_channels():
    m = convnet(bn=False)
    c2 = m["c2"].layer
    w = c2.weight.w.copy()
    w[2] = 0
    m = m.replace_layers({"c2": c2.replace(weight=w, bias=np.where(np.arange(4) == 2, 0, c2.bias).astype(np.float32))})
    q = nc.prune_filters(m, {"c2": 0.25})
    x = np.random.default_rng(2).standard_normal((2, 2, 6, 6)).astype(np.float32)
    assert np.allclose(q(x), m(x), rtol=1e-5, atol=1e-5)


def test_structured_add_groups_pruned_together_or_left_alone():
    m = nc.load(nc.data.model_path("resnet_small"))
    p = nc.prune_filters(m, 0.25)
    x, _ = nc.data.mnist("test")
    assert p(x[:4]).shape == (4, 10)
    # the stem is tied to layer1's residual by an Add: both lose the same channels
    assert p["conv1"].layer.weight.n_out == p["layer1.conv2"].layer.weight.n_out == 12
    # layer3's channels reach global pooling and the classifier: pruned together with the downsample
    assert p["layer3.conv2"].layer.weight.n_out == p["layer3.downsample.0"].layer.weight.n_out
    assert p.nbytes < m.nbytes and p.macs < m.macs


def test_structured_calibration_and_bad_parameters():
    m = nc.load(nc.data.model_path("lenet5"))
    x, y = nc.data.mnist("test")
    xc, _ = nc.data.mnist("train")
    plain = nc.prune_filters(m, {"features.2": 0.5})
    cal = nc.prune_filters(m, {"features.2": 0.5}, calibration=xc[:256])
    assert cal["classifier.0"].layer.weight.n_in == 400
    acc = lambda mm: (mm(x[:500]).argmax(1) == y[:500]).mean()  # noqa: E731
    assert acc(cal) >= acc(plain) - 0.01
    for kw in (dict(ratio=1.0), dict(ratio=-0.1), dict(ratio=float("nan")), dict(),
               dict(ratio=0.5, criterion="l3"), dict(ratio=0.5, layers=["classifier.2"]),
               dict(ratio=0.5, layers=["missing"]), dict(ratio=0.99, layers=["features.0"])):
        with pytest.raises(CompressionParameterError):
            nc.prune_filters(m, **kw)


# ----------------------------------------------------------------------------- sensitivity
def test_sensitivity_table_and_budget():
    m = nc.load(nc.data.model_path("lenet300"))
    x, y = nc.data.mnist("test", layout="NC")
    x, y = x[:300], y[:300]
    t = nc.sensitivity(m, x, y, sparsities=(0.5, 0.9, 0.99))
    assert t.layers == ("fc1", "fc2", "fc3") and t.scores.shape == (3, 3) and t.metric == "accuracy"
    assert t.baseline == float(np.mean(m(x).argmax(1) == y))
    assert "fc1" in repr(t) and "99%" in repr(t)
    assert t.scores[0, 0] >= t.scores[0, 2] - 0.02   # more pruning hurts (or at least not much better)
    agree = nc.sensitivity(m, x, sparsities=[0.0], layers=["fc3"])
    assert agree.metric == "agreement" and agree.scores[0, 0] == 1.0 == agree.baseline
    budget = nc.sparsities_for_budget(m, x, y, max_drop=0.02, sparsities=(0.5, 0.9, 0.99), table=t)
    assert set(budget) == {"fc1", "fc2", "fc3"}
    got = np.mean(nc.prune(m, budget, storage="dense")(x).argmax(1) == y)
    assert t.baseline - got <= 0.02 and max(budget.values()) >= 0.5
    for kw in (dict(sparsities=(1.5,)), dict(sparsities="0.5"), dict(layers=["nope"]), dict(sparsities=())):
        with pytest.raises(CompressionParameterError):
            nc.sensitivity(m, x, y, **kw)
    with pytest.raises(CompressionParameterError):
        nc.sensitivity(m, x, y[:5])
    with pytest.raises(CompressionParameterError):
        nc.sparsities_for_budget(m, x, y, max_drop=float("nan"))
