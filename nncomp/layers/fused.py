"""Plan-only fused layers: a producer's prepared step followed by in-place epilogues.

A model's plan asks each node whose output has one reader to ``fuse`` that reader
(:meth:`nncomp.layers.base.Layer.fuse`). Producers that allocate their output (Dense, Conv2D)
answer with a :class:`Fused` layer: their step, then the reader's :meth:`~Layer.epilogue` applied in
place (ReLU, batch norm's affine map, a residual add), so each activation is written once and no
temporary is allocated. A convolution also absorbs a max-pool into its kernel (see
``nncomp/layers/conv.py``); an epilogue that is monotone (ReLU) commutes with that pool, so
``conv -> relu -> maxpool`` still runs as one fused kernel. Fused layers never reach a file.
"""
from .base import Layer


def absorb_epilogue(producer, successor, n, shapes, head=None):
    """``producer`` then ``successor`` as one :class:`Fused` layer, when ``successor`` has an
    in-place epilogue for the producer's output; else None. ``head`` is the producer's prepared step
    (default ``producer.prepare(n, *shapes)``)."""
    out = producer.shape_of(*shapes)
    op = successor.epilogue(n, out)
    if op is None:
        return None
    step = head if head is not None else producer.prepare(n, *shapes)
    return Fused(producer, shapes, step, out, ((op, successor.n_inputs - 1, successor),))


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
        if len(ops) == 1 and ops[0][1] == 0:
            op = ops[0][0]

            def one(*xs):
                y = head(*xs)
                op(y)
                return y
            return one

        def step(*xs):
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
