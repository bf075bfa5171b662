"""Gradient rules for normalization ops: instance, group and layer norm, LRN.

The statistics are recomputed from the input (the forward op does not expose them in the form
the gradient needs); each rule reduces to one shared formula over the normalized axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from dlspec.compiler.autodiff import Composite, RuleCtx, rule
from dlspec.compiler.grad_rules import G, _need, _scalar, attr, rank_of, static_shape, unbroadcast
from dlspec.compiler.graph import Graph
from dlspec.spec.errors import CompileError


def _normalize(ctx: RuleCtx, x: str, axes: list[int], eps: float) -> tuple[str, str]:
    """xhat = (x - mean) / sqrt(var + eps) over `axes` (population variance), and 1 / sqrt(var + eps)."""
    op, ax = ctx.g.op1, ctx.g.ints(axes)
    centred = op("Sub", [x, op("ReduceMean", [x, ax], "grad", keepdims=1)], "grad")
    var = op("ReduceMean", [op("Mul", [centred, centred], "grad"), ax], "grad", keepdims=1)
    inv = op("Reciprocal", [op("Sqrt", [op("Add", [var, _scalar(ctx, eps, var)], "grad")], "grad")], "grad")
    return op("Mul", [centred, inv], "grad"), inv


def _normalize_back(ctx: RuleCtx, gh: str, xhat: str, inv: str, axes: list[int]) -> str:
    # d xhat -> dx: inv * (gh - mean(gh) - xhat * mean(gh * xhat)), means over the normalized axes
    op, ax = ctx.g.op1, ctx.g.ints(axes)
    mean_g = op("ReduceMean", [gh, ax], "grad", keepdims=1)
    mean_gx = op("ReduceMean", [op("Mul", [gh, xhat], "grad"), ax], "grad", keepdims=1)
    inner = op("Sub", [op("Sub", [gh, mean_g], "grad"), op("Mul", [xhat, mean_gx], "grad")], "grad")
    return op("Mul", [inv, inner], "grad")


def per_channel(g: Graph, v: str, rank: int, hint: str) -> str:
    """[C] as [C, 1, ...]: broadcasts over axis 1 of a rank-`rank` [N, C, ...]."""
    return g.op1("Reshape", [v, g.ints([-1] + [1] * (rank - 2))], hint)


def channel_affine(g: Graph, x: str, scale: str, shift: str | None, channels: int, hint: str,
                   mul_add_rank: int | None = None) -> str:
    """x * scale + shift per channel (axis 1; scale and shift [C]; shift None: none) in one pass:
    an inference-mode BatchNormalization with mean 0, variance 1 - 2^-16 and epsilon 2^-16, which
    sum to exactly 1 in float32 and float64. onnxruntime's broadcast Mul and Add take 2.5x longer
    together on one thread, but its BatchNormalization never takes a second: with `mul_add_rank`
    (x's rank), for a CPU step on many threads, they are broadcast Mul and Add (compiler/threads.py)."""
    if mul_add_rank is not None:
        y = g.op1("Mul", [x, per_channel(g, scale, mul_add_rank, hint)], hint)
        return y if shift is None else g.op1("Add", [y, per_channel(g, shift, mul_add_rank, hint)], hint)
    eps = 2.0 ** -16  # at least cuDNN's smallest epsilon, 1e-5
    zero = g.const(np.zeros(channels, np.float32), hint=hint)
    one = g.const(np.full(channels, 1.0 - eps, np.float32), hint=hint)
    shift = zero if shift is None else shift
    return g.op1("BatchNormalization", [x, scale, shift, zero, one], hint, epsilon=eps)


def channel_sum(g: Graph, x: str, channels: int, hint: str) -> str:
    """The sum of x [N, C, *S] over every axis but the channels, [C]: over the flattened space,
    then over the batch. Each stage reduces one contiguous block of axes, which onnxruntime's CUDA
    provider does with its own matrix kernels where one reduction over (0, 2, ...) goes through
    cuDNN's general one (in a resnet18 step on an H200, 80 of those took 6.7 of 27.6 ms); its CPU
    kernels are 1.1x to 2.5x faster this way too (64x64x8x8 to 128x256x8x8, one thread)."""
    rows = g.op1("Reshape", [x, g.ints([0, channels, -1])], hint)  # [N, C, prod(S)]
    per_sample = g.op1("ReduceSum", [rows, g.ints([2])], hint, keepdims=0)  # [N, C]
    return g.op1("ReduceSum", [per_sample, g.ints([0])], hint, keepdims=0)


def batch_norm_composite(x: str, weight: str, bias: str, centred: str, inv: str, count: str,
                         channels: int, rank: int) -> Composite:
    """The gradient of training-mode batch norm y = d inv w + b with d = x - mean, as the
    compiler writes it (compiler/layers.py; inv [C]), in two reductions and four full-size ops
    where the per-op rules take about twelve:
    dx = s (g - sum(g) / n - d inv^2 sum(g d) / n) = g s - (d a + b) with per-channel s = inv w,
    a = s inv^2 sum(g d) / n and b = s sum(g) / n; dw = inv sum(g d); db = sum(g)."""

    def back(ctx: RuleCtx, g: str) -> Sequence[G]:
        op = ctx.g.op1
        sum_g = channel_sum(ctx.g, g, channels, "grad")
        sum_gd = channel_sum(ctx.g, op("Mul", [g, centred], "grad"), channels, "grad")
        scale = op("Mul", [inv, weight], "grad")
        per_n = op("Div", [scale, count], "grad")  # s / n, per channel
        a = op("Mul", [op("Mul", [per_n, inv], "grad"), op("Mul", [inv, sum_gd], "grad")], "grad")
        b = op("Mul", [per_n, sum_g], "grad")
        mul_add = rank if ctx.many_threads else None
        dx = op("Sub", [channel_affine(ctx.g, g, scale, None, channels, "grad", mul_add),
                        channel_affine(ctx.g, centred, a, b, channels, "grad", mul_add)], "grad")
        return [dx, op("Mul", [sum_gd, inv], "grad"), sum_g]

    return Composite((x, weight, bias), back)


def _eps(n: onnx.NodeProto) -> float:
    return float(attr(n, "epsilon", 1e-5))  # type: ignore[arg-type]


@rule("InstanceNormalization")
def _instance_norm(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # y = scale[c] xhat + B[c], statistics per (sample, channel) over the spatial axes
    g, (x, scale, _) = _need(gy[0]), n.input
    rank = rank_of(ctx, x, "InstanceNormalization")
    spatial = list(range(2, rank))
    per_c = ctx.g.ints([1, -1] + [1] * (rank - 2))
    xhat, inv = _normalize(ctx, x, spatial, _eps(n))
    gh = ctx.g.op1("Mul", [g, ctx.g.op1("Reshape", [scale, per_c], "grad")], "grad")
    dx = _normalize_back(ctx, gh, xhat, inv, spatial)
    axes = ctx.g.ints([0] + spatial)
    dscale = ctx.g.op1("ReduceSum", [ctx.g.op1("Mul", [g, xhat], "grad"), axes], "grad", keepdims=0)
    return [dx, dscale, ctx.g.op1("ReduceSum", [g, axes], "grad", keepdims=0)]


@rule("GroupNormalization")
def _group_norm(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # opset 18: y = scale[k] xhat + bias[k] for group k; statistics per (sample, group) over the
    # group's channels and the spatial axes: a view [N, groups, -1] normalized over its last axis
    g, (x, scale, _) = _need(gy[0]), n.input
    groups = int(attr(n, "num_groups"))  # type: ignore[call-overload]
    if static_shape(ctx, scale, "GroupNormalization") != (groups,):
        raise CompileError(f"the GroupNormalization gradient follows opset 18: scale and bias hold one "
                           f"value per group ({groups}), not {list(ctx.shape(scale) or [])}")
    op, view, per_group = ctx.g.op1, ctx.g.ints([0, groups, -1]), ctx.g.ints([1, groups, 1])
    xg, gg = op("Reshape", [x, view], "grad"), op("Reshape", [g, view], "grad")
    xhat, inv = _normalize(ctx, xg, [2], _eps(n))
    gh = op("Mul", [gg, op("Reshape", [scale, per_group], "grad")], "grad")
    dx = op("Reshape", [_normalize_back(ctx, gh, xhat, inv, [2]), op("Shape", [x], "grad")], "grad")
    axes = ctx.g.ints([0, 2])
    dscale = op("ReduceSum", [op("Mul", [gg, xhat], "grad"), axes], "grad", keepdims=0)
    return [dx, dscale, op("ReduceSum", [gg, axes], "grad", keepdims=0)]


@rule("LayerNormalization")
def _layer_norm(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # y = scale xhat + B, statistics over the axes from `axis` on; scale and B broadcast.
    # The optional outputs Mean and InvStdDev = 1 / sqrt(var + eps) have gradients of their own.
    x, scale, y = n.input[0], n.input[1], n.output[0]
    rank = rank_of(ctx, x, "LayerNormalization")
    axes = list(range(int(attr(n, "axis", -1)) % rank, rank))  # type: ignore[call-overload]
    xhat, inv = _normalize(ctx, x, axes, _eps(n))
    op, g = ctx.g.op1, gy[0]
    parts: list[str] = []
    out: list[G] = [None] * len(n.input)
    if g is not None:
        parts.append(_normalize_back(ctx, op("Mul", [g, scale], "grad"), xhat, inv, axes))
        out[1] = unbroadcast(ctx, op("Mul", [g, xhat], "grad"), scale, y)
        if len(n.input) > 2 and n.input[2]:
            out[2] = unbroadcast(ctx, g, n.input[2], y)
    g_mean, g_inv = (list(gy) + [None, None])[1:3]
    if g_mean is not None or g_inv is not None:
        stat = next(o for o in n.output[1:] if o)  # Mean or InvStdDev: x with the axes reduced to 1
        count = op("CastLike", [op("Div", [ctx.g.numel(x, "grad"), ctx.g.numel(stat, "grad")], "grad"), x],
                   "grad")
        if g_mean is not None:  # d mean / dx = 1 / count
            parts.append(op("Div", [g_mean, count], "grad"))
        if g_inv is not None:  # d inv / dx = -inv^3 (x - mean) / count = -inv^2 xhat / count
            scaled = op("Div", [op("Mul", [g_inv, op("Mul", [inv, inv], "grad")], "grad"), count], "grad")
            parts.append(op("Neg", [op("Mul", [scaled, xhat], "grad")], "grad"))
    out[0] = parts[0] if len(parts) == 1 else op("Sum", parts, "grad")
    return out


@rule("LRN")
def _lrn(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # y = x s^-beta, s = bias + alpha/size * S, S[c] = sum of x[c']^2 over the channel window
    # [c - lo, c + hi]: dx = g s^-beta - (2 alpha beta / size) x * W^T(g y / s), where W^T sums
    # over the transposed window [c - hi, c + lo].
    g, x, y = _need(gy[0]), n.input[0], n.output[0]
    size = int(attr(n, "size"))  # type: ignore[call-overload]
    alpha, beta = float(attr(n, "alpha", 1e-4)), float(attr(n, "beta", 0.75))  # type: ignore[arg-type]
    bias = float(attr(n, "bias", 1.0))  # type: ignore[arg-type]
    channels = static_shape(ctx, x, "LRN", [1])[1]
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    op = ctx.g.op1
    view, shape = ctx.g.ints([0, 1, channels, -1]), op("Shape", [x], "grad")
    ones = op("CastLike", [ctx.g.const(np.ones([1, 1, size, 1], np.float32), hint="grad"), x], "grad")

    def window(v: str, before: int, after: int) -> str:  # sums over channels as a [size x 1] conv
        summed = op("Conv", [op("Reshape", [v, view], "grad"), ones], "grad", pads=[before, 0, after, 0])
        return op("Reshape", [summed, shape], "grad")

    squares = window(op("Mul", [x, x], "grad"), lo, hi)
    scaled = op("Mul", [squares, _scalar(ctx, alpha / size, x)], "grad")
    s = op("Add", [scaled, _scalar(ctx, bias, x)], "grad")
    direct = op("Mul", [g, op("Pow", [s, _scalar(ctx, -beta, x)], "grad")], "grad")
    back = window(op("Div", [op("Mul", [g, y], "grad"), s], "grad"), hi, lo)
    cross = op("Mul", [op("Mul", [x, back], "grad"), _scalar(ctx, 2 * alpha * beta / size, x)], "grad")
    return [op("Sub", [direct, cross], "grad")]
