"""The gradient of BatchNormalization: in inference mode (statistics constant), the form exported
models and dlspec's own eval graphs use, and in training mode (training_mode=1), through the
batch statistics, the form PyTorch exports in training mode."""

from __future__ import annotations

from dlspec.compiler.grad.common import rank
from dlspec.compiler.grad.norm import normalize, normalize_back
from dlspec.compiler.grad.table import Grads, Node, rule_multi
from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op


@rule_multi("BatchNormalization")
def _batchnorm(n: Node, gy: list[Value | None]) -> Grads:
    x, scale = n.inputs[:2]
    r = rank(x, "BatchNormalization")
    axes = [0] + list(range(2, r))  # every axis but the channels
    per_c = [1, -1] + [1] * (r - 2)
    g, g_mean, g_var = (list(gy) + [None, None])[:3]
    if not n.i("training_mode"):
        if g is None:
            return [None] * len(n.inputs)
        # y = scale (x - mean) / sqrt(var + eps) + b, the statistics constant
        mean, var = n.inputs[3:5]
        inv = op.Reciprocal(op.Sqrt(var + n.f("epsilon")))
        xhat = (x - op.Reshape(mean, per_c)) * op.Reshape(inv, per_c)
        return [g * op.Reshape(scale * inv, per_c), op.ReduceSum(g * xhat, axes, keepdims=0),
                op.ReduceSum(g, axes, keepdims=0), None, None]
    # training mode: y = scale xhat + b with xhat normalized by the batch's mean and population
    # variance per channel; the running statistics are m * input + (1 - m) * batch statistic
    xhat, inv = normalize(x, axes, n.f("epsilon"))
    out: list[Value | None] = [None] * len(n.inputs)
    dx: list[Value] = []
    if g is not None:
        dx.append(normalize_back(g * op.Reshape(scale, per_c), xhat, inv, axes))
        out[1], out[2] = op.ReduceSum(g * xhat, axes, keepdims=0), op.ReduceSum(g, axes, keepdims=0)
    momentum = n.f("momentum")
    if g_mean is not None or g_var is not None:  # a loss that reads the running statistics
        count = (op.numel(x) / op.numel(scale)).cast_like(x)  # elements per channel
        if g_mean is not None:  # d mean / dx = 1 / count
            out[3] = g_mean * momentum
            dx.append(op.Reshape(g_mean * (1.0 - momentum), per_c) / count)
        if g_var is not None:  # d var / dx = 2 (x - mean) / count = 2 xhat / (inv count)
            out[4] = g_var * momentum
            dx.append(xhat * (op.Reshape(g_var * (2.0 * (1.0 - momentum)), per_c) / (inv * count)))
    if dx:
        out[0] = dx[0] if len(dx) == 1 else op.Sum(dx)
    return out
