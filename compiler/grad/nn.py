"""Gradient rules of the network ops other than convolution: matrix products, softmax and
pooling."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dlspec.compiler.grad.common import rank, sizes, sum_to, unbroadcast
from dlspec.compiler.grad.conv import conv_transpose, explicit_pads
from dlspec.compiler.grad.table import Grads, Node, rule
from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op
from dlspec.spec.errors import CompileError


def _swap_last(x: Value) -> Value:
    r = x.rank
    return op.Transpose(x, list(range(r - 2)) + [r - 1, r - 2])


@rule("MatMul")
def _matmul(n: Node, g: Value) -> Grads:
    (a, b), y = n.inputs, n.outputs[0]
    if a.shape is None or b.shape is None or y.shape is None:
        raise CompileError("the MatMul gradient needs the ranks of its operands and output")
    if a.rank >= 2 and b.rank >= 2:
        return [unbroadcast(g @ _swap_last(b), a), unbroadcast(_swap_last(a) @ g, b)]  # G B^T, A^T G
    # a vector operand is a matrix of one row (a) or one column (b) whose axis the output drops
    row, col = a.rank == 1, b.rank == 1
    batch = list(y.shape[: y.rank - (not row) - (not col)])
    nb = len(batch)
    a2 = op.Unsqueeze(a, [0]) if row else a
    b2 = op.Unsqueeze(b, [-1]) if col else b
    g2 = op.Unsqueeze(g, [nb] * row + [nb + 1] * col)  # [batch, M or 1, N or 1]
    da = sum_to((g2 @ _swap_last(b2)).with_shape(tuple(batch) + a2.dims[-2:]), a2.dims)
    db = sum_to((_swap_last(a2) @ g2).with_shape(tuple(batch) + b2.dims[-2:]), b2.dims)
    return [op.Squeeze(da, [0]) if row else da, op.Squeeze(db, [-1]) if col else db]


@rule("Gemm")
def _gemm(n: Node, g: Value) -> Grads:
    # Y = alpha op(A) op(B) + beta C: d op(A) = alpha G op(B)^T, d op(B) = alpha op(A)^T G, with the
    # transposes folded into Gemm's flags
    a, b = n.inputs[:2]
    alpha, beta, ta, tb = n.f("alpha"), n.f("beta"), n.i("transA"), n.i("transB")
    da = op.Gemm(b, g, alpha=alpha, transA=tb, transB=1) if ta else \
        op.Gemm(g, b, alpha=alpha, transB=0 if tb else 1)
    db = op.Gemm(g, a, alpha=alpha, transA=1, transB=ta) if tb else \
        op.Gemm(a, g, alpha=alpha, transA=0 if ta else 1)
    c = n.input(2)
    if c is None:
        return [da, db]
    return [da, db, unbroadcast(g if beta == 1.0 else g * beta, c)]


@rule("Softmax")
def _softmax(n: Node, g: Value) -> Grads:
    y = n.outputs[0]  # d softmax = y * (g - sum(g * y))
    return [y * (g - op.ReduceSum(g * y, [n.i("axis")], keepdims=1))]


@rule("LogSoftmax")
def _log_softmax(n: Node, g: Value) -> Grads:
    y = n.outputs[0]  # d log_softmax = g - softmax * sum(g)
    return [g - op.Exp(y) * op.ReduceSum(g, [n.i("axis")], keepdims=1)]


@rule("GlobalAveragePool")
def _gap(n: Node, g: Value) -> Grads:
    x = n.inputs[0]
    count = math.prod(sizes(x, "GlobalAveragePool", list(range(2, rank(x, "GlobalAveragePool"))))[2:])
    return [op.Expand(g, op.Shape(x)) / float(count)]


@rule("MaxPool")
def _maxpool(n: Node, g: Value) -> Grads:
    # recompute with Indices (flat positions in the input; row-major whatever order the forward
    # used), then scatter-add the gradient there
    x = n.inputs[0]
    _, idx = n.again([x], n_out=2, storage_order=0)
    flat_x = op.Reshape(x, [-1])
    dx = op.ScatterElements(flat_x * 0.0, op.Reshape(idx, [-1]), op.Reshape(g, [-1]), axis=0, reduction="add")
    return [op.Reshape(dx, op.Shape(x))]


@rule("GlobalMaxPool")
def _global_max_pool(n: Node, g: Value) -> Grads:
    # g goes to the positions equal to the maximum, split evenly on ties (as ReduceMax)
    x, y = n.inputs[0], n.outputs[0]
    hit = op.Equal(x, y).cast_like(g)
    return [hit * (g / op.ReduceSum(hit, list(range(2, rank(x, "GlobalMaxPool"))), keepdims=1))]


@dataclass(frozen=True)
class Pool:
    """A pool's windows over nd spatial axes: kernel k, strides s, dilations d, pads p (nd begins,
    then nd ends), channels c, x's spatial size and the output's."""

    k: list[int]
    s: list[int]
    d: list[int]
    p: list[int]
    c: int
    size: list[int]
    out: list[int]

    def taps(self, i: int) -> np.ndarray:
        """[out, k]: the positions along spatial axis i that each window reads (some outside x)."""
        starts = np.arange(self.out[i]) * self.s[i] - self.p[i]
        return starts[:, None] + np.arange(self.k[i])[None, :] * self.d[i]

    def count(self, inside: Callable[[int, np.ndarray], np.ndarray]) -> np.ndarray:
        """Taps per window for which `inside(axis, taps)` holds, shaped as the output's spatial axes."""
        count = np.ones(self.out, np.float32)
        for i in range(len(self.k)):
            count = count * inside(i, self.taps(i)).sum(axis=1).reshape([-1 if j == i else 1
                                                                          for j in range(len(self.k))])
        return count


def pool(n: Node) -> Pool:
    """The windows of an AveragePool or LpPool node. With ceil_mode the last window may run past
    the end pad, but does not start in it (as onnxruntime counts, and not ONNX's shape inference)."""
    x = n.inputs[0]
    k = n.ints("kernel_shape")
    nd = len(k)
    xs = sizes(x, n.op_type, list(range(1, 2 + nd)))
    s, d = n.ints("strides") or [1] * nd, n.ints("dilations") or [1] * nd
    if any(v != 1 for v in d) and n.s("auto_pad") in ("SAME_UPPER", "SAME_LOWER"):
        raise CompileError(f"the {n.op_type} gradient needs explicit pads with dilations (onnxruntime and "
                           "the ONNX reference pad dilated SAME pooling differently)")
    p = explicit_pads(n, k, s, d)
    out, ceil = [], n.i("ceil_mode")
    for i in range(nd):
        span = xs[2 + i] + p[i] + p[nd + i] - (k[i] - 1) * d[i] - 1
        o = (-(-span // s[i]) if ceil else span // s[i]) + 1
        out.append(o - 1 if ceil and (o - 1) * s[i] >= xs[2 + i] + p[i] else o)
    return Pool(k, s, d, p, xs[1], list(xs[2:]), out)


def window_sums_back(g: Value, w: Pool, scale: float = 1.0) -> Value:
    """The transpose of summing each window (times `scale`): every x position gets the sum of g over
    the windows that read it. A depthwise transposed conv with a kernel of ones; taps past the end
    (ceil_mode) are cut off with the end pads."""
    nd = len(w.k)
    kernel = g.graph.const(np.full([w.c, 1] + w.k, scale, np.float32)).cast_like(g)
    reach = [(w.out[i] - 1) * w.s[i] + (w.k[i] - 1) * w.d[i] + 1 for i in range(nd)]  # rows the windows span
    end = [max(w.p[nd + i], reach[i] - w.p[i] - w.size[i]) for i in range(nd)]
    out_pad = [w.size[i] - (reach[i] - w.p[i] - end[i]) for i in range(nd)]
    return conv_transpose(g, kernel, w.s, w.p[:nd] + end, w.d, w.c, out_pad)


@rule("AveragePool")
def _avgpool(n: Node, g: Value) -> Grads:
    # each output spreads g / count over its window; count is the window's taps inside x and the
    # pads (count_include_pad=1) or inside x only (=0)
    w = pool(n)
    nd = len(w.k)
    if n.i("count_include_pad"):
        count = w.count(lambda i, t: (t >= -w.p[i]) & (t < w.size[i] + w.p[nd + i]))
    else:
        count = w.count(lambda i, t: (t >= 0) & (t < w.size[i]))
    size = math.prod(w.k)
    if np.all(count == size):
        return [window_sums_back(g, w, 1.0 / size)]
    return [window_sums_back(g / g.graph.const(count).cast_like(g), w)]


@rule("LpPool")
def _lppool(n: Node, g: Value) -> Grads:
    # y = (sum over the window of |x|^p)^(1/p): dx = sign(x) |x|^(p-1) times the sum of g y^(1-p) over
    # the windows that read x (0 where y = 0)
    x, y, p = n.inputs[0], n.outputs[0], n.i("p")
    w = pool(n)
    if p == 1:
        return [op.Sign(x) * window_sums_back(g, w)]
    per = op.Where(y > 0.0, g / (y if p == 2 else op.Pow(y, float(p - 1))), 0.0)  # not g / 0
    local = x if p == 2 else op.Sign(x) * op.Pow(op.Abs(x), float(p - 1))
    return [local * window_sums_back(per, w)]
