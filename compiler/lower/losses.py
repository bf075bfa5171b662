"""Losses in ONNX ops with gradient rules, written in their numerically stable forms.

Each returns a scalar (mean over the batch, as PyTorch's default reduction).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op
from dlspec.spec import model as m


def _mean(x: Value) -> Value:
    return op.ReduceMean(x, keepdims=0)


def cross_entropy(logits: Value, target: Value, spec: m.CrossEntropy) -> Value:
    """-(1 - e) log p[y] - (e / C) sum_c log p_c, weighted per class, averaged over the weight
    of the rows that are not ignored (PyTorch's CrossEntropyLoss)."""
    g = logits.graph
    classes = int(logits.dims[1] or 0)
    logp = op.LogSoftmax(logits, axis=1)  # log-sum-exp inside: stable
    y = target.cast("int64")
    valid = None
    if spec.ignore_index is not None:
        valid = op.Not(op.Equal(y, spec.ignore_index))
        y = op.Where(valid, y, 0)
    onehot = op.OneHot(y, g.const(classes, "int64"), g.const([0.0, 1.0]), axis=-1)
    w_rows = None
    if spec.weight is not None:
        w = g.const(spec.weight)
        w_rows = op.ReduceSum(onehot * w, [1], keepdims=0)
        picked_w, smooth_w = onehot * w, logp * w
    else:
        picked_w, smooth_w = onehot, logp
    per_row = nll = -op.ReduceSum(picked_w * logp, [1], keepdims=0)
    e = spec.label_smoothing
    if e > 0:
        smooth = -op.ReduceSum(smooth_w, [1], keepdims=0)
        per_row = nll * (1.0 - e) + smooth * (e / classes)
    weight = w_rows
    if valid is not None:
        fvalid = valid.cast("float32")
        per_row = per_row * fvalid
        weight = fvalid if weight is None else weight * fvalid
    if weight is None:
        return _mean(per_row)
    return op.ReduceSum(per_row, keepdims=0) / op.ReduceSum(weight, keepdims=0)


def bce_with_logits(x: Value, target: Value, spec: m.BceWithLogits) -> Value:
    """(1 - t) x + (1 + (w - 1) t) (log(1 + exp(-|x|)) + max(-x, 0)), w the positive weight."""
    t = target.cast("float32")
    # log(1 + e^-x) without overflow: softplus(-|x|) + max(-x, 0)
    log1p_exp = op.Softplus(-op.Abs(x)) + op.Relu(-x)
    coef = x.graph.const(1.0) if spec.pos_weight is None else 1.0 + t * (spec.pos_weight - 1.0)
    return _mean((1.0 - t) * x + coef * log1p_exp)


def _diff(y: Value, target: Value) -> Value:
    return y - target.cast("float32")


def mse(y: Value, target: Value, spec: m.Mse) -> Value:
    d = _diff(y, target)
    return _mean(d * d)


def l1(y: Value, target: Value, spec: m.L1) -> Value:
    return _mean(op.Abs(_diff(y, target)))


def huber(y: Value, target: Value, spec: m.Huber) -> Value:
    """0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta)."""
    d = _diff(y, target)
    a = op.Abs(d)
    quad = (d * d) * 0.5
    lin = (a - 0.5 * spec.delta) * spec.delta
    return _mean(op.Where(a < spec.delta, quad, lin))


LOSSES: dict[str, Callable[[Value, Value, Any], Value]] = {
    "cross_entropy": cross_entropy, "bce_with_logits": bce_with_logits, "mse": mse, "l1": l1, "huber": huber}


def total_loss(terms: Sequence[tuple[m.LossTerm, Value, Value]]) -> tuple[Value, list[Value]]:
    """The weighted sum of the loss terms, each (term, prediction, target), and each term's own
    value before its weight."""
    parts, values = [], []
    for term, y, target in terms:
        value = LOSSES[term.loss.kind](y, target, term.loss)
        values.append(value)
        parts.append(value if term.weight == 1.0 else value * term.weight)
    return (parts[0] if len(parts) == 1 else op.Sum(parts)), values


def metrics(y: Value, terms: list[tuple[m.LossTerm, Value]]) -> dict[str, Value]:
    """Accuracy for classification (first classification term), MAE for regression."""
    term, target = terms[0]
    if term.loss.kind == "cross_entropy":
        hit = op.Equal(op.ArgMax(y, axis=1, keepdims=0), target.cast("int64"))
        return {"accuracy": _mean(hit.cast("float32"))}
    if term.loss.kind == "bce_with_logits":
        hit = op.Equal(y > 0.0, target.cast("float32") > 0.5)
        return {"accuracy": _mean(hit.cast("float32"))}
    return {"mae": _mean(op.Abs(_diff(y, target)))}
