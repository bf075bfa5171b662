"""Training-mode batch norm in fewer passes, and its gradient in closed form.

A per-channel affine map x * s + t is one inference-mode BatchNormalization with mean 0 and
variance 1 - 2^-16 under epsilon 2^-16 (which sum to exactly 1 in float32 and float64): one pass
where onnxruntime's broadcast Mul and Add take two. Its BatchNormalization runs on one thread,
though: on many CPU threads the maps are Mul and Add again. The closed-form gradient takes two
reductions and four full-size ops where the per-op rules take about twelve.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op
from dlspec.compiler.graph.composite import channel_sum, per_channel
from dlspec.compiler.lower.layers import BatchStats, batch_norm_train
from dlspec.compiler.tune.when import always, many_threads

EPS = 2.0 ** -16  # at least cuDNN's smallest epsilon, 1e-5


def channel_affine(x: Value, scale: Value, shift: Value | None, channels: int, mul_add: bool) -> Value:
    """x * scale + shift per channel (axis 1; scale and shift [C]; shift None: none)."""
    if mul_add:
        y = x * per_channel(scale, x.rank)
        return y if shift is None else y + per_channel(shift, x.rank)
    g = x.graph
    zero = g.const(np.zeros(channels, np.float32))
    one = g.const(np.full(channels, 1.0 - EPS, np.float32))
    return op.BatchNormalization(x, scale, zero if shift is None else shift, zero, one, epsilon=EPS)


@batch_norm_train.variant(always)
def _fused(x: Value, weight: Value, bias: Value, eps: float) -> BatchStats:
    g, c = x.graph, x.channels
    wide = many_threads(g.target)
    n = (op.numel(x) / g.ints([c])).cast("float32")  # values per channel
    mean = channel_sum(x, c) / n
    d = x - per_channel(mean, x.rank) if wide else channel_affine(x, g.const(np.ones(c, np.float32)), -mean,
                                                                    c, mul_add=False)
    var = channel_sum(d * d, c) / n
    inv = op.Reciprocal(op.Sqrt(var + eps))
    if wide:
        y = channel_affine(d, weight * inv, bias, c, mul_add=True)
    else:  # d w / sqrt(var + eps) + b as one BatchNormalization of the centred d
        y = op.BatchNormalization(d, weight, bias, g.const(np.zeros(c, np.float32)), var, epsilon=eps)
    y = y.with_shape(x.shape)
    g.custom_gradient(y, [x, weight, bias], _closed_form(d, inv, n, weight, c, wide))
    return BatchStats(y, mean, var, n)


def _closed_form(centred: Value, inv: Value, count: Value, weight: Value, channels: int,
                 wide: bool) -> Callable[[Value], Sequence[Value | None]]:
    """y = d inv w + b with d = x - mean: dx = s (g - sum(g) / n - d inv^2 sum(g d) / n)
    = g s - (d a + b) with per-channel s = inv w, a = s inv^2 sum(g d) / n and b = s sum(g) / n;
    dw = inv sum(g d); db = sum(g)."""

    def back(g: Value) -> Sequence[Value | None]:
        sum_g = channel_sum(g, channels)
        sum_gd = channel_sum(g * centred, channels)
        scale = inv * weight
        per_n = scale / count  # s / n, per channel
        a = (per_n * inv) * (inv * sum_gd)
        b = per_n * sum_g
        dx = channel_affine(g, scale, None, channels, wide) - channel_affine(centred, a, b, channels, wide)
        return [dx, sum_gd * inv, sum_g]

    return back
