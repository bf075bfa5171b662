"""Lower the `features` block: derived inputs computed inside the graph from raw inputs."""

from __future__ import annotations

import numpy as np

from compiler.graph import Graph
from compiler.tensor import Shape, Tensor, show
from spec import model as m
from spec.errors import CompileError, SpecError, did_you_mean

_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow"}
_UNARY = {"log": "Log", "exp": "Exp", "sqrt": "Sqrt", "abs": "Abs", "neg": "Neg"}
_VARIADIC = {"min": "Min", "max": "Max"}
FUNCTIONS = sorted(list(_UNARY) + list(_VARIADIC) + ["pow", "clip"])


def lower_features(g: Graph, feats: m.Features, values: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each definition adds a value (or replaces the input of the same name), in order."""
    out = dict(values)
    for d in feats.defs:
        g.where = f"{d.span} features.{d.name}"
        t = _expr(g, d.expr, out, f"features.{d.name}")
        if isinstance(t, float):
            raise SpecError(f"feature '{d.name}' is a constant; it must use an input", d.span)
        out[d.name] = t
    return out


def _broadcast(a: Shape, b: Shape, span: object) -> Shape:
    """NumPy broadcasting where the symbolic batch size N matches only N or 1."""
    rank = max(len(a), len(b))
    a2, b2 = (1,) * (rank - len(a)) + a, (1,) * (rank - len(b)) + b
    out: list[int | None] = []
    for x, y in zip(a2, b2):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            raise CompileError(f"shapes {show(a)} and {show(b)} do not broadcast: a feature "
                               "combines values of the same shape, or a value with a number",
                               span)  # type: ignore[arg-type]
    return tuple(out)


def _as_tensor(g: Graph, v: Tensor | float, hint: str) -> Tensor:
    return v if isinstance(v, Tensor) else Tensor(g.const(v, hint=hint), ())


def _expr(g: Graph, e: m.Expr, vals: dict[str, Tensor], hint: str) -> Tensor | float:
    if isinstance(e, m.Num):
        return float(e.value)
    if isinstance(e, m.Name):
        if e.id not in vals:
            raise SpecError(f"unknown input or feature '{e.id}'{did_you_mean(e.id, vals)}; "
                            f"known: {', '.join(vals)}", e.span)
        t = vals[e.id]
        if t.dtype != "float32":
            t = Tensor(g.op1("Cast", [t.name], hint, to=1), t.shape)
        return t
    if isinstance(e, m.Op):
        args = [_expr(g, a, vals, hint) for a in e.args]
        if all(isinstance(a, float) for a in args):
            return _fold(e.op, args, e)  # type: ignore[arg-type]
        if e.op == "neg":
            t = _as_tensor(g, args[0], hint)
            return Tensor(g.op1("Neg", [t.name], hint), t.shape)
        return _binary(g, _BINARY[e.op], args, hint, e.span)
    if isinstance(e, m.Func):
        return _func(g, e, vals, hint)
    raise SpecError("features are arithmetic over inputs: numbers, names, + - * / ** and "
                    f"{', '.join(FUNCTIONS)}", e.span)


def _binary(g: Graph, op: str, args: list[Tensor | float], hint: str, span: object) -> Tensor:
    a, b = (_as_tensor(g, x, hint) for x in args)
    shape = _broadcast(a.shape, b.shape, span)
    return Tensor(g.op1(op, [a.name, b.name], hint), shape)


def _fold(op: str, args: list[float], e: m.Op) -> float:
    try:
        if op == "neg":
            return -args[0]
        return float({"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
                      "pow": np.power}[op](args[0], args[1]))
    except ZeroDivisionError:
        raise SpecError("division by zero", e.span) from None


def _func(g: Graph, e: m.Func, vals: dict[str, Tensor], hint: str) -> Tensor:
    args = [_expr(g, a, vals, hint) for a in e.args]
    name = e.name

    def arity(n: int, form: str) -> None:
        if len(args) != n:
            raise SpecError(f"{name} takes {n} argument(s): {form}", e.span)

    if name in _UNARY:
        arity(1, f"{name}(x)")
        t = _as_tensor(g, args[0], hint)
        return Tensor(g.op1(_UNARY[name], [t.name], hint), t.shape)
    if name == "pow":
        arity(2, "pow(x, p)")
        return _binary(g, "Pow", args, hint, e.span)
    if name in _VARIADIC:
        if len(args) < 2:
            raise SpecError(f"{name} takes two or more arguments", e.span)
        ts = [_as_tensor(g, a, hint) for a in args]
        shape = ts[0].shape
        for t in ts[1:]:
            shape = _broadcast(shape, t.shape, e.span)
        return Tensor(g.op1(_VARIADIC[name], [t.name for t in ts], hint), shape)
    if name == "clip":
        arity(3, "clip(x, low, high)")
        x, lo, hi = args
        if not isinstance(lo, float) or not isinstance(hi, float):
            raise SpecError("clip bounds must be numbers: clip(x, low, high)", e.span)
        if lo > hi:
            raise SpecError(f"clip bounds are reversed: low {lo} > high {hi}", e.span)
        t = _as_tensor(g, x, hint)
        return Tensor(g.op1("Clip", [t.name, g.const(lo), g.const(hi)], hint), t.shape)
    raise SpecError(f"unknown function '{name}'{did_you_mean(name, FUNCTIONS)}; "
                    f"features can use: {', '.join(FUNCTIONS)}", e.span)
