"""The optimizer step in graph ops: clipping, weight decay, sgd / adam / adamw.

`lr` (float) and `step` (int64, 1 for the first step) are graph inputs, so schedules live in
the runtime. Optimizer state is named after its parameter: `w.momentum`, `w.m`, `w.v`.

Small parameters (biases, norm scales, small kernels) are updated together: their gradients,
values and state are concatenated into one flat tensor per learning-rate multiplier, updated in
one run of ops, and split back. Per tensor, each of the ~15 elementwise ops costs onnxruntime a
fixed overhead that dominates on small tensors (the digits model: 12 ms of a 78 ms step on one
thread); large tensors stay apart, where concatenating would only add copies. A step replayed as
a CUDA graph has no per-op overhead to save, and the pack's uneven Concat and Split would stage
their metadata through host buffers that a captured graph re-reads, so `pack=False` leaves every
parameter apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from dlspec.compiler.graph import Graph
from dlspec.spec import model as m

H = "optim"
PACK_BELOW = 1 << 16  # elements: tensors smaller than this are updated in the flat pack


@dataclass
class Slot:
    """One trainable parameter with its gradient, shape and learning-rate multiplier."""

    name: str
    grad: str
    shape: tuple[int, ...]
    lr_mult: float = 1.0


@dataclass
class Group:
    """What one run of update ops works on: a single parameter, or a flat pack of several."""

    slots: list[Slot]
    grad: str
    values: Callable[[str], str]  # the current value of a parameter or state suffix ("", ".m")


def state_names(spec: m.Optimizer, param: str) -> list[str]:
    return [param + s for s in _suffixes(spec)]


def _suffixes(spec: m.Optimizer) -> list[str]:
    if isinstance(spec, m.Sgd):
        return [".momentum"] if spec.momentum > 0 else []
    return [".m", ".v"]


def step_graph(g: Graph, spec: m.Optimizer, clip: m.Clip | None, slots: list[Slot], lr: str,
               step: str, pack: bool = True) -> dict[str, str]:
    """Next values: `name` -> value for every parameter and state slot (named without `.next`)."""
    groups = _groups(g, slots) if pack else [_single(s) for s in slots]
    grads = _clip(g, [gr.grad for gr in groups], clip)
    t = g.op1("Cast", [step], H, to=1)
    first = g.op1("Equal", [step, g.const(1, "int64")], H)
    out: dict[str, str] = {}
    for group, grad in zip(groups, grads):
        mult = group.slots[0].lr_mult
        rate = lr if mult == 1.0 else g.op1("Mul", [lr, g.const(mult)], H)
        if isinstance(spec, m.Sgd):
            new = _sgd(g, spec, group.values, grad, rate, first)
        else:
            new = _adam(g, spec, group.values, grad, rate, t)
        out.update(_unpack(g, group, new))
    return out


def _groups(g: Graph, slots: list[Slot]) -> list[Group]:
    big = [s for s in slots if math.prod(s.shape) >= PACK_BELOW]
    small = [s for s in slots if math.prod(s.shape) < PACK_BELOW]
    groups = [_single(s) for s in big]
    for mult in dict.fromkeys(s.lr_mult for s in small):
        members = [s for s in small if s.lr_mult == mult]
        groups.append(_single(members[0]) if len(members) == 1 else _pack(g, members))
    return groups


def _single(s: Slot) -> Group:
    return Group([s], s.grad, lambda suffix: s.name + suffix)


def _pack(g: Graph, members: list[Slot]) -> Group:
    flat = g.ints([-1])

    def concat(names: list[str]) -> str:
        return g.op1("Concat", [g.op1("Reshape", [n, flat], H) for n in names], H, axis=0)

    return Group(members, concat([s.grad for s in members]),
                 lambda suffix: concat([s.name + suffix for s in members]))


def _unpack(g: Graph, group: Group, new: dict[str, str]) -> dict[str, str]:
    """{suffix: flat value} -> {parameter or state name: value shaped like the parameter}."""
    if len(group.slots) == 1:
        return {group.slots[0].name + suffix: v for suffix, v in new.items()}
    sizes = g.ints([math.prod(s.shape) for s in group.slots])
    out: dict[str, str] = {}
    for suffix, v in new.items():
        parts = g.op("Split", [v, sizes], H, len(group.slots), axis=0)
        for s, part in zip(group.slots, parts):
            out[s.name + suffix] = g.op1("Reshape", [part, g.ints(list(s.shape))], H)
    return out


def _clip(g: Graph, grads: list[str], spec: m.Clip | None) -> list[str]:
    """Clip gradients before weight decay, as torch.nn.utils.clip_grad_* then optimizer.step."""
    if spec is None:
        return grads
    if isinstance(spec, m.GradValue):
        lo, hi = g.const(-spec.limit), g.const(spec.limit)
        return [g.op1("Clip", [gr, lo, hi], H) for gr in grads]
    # grad_norm: scale = min(1, max_norm / (||g||_2 + 1e-6)) over all gradients together
    # each sum of squares in float64: one float32 sum over a long pack drifts by 1e-5 (relative),
    # which moves every clipped gradient with it
    squares = [g.op1("ReduceSumSquare", [g.op1("Cast", [gr], H, to=11)], H, keepdims=0) for gr in grads]
    total = squares[0] if len(squares) == 1 else g.op1("Sum", squares, H)
    norm = g.op1("Cast", [g.op1("Sqrt", [total], H)], H, to=1)
    coef = g.op1("Div", [g.const(spec.max_norm), g.op1("Add", [norm, g.const(1e-6)], H)], H)
    scale = g.op1("Min", [coef, g.const(1.0)], H)
    return [g.op1("Mul", [gr, scale], H) for gr in grads]


def _scaled(g: Graph, x: str, k: float) -> str:
    return g.op1("Mul", [x, g.const(k)], H)


def _sgd(g: Graph, spec: m.Sgd, value: Callable[[str], str], grad: str, rate: str,
         first: str) -> dict[str, str]:
    # d = g + wd p; buf = d on the first step, else mu buf + (1 - dampening) d;
    # step along d + mu buf (nesterov) or buf; p -= lr * step
    p = value("")
    d = grad if spec.weight_decay == 0 else g.op1("Add", [grad, _scaled(g, p, spec.weight_decay)], H)
    out: dict[str, str] = {}
    if spec.momentum > 0:
        # the buffer starts at zero, so mu buf + c d with c = 1 on the first step is exactly d:
        # a scalar choice instead of a full-size Where
        c = g.op1("Where", [first, g.const(1.0), g.const(1.0 - spec.dampening)], H)
        new_buf = g.op1("Add", [_scaled(g, value(".momentum"), spec.momentum), g.op1("Mul", [d, c], H)], H)
        out[".momentum"] = new_buf
        d = g.op1("Add", [d, _scaled(g, new_buf, spec.momentum)], H) if spec.nesterov else new_buf
    out[""] = g.op1("Sub", [p, g.op1("Mul", [d, rate], H)], H)
    return out


def _bias_correction(g: Graph, beta: float, t: str) -> str:
    """1 - beta^t in float64 (then float32 where used): in float32 alone it is off by 1.3e-5
    (relative) at beta 0.999, as float32(0.999) is, and the error goes straight into Adam's
    step size."""
    t64 = g.op1("Cast", [t], H, to=11)  # TensorProto.DOUBLE
    power = g.op1("Pow", [g.const(beta, "float64"), t64], H)
    return g.op1("Sub", [g.const(1.0, "float64"), power], H)


def _adam(g: Graph, spec: m.Adam, value: Callable[[str], str], grad: str, rate: str,
          t: str) -> dict[str, str]:
    # as torch.optim.Adam(W): m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    # p -= (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps); adamw first p *= 1 - lr wd
    b1, b2 = spec.betas
    p = base = value("")
    if spec.weight_decay and spec.kind == "adam":  # L2 penalty inside the gradient
        grad = g.op1("Add", [grad, _scaled(g, p, spec.weight_decay)], H)
    if spec.weight_decay and spec.kind == "adamw":  # decoupled decay (Loshchilov & Hutter)
        shrink = g.op1("Sub", [g.const(1.0), g.op1("Mul", [rate, g.const(spec.weight_decay)], H)], H)
        base = g.op1("Mul", [p, shrink], H)
    m1 = g.op1("Add", [_scaled(g, value(".m"), b1), _scaled(g, grad, 1.0 - b1)], H)
    v1 = g.op1("Add", [_scaled(g, value(".v"), b2), _scaled(g, g.op1("Mul", [grad, grad], H), 1.0 - b2)], H)
    bc1, bc2 = _bias_correction(g, b1, t), _bias_correction(g, b2, t)
    # the scalars lr / bc1 and sqrt(bc2) in float64, as torch computes them in Python floats
    size = g.op1("Cast", [g.op1("Div", [g.op1("Cast", [rate], H, to=11), bc1], H)], H, to=1)
    root = g.op1("Cast", [g.op1("Sqrt", [bc2], H)], H, to=1)
    denom = g.op1("Add", [g.op1("Div", [g.op1("Sqrt", [v1], H), root], H), g.const(spec.eps)], H)
    stepv = g.op1("Mul", [g.op1("Div", [m1, denom], H), size], H)
    return {".m": m1, ".v": v1, "": g.op1("Sub", [base, stepv], H)}
