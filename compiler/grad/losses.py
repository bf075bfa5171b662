"""Gradient rules of ONNX's loss ops: SoftmaxCrossEntropyLoss and NegativeLogLikelihoodLoss.

Both pick, at each position of x ([N, C, d...]), the class its target names: loss_i = -w_t x[i, t]
with w_t the class weight (1 without weights, 0 where t is ignore_index), then sum them, average
them over the weights (mean) or keep them (none).
"""

from __future__ import annotations

from dlspec.compiler.grad.common import masked
from dlspec.compiler.grad.table import Grads, Node, rule, rule_multi
from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op


def _nll_back(n: Node, g: Value, logp: Value) -> tuple[Value, Value | None]:
    """d loss / d logp, and d loss / d weights where the node has them, given g = d loss / d y."""
    target = n.inputs[1].cast("int64")
    keep = op.Not(op.Equal(target, n.i("ignore_index"))) if n.has("ignore_index") else None
    if keep is not None:
        target = op.Where(keep, target, 0)  # any class: its weight is 0
    w = n.input(2)
    wt = op.Gather(w, target) if w is not None else None  # each position's weight
    if keep is not None:
        wt = masked(wt, keep) if wt is not None else keep.cast_like(g)
    reduction = n.s("reduction")
    coef = g if reduction == "none" else op.Expand(g, op.Shape(target))  # d loss / d (-logp_t)
    if wt is not None:
        coef = coef * wt
    total = None
    if reduction == "mean":  # divided by the sum of the weights
        total = op.ReduceSum(wt, keepdims=0) if wt is not None else op.numel(target).cast_like(g)
        coef = coef / total
    idx = op.Unsqueeze(target, [1])
    dlogp = op.ScatterElements(op.zeros_like(logp), idx, op.Unsqueeze(-coef, [1]), axis=1)
    if w is None:
        return dlogp, None
    # d loss / d w_c: the sum of g (-logp_t) over the positions of class c, (-logp_t - loss) / total
    # for mean; 0 where ignored
    picked = -op.Squeeze(op.GatherElements(logp, idx, axis=1), [1])
    if total is not None:
        picked = (picked - n.outputs[0]) / total
    per = g * picked
    if keep is not None:
        per = masked(per, keep)
    flat = op.Reshape(target, [-1])
    return dlogp, op.ScatterElements(op.zeros_like(w), flat, op.Reshape(per, [-1]), reduction="add")


@rule("NegativeLogLikelihoodLoss")
def _nll(n: Node, g: Value) -> Grads:
    dx, dw = _nll_back(n, g, n.inputs[0])
    return [dx, None, dw][: len(n.inputs)]


@rule_multi("SoftmaxCrossEntropyLoss")
def _softmax_cross_entropy(n: Node, gy: list[Value | None]) -> Grads:
    # log_prob = log_softmax(x) over axis 1, loss = NLL(log_prob): the gradient that reaches log_prob
    # (from the loss, and from the log_prob output where it is used) goes back through log_softmax,
    # dx = dlp - softmax(x) sum_c dlp
    x = n.inputs[0]
    g, g_lp = (list(gy) + [None])[:2]
    lp = n.output(1) or op.LogSoftmax(x, axis=1)
    dw = None
    parts = [g_lp] if g_lp is not None else []
    if g is not None:
        dlp, dw = _nll_back(n, g, lp)
        parts.append(dlp)
    dlp = parts[0] if len(parts) == 1 else parts[0] + parts[1]
    dx = dlp - op.Exp(lp) * op.ReduceSum(dlp, [1], keepdims=1)
    return [dx, None, dw][: len(n.inputs)]
