"""Keras HDF5 models: the legacy full model (``model.save("m.h5")``) and Keras 3 ``.weights.h5``.

The architecture comes from a Keras ``model_config`` (the legacy file's root attribute, a JSON string
or dict such as ``model.to_json()``, or the ``model_config`` of another legacy file), or from an
nncomp :class:`~nncomp.model.Model` built in Python whose node names are the Keras layer names.
Nothing in a file is ever executed: a layer class outside the supported list (``Lambda``, custom
or registered classes, any ``module`` outside ``keras.layers``) is an ``UnsupportedModelError``.

Here: the two file formats, the ``architecture=`` argument, matching weight groups to layers (read
through the safe reader), filling an nncomp Model's weights, and the walk over a ``model_config``'s
graph. Each layer config's translation, and the conversion of Keras weights to nncomp's layout
(docs/sources.md), are in :mod:`nncomp.io.keras_config`. The model takes NHWC (or NC) inputs and
returns Keras's numbers.
"""
import heapq
import json
import math
import os
import re
import stat

import numpy as np

from ..errors import CorruptModelFileError, ModelFileError, NncompError, UnsupportedModelError
from ..layers import BatchNorm, Conv2D, Dense
from ..matrices import DenseMatrix
from ..model import INPUT, Model
from .keras_config import MODEL_CLASSES, bn_arrays, conv_weight, expect, LayerTranslator
from .keras_config import supported_layers  # noqa: F401  (its import path before the split)
from .safe import MAX_ATTR_BYTES, SafeFile, guard, parse_json

__all__ = ["load_keras"]


def load_keras(f, architecture=None, input_shape=None):
    """Load a Keras legacy ``.h5`` or Keras 3 ``.weights.h5`` from an open SafeFile.

    Parameters
    ----------
    f : SafeFile
    architecture : dict, str, path-like or Model, optional
        Required for a ``.weights.h5``; for a legacy ``.h5`` it replaces the stored ``model_config``.
        A ``model_config`` dict or JSON string, a path to a legacy ``.h5`` or a ``.json`` file, or an
        nncomp Model whose Dense/Conv2D/BatchNorm nodes are named like the Keras layers.
    input_shape : tuple of int, optional
        The per-sample size (h, w, c) for an input whose height and width Keras leaves free.
    """
    arch = _architecture(architecture, f)
    try:
        legacy = "model_weights" in f.file
        src = _LegacyWeights(f) if legacy else _VarsWeights(f)
        if isinstance(arch, Model):
            model = _fill(arch, src, f.path)
        else:
            if arch is None:
                if not legacy:
                    raise UnsupportedModelError(f.path, None, "a Keras .weights.h5 holds no architecture: pass "
                                                "architecture= (the legacy .h5, model.to_json(), or an nncomp Model)")
                arch = f.json_attr("/", "model_config", allow_vlen=True)
                if arch is None:
                    raise CorruptModelFileError(f.path, "/@model_config", "Keras file without a model_config")
            model = _Builder(f, src, input_shape).build(arch)
        src.finish()
        return model
    except ModelFileError:
        raise
    except NncompError as e:
        raise CorruptModelFileError(f.path, None, str(e)) from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as e:
        raise CorruptModelFileError(f.path, "model_config", f"malformed Keras model_config "
                                    f"({type(e).__name__}: {e})") from None


def _architecture(arch, f):
    """The architecture argument as None, a Model, or a parsed model_config."""
    if arch is None or isinstance(arch, Model):
        return arch
    if isinstance(arch, dict):
        try:
            text = json.dumps(arch)
        except (TypeError, ValueError, RecursionError) as e:
            raise NncompError(f"architecture dict is not JSON ({e}); pass model.to_json()") from None
        return parse_json(text, None, "architecture")
    if isinstance(arch, bytes):
        arch = arch.decode("utf-8", "replace")
    if isinstance(arch, str) and arch.lstrip().startswith("{"):
        return parse_json(arch, None, "architecture")
    if not isinstance(arch, (str, os.PathLike)):
        raise NncompError("architecture must be a Keras model_config (dict or JSON string), the path of a Keras "
                          f".h5 or .json file, or an nncomp Model; got {type(arch).__name__}")
    path = os.fspath(arch)
    if path.lower().endswith(".json"):
        _check_text_file(path)
        with guard(path, None, "cannot read"), open(path, "rb") as fh:
            text = fh.read(MAX_ATTR_BYTES + 1)
        return parse_json(text, path, None)
    with SafeFile(path, max_tensor_bytes=f.max_tensor_bytes, max_file_bytes=f.max_file_bytes) as a:
        cfg = a.json_attr("/", "model_config", allow_vlen=True)
    if cfg is None:
        raise UnsupportedModelError(path, "/@model_config", "the architecture file holds no Keras model_config")
    return cfg


def _check_text_file(path):
    try:
        st = os.stat(path)
    except (OSError, ValueError) as e:
        raise ModelFileError(path, None, f"cannot stat file ({getattr(e, 'strerror', None) or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelFileError(path, None, "not a regular file (directories, FIFOs and devices are refused)")


# ------------------------------------------------------------------------------------ weights
class _LegacyWeights:
    """``/model_weights/<layer>/.../<role>`` datasets of a legacy file, found by walking the file.

    Only the file's own dataset list is used (no ``layer_names``/``weight_names`` attributes: fewer
    variable-length strings read); roles come from the last path component (``kernel``, ``kernel:0``).
    """

    def __init__(self, f):
        self.f, self.index, self.used = f, {}, set()
        for key in f.datasets:
            if not key.startswith("/model_weights/"):
                continue  # optimizer state and anything else outside the model weights
            parts = key[len("/model_weights/"):].split("/")
            if len(parts) < 2:
                raise CorruptModelFileError(f.path, key, "dataset directly under /model_weights belongs to no layer")
            role = re.sub(r":\d+$", "", parts[-1])
            layer = self.index.setdefault(parts[0], {})
            if role in layer:
                raise CorruptModelFileError(f.path, key, f"layer {parts[0]!r} holds two '{role}' weights "
                                            f"({layer[role]} and {key})")
            layer[role] = key

    def bind(self, layers):
        pass

    def get(self, name, roles, optional=()):
        have = dict(self.index.get(name, {}))
        if "kernel" in roles and "kernel" not in have and "depthwise_kernel" in have:
            have["kernel"] = have.pop("depthwise_kernel")  # Keras 2 DepthwiseConv2D
        extra = sorted(set(have) - set(roles))
        missing = [r for r in roles if r not in have and r not in optional]
        if extra or missing:
            raise CorruptModelFileError(self.f.path, f"/model_weights/{name}", f"layer {name!r} has weights "
                                        f"{sorted(have)}; the architecture needs {list(roles)}")
        self.used.add(name)
        return {r: self.f.read(have[r]) for r in roles if r in have}

    def finish(self):
        extra = sorted(set(self.index) - self.used)
        if extra:
            raise CorruptModelFileError(self.f.path, "/model_weights", f"weights of layers {extra} that the "
                                        "architecture does not have")


def _snake(name):
    """Keras' ``naming.to_snake_case``: the group name a layer class gets in a ``.weights.h5``."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


class _VarsWeights:
    """``/layers/<group>/vars/0, 1, ...`` of a Keras 3 ``.weights.h5``, in ``layer.weights`` order.

    Groups are named after the layer class in snake case, numbered in model order (``conv2d_1``).
    With a Keras architecture they are matched exactly as Keras matches them, from the class names
    and the order, reading no attribute at all. With an nncomp Model (no Keras classes) the layer name
    is read from ``vars@name`` (a variable-length string, size-checked).
    """

    def __init__(self, f):
        self.f, self.used, groups = f, set(), {}
        for key in f.datasets:
            if not key.startswith("/layers/"):
                continue  # /optimizer, /vars (the model's own), metrics
            parts = key.split("/")
            if len(parts) != 5 or parts[3] != "vars" or not parts[4].isdigit():
                raise UnsupportedModelError(f.path, key, "unexpected weight layout (nested layers or models "
                                            "are not supported)")
            groups.setdefault(parts[2], {})[int(parts[4])] = key
        for g, d in groups.items():
            if sorted(d) != list(range(len(d))):
                raise CorruptModelFileError(f.path, f"/layers/{g}/vars", f"vars are numbered {sorted(d)}, not 0..n-1")
        self.groups = {g: [d[i] for i in range(len(d))] for g, d in groups.items()}

    def bind(self, layers):
        """Map layer names to groups; ``layers`` is [(name, class)] in ``model.layers`` order, or None."""
        names, count = {}, {}
        if layers is not None:
            for name, cls in layers:
                g = _snake(cls)
                count[g] = count.get(g, -1) + 1
                names[name] = g if count[g] == 0 else f"{g}_{count[g]}"
        else:
            for g in sorted(self.groups):
                n = self.f.attr(f"/layers/{g}/vars", "name", allow_vlen=True, max_bytes=4096)
                if n is None:
                    raise UnsupportedModelError(self.f.path, f"/layers/{g}/vars", "a group without a layer @name "
                                                "can only be matched with a Keras model_config architecture")
                if names.setdefault(n, g) != g:
                    raise CorruptModelFileError(self.f.path, f"/layers/{g}/vars@name", f"two groups name layer {n!r}")
        self.by_name = names

    def get(self, name, roles, optional=()):
        g = self.by_name.get(name)
        if g not in self.groups:
            raise CorruptModelFileError(self.f.path, "/layers", f"no weights for layer {name!r}")
        paths = self.groups[g]
        if len(paths) != len(roles):
            roles = [r for r in roles if r not in optional]
            if not optional or len(paths) != len(roles):
                raise CorruptModelFileError(self.f.path, f"/layers/{g}/vars", f"layer {name!r} has {len(paths)} "
                                            f"weights; the architecture needs {list(roles)}")
        self.used.add(g)
        return {r: self.f.read(p) for r, p in zip(roles, paths)}

    def finish(self):
        extra = sorted(set(self.groups) - self.used)
        if extra:
            raise CorruptModelFileError(self.f.path, "/layers", f"weights in groups {extra} that the "
                                        "architecture does not use")


def _fill(model, src, path):
    """Put the file's weights into an nncomp Model built in Python, matched by node name."""
    src.bind(None)
    new = {}
    for node in model.nodes:
        layer, name = node.layer, node.name
        if isinstance(layer, (Dense, Conv2D)):
            roles = ["kernel"] + (["bias"] if layer.bias is not None else [])
            w = src.get(name, roles)
            n_out, n_in = layer.weight.shape
            if isinstance(layer, Dense):
                mat = expect(w["kernel"], (n_in, n_out), path, name, "kernel").T
            else:
                mat = conv_weight(w["kernel"], layer.kernel_size, layer.in_channels, n_out, layer.groups,
                                   layer.depthwise, path, name)
            bias = expect(w.get("bias"), (n_out,), path, name, "bias")
            new[name] = layer.replace(weight=DenseMatrix(np.ascontiguousarray(mat)), bias=bias)
        elif isinstance(layer, BatchNorm):
            w = src.get(name, ["gamma", "beta", "moving_mean", "moving_variance"], optional=("gamma", "beta"))
            gamma, beta, mean, var = bn_arrays(w, layer.mean.shape[0], path, name)
            new[name] = layer.replace(gamma=gamma, beta=beta, mean=mean, var=var)
    try:
        return model.replace_layers(new)
    except NncompError as e:
        raise CorruptModelFileError(path, None, str(e)) from None


# ------------------------------------------------------------------------------------ graph
class _Builder(LayerTranslator):
    """A Keras ``model_config`` -> Model: the Sequential or Functional wiring, in topological order, of
    the nodes that :class:`~nncomp.io.keras_config.LayerTranslator` translates layer by layer."""

    def build(self, cfg):
        if not isinstance(cfg, dict):
            raise CorruptModelFileError(self.path, "model_config", "model_config is not a JSON object")
        cls, module = cfg.get("class_name"), cfg.get("module")
        if cls not in MODEL_CLASSES or (module is not None and not str(module).startswith("keras")):
            raise UnsupportedModelError(self.path, "model_config", f"model class {cls!r} (module {module!r}) is not "
                                        "supported: only Sequential and Functional models (subclassed models "
                                        "carry code, which nncomp never runs)")
        inner = cfg.get("config")
        if cls == "Sequential" and isinstance(inner, list):
            inner = {"layers": inner}  # Keras < 2.2.3
        layers = inner["layers"]
        if not isinstance(layers, list) or not layers:
            raise CorruptModelFileError(self.path, "model_config", "model_config has no layers")
        entries = [self._entry(e) for e in layers]
        if len({e[0] for e in entries}) != len(entries):
            raise CorruptModelFileError(self.path, "model_config", "two layers share one name")
        if cls == "Sequential":
            outputs, shape = self._sequential(inner, entries)
        else:
            outputs, shape = self._functional(inner, entries)
        layout = {3: "NHWC", 2: "N*", 1: "NC"}[len(shape)]
        try:
            model = Model(self.nodes, input_shape=shape, input_layout=layout, outputs=outputs,
                          name=str(inner.get("name", "keras")))
        except NncompError as e:
            raise CorruptModelFileError(self.path, "model_config", str(e)) from None
        for name, s in model.shapes.items():
            if math.prod(s) * 4 > self.f.max_tensor_bytes:
                raise CorruptModelFileError(self.path, name, f"layer output {s} exceeds max_tensor_bytes per sample")
        return model

    def _sequential(self, inner, entries):
        if entries[0][1] == "InputLayer":
            shape = self._input_shape(entries[0][2])
            entries = entries[1:]
        else:
            first = entries[0][2]
            shape = self._input_shape({"batch_shape": inner.get("build_input_shape") or
                                       first.get("batch_input_shape", first.get("batch_shape"))})
        self.src.bind([(n, cls) for n, cls, _, _ in entries])
        prev = INPUT
        for name, cls, c, _ in entries:
            if cls == "InputLayer":
                raise CorruptModelFileError(self.path, name, "InputLayer inside a Sequential model")
            prev = self._layer(name, cls, c, [prev])
        return [prev], shape

    def _refs(self, v, what):
        refs = [v] if _is_ref(v) else v
        if not isinstance(refs, list) or not refs or not all(_is_ref(r) for r in refs):
            raise CorruptModelFileError(self.path, "model_config", f"malformed {what} {v!r:.80}")
        for r in refs:
            if r[1] or r[2]:
                raise UnsupportedModelError(self.path, r[0], "shared layers and multi-output layers are not supported")
        return [r[0] for r in refs]

    def _functional(self, inner, entries):
        by_name = {n: (cls, c, e) for n, cls, c, e in entries}
        inputs = self._refs(inner["input_layers"], "input_layers")
        if len(inputs) != 1 or by_name.get(inputs[0], ("",))[0] != "InputLayer":
            raise UnsupportedModelError(self.path, "model_config", f"inputs {inputs}: nncomp models take one input")
        shape = self._input_shape(by_name[inputs[0]][1])
        deps = {}
        for name, cls, c, e in entries:
            nodes = e.get("inbound_nodes") or []
            if len(nodes) > 1:
                raise UnsupportedModelError(self.path, name, f"layer {name!r} is called {len(nodes)} times "
                                            "(shared layers are not supported)")
            args = nodes[0].get("args", []) if nodes and isinstance(nodes[0], dict) else nodes
            if nodes and isinstance(nodes[0], dict) and _tensors(nodes[0].get("kwargs", {}), []):
                raise UnsupportedModelError(self.path, name, "tensors passed as keyword arguments are not supported")
            deps[name] = self._refs(_tensors(args, []), "inbound_nodes") if args else []
            if cls == "InputLayer" and name != inputs[0]:
                raise UnsupportedModelError(self.path, name, "models with several inputs are not supported")
            if cls != "InputLayer" and not deps[name]:
                raise CorruptModelFileError(self.path, name, f"layer {name!r} has no inputs")
            for d in deps[name]:
                if d not in by_name:
                    raise CorruptModelFileError(self.path, name, f"layer {name!r} reads unknown layer {d!r}")
        self.src.bind([(n, cls) for n, cls, _, _ in entries])
        out = {inputs[0]: INPUT}
        for n in _topological([n for n, *_ in entries if n != inputs[0]], deps, inputs[0], self.path):
            out[n] = self._layer(n, by_name[n][0], by_name[n][1], [out[d] for d in deps[n]])
        outputs = self._refs(inner["output_layers"], "output_layers")
        if any(o not in out for o in outputs):
            raise CorruptModelFileError(self.path, "model_config", f"outputs {outputs} are not layers")
        return [out[o] for o in outputs], shape

def _is_ref(v):
    return (isinstance(v, list) and len(v) in (3, 4) and isinstance(v[0], str)
            and all(type(i) is int for i in v[1:3]))


def _tensors(obj, out):
    """Collect (layer name) of every Keras tensor reference in an inbound-node structure."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            ref = (obj.get("config") or {}).get("keras_history")
            if not _is_ref(ref):
                raise NncompError(f"malformed keras_history {ref!r}")
            out.append(ref)
        else:
            for v in obj.values():
                _tensors(v, out)
    elif isinstance(obj, list):
        if _is_ref(obj):
            out.append(obj)
        else:
            for v in obj:
                _tensors(v, out)
    return out


def _topological(names, deps, source, path):
    """``names`` in dependency order, ties in config order (Kahn's algorithm, linear time)."""
    order = {n: i for i, n in enumerate(names)}
    waiting = {n: len(set(deps[n]) - {source}) for n in names}
    users = {}
    for n in names:
        for d in set(deps[n]) - {source}:
            users.setdefault(d, []).append(n)
    ready = [order[n] for n in names if waiting[n] == 0]
    heapq.heapify(ready)
    done = []
    while ready:
        n = names[heapq.heappop(ready)]
        done.append(n)
        for u in users.get(n, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, order[u])
    if len(done) != len(names):
        stuck = [n for n in names if waiting[n]][:5]
        raise CorruptModelFileError(path, "model_config", f"layers {stuck} form a cycle")
    return done
