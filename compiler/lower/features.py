"""Lower the `features` block: derived inputs computed inside the graph from raw inputs.

`standardize(x)` is fitted: (x - mean) / std with the mean and std of x over
the training split, which the runtime measures (through compiler.feature_probe)
and passes in as `Moments` keyed by the name of the feature that calls it. Without them (a spec
compiled with no data) it is the identity, and `Lowered.unfitted` says so.

Tables (compiler.lower.columns): a `string[N]` input is a category, read through `one_hot(x)` or
`index(x)` with the vocabulary learnt on the training split (`Vocab`); a numeric input with
missing values (NaN) is read through `fill(x, mean)` or `fill(x, 0)`, and `missing(x)` is its
indicator column.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dlspec.compiler.graph import Dim, Graph, Shape, Value, show
from dlspec.compiler.graph import ops as op
from dlspec.compiler.lower import columns
from dlspec.compiler.lower.columns import FillMean, Vocab
from dlspec.spec import model as m
from dlspec.spec.errors import CompileError, SpecError, did_you_mean

_BINARY: dict[str, Callable[[Value, Value], Value]] = {
    "add": op.Add, "sub": op.Sub, "mul": op.Mul, "div": op.Div, "pow": op.Pow}
_UNARY: dict[str, Callable[[Value], Value]] = {
    "log": op.Log, "exp": op.Exp, "sqrt": op.Sqrt, "abs": op.Abs, "neg": op.Neg}
_VARIADIC: dict[str, Callable[[Sequence[Value]], Value]] = {"min": op.Min, "max": op.Max}
STANDARDIZE = "standardize"
FUNCTIONS = sorted(list(_UNARY) + list(_VARIADIC) + ["pow", "clip", STANDARDIZE, *columns.FUNCTIONS])


@dataclass(frozen=True)
class Moments:
    """Mean and std of one standardize argument on the training split: scalars for an [N] value,
    one per column or channel (axis 1) otherwise. std is never 0 (a constant value gets 1)."""

    mean: np.ndarray
    std: np.ndarray


Fitted = Moments | Vocab | FillMean  # Moments by feature name; Vocab and FillMean by columns.key


@dataclass
class Lowered:
    values: dict[str, Value]
    arguments: dict[str, Value] = field(default_factory=dict)  # feature -> its standardize argument
    unfitted: dict[str, str] = field(default_factory=dict)  # feature -> its identity stand-in's output


def standardized(feats: m.Features | None) -> list[str]:
    """The features whose definition calls standardize, in order (at most one call each)."""
    out: list[str] = []
    for d in feats.defs if feats is not None else []:
        calls = [e for e in _walk(d.expr) if isinstance(e, m.Func) and e.name == STANDARDIZE]
        if len(calls) > 1:
            raise SpecError(f"feature '{d.name}' calls standardize {len(calls)} times; one call per "
                            "feature (its statistics are named after the feature): define a feature for "
                            "each standardized value", calls[1].span)
        if calls:
            out.append(d.name)
    return out


def _walk(e: m.Expr) -> Iterator[m.Expr]:
    yield e
    for a in getattr(e, "args", None) or getattr(e, "items", None) or []:
        yield from _walk(a)


def lower_features(g: Graph, feats: m.Features | None, values: dict[str, Value],
                   stats: Mapping[str, Fitted] | None = None,
                   decls: Sequence[m.TensorDecl] = ()) -> Lowered:
    """Each definition adds a value (or replaces the input of the same name), in order. `decls`:
    the model's inputs, whose `values` are the graph's raw inputs (columns reads them)."""
    standardized(feats)  # one standardize per feature, checked before any node is made
    low = Lowered(dict(values))
    raw = columns.Raw(feats, decls, values, stats or {})
    for d in feats.defs if feats is not None else []:
        g.where, g.hint = f"{d.span} features.{d.name}", f"features.{d.name}"
        t = _expr(g, d.expr, low.values, _Standardize(d.name, stats, low, raw))
        if isinstance(t, float):
            raise SpecError(f"feature '{d.name}' is a constant; it must use an input", d.span)
        low.values[d.name] = t
    raw.check_replaced(low.values)
    return low


@dataclass
class _Standardize:
    """What standardize(...) inside the definition of `feature` lowers to."""

    feature: str
    stats: Mapping[str, Fitted] | None
    low: Lowered
    raw: columns.Raw

    def apply(self, g: Graph, x: Value, e: m.Func) -> Value:
        self.low.arguments[self.feature] = x
        with g.at(f"{g.hint}.standardize"):
            mo = (self.stats or {}).get(self.feature)
            if not isinstance(mo, Moments):
                out = op.Identity(x)  # a stand-in with its own name (probe_features)
                self.low.unfitted[self.feature] = out.name
                return out
            channels = () if x.rank == 1 else (x.dims[1],)
            if mo.mean.shape != channels or mo.std.shape != channels:
                raise CompileError(f"the statistics of standardize in feature '{self.feature}' have shape "
                                   f"{list(mo.mean.shape)}, but its value {show(x.dims)} needs "
                                   f"{list(channels)} (one per column or channel): they were fitted to "
                                   "another version of the spec", e.span)
            shape = channels + (1,) * max(x.rank - 2, 0)  # broadcasts along axis 1
            with g.at(f"{g.hint}.mean"):  # named, for whoever reads the deployed graph
                mean = g.const(mo.mean.reshape(shape), shared=False)
            with g.at(f"{g.hint}.std"):
                std = g.const(mo.std.reshape(shape), shared=False)
            return ((x - mean) / std).with_shape(x.shape)


def _broadcast(a: Shape, b: Shape, span: object) -> Shape:
    """NumPy broadcasting where the symbolic batch size N matches only N or 1."""
    rank = max(len(a), len(b))
    a2, b2 = (1,) * (rank - len(a)) + a, (1,) * (rank - len(b)) + b
    out: list[Dim] = []
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


def _as_value(g: Graph, v: Value | float) -> Value:
    return v if isinstance(v, Value) else g.const(v)


def _expr(g: Graph, e: m.Expr, vals: dict[str, Value], st: _Standardize) -> Value | float:
    if isinstance(e, m.Num):
        return _constant(float(e.value), e)
    if isinstance(e, m.Name):
        if e.id not in vals:
            raise SpecError(f"unknown input or feature '{e.id}'{did_you_mean(e.id, vals)}; "
                            f"known: {', '.join(vals)}", e.span)
        st.raw.check_plain(e, vals[e.id])
        return vals[e.id].cast("float32")
    if isinstance(e, m.Op):
        args = [_expr(g, a, vals, st) for a in e.args]
        if all(isinstance(a, float) for a in args):
            return _fold(e.op, args, e)  # type: ignore[arg-type]
        if e.op == "neg":
            return -_as_value(g, args[0])
        return _binary(g, _BINARY[e.op], args, e.span)
    if isinstance(e, m.Func):
        return _func(g, e, vals, st)
    raise SpecError("features are arithmetic over inputs: numbers, names, + - * / ** and "
                    f"{', '.join(FUNCTIONS)}", e.span)


def _binary(g: Graph, fn: Callable[[Value, Value], Value], args: list[Value | float],
            span: object) -> Value:
    if fn is op.Div and args[1] == 0.0:
        raise SpecError("division by zero", span)  # type: ignore[arg-type]
    a, b = (_as_value(g, x) for x in args)
    shape = _broadcast(a.dims, b.dims, span)
    return fn(a, b).with_shape(shape)


_FOLD: dict[str, Callable[..., float]] = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b, "pow": lambda a, b: a**b, "neg": lambda a: -a,
    "log": math.log, "exp": math.exp, "sqrt": math.sqrt, "abs": abs, "min": min, "max": max}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _fold(op: str, args: list[float], e: m.Op | m.Func) -> float:
    """A constant sub-expression, computed now and judged: the graph holds it as one float32."""
    shown = f"{op}({', '.join(f'{a:g}' for a in args)})"
    try:
        out = _FOLD[op](*args)
    except ZeroDivisionError:
        raise SpecError("division by zero", e.span) from None
    except OverflowError:  # exp(1e9), 10.0 ** 400
        raise SpecError(f"{shown} is too large for a float", e.span) from None
    except ValueError:  # log(-1), sqrt(-1)
        raise SpecError(f"{shown} is not a real number", e.span) from None
    if isinstance(out, complex):  # (-8) ** 0.5
        raise SpecError(f"{shown} is not a real number", e.span)
    return _constant(float(out), e)


def _constant(v: float, e: m.Expr) -> float:
    """A constant the graph can hold: finite in float32 (NaN and infinity poison every value they touch)."""
    if not math.isfinite(v) or abs(v) > _FLOAT32_MAX:
        raise SpecError(f"this constant is {v:g}; a feature's constants must be finite float32 numbers "
                        f"(at most {_FLOAT32_MAX:.4g} in size)", e.span)
    return v


def _func(g: Graph, e: m.Func, vals: dict[str, Value], st: _Standardize) -> Value | float:
    if e.name in columns.FUNCTIONS:  # they read a raw input by name, not a value
        return st.raw.lower(g, e)
    args = [_expr(g, a, vals, st) for a in e.args]
    name = e.name
    if name in _FOLD and args and all(isinstance(a, float) for a in args):
        n_args = 1 if name in _UNARY else 2 if name == "pow" else len(args)
        if len(args) == n_args and (len(args) >= 2 or name not in _VARIADIC):
            return _fold(name, args, e)  # type: ignore[arg-type]

    def arity(n: int, form: str) -> None:
        if len(args) != n:
            raise SpecError(f"{name} takes {n} argument(s): {form}", e.span)

    if name in _UNARY:
        arity(1, f"{name}(x)")
        return _UNARY[name](_as_value(g, args[0]))
    if name == "pow":
        arity(2, "pow(x, p)")
        return _binary(g, op.Pow, args, e.span)
    if name in _VARIADIC:
        if len(args) < 2:
            raise SpecError(f"{name} takes two or more arguments", e.span)
        ts = [_as_value(g, a) for a in args]
        shape = ts[0].dims
        for t in ts[1:]:
            shape = _broadcast(shape, t.dims, e.span)
        return _VARIADIC[name](ts).with_shape(shape)
    if name == "clip":
        arity(3, "clip(x, low, high)")
        x, lo, hi = args
        if not isinstance(lo, float) or not isinstance(hi, float):
            raise SpecError("clip bounds must be numbers: clip(x, low, high)", e.span)
        if lo > hi:
            raise SpecError(f"clip bounds are reversed: low {lo} > high {hi}", e.span)
        return op.Clip(_as_value(g, x), lo, hi)
    if name == STANDARDIZE:
        arity(1, "standardize(x)")
        if isinstance(args[0], float):
            raise SpecError("standardize needs a value computed from the inputs, not a number", e.span)
        return st.apply(g, args[0], e)
    hint_for = {"normalize": "; for (x - mean) / std with training-set statistics, use standardize(x)"}
    raise SpecError(f"unknown function '{name}'{did_you_mean(name, FUNCTIONS)}; "
                    f"features can use: {', '.join(FUNCTIONS)}{hint_for.get(name, '')}", e.span)
