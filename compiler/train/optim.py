"""The optimizer step in graph ops: clipping, weight decay, sgd / adam / adamw.

`lr` (float) and `step` (int64, 1 for the first step) are graph inputs, so schedules live in
the runtime. Optimizer state is named after its parameter: `w.momentum`, `w.m`, `w.v`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dlspec.compiler.graph import Graph, Value
from dlspec.compiler.graph import ops as op
from dlspec.compiler.target import lowering
from dlspec.spec import model as m


@dataclass
class Slot:
    """One trainable parameter with its gradient, shape and learning-rate multiplier."""

    name: str
    grad: Value
    shape: tuple[int, ...]
    lr_mult: float = 1.0


@dataclass
class Group:
    """What one run of update ops works on: a parameter, or several (dlspec.compiler.tune.optim)."""

    slots: list[Slot]
    grad: Value
    values: Callable[[str], Value]  # the current value of a parameter or state suffix ("", ".m")
    unpack: Callable[[str, Value], dict[str, Value]]  # (suffix, new value) -> {name + suffix: value}


def state_names(spec: m.Optimizer, param: str) -> list[str]:
    return [param + s for s in _suffixes(spec)]


def _suffixes(spec: m.Optimizer) -> list[str]:
    if isinstance(spec, m.Sgd):
        return [".momentum"] if spec.momentum > 0 else []
    return [".m", ".v"]


def step_graph(g: Graph, spec: m.Optimizer, clip: m.Clip | None, slots: list[Slot], lr: Value,
               step: Value) -> dict[str, Value]:
    """Next values: `name` -> value for every parameter and state slot (named without `.next`)."""
    with g.at("optim"):
        groups = parameter_groups(g, slots)
        grads = _clip([gr.grad for gr in groups], clip)
        t = step.cast("float32")
        first = op.Equal(step, 1)
        out: dict[str, Value] = {}
        for group, grad in zip(groups, grads):
            mult = group.slots[0].lr_mult
            rate = lr if mult == 1.0 else lr * mult
            if isinstance(spec, m.Sgd):
                new = _sgd(spec, group.values, grad, rate, first)
            else:
                new = _adam(spec, group.values, grad, rate, t)
            for suffix, v in new.items():
                out.update(group.unpack(suffix, v))
        return out


@lowering
def parameter_groups(g: Graph, slots: list[Slot]) -> list[Group]:
    """The runs of update ops: one per parameter."""
    return [single(g, s) for s in slots]


def single(g: Graph, s: Slot) -> Group:
    return Group([s], s.grad, lambda suffix: g.value(s.name + suffix, "float32", s.shape),
                 lambda suffix, v: {s.name + suffix: v})


def _clip(grads: list[Value], spec: m.Clip | None) -> list[Value]:
    """Clip gradients before weight decay, as torch.nn.utils.clip_grad_* then optimizer.step."""
    if spec is None or not grads:  # nothing to clip where every parameter is frozen
        return grads
    if isinstance(spec, m.GradValue):
        return [op.Clip(gr, -spec.limit, spec.limit) for gr in grads]
    # grad_norm: scale = min(1, max_norm / (||g||_2 + 1e-6)) over all gradients together;
    # each sum of squares in float64: one float32 sum over a long pack drifts by 1e-5 (relative),
    # which moves every clipped gradient with it
    squares = [op.ReduceSumSquare(gr.cast("float64"), keepdims=0) for gr in grads]
    total = squares[0] if len(squares) == 1 else op.Sum(squares)
    norm = op.Sqrt(total).cast("float32")
    scale = op.Min([spec.max_norm / (norm + 1e-6), 1.0])
    return [gr * scale for gr in grads]


def _sgd(spec: m.Sgd, value: Callable[[str], Value], grad: Value, rate: Value,
         first: Value) -> dict[str, Value]:
    # d = g + wd p; buf = d on the first step, else mu buf + (1 - dampening) d;
    # step along d + mu buf (nesterov) or buf; p -= lr * step
    p = value("")
    d = grad if spec.weight_decay == 0 else grad + p * spec.weight_decay
    out: dict[str, Value] = {}
    if spec.momentum > 0:
        # the buffer starts at zero, so mu buf + c d with c = 1 on the first step is exactly d:
        # a scalar choice instead of a full-size Where
        c = op.Where(first, p.scalar(1.0), 1.0 - spec.dampening)
        new_buf = value(".momentum") * spec.momentum + d * c
        out[".momentum"] = new_buf
        d = d + new_buf * spec.momentum if spec.nesterov else new_buf
    out[""] = p - d * rate
    return out


def _bias_correction(beta: float, t: Value) -> Value:
    """1 - beta^t in float64 (then float32 where used): in float32 alone it is off by 1.3e-5
    (relative) at beta 0.999, as float32(0.999) is, and the error goes straight into Adam's
    step size."""
    return 1.0 - op.Pow(t.graph.const(beta, "float64"), t.cast("float64"))


def _adam(spec: m.Adam, value: Callable[[str], Value], grad: Value, rate: Value,
          t: Value) -> dict[str, Value]:
    # as torch.optim.Adam(W): m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    # p -= (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps); adamw first p *= 1 - lr wd
    b1, b2 = spec.betas
    p = base = value("")
    if spec.weight_decay and spec.kind == "adam":  # L2 penalty inside the gradient
        grad = grad + p * spec.weight_decay
    if spec.weight_decay and spec.kind == "adamw":  # decoupled decay (Loshchilov & Hutter)
        base = p * (1.0 - rate * spec.weight_decay)
    m1 = value(".m") * b1 + grad * (1.0 - b1)
    v1 = value(".v") * b2 + (grad * grad) * (1.0 - b2)
    bc1, bc2 = _bias_correction(b1, t), _bias_correction(b2, t)
    # the scalars lr / bc1 and sqrt(bc2) in float64, as torch computes them in Python floats
    size = (rate.cast("float64") / bc1).cast("float32")
    root = op.Sqrt(bc2).cast("float32")
    stepv = (m1 / (op.Sqrt(v1) / root + spec.eps)) * size
    return {".m": m1, ".v": v1, "": base - stepv}
