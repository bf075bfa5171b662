"""Gradient rules for the network ops: matrix products, convolution, pooling, norms, softmax."""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from compiler.autodiff import RuleCtx, rule
from compiler.grad_rules import G, _need, _scalar, attr, unbroadcast
from spec.errors import CompileError


def _swap_last(ctx: RuleCtx, x: str) -> str:
    rank = len(ctx.shape(x) or ())
    if rank < 2:
        raise CompileError(f"MatMul gradient supports operands of rank >= 2 ({x} has rank {rank})")
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    return ctx.g.op1("Transpose", [x], "grad", perm=perm)


@rule("MatMul")
def _matmul(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    g, (a, b), y = _need(gy[0]), n.input, n.output[0]
    da = ctx.g.op1("MatMul", [g, _swap_last(ctx, b)], "grad")  # dA = G B^T
    db = ctx.g.op1("MatMul", [_swap_last(ctx, a), g], "grad")  # dB = A^T G
    return [unbroadcast(ctx, da, a, y), unbroadcast(ctx, db, b, y)]


@rule("Gemm")
def _gemm(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # Y = alpha op(A) op(B) + beta C
    g = _need(gy[0])
    alpha, beta = float(attr(n, "alpha", 1.0)), float(attr(n, "beta", 1.0))  # type: ignore[arg-type]
    ta, tb = int(attr(n, "transA", 0)), int(attr(n, "transB", 0))  # type: ignore[call-overload]
    a, b = n.input[0], n.input[1]
    # d op(A) = alpha G op(B)^T ; d op(B) = alpha op(A)^T G; transposes fold into Gemm flags
    da = (ctx.g.op1("Gemm", [b, g], "grad", alpha=alpha, transA=tb, transB=1) if ta
          else ctx.g.op1("Gemm", [g, b], "grad", alpha=alpha, transB=0 if tb else 1))
    db = (ctx.g.op1("Gemm", [g, a], "grad", alpha=alpha, transA=1, transB=ta) if tb
          else ctx.g.op1("Gemm", [a, g], "grad", alpha=alpha, transA=0 if ta else 1))
    out: list[G] = [da, db]
    if len(n.input) > 2 and n.input[2]:
        gc = g if beta == 1.0 else ctx.g.op1("Mul", [g, _scalar(ctx, beta, g)], "grad")
        out.append(unbroadcast(ctx, gc, n.input[2], n.output[0]))
    return out


def _ints(n: onnx.NodeProto, name: str, default: list[int]) -> list[int]:
    v = attr(n, name, None)
    return list(v) if v else default  # type: ignore[call-overload]


def _conv_geometry(ctx: RuleCtx, n: onnx.NodeProto) -> tuple[list[int], list[int], list[int], list[int], int]:
    xs, ws = ctx.shape(n.input[0]), ctx.shape(n.input[1])
    if xs is None or ws is None or not all(isinstance(d, int) for d in list(xs[2:]) + list(ws)):
        raise CompileError(f"Conv gradient needs static spatial and weight shapes ({n.name})")
    nd = len(ws) - 2
    k = [int(d) for d in ws[2:]]  # type: ignore[arg-type]
    s = _ints(n, "strides", [1] * nd)
    d = _ints(n, "dilations", [1] * nd)
    if attr(n, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise CompileError("Conv gradient needs explicit pads (auto_pad is not supported)")
    p = _ints(n, "pads", [0] * (2 * nd))
    return k, s, d, p, int(attr(n, "group", 1))  # type: ignore[call-overload]


@rule("Conv")
def _conv(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    g = _need(gy[0])
    x, w = n.input[0], n.input[1]
    k, s, d, p, groups = _conv_geometry(ctx, n)
    nd = len(k)
    xs, ys = ctx.shape(x), ctx.shape(n.output[0])
    assert xs is not None and ys is not None
    # dX: the transposed convolution of G with the same weights; output_padding restores rows the
    # forward stride skipped.
    out_pad = [int(xs[2 + i]) - ((int(ys[2 + i]) - 1) * s[i] - p[i] - p[nd + i] + d[i] * (k[i] - 1) + 1)  # type: ignore[arg-type]
               for i in range(nd)]
    dx = ctx.g.op1("ConvTranspose", [g, w], "grad", strides=s, pads=p, dilations=d, group=groups,
                   output_padding=out_pad if any(out_pad) else None)
    cout = int((ctx.shape(w) or (0,))[0])  # type: ignore[arg-type]
    dw = _conv_weight_grad(ctx, x, g, k, s, d, p, groups, cout)
    out: list[G] = [dx, dw]
    if len(n.input) > 2 and n.input[2]:
        axes = [0] + list(range(2, 2 + nd))
        out.append(ctx.g.op1("ReduceSum", [g, ctx.g.ints(axes)], "grad", keepdims=0))
    return out


def _conv_weight_grad(ctx: RuleCtx, x: str, g: str, k: list[int], s: list[int], d: list[int],
                      p: list[int], groups: int, cout: int) -> str:
    """dW[o, i, kh, kw] = sum_{n,h,w} G[n,o,h,w] X[n,i,h s + kh d, w s + kw d]: a convolution of
    X (batch as channels) with G (batch as input channels), strides and dilations swapped."""
    nd = len(k)
    perm = [1, 0] + list(range(2, 2 + nd))
    xs = ctx.shape(x)
    assert xs is not None
    cin = int(xs[1])  # type: ignore[arg-type]
    parts = []
    for gi in range(groups):
        xg, gg = x, g
        if groups > 1:
            ci, co = cin // groups, cout // groups
            xg = _channels(ctx, x, gi * ci, (gi + 1) * ci)
            gg = _channels(ctx, g, gi * co, (gi + 1) * co)
        xt = ctx.g.op1("Transpose", [xg], "grad", perm=perm)  # [Ci, N, H, W]
        gt = ctx.g.op1("Transpose", [gg], "grad", perm=perm)  # [Co, N, Ho, Wo]
        full = ctx.g.op1("Conv", [xt, gt], "grad", strides=d, dilations=s, pads=p)  # [Ci, Co, >=kh, >=kw]
        # the window may overhang by the forward stride's remainder: keep the first k taps
        cut = ctx.g.op1("Slice", [full, ctx.g.ints([0] * nd), ctx.g.ints(k),
                                  ctx.g.ints(list(range(2, 2 + nd)))], "grad")
        parts.append(ctx.g.op1("Transpose", [cut], "grad", perm=perm))
    return parts[0] if len(parts) == 1 else ctx.g.op1("Concat", parts, "grad", axis=0)


def _channels(ctx: RuleCtx, x: str, start: int, stop: int) -> str:
    return ctx.g.op1("Slice", [x, ctx.g.ints([start]), ctx.g.ints([stop]), ctx.g.ints([1])], "grad")


@rule("GlobalAveragePool")
def _gap(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    x = n.input[0]
    xs = ctx.shape(x)
    assert xs is not None
    count = 1
    for dim in xs[2:]:
        count *= int(dim)  # type: ignore[arg-type]
    g = ctx.g.op1("Expand", [_need(gy[0]), ctx.g.op1("Shape", [x], "grad")], "grad")
    return [ctx.g.op1("Div", [g, _scalar(ctx, float(count), g)], "grad")]


@rule("MaxPool")
def _maxpool(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # recompute with Indices (flat positions in the input), then scatter-add the gradient there
    x, g = n.input[0], _need(gy[0])
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
    _, idx = ctx.g.op("MaxPool", [x], "grad", n_out=2, **attrs)
    flat_x = ctx.g.op1("Reshape", [x, ctx.g.ints([-1])], "grad")
    zeros = ctx.g.op1("Mul", [flat_x, _scalar(ctx, 0.0, flat_x)], "grad")
    flat_i = ctx.g.op1("Reshape", [idx, ctx.g.ints([-1])], "grad")
    flat_g = ctx.g.op1("Reshape", [g, ctx.g.ints([-1])], "grad")
    dx = ctx.g.op1("ScatterElements", [zeros, flat_i, flat_g], "grad", axis=0, reduction="add")
    return [ctx.g.op1("Reshape", [dx, ctx.g.op1("Shape", [x], "grad")], "grad")]


@rule("AveragePool")
def _avgpool(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # each output spreads g / k^2 over its window: a depthwise transposed conv with a constant kernel
    x, g = n.input[0], _need(gy[0])
    xs, ys = ctx.shape(x), ctx.shape(n.output[0])
    assert xs is not None and ys is not None
    k = _ints(n, "kernel_shape", [])
    nd = len(k)
    s = _ints(n, "strides", [1] * nd)
    p = _ints(n, "pads", [0] * (2 * nd))
    if any(p) and not attr(n, "count_include_pad", 0):
        raise CompileError("AveragePool gradient with padding needs count_include_pad=1")
    if attr(n, "ceil_mode", 0):
        raise CompileError("AveragePool gradient does not support ceil_mode=1")
    c = int(xs[1])  # type: ignore[arg-type]
    size = 1
    for kk in k:
        size *= kk
    import numpy as np
    kernel = ctx.g.const(np.full([c, 1] + k, 1.0 / size, np.float32), hint="grad")
    kernel = ctx.g.op1("CastLike", [kernel, g], "grad")
    out_pad = [int(xs[2 + i]) - ((int(ys[2 + i]) - 1) * s[i] - p[i] - p[nd + i] + k[i])  # type: ignore[arg-type]
               for i in range(nd)]
    return [ctx.g.op1("ConvTranspose", [g, kernel], "grad", strides=s, pads=p, group=c,
                      output_padding=out_pad if any(out_pad) else None)]


@rule("Resize")
def _resize(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # nearest upsampling by whole factors: each input pixel fed a fh x fw block of outputs
    if attr(n, "mode", b"nearest") not in (b"nearest", "nearest"):
        raise CompileError("only nearest Resize has a gradient rule")
    x, g = n.input[0], _need(gy[0])
    xs, ys = ctx.shape(x), ctx.shape(n.output[0])
    assert xs is not None and ys is not None
    factors = []
    for a, b in zip(xs[2:], ys[2:]):
        if not isinstance(a, int) or not isinstance(b, int) or b % a:
            raise CompileError("Resize gradient needs whole-number upsampling factors")
        factors.append(b // a)
    split = [0, 0]
    for a, f in zip(xs[2:], factors):
        split += [int(a), f]  # type: ignore[arg-type]
    blocks = ctx.g.op1("Reshape", [g, ctx.g.ints(split)], "grad")
    axes = [3 + 2 * i for i in range(len(factors))]
    summed = ctx.g.op1("ReduceSum", [blocks, ctx.g.ints(axes)], "grad", keepdims=0)
    return [summed] + [None] * (len(n.input) - 1)


@rule("Softmax")
def _softmax(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # d softmax = y * (g - sum(g * y))
    g, y = _need(gy[0]), n.output[0]
    axis = int(attr(n, "axis", -1))  # type: ignore[call-overload]
    dot = ctx.g.op1("ReduceSum", [ctx.g.op1("Mul", [g, y], "grad"), ctx.g.ints([axis])], "grad", keepdims=1)
    return [ctx.g.op1("Mul", [y, ctx.g.op1("Sub", [g, dot], "grad")], "grad")]


@rule("LogSoftmax")
def _log_softmax(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # d log_softmax = g - softmax * sum(g)
    g, y = _need(gy[0]), n.output[0]
    axis = int(attr(n, "axis", -1))  # type: ignore[call-overload]
    total = ctx.g.op1("ReduceSum", [g, ctx.g.ints([axis])], "grad", keepdims=1)
    return [ctx.g.op1("Sub", [g, ctx.g.op1("Mul", [ctx.g.op1("Exp", [y], "grad"), total], "grad")], "grad")]


@rule("BatchNormalization")
def _batchnorm(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # inference form: y = scale (x - mean) / sqrt(var + eps) + b, statistics constant
    if attr(n, "training_mode", 0):
        raise CompileError("BatchNormalization(training_mode=1) has no rule: training graphs write "
                           "batch norm in primitive ops")
    g = _need(gy[0])
    x, scale, _, mean, var = n.input[:5]
    eps = float(attr(n, "epsilon", 1e-5))  # type: ignore[arg-type]
    rank = len(ctx.shape(x) or ())
    axes = ctx.g.ints([0] + list(range(2, rank)))
    per_c = ctx.g.ints([1, -1] + [1] * (rank - 2))
    inv = ctx.g.op1("Reciprocal", [ctx.g.op1("Sqrt", [ctx.g.op1("Add", [var, _scalar(ctx, eps, var)],
                                                                 "grad")], "grad")], "grad")
    dx = ctx.g.op1("Mul", [g, ctx.g.op1("Reshape", [ctx.g.op1("Mul", [scale, inv], "grad"), per_c],
                                         "grad")], "grad")
    xhat = ctx.g.op1("Mul", [ctx.g.op1("Sub", [x, ctx.g.op1("Reshape", [mean, per_c], "grad")], "grad"),
                             ctx.g.op1("Reshape", [inv, per_c], "grad")], "grad")
    dscale = ctx.g.op1("ReduceSum", [ctx.g.op1("Mul", [g, xhat], "grad"), axes], "grad", keepdims=0)
    dbias = ctx.g.op1("ReduceSum", [g, axes], "grad", keepdims=0)
    return [dx, dscale, dbias, None, None]
