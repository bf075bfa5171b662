"""The gradient of BatchNormalization: in inference mode (statistics constant), the form
exported models and dlspec's own eval graphs use."""

from __future__ import annotations

from dlspec.compiler.grad.common import rank
from dlspec.compiler.grad.table import Grads, Node, rule
from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op
from dlspec.spec.errors import CompileError


@rule("BatchNormalization")
def _batchnorm(n: Node, g: Value) -> Grads:
    # inference form: y = scale (x - mean) / sqrt(var + eps) + b, the statistics constant
    if n.i("training_mode"):
        raise CompileError("BatchNormalization(training_mode=1) has no rule: training graphs write "
                           "batch norm in primitive ops")
    x, scale, _, mean, var = n.inputs[:5]
    r = rank(x, "BatchNormalization")
    axes = [0] + list(range(2, r))
    per_c = [1, -1] + [1] * (r - 2)
    inv = op.Reciprocal(op.Sqrt(var + n.f("epsilon")))
    dx = g * op.Reshape(scale * inv, per_c)
    xhat = (x - op.Reshape(mean, per_c)) * op.Reshape(inv, per_c)
    return [dx, op.ReduceSum(g * xhat, axes, keepdims=0), op.ReduceSum(g, axes, keepdims=0), None, None]
