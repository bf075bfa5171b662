"""Gradient rules of the network ops other than convolution: matrix products, softmax, pooling
and inference-mode batch norm."""

from __future__ import annotations

import math

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


@rule("AveragePool")
def _avgpool(n: Node, g: Value) -> Grads:
    # each output spreads g / count over its window: a depthwise transposed conv with a kernel of
    # ones; count is the window's size (count_include_pad=1) or its pixels inside x (=0)
    x, y = n.inputs[0], n.outputs[0]
    k = n.ints("kernel_shape")
    nd = len(k)
    xs = sizes(x, "AveragePool", list(range(1, 2 + nd)))
    ys = sizes(y, "AveragePool", list(range(2, 2 + nd)))
    s, d = n.ints("strides") or [1] * nd, n.ints("dilations") or [1] * nd
    if any(v != 1 for v in d) and n.s("auto_pad") in ("SAME_UPPER", "SAME_LOWER"):
        raise CompileError("the AveragePool gradient needs explicit pads with dilations (onnxruntime and "
                           "the ONNX reference pad dilated SAME pooling differently)")
    p = explicit_pads(n, k, s, d)
    reach = [(ys[2 + i] - 1) * s[i] + (k[i] - 1) * d[i] + 1 for i in range(nd)]  # rows the windows span
    if any(reach[i] > xs[2 + i] + p[i] + p[nd + i] for i in range(nd)):
        raise CompileError("the AveragePool gradient does not support ceil_mode=1 where it adds a window")
    count = np.ones(ys[2:], np.float32)
    for i in range(nd):  # count[o] = taps of window o that land inside x (or inside the padding too)
        taps = np.arange(ys[2 + i])[:, None] * s[i] - p[i] + np.arange(k[i])[None, :] * d[i]
        inside = (taps >= 0) & (taps < xs[2 + i]) if not n.i("count_include_pad") else taps == taps
        count = count * inside.sum(axis=1).reshape([-1 if j == i else 1 for j in range(nd)])
    size = int(np.prod(k))
    if np.all(count == size):
        kernel = np.full([xs[1], 1] + k, 1.0 / size, np.float32)
    else:
        g = g / g.graph.const(count).cast_like(g)
        kernel = np.ones([xs[1], 1] + k, np.float32)
    out_pad = [xs[2 + i] - (reach[i] - p[i] - p[nd + i]) for i in range(nd)]
    return [conv_transpose(g, g.graph.const(kernel).cast_like(g), s, p, d, xs[1], out_pad)]
