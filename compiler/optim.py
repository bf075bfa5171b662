"""The optimizer step in graph ops: clipping, weight decay, sgd / adam / adamw.

`lr` (float) and `step` (int64, 1 for the first step) are graph inputs, so schedules live in
the runtime. Optimizer state is named after its parameter: `w.momentum`, `w.m`, `w.v`.
"""

from __future__ import annotations

from dataclasses import dataclass

from compiler.graph import Graph
from spec import model as m

H = "optim"


@dataclass
class Slot:
    """One trainable parameter with its gradient and learning-rate multiplier."""

    name: str
    grad: str
    lr_mult: float = 1.0


def clip(g: Graph, slots: list[Slot], spec: m.Clip | None) -> list[Slot]:
    """Clip gradients before weight decay, as torch.nn.utils.clip_grad_* then optimizer.step."""
    if spec is None:
        return slots
    if isinstance(spec, m.GradValue):
        lo, hi = g.const(-spec.limit), g.const(spec.limit)
        return [Slot(s.name, g.op1("Clip", [s.grad, lo, hi], H), s.lr_mult) for s in slots]
    # grad_norm: scale = min(1, max_norm / (||g||_2 + 1e-6)) over all gradients together
    squares = [g.op1("ReduceSum", [g.op1("Mul", [s.grad, s.grad], H)], H, keepdims=0) for s in slots]
    total = squares[0] if len(squares) == 1 else g.op1("Sum", squares, H)
    norm = g.op1("Sqrt", [total], H)
    coef = g.op1("Div", [g.const(spec.max_norm), g.op1("Add", [norm, g.const(1e-6)], H)], H)
    scale = g.op1("Min", [coef, g.const(1.0)], H)
    return [Slot(s.name, g.op1("Mul", [s.grad, scale], H), s.lr_mult) for s in slots]


def state_names(spec: m.Optimizer, param: str) -> list[str]:
    if isinstance(spec, m.Sgd):
        return [f"{param}.momentum"] if spec.momentum > 0 else []
    return [f"{param}.m", f"{param}.v"]


def update(g: Graph, spec: m.Optimizer, slots: list[Slot], lr: str, step: str) -> dict[str, str]:
    """Next values: `name` -> value for every parameter and state slot (named without `.next`)."""
    out: dict[str, str] = {}
    t = g.op1("Cast", [step], H, to=1)
    first = g.op1("Equal", [step, g.const(1, "int64")], H)
    for s in slots:
        p = s.name
        rate = lr if s.lr_mult == 1.0 else g.op1("Mul", [lr, g.const(s.lr_mult)], H)
        grad = s.grad
        if isinstance(spec, m.Sgd):
            out.update(_sgd(g, spec, p, grad, rate, first))
        else:
            out.update(_adam(g, spec, p, grad, rate, t))
    return out


def _scaled(g: Graph, x: str, k: float) -> str:
    return g.op1("Mul", [x, g.const(k)], H)


def _sgd(g: Graph, spec: m.Sgd, p: str, grad: str, rate: str, first: str) -> dict[str, str]:
    # d = g + wd p; buf = d on the first step, else mu buf + (1 - dampening) d;
    # step along d + mu buf (nesterov) or buf; p -= lr * step
    d = grad if spec.weight_decay == 0 else g.op1("Add", [grad, _scaled(g, p, spec.weight_decay)], H)
    out: dict[str, str] = {}
    if spec.momentum > 0:
        buf = f"{p}.momentum"
        blended = g.op1("Add", [_scaled(g, buf, spec.momentum), _scaled(g, d, 1.0 - spec.dampening)], H)
        new_buf = g.op1("Where", [first, d, blended], H)
        out[buf] = new_buf
        d = g.op1("Add", [d, _scaled(g, new_buf, spec.momentum)], H) if spec.nesterov else new_buf
    out[p] = g.op1("Sub", [p, g.op1("Mul", [d, rate], H)], H)
    return out


def _bias_correction(g: Graph, beta: float, t: str) -> str:
    """1 - beta^t in float64, then float32: in float32 alone it is off by 1.3e-5 (relative) at
    beta 0.999, as float32(0.999) is, and the error goes straight into Adam's step size."""
    t64 = g.op1("Cast", [t], H, to=11)  # TensorProto.DOUBLE
    power = g.op1("Pow", [g.const(beta, "float64"), t64], H)
    return g.op1("Cast", [g.op1("Sub", [g.const(1.0, "float64"), power], H)], H, to=1)


def _adam(g: Graph, spec: m.Adam, p: str, grad: str, rate: str, t: str) -> dict[str, str]:
    # m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    # p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps); adamw first p *= 1 - lr wd
    b1, b2 = spec.betas
    base = p
    if spec.weight_decay and spec.kind == "adam":  # L2 penalty inside the gradient
        grad = g.op1("Add", [grad, _scaled(g, p, spec.weight_decay)], H)
    if spec.weight_decay and spec.kind == "adamw":  # decoupled decay (Loshchilov & Hutter)
        shrink = g.op1("Sub", [g.const(1.0), g.op1("Mul", [rate, g.const(spec.weight_decay)], H)], H)
        base = g.op1("Mul", [p, shrink], H)
    m1 = g.op1("Add", [_scaled(g, f"{p}.m", b1), _scaled(g, grad, 1.0 - b1)], H)
    v1 = g.op1("Add", [_scaled(g, f"{p}.v", b2), _scaled(g, g.op1("Mul", [grad, grad], H), 1.0 - b2)], H)
    bc1, bc2 = _bias_correction(g, b1, t), _bias_correction(g, b2, t)
    denom = g.op1("Add", [g.op1("Sqrt", [g.op1("Div", [v1, bc2], H)], H), g.const(spec.eps)], H)
    stepv = g.op1("Div", [g.op1("Div", [m1, bc1], H), denom], H)
    return {f"{p}.m": m1, f"{p}.v": v1, p: g.op1("Sub", [base, g.op1("Mul", [stepv, rate], H)], H)}
