"""Losses in ONNX ops with gradient rules, written in their numerically stable forms.

Each returns a scalar (mean over the batch, as PyTorch's default reduction).
"""

from __future__ import annotations

from dlspec.compiler.graph import Graph
from dlspec.compiler.tensor import Tensor
from dlspec.spec import model as m

H = "loss"


def _mean(g: Graph, x: str) -> str:
    return g.op1("ReduceMean", [x], H, keepdims=0)


def cross_entropy(g: Graph, logits: Tensor, target: str, spec: m.CrossEntropy) -> str:
    """-(1 - e) log p[y] - (e / C) sum_c log p_c, weighted per class, averaged over the weight
    of the rows that are not ignored (PyTorch's CrossEntropyLoss)."""
    classes = int(logits.shape[1] or 0)
    logp = g.op1("LogSoftmax", [logits.name], H, axis=1)  # log-sum-exp inside: stable
    y = g.op1("Cast", [target], H, to=7)
    valid = None
    if spec.ignore_index is not None:
        valid = g.op1("Not", [g.op1("Equal", [y, g.const(spec.ignore_index, "int64")], H)], H)
        y = g.op1("Where", [valid, y, g.const(0, "int64")], H)
    onehot = g.op1("OneHot", [y, g.const(classes, "int64"), g.const([0.0, 1.0])], H, axis=-1)
    w_rows = None
    if spec.weight is not None:
        w = g.const(spec.weight)
        w_rows = g.op1("ReduceSum", [g.op1("Mul", [onehot, w], H), g.ints([1])], H, keepdims=0)
        picked_w = g.op1("Mul", [onehot, w], H)
        smooth_w = g.op1("Mul", [logp, w], H)
    else:
        picked_w, smooth_w = onehot, logp
    nll = g.op1("Neg", [g.op1("ReduceSum", [g.op1("Mul", [picked_w, logp], H), g.ints([1])], H,
                               keepdims=0)], H)
    per_row = nll
    e = spec.label_smoothing
    if e > 0:
        smooth = g.op1("Neg", [g.op1("ReduceSum", [smooth_w, g.ints([1])], H, keepdims=0)], H)
        per_row = g.op1("Add", [g.op1("Mul", [nll, g.const(1.0 - e)], H),
                                g.op1("Mul", [smooth, g.const(e / classes)], H)], H)
    weight = w_rows
    if valid is not None:
        fvalid = g.op1("Cast", [valid], H, to=1)
        per_row = g.op1("Mul", [per_row, fvalid], H)
        weight = fvalid if weight is None else g.op1("Mul", [weight, fvalid], H)
    if weight is None:
        return _mean(g, per_row)
    total = g.op1("ReduceSum", [weight], H, keepdims=0)
    return g.op1("Div", [g.op1("ReduceSum", [per_row], H, keepdims=0), total], H)


def bce_with_logits(g: Graph, x: Tensor, target: str, spec: m.BceWithLogits) -> str:
    """(1 - t) x + (1 + (w - 1) t) (log(1 + exp(-|x|)) + max(-x, 0)), w the positive weight."""
    t = g.op1("Cast", [target], H, to=1)
    # log(1 + e^-x) without overflow: softplus(-|x|) + max(-x, 0)
    log1p_exp = g.op1("Add", [g.op1("Softplus", [g.op1("Neg", [g.op1("Abs", [x.name], H)], H)], H),
                              g.op1("Relu", [g.op1("Neg", [x.name], H)], H)], H)
    coef = g.const(1.0) if spec.pos_weight is None else g.op1(
        "Add", [g.const(1.0), g.op1("Mul", [t, g.const(spec.pos_weight - 1.0)], H)], H)
    rest = g.op1("Mul", [g.op1("Sub", [g.const(1.0), t], H), x.name], H)
    return _mean(g, g.op1("Add", [rest, g.op1("Mul", [coef, log1p_exp], H)], H))


def _diff(g: Graph, y: Tensor, target: str) -> str:
    return g.op1("Sub", [y.name, g.op1("Cast", [target], H, to=1)], H)


def mse(g: Graph, y: Tensor, target: str, spec: m.Mse) -> str:
    d = _diff(g, y, target)
    return _mean(g, g.op1("Mul", [d, d], H))


def l1(g: Graph, y: Tensor, target: str, spec: m.L1) -> str:
    return _mean(g, g.op1("Abs", [_diff(g, y, target)], H))


def huber(g: Graph, y: Tensor, target: str, spec: m.Huber) -> str:
    """0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta)."""
    d = _diff(g, y, target)
    a = g.op1("Abs", [d], H)
    quad = g.op1("Mul", [g.op1("Mul", [d, d], H), g.const(0.5)], H)
    lin = g.op1("Mul", [g.op1("Sub", [a, g.const(0.5 * spec.delta)], H), g.const(spec.delta)], H)
    return _mean(g, g.op1("Where", [g.op1("Less", [a, g.const(spec.delta)], H), quad, lin], H))


LOSSES = {"cross_entropy": cross_entropy, "bce_with_logits": bce_with_logits, "mse": mse, "l1": l1,
          "huber": huber}


def total_loss(g: Graph, y: Tensor, terms: list[tuple[m.LossTerm, Tensor]]) -> str:
    """The weighted sum of the model's loss terms."""
    parts = []
    for term, target in terms:
        value = LOSSES[term.loss.kind](g, y, target.name, term.loss)  # type: ignore[operator]
        parts.append(value if term.weight == 1.0 else g.op1("Mul", [value, g.const(term.weight)], H))
    return parts[0] if len(parts) == 1 else g.op1("Sum", parts, H)


def metrics(g: Graph, y: Tensor, terms: list[tuple[m.LossTerm, Tensor]]) -> dict[str, str]:
    """Accuracy for classification (first classification term), MAE for regression."""
    term, target = terms[0]
    if term.loss.kind == "cross_entropy":
        pred = g.op1("ArgMax", [y.name], "metric", axis=1, keepdims=0)
        hit = g.op1("Equal", [pred, g.op1("Cast", [target.name], "metric", to=7)], "metric")
        return {"accuracy": g.op1("ReduceMean", [g.op1("Cast", [hit], "metric", to=1)], "metric", keepdims=0)}
    if term.loss.kind == "bce_with_logits":
        pred = g.op1("Greater", [y.name, g.const(0.0)], "metric")
        truth = g.op1("Greater", [g.op1("Cast", [target.name], "metric", to=1), g.const(0.5)], "metric")
        hit = g.op1("Equal", [pred, truth], "metric")
        return {"accuracy": g.op1("ReduceMean", [g.op1("Cast", [hit], "metric", to=1)], "metric", keepdims=0)}
    return {"mae": _mean(g, g.op1("Abs", [_diff(g, y, target.name)], "metric"))}
