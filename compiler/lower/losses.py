"""Losses in ONNX ops with gradient rules, written in their numerically stable forms.

Each returns a scalar (mean over the batch, as PyTorch's default reduction). cross_entropy and
dice read class scores on axis 1: [N, C] against labels [N], or per position (dense prediction)
[N, C, H, W] against [N, H, W] (a [N, 1, H, W] target is read without its axis 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op
from dlspec.spec import model as m


def _mean(x: Value) -> Value:
    return op.ReduceMean(x, keepdims=0)


def labels(target: Value, scores: Value) -> Value:
    """Integer labels shaped as `scores` [N, C, ...] without its class axis: a [N, 1, ...] target
    of per-position scores loses its axis 1."""
    y = target.cast("int64")
    if scores.rank > 2 and target.rank == scores.rank:
        y = op.Squeeze(y, [1]).with_shape((target.dims[0], *target.dims[2:]))
    return y


def _one_hot(y: Value, scores: Value, valid: Value | None = None) -> Value:
    """Labels y [N, ...] as float rows on the class axis of scores [N, C, ...]; where `valid` is
    false, class 0's row, for the caller to mask out."""
    g = y.graph
    if valid is not None:
        y = op.Where(valid, y, 0)
    return op.OneHot(y, g.const(int(scores.dims[1] or 0), "int64"), g.const([0.0, 1.0]), axis=1)


def _class_targets(target: Value, scores: Value, ignore_index: int | None) -> tuple[Value, Value | None]:
    """target's labels one-hot as scores, and the positions that count (None: all of them), those
    not labelled ignore_index."""
    y = labels(target, scores)
    valid = None if ignore_index is None else op.Not(op.Equal(y, ignore_index))
    return _one_hot(y, scores, valid), valid


def _per_class(values: Sequence[float], scores: Value) -> Value:
    """Per-class constants [C], shaped [C, 1, ...] to broadcast over scores' axes after the classes."""
    return scores.graph.const(np.reshape(np.asarray(values, np.float32), [-1] + [1] * (scores.rank - 2)))


def cross_entropy(logits: Value, target: Value, spec: m.CrossEntropy) -> Value:
    """-(1 - e) log p[y] - (e / C) sum_c log p_c, weighted per class, averaged over the weight
    of the rows (or positions) that are not ignored (PyTorch's CrossEntropyLoss)."""
    classes = int(logits.dims[1] or 0)
    logp = op.LogSoftmax(logits, axis=1)  # log-sum-exp inside: stable
    onehot, valid = _class_targets(target, logits, spec.ignore_index)
    w_rows = None
    if spec.weight is not None:
        w = _per_class(spec.weight, logits)
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
    # a batch whose rows all weigh 0 (every label ignored, or of classes weighted 0) has loss 0:
    # its weighted sum is 0 too, and 0 / 0 would stop the run
    total = op.ReduceSum(weight, keepdims=0)
    return op.ReduceSum(per_row, keepdims=0) / op.Where(op.Equal(total, 0.0), 1.0, total)


def dice(logits: Value, target: Value, spec: m.Dice) -> Value:
    """1 - (1 / C) sum_c (2 sum p_c t_c + s) / (sum p_c + sum t_c + s): p = softmax over the
    classes, t the one-hot labels, each sum over the batch and every position (so a class absent
    from the batch and the prediction scores 1), s = smooth; ignored positions count nowhere."""
    p = op.Softmax(logits, axis=1)
    onehot, valid = _class_targets(target, logits, spec.ignore_index)
    if valid is not None:
        keep = op.Unsqueeze(valid.cast("float32"), [1])  # [N, 1, ...]
        p, onehot = p * keep, onehot * keep
    axes = [0] + list(range(2, logits.rank))  # all but the classes
    both = op.ReduceSum(p * onehot, axes, keepdims=0)
    sizes = op.ReduceSum(p, axes, keepdims=0) + op.ReduceSum(onehot, axes, keepdims=0)
    score = (both * 2.0 + spec.smooth) / (sizes + spec.smooth)
    return 1.0 - _mean(score)


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
    "cross_entropy": cross_entropy, "bce_with_logits": bce_with_logits, "mse": mse, "l1": l1, "huber": huber,
    "dice": dice}


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
    """Accuracy for classification (first classification term), MAE for regression; per-position
    scores [N, C, H, W] get pixel accuracy and mean IoU."""
    term, target = terms[0]
    if term.loss.kind in ("cross_entropy", "dice"):
        if y.rank > 2:
            return dense_metrics(y, target)
        hit = op.Equal(op.ArgMax(y, axis=1, keepdims=0), target.cast("int64"))
        return {"accuracy": _mean(hit.cast("float32"))}
    if term.loss.kind == "bce_with_logits":
        hit = op.Equal(y > 0.0, target.cast("float32") > 0.5)
        return {"accuracy": _mean(hit.cast("float32"))}
    return {"mae": _mean(op.Abs(_diff(y, target)))}


def dense_metrics(scores: Value, target: Value) -> dict[str, Value]:
    """Over the positions labelled with a class 0 .. C-1 (not an ignore_index): `accuracy`, the
    share predicted right, and `mean_iou`, the mean over the classes present (in the labels or the
    predictions) of |predicted c and labelled c| / |predicted c or labelled c|, as
    sklearn.metrics.jaccard_score(average="macro") of the flattened labels."""
    classes = int(scores.dims[1] or 0)
    y = labels(target, scores)
    valid = op.And(y >= 0, y < classes)
    fvalid = valid.cast("float32")
    pred = op.ArgMax(scores, axis=1, keepdims=0)
    hits = op.ReduceSum(op.Equal(pred, y).cast("float32") * fvalid, keepdims=0)
    accuracy = hits / op.Max([op.ReduceSum(fvalid, keepdims=0), 1.0])
    keep = op.Unsqueeze(fvalid, [1])
    p = _one_hot(pred, scores) * keep  # [N, C, ...]
    t = _one_hot(y, scores, valid) * keep
    axes = [0] + list(range(2, scores.rank))
    inter = op.ReduceSum(p * t, axes, keepdims=0)  # [C]
    union = op.ReduceSum(p, axes, keepdims=0) + op.ReduceSum(t, axes, keepdims=0) - inter
    present = (union > 0.5).cast("float32")
    iou = op.ReduceSum(inter / op.Max([union, 1.0]), keepdims=0)
    return {"accuracy": accuracy, "mean_iou": iou / op.Max([op.ReduceSum(present, keepdims=0), 1.0])}
