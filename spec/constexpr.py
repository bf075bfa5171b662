"""Evaluate argument expressions (never with eval): numbers, strings, lists, names and arithmetic."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from dlspec.spec.errors import SpecError

Value = Any


class Symbol(str):
    """An unbound name used as a value: `activation=gelu`, `from=[stage1, stage2]`."""


_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a**b,
}
_FUNCS: dict[str, Callable[..., Any]] = {
    "min": min, "max": max, "abs": abs, "int": int, "sqrt": math.sqrt, "log": math.log,
    "exp": math.exp, "floor": math.floor, "ceil": math.ceil,
}


def evaluate(expr: Mapping[str, Any] | Any, env: Mapping[str, Value]) -> Value:
    """Value of an expression dict (or spec model) under `env`; unbound names are Symbols."""
    node = expr if isinstance(expr, Mapping) else expr.model_dump()
    span = node.get("span") if isinstance(expr, Mapping) else expr.span
    kind = node["kind"]
    if kind in ("num", "str", "bool"):
        return node["value"]
    if kind == "name":
        return env[node["id"]] if node["id"] in env else Symbol(node["id"])
    if kind == "list":
        items = node["items"] if isinstance(expr, Mapping) else expr.items
        return [evaluate(i, env) for i in items]
    args_src = node["args"] if isinstance(expr, Mapping) else expr.args
    args = [evaluate(a, env) for a in args_src]
    if kind == "func":
        fn = _FUNCS.get(node["name"])
        if fn is None:
            raise SpecError(f"unknown function '{node['name']}' in an argument "
                            f"(known: {', '.join(sorted(_FUNCS))})", span)
        return _apply(fn, args, node["name"], span)
    if node["op"] == "neg":
        return _apply(lambda a: -a, args, "-", span)
    return _apply(_BINARY[node["op"]], args, node["op"], span)


def _apply(fn: Callable[..., Any], args: list[Any], what: str, span: Any) -> Any:
    if any(isinstance(a, (str, list, bool)) for a in args):
        shown = ", ".join(repr(str(a)) if isinstance(a, str) else repr(a) for a in args)
        raise SpecError(f"cannot apply '{what}' to {shown}: arithmetic needs numbers", span)
    try:
        out = fn(*args)
    except (ArithmeticError, ValueError, TypeError) as err:
        raise SpecError(f"cannot compute '{what}': {err}", span) from None
    if isinstance(out, float) and out.is_integer() and what in ("mul", "add", "sub", "div"):
        if all(isinstance(a, int) for a in args):
            return int(out)
    return out
