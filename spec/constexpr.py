"""Evaluate argument expressions (never with eval): numbers, strings, lists, names and arithmetic.

Every number computed stays within the language's limits: a whole number within MAX_INT, a
float finite and real. `**` is judged before it is computed, since 2 ** 2 ** 2 ** 2 ** 2 ** 2
would take minutes to build as a Python integer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from dlspec.spec.errors import SpecError
from dlspec.spec.limits import MAX_INT

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


def _get(expr: Mapping[str, Any] | Any, key: str) -> Any:
    """A field of an expression, whether a parsed dict or a validated spec model."""
    return expr.get(key) if isinstance(expr, Mapping) else getattr(expr, key)


def evaluate(expr: Mapping[str, Any] | Any, env: Mapping[str, Value]) -> Value:
    """Value of an expression dict (or spec model) under `env`; unbound names are Symbols."""
    kind = _get(expr, "kind")
    span = _get(expr, "span")
    if kind in ("num", "str", "bool"):
        return _get(expr, "value")
    if kind == "name":
        name = _get(expr, "id")
        return env[name] if name in env else Symbol(name)
    if kind == "list":
        return [evaluate(i, env) for i in _get(expr, "items")]
    args = [evaluate(a, env) for a in _get(expr, "args")]
    if kind == "func":
        name = _get(expr, "name")
        fn = _FUNCS.get(name)
        if fn is None:
            raise SpecError(f"unknown function '{name}' in an argument "
                            f"(known: {', '.join(sorted(_FUNCS))})", span)
        return _apply(fn, args, name, span)
    op = _get(expr, "op")
    if op == "neg":
        return _apply(lambda a: -a, args, "-", span)
    if op == "pow":
        _check_power(args, span)
    return _apply(_BINARY[op], args, op, span)


def _check_power(args: list[Any], span: Any) -> None:
    """Refuse a whole-number power whose result would pass MAX_INT, before computing it."""
    if len(args) != 2 or not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
        return
    base, exp = args
    if exp > 0 and abs(base) > 1 and (abs(base).bit_length() - 1) * exp >= MAX_INT.bit_length():
        shown = f"({base})" if base < 0 else str(base)
        raise SpecError(f"{shown} ** {exp} is too large: whole numbers are at most {MAX_INT:,} (2^63 - 1)",
                        span)


def _apply(fn: Callable[..., Any], args: list[Any], what: str, span: Any) -> Any:
    if any(isinstance(a, (str, list, bool)) for a in args):
        shown = ", ".join(repr(str(a)) if isinstance(a, str) else repr(a) for a in args)
        raise SpecError(f"cannot apply '{what}' to {shown}: arithmetic needs numbers", span)
    try:
        out = fn(*args)
    except OverflowError:  # 10.0 ** 400, exp(1000)
        raise SpecError(f"'{what}' gives a number too large for a float", span) from None
    except (ArithmeticError, ValueError, TypeError) as err:
        raise SpecError(f"cannot compute '{what}': {err}", span) from None
    if isinstance(out, float) and out.is_integer() and what in ("mul", "add", "sub", "div"):
        if all(isinstance(a, int) for a in args):
            out = int(out)
    return _checked(out, what, span)


def _checked(out: Any, what: str, span: Any) -> Any:
    """A result within the limits: a real, finite number; a whole one within MAX_INT."""
    if isinstance(out, complex):
        raise SpecError(f"'{what}' has no real result here", span)
    if isinstance(out, float) and not math.isfinite(out):
        raise SpecError(f"'{what}' gives {out}, not a finite number", span)
    if isinstance(out, int) and abs(out) > MAX_INT:
        raise SpecError(f"'{what}' gives a whole number beyond {MAX_INT:,} (2^63 - 1), the limit", span)
    return out
