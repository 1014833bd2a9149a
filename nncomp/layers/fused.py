"""Plan-only fused layers: a producer's prepared step followed by in-place epilogues.

A model's plan asks each node whose output has one reader to ``fuse`` that reader
(:meth:`nncomp.layers.base.Layer.fuse`). Producers that allocate their output (Dense, Conv2D)
answer with a :class:`Fused` layer: their step, then the reader's :meth:`~Layer.epilogue` applied in
place (ReLU, batch norm's affine map, a residual add), so each activation is written once and no
temporary is allocated. A convolution also absorbs a max-pool into its kernel (see
``nncomp/layers/conv.py``); an epilogue that is monotone (ReLU) commutes with that pool, so
``conv -> relu -> maxpool`` still runs as one fused kernel. Fused layers never reach a file.
"""
import math

import numpy as np

from ..kernels import _jit
from ..kernels.epilogue import (CHAIN_ACT, CHAIN_ADD, CHAIN_AFFINE, CHAIN_CLIP, activation_rows, activation_rows_parallel,
                                chain_rows, chain_rows_parallel, epilogue_rows, epilogue_rows_parallel)
from .base import Layer
from .conv_chain import with_post

# The order the epilogue kernel applies its parts in; ops in another order run one by one.
_ORDER = {"affine": 0, "add": 1, "clip": 2, "act": 3}
_NONE = np.zeros(0, np.float32)


def epilogue_args(ops):
    """``(scale, shift, add, lo, hi, act)`` for ``ops`` (affine map, residual add, clip, then an
    activation, each at most once and in that order: what the epilogue kernels compute), or None
    when they do not fit. An op's ``spec`` names its part: ``("affine", scale, shift)``, ``("add",)``,
    ``("clip", lo, hi)``, ``("act", code, alpha, beta)`` (codes of nncomp/kernels/epilogue.py);
    ``act`` is ``(code, alpha, beta)`` or None."""
    specs = [getattr(op, "spec", None) for op, _, _ in ops]
    if not specs or None in specs or [_ORDER[s[0]] for s in specs] != sorted({_ORDER[s[0]] for s in specs}):
        return None
    parts = {s[0]: s for s in specs}
    scale, shift = parts["affine"][1:] if "affine" in parts else (_NONE, _NONE)
    lo, hi = (np.float32(v) for v in parts["clip"][1:]) if "clip" in parts else (np.float32(-np.inf), np.float32(np.inf))
    act = None
    if "act" in parts:
        act = (int(parts["act"][1]), np.float32(parts["act"][2]), np.float32(parts["act"][3]))
    return scale, shift, "add" in parts, lo, hi, act


def compiled_epilogue(ops, n, out_shape):
    """One kernel call ``(y, *extra) -> None`` doing ``ops`` in one pass (see :func:`epilogue_args`),
    then an activation in a second kernel, or None when they do not fit that form."""
    args = epilogue_args(ops)
    if args is None:
        return None
    scale, shift, add, lo, hi, act = args
    c = out_shape[-1]
    rows = n * math.prod(out_shape[:-1])
    kern = _jit.pick((epilogue_rows, epilogue_rows_parallel), rows * c)
    empty = np.zeros((0, c), np.float32)
    act_kern = _jit.pick((activation_rows, activation_rows_parallel), rows * c) if act else None
    if act and len(ops) == 1:
        only_act = lambda y: act_kern(y.reshape(rows, c), *act)  # noqa: E731
        only_act.parallel = act_kern is activation_rows_parallel
        return only_act

    def one_pass(y, res=None):
        y2 = y.reshape(rows, c)
        kern(y2, scale, shift, empty if res is None else np.ascontiguousarray(res).reshape(rows, c), lo, hi)
        if act_kern is not None:
            act_kern(y2, *act)
    one_pass.parallel = kern is epilogue_rows_parallel
    return one_pass


def chained_epilogue(ops, n, out_shape):
    """One kernel call ``(y[, res]) -> None`` doing ``ops`` in their own order (any order, at most
    one residual add), each as the epilogue kernels compute it, in one pass over ``y``; None when
    an op has no ``spec``."""
    specs = [getattr(op, "spec", None) for op, _, _ in ops]
    if not specs or None in specs or sum(s[0] == "add" for s in specs) > 1:
        return None
    c = out_shape[-1]
    rows = n * math.prod(out_shape[:-1])
    codes = {"affine": CHAIN_AFFINE, "add": CHAIN_ADD, "clip": CHAIN_CLIP, "act": CHAIN_ACT}
    kinds = np.array([codes[sp[0]] for sp in specs], np.int64)
    params = np.zeros((len(specs), 3), np.float32)
    vecs = np.zeros((len(specs), 2, c), np.float32)
    for j, sp in enumerate(specs):
        if sp[0] == "affine":
            vecs[j] = np.broadcast_to(sp[1], (c,)), np.broadcast_to(sp[2], (c,))
        elif sp[0] in ("clip", "act"):
            params[j, :len(sp) - 1] = sp[1:]
    kern = _jit.pick((chain_rows, chain_rows_parallel), rows * c * len(specs))
    empty = np.zeros((0, c), np.float32)

    def one_pass(y, res=None):
        kern(y.reshape(rows, c), kinds, params, vecs, empty if res is None else np.ascontiguousarray(res).reshape(rows, c))
    return one_pass


def absorb_epilogue(producer, successor, n, shapes):
    """``producer`` then ``successor`` as one :class:`Fused` layer, when ``successor`` has an
    in-place epilogue for the producer's output; else None."""
    out = producer.shape_of(*shapes)
    op = successor.epilogue(n, out)
    if op is None:
        return None
    return Fused(producer, shapes, producer.prepare(n, *shapes), out, ((op, successor.n_inputs - 1, successor),))


class Fused(Layer):
    """``head`` (a prepared step of ``base`` over inputs of ``shapes``) then in-place ``ops``.

    ``ops`` holds ``(op, n_extra, layer)``: ``op(y, *extra)`` reads ``n_extra`` more inputs, which
    follow the base layer's inputs in the fused node's input list.
    """

    kind = "fused"

    def __init__(self, base, shapes, head, out_shape, ops=(), pool=None):
        self.base, self.shapes, self.head, self.out_shape, self.ops = base, tuple(shapes), head, out_shape, ops
        self.pool = pool        # a pooling layer the head's kernel already computes
        self.n_inputs = len(self.shapes) + sum(m for _, m, _ in ops)

    @property
    def parts(self):
        """The layers this step computes, in order (a pool inside the kernel after the base)."""
        pool = (self.pool,) if self.pool is not None else ()
        return (self.base,) + pool + tuple(layer for _, _, layer in self.ops)

    @property
    def monotone(self):
        return all(layer.monotone for _, _, layer in self.ops)

    def output_shape(self, *shapes):
        return self.out_shape

    def prepare(self, n, *shapes):
        head, ops, k = self.head, self.ops, len(self.shapes)
        if not ops:
            return head
        args = epilogue_args(ops) if self.pool is None else None
        in_kernel = args and self.base.prepare_epilogue(n, *self.shapes, epilogue=args)
        if in_kernel:      # the producer's kernel applies the epilogue as it stores its output
            return in_kernel
        one_pass = compiled_epilogue(ops, n, self.out_shape) or chained_epilogue(ops, n, self.out_shape)
        if one_pass is not None:
            def fused(*xs):
                y = head(*xs[:k])
                if not y.flags.c_contiguous:        # a transposed product: the kernel needs rows
                    y = np.ascontiguousarray(y)
                one_pass(y, *xs[k:])
                return y
            fused.blas = getattr(head, "blas", True)
            chain = getattr(head, "chain", None)
            if chain is not None and args is None and self.pool is not None:
                args = epilogue_args(ops)
                if args is not None:
                    fused.chain = with_post(chain, args, getattr(one_pass, "parallel", False))
            return fused

        def step(*xs):      # epilogues the kernel cannot take in its order: one by one
            y = head(*xs[:k])
            at = k
            for op, m, _ in ops:
                op(y, *xs[at:at + m])
                at += m
            return y
        return step

    def fuse(self, successor, n, *shapes):
        op = successor.epilogue(n, self.out_shape)
        if op is not None:
            return Fused(self.base, self.shapes, self.head, self.out_shape,
                         self.ops + ((op, successor.n_inputs - 1, successor),), self.pool)
        if self.pool is None and self.monotone and all(m == 0 for _, m, _ in self.ops):
            # a monotone epilogue commutes with a pool: pool inside the base's kernel, then the epilogue
            inner = self.base.fuse(successor, n, *self.shapes)
            if isinstance(inner, Fused) and inner.pool is not None and not inner.ops:
                return Fused(inner.base, inner.shapes, inner.head, inner.out_shape, self.ops, inner.pool)
        return None

    def describe(self):
        return "+".join(layer.kind for layer in self.parts)

    def __repr__(self):
        return f"Fused({self.describe()})"
