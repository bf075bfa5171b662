"""Gradient rules of normalization ops: instance, group and layer norm, LRN, Lp and mean-variance
normalization.

The statistics are recomputed from the input (the forward op does not expose them in the form
the gradient needs); each rule reduces to one formula over the normalized axes.
"""

from __future__ import annotations

import numpy as np

from dlspec.compiler.grad.common import rank, sizes, unbroadcast
from dlspec.compiler.grad.table import Grads, Node, rule, rule_multi
from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op
from dlspec.spec.errors import CompileError


def normalize(x: Value, axes: list[int], eps: float) -> tuple[Value, Value]:
    """xhat = (x - mean) / sqrt(var + eps) over `axes` (population variance), and 1 / sqrt(var + eps)."""
    centred = x - op.ReduceMean(x, axes, keepdims=1)
    var = op.ReduceMean(centred * centred, axes, keepdims=1)
    inv = op.Reciprocal(op.Sqrt(var + eps))
    return centred * inv, inv


def normalize_back(gh: Value, xhat: Value, inv: Value, axes: list[int]) -> Value:
    # d xhat -> dx: inv * (gh - mean(gh) - xhat * mean(gh * xhat)), means over the normalized axes
    mean_g = op.ReduceMean(gh, axes, keepdims=1)
    mean_gx = op.ReduceMean(gh * xhat, axes, keepdims=1)
    return inv * ((gh - mean_g) - xhat * mean_gx)


@rule("InstanceNormalization")
def _instance_norm(n: Node, g: Value) -> Grads:
    # y = scale[c] xhat + B[c], statistics per (sample, channel) over the spatial axes
    x, scale, _ = n.inputs
    r = rank(x, "InstanceNormalization")
    spatial = list(range(2, r))
    xhat, inv = normalize(x, spatial, n.f("epsilon"))
    dx = normalize_back(g * op.Reshape(scale, [1, -1] + [1] * (r - 2)), xhat, inv, spatial)
    axes = [0] + spatial
    return [dx, op.ReduceSum(g * xhat, axes, keepdims=0), op.ReduceSum(g, axes, keepdims=0)]


@rule("GroupNormalization")
def _group_norm(n: Node, g: Value) -> Grads:
    # opset 18: y = scale[k] xhat + bias[k] for group k; statistics per (sample, group) over the
    # group's channels and the spatial axes: a view [N, groups, -1] normalized over its last axis
    x, scale, _ = n.inputs
    groups = n.i("num_groups")
    if sizes(scale, "GroupNormalization") != (groups,):
        raise CompileError(f"the GroupNormalization gradient follows opset 18: scale and bias hold one "
                           f"value per group ({groups}), not {list(scale.shape or [])}")
    view = [0, groups, -1]
    xg, gg = op.Reshape(x, view), op.Reshape(g, view)
    xhat, inv = normalize(xg, [2], n.f("epsilon"))
    gh = gg * op.Reshape(scale, [1, groups, 1])
    dx = op.Reshape(normalize_back(gh, xhat, inv, [2]), op.Shape(x))
    return [dx, op.ReduceSum(gg * xhat, [0, 2], keepdims=0), op.ReduceSum(gg, [0, 2], keepdims=0)]


@rule_multi("LayerNormalization")
def _layer_norm(n: Node, gy: list[Value | None]) -> Grads:
    # y = scale xhat + B, statistics over the axes from `axis` on; scale and B broadcast.
    # The optional outputs Mean and InvStdDev = 1 / sqrt(var + eps) have gradients of their own.
    x, scale = n.inputs[0], n.inputs[1]
    r = rank(x, "LayerNormalization")
    axes = list(range(n.i("axis") % r, r))
    xhat, inv = normalize(x, axes, n.f("epsilon"))
    g, g_mean, g_inv = (list(gy) + [None, None])[:3]
    parts: list[Value] = []
    out: list[Value | None] = [None] * len(n.inputs)
    if g is not None:
        parts.append(normalize_back(g * scale, xhat, inv, axes))
        out[1] = unbroadcast(g * xhat, scale)
        bias = n.input(2)
        if bias is not None:
            out[2] = unbroadcast(g, bias)
    if g_mean is not None or g_inv is not None:
        stat = next(o for o in n.outputs[1:] if o.given)  # Mean or InvStdDev: x with the axes reduced to 1
        count = (op.numel(x) / op.numel(stat)).cast_like(x)
        if g_mean is not None:  # d mean / dx = 1 / count
            parts.append(g_mean / count)
        if g_inv is not None:  # d inv / dx = -inv^3 (x - mean) / count = -inv^2 xhat / count
            parts.append(-(((g_inv * (inv * inv)) / count) * xhat))
    out[0] = parts[0] if len(parts) == 1 else op.Sum(parts)
    return out


@rule("LRN")
def _lrn(n: Node, g: Value) -> Grads:
    # y = x s^-beta, s = bias + alpha/size * S, S[c] = sum of x[c']^2 over the channel window
    # [c - lo, c + hi]: dx = g s^-beta - (2 alpha beta / size) x * W^T(g y / s), where W^T sums
    # over the transposed window [c - hi, c + lo]
    x, y = n.inputs[0], n.outputs[0]
    size, alpha, beta, bias = n.i("size"), n.f("alpha"), n.f("beta"), n.f("bias")
    channels = sizes(x, "LRN", [1])[1]
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    ones = g.graph.const(np.ones([1, 1, size, 1], np.float32)).cast_like(x)

    def window(v: Value, before: int, after: int) -> Value:  # sums over channels as a [size x 1] conv
        summed = op.Conv(op.Reshape(v, [0, 1, channels, -1]), ones, pads=[before, 0, after, 0])
        return op.Reshape(summed, op.Shape(x))

    s = window(x * x, lo, hi) * (alpha / size) + bias
    direct = g * op.Pow(s, -beta)
    cross = (x * window((g * y) / s, hi, lo)) * (2 * alpha * beta / size)
    return [direct - cross]


@rule("LpNormalization")
def _lp_norm(n: Node, g: Value) -> Grads:
    # y = x / |x|_p along axis (p = 1 or 2): dx = (g - dnorm * sum(g y)) / |x|_p, with
    # dnorm = d |x|_p / dx = x / |x|_2 = y (p = 2), sign(x) (p = 1); 0 where |x|_p = 0, as y is
    x, y, p = n.inputs[0], n.outputs[0], n.i("p")
    axes = [n.i("axis")]
    if p not in (1, 2):
        raise CompileError(f"LpNormalization has p = 1 or 2, not {p}")
    norm = op.ReduceL2(x, axes, keepdims=1) if p == 2 else op.ReduceL1(x, axes, keepdims=1)
    dnorm = y if p == 2 else op.Sign(x)
    dx = (g - dnorm * op.ReduceSum(g * y, axes, keepdims=1)) / norm
    return [op.Where(norm > 0.0, dx, 0.0)]


@rule("MeanVarianceNormalization")
def _mvn(n: Node, g: Value) -> Grads:
    # y = c u, c = x - mean(x), u = 1 / (s + 1e-9), s = sqrt(mean(c^2)), means over axes:
    # dx = u (g - mean(g)) - (u^2 / s) mean(g c) c
    x = n.inputs[0]
    axes = n.ints("axes")
    c = x - op.ReduceMean(x, axes, keepdims=1)
    s = op.Sqrt(op.ReduceMean(c * c, axes, keepdims=1))
    u = op.Reciprocal(s + 1e-9)
    spread = op.Where(s > 0.0, (u * u) / s, 0.0)  # c = 0 where s = 0: no NaN from 0 / 0
    mean_g, mean_gc = op.ReduceMean(g, axes, keepdims=1), op.ReduceMean(g * c, axes, keepdims=1)
    return [u * (g - mean_g) - spread * mean_gc * c]
