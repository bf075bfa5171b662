"""Gradient rules, one per ONNX op type: (ctx, node, output grads) -> one grad per input.

A rule returns None for an input that takes no gradient (shapes, indices, running stats).
Broadcasting is undone in one place, `unbroadcast`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import onnx
from onnx import helper

from compiler.autodiff import RuleCtx, rule
from spec.errors import CompileError

G = str | None


def attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _need(g: G) -> str:
    assert g is not None
    return g


def unbroadcast(ctx: RuleCtx, grad: str, target: str, out: str) -> str:
    """Sum `grad` (shaped like `out`) over the axes that broadcasting expanded `target` along."""
    ts, os_ = ctx.shape(target), ctx.shape(out)
    if ts is not None and os_ is not None and ts == os_:
        return grad
    if ts is None or os_ is None:
        raise CompileError(f"cannot undo broadcasting for {target}: its shape is unknown")
    lead = len(os_) - len(ts)
    axes = list(range(lead)) + [lead + i for i, d in enumerate(ts) if d == 1 and os_[lead + i] != 1]
    g = ctx.g
    if axes:
        grad = g.op1("ReduceSum", [grad, g.ints(axes)], "grad", keepdims=1)
    if lead:
        grad = g.op1("Reshape", [grad, g.op1("Shape", [target], "grad")], "grad")
    return grad


def _scalar(ctx: RuleCtx, v: float, like: str) -> str:
    """A constant of `like`'s element type (float32 unless the graph runs in float64)."""
    c = ctx.g.const(v)
    return ctx.g.op1("CastLike", [c, like], "grad")


# ---- linear and elementwise ----
@rule("Identity")
def _identity(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    return [gy[0]]


@rule("Dropout")
def _dropout(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # inference-mode Dropout is the identity; training graphs write dropout as Mul by a mask
    return [gy[0], None, None]


@rule("Cast")
def _cast(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    return [ctx.g.op1("CastLike", [_need(gy[0]), n.input[0]], "grad")]


@rule("Neg")
def _neg(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    return [ctx.g.op1("Neg", [_need(gy[0])], "grad")]


@rule("Add", "Sum")
def _add(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    g = _need(gy[0])
    return [unbroadcast(ctx, g, x, n.output[0]) for x in n.input]


@rule("Sub")
def _sub(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    g = _need(gy[0])
    neg = ctx.g.op1("Neg", [g], "grad")
    return [unbroadcast(ctx, g, n.input[0], n.output[0]), unbroadcast(ctx, neg, n.input[1], n.output[0])]


@rule("Mul")
def _mul(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    g, (a, b), y = _need(gy[0]), n.input, n.output[0]
    return [unbroadcast(ctx, ctx.g.op1("Mul", [g, b], "grad"), a, y),
            unbroadcast(ctx, ctx.g.op1("Mul", [g, a], "grad"), b, y)]


@rule("Div")
def _div(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # d(a/b) = g/b, -g*a/b^2 = -(g/b) * y
    g, (a, b), y = _need(gy[0]), n.input, n.output[0]
    gb = ctx.g.op1("Div", [g, b], "grad")
    gdenom = ctx.g.op1("Neg", [ctx.g.op1("Mul", [gb, y], "grad")], "grad")
    return [unbroadcast(ctx, gb, a, y), unbroadcast(ctx, gdenom, b, y)]


@rule("Mean")
def _mean(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    g = ctx.g.op1("Div", [_need(gy[0]), _scalar(ctx, len(n.input), gy[0] or "")], "grad")
    return [unbroadcast(ctx, g, x, n.output[0]) for x in n.input]


def _unary(ctx: RuleCtx, g: str, local: str) -> str:
    return ctx.g.op1("Mul", [g, local], "grad")


@rule("Relu")
def _relu(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    g, x = _need(gy[0]), n.input[0]
    pos = ctx.g.op1("Greater", [x, _scalar(ctx, 0.0, x)], "grad")
    return [ctx.g.op1("Where", [pos, g, _scalar(ctx, 0.0, g)], "grad")]


@rule("LeakyRelu")
def _leaky(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    g, x = _need(gy[0]), n.input[0]
    alpha = float(attr(n, "alpha", 0.01))  # type: ignore[arg-type]
    pos = ctx.g.op1("Greater", [x, _scalar(ctx, 0.0, x)], "grad")
    scaled = ctx.g.op1("Mul", [g, _scalar(ctx, alpha, g)], "grad")
    return [ctx.g.op1("Where", [pos, g, scaled], "grad")]


@rule("Sigmoid")
def _sigmoid(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    y = n.output[0]  # d sigmoid = y (1 - y)
    one_minus = ctx.g.op1("Sub", [_scalar(ctx, 1.0, y), y], "grad")
    return [_unary(ctx, _need(gy[0]), ctx.g.op1("Mul", [y, one_minus], "grad"))]


@rule("Tanh")
def _tanh(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    y = n.output[0]  # d tanh = 1 - y^2
    local = ctx.g.op1("Sub", [_scalar(ctx, 1.0, y), ctx.g.op1("Mul", [y, y], "grad")], "grad")
    return [_unary(ctx, _need(gy[0]), local)]


@rule("Exp")
def _exp(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    return [_unary(ctx, _need(gy[0]), n.output[0])]


@rule("Log")
def _log(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    return [ctx.g.op1("Div", [_need(gy[0]), n.input[0]], "grad")]


@rule("Sqrt")
def _sqrt(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    y = n.output[0]  # d sqrt = 1 / (2 y)
    return [ctx.g.op1("Div", [_need(gy[0]), ctx.g.op1("Add", [y, y], "grad")], "grad")]


@rule("Abs")
def _abs(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    return [_unary(ctx, _need(gy[0]), ctx.g.op1("Sign", [n.input[0]], "grad"))]


@rule("Softplus")
def _softplus(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    return [_unary(ctx, _need(gy[0]), ctx.g.op1("Sigmoid", [n.input[0]], "grad"))]


@rule("Erf")
def _erf(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    x = n.input[0]  # d erf = 2/sqrt(pi) exp(-x^2)
    e = ctx.g.op1("Exp", [ctx.g.op1("Neg", [ctx.g.op1("Mul", [x, x], "grad")], "grad")], "grad")
    return [_unary(ctx, _need(gy[0]), ctx.g.op1("Mul", [e, _scalar(ctx, 2 / math.sqrt(math.pi), x)], "grad"))]


@rule("Gelu")
def _gelu(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    if attr(n, "approximate", b"none") not in (b"none", "none"):
        raise CompileError("the gradient of Gelu(approximate='tanh') is not supported; use exact gelu")
    x, g = n.input[0], ctx.g
    # d gelu = Phi(x) + x phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2, phi(x) = exp(-x^2/2) / sqrt(2 pi)
    cdf = g.op1("Mul", [g.op1("Add", [g.op1("Erf", [g.op1("Mul", [x, _scalar(ctx, 1 / math.sqrt(2), x)],
                                                                   "grad")], "grad"),
                                       _scalar(ctx, 1.0, x)], "grad"), _scalar(ctx, 0.5, x)], "grad")
    sq = g.op1("Mul", [x, x], "grad")
    pdf = g.op1("Mul", [g.op1("Exp", [g.op1("Mul", [sq, _scalar(ctx, -0.5, x)], "grad")], "grad"),
                        _scalar(ctx, 1 / math.sqrt(2 * math.pi), x)], "grad")
    local = g.op1("Add", [cdf, g.op1("Mul", [x, pdf], "grad")], "grad")
    return [_unary(ctx, _need(gy[0]), local)]


@rule("Pow")
def _pow(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    g, (a, b), y = _need(gy[0]), n.input, n.output[0]
    # d a^b / da = b a^(b-1);  d / db = y log a
    bm1 = ctx.g.op1("Sub", [b, ctx.g.op1("CastLike", [ctx.g.const(1.0), b], "grad")], "grad")
    da = ctx.g.op1("Mul", [g, ctx.g.op1("Mul", [ctx.g.op1("CastLike", [b, a], "grad"),
                                                 ctx.g.op1("Pow", [a, bm1], "grad")], "grad")], "grad")
    db = ctx.g.op1("Mul", [g, ctx.g.op1("Mul", [y, ctx.g.op1("Log", [a], "grad")], "grad")], "grad")
    return [unbroadcast(ctx, da, a, y), unbroadcast(ctx, ctx.g.op1("CastLike", [db, b], "grad"), b, y)]


@rule("Clip")
def _clip(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    g, x, y = _need(gy[0]), n.input[0], n.output[0]
    inside = ctx.g.op1("Equal", [x, y], "grad")  # the gradient passes where clipping did nothing
    return [ctx.g.op1("Where", [inside, g, _scalar(ctx, 0.0, g)], "grad"), None, None]


@rule("Where")
def _where(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    g, (c, a, b), y = _need(gy[0]), n.input, n.output[0]
    zero = _scalar(ctx, 0.0, g)
    return [None, unbroadcast(ctx, ctx.g.op1("Where", [c, g, zero], "grad"), a, y),
            unbroadcast(ctx, ctx.g.op1("Where", [c, zero, g], "grad"), b, y)]


@rule("Max", "Min")
def _maxmin(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # the gradient goes to the inputs equal to the result, split evenly on ties (as PyTorch)
    g, y = _need(gy[0]), n.output[0]
    hits = [ctx.g.op1("Cast", [ctx.g.op1("Equal", [x, y], "grad")], "grad", to=1) for x in n.input]
    count = hits[0] if len(hits) == 1 else ctx.g.op1("Sum", hits, "grad")
    share = ctx.g.op1("Div", [g, ctx.g.op1("CastLike", [count, g], "grad")], "grad")
    return [unbroadcast(ctx, ctx.g.op1("Mul", [share, ctx.g.op1("CastLike", [h, g], "grad")], "grad"), x, y)
            for h, x in zip(hits, n.input)]


# ---- shape ops ----
def _reshape_back(ctx: RuleCtx, g: str, x: str) -> str:
    return ctx.g.op1("Reshape", [g, ctx.g.op1("Shape", [x], "grad")], "grad")


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    return [_reshape_back(ctx, _need(gy[0]), n.input[0])] + [None] * (len(n.input) - 1)


@rule("Expand")
def _expand(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    return [unbroadcast(ctx, _need(gy[0]), n.input[0], n.output[0]), None]


@rule("Transpose")
def _transpose(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    perm = list(attr(n, "perm", []) or [])  # type: ignore[call-overload]
    if not perm:
        rank = len(ctx.shape(n.input[0]) or ())
        perm = list(range(rank))[::-1]
    inverse = [perm.index(i) for i in range(len(perm))]
    return [ctx.g.op1("Transpose", [_need(gy[0])], "grad", perm=inverse)]


@rule("Concat")
def _concat(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    axis = int(attr(n, "axis"))  # type: ignore[call-overload]
    sizes = []
    for x in n.input:
        s = ctx.shape(x)
        if s is None or not isinstance(s[axis], int):
            raise CompileError(f"Concat gradient needs the static size of {x} along axis {axis}")
        sizes.append(s[axis])
    return ctx.g.op("Split", [_need(gy[0]), ctx.g.ints(sizes)], "grad", n_out=len(sizes), axis=axis)


@rule("ReduceSum", "ReduceMean")
def _reduce(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    x, y, g = n.input[0], n.output[0], _need(gy[0])
    if not attr(n, "keepdims", 1):
        axes = _axes(ctx, n)
        g = ctx.g.op1("Unsqueeze", [g, ctx.g.ints(axes)], "grad")  # put reduced axes back as 1
    g = ctx.g.op1("Expand", [g, ctx.g.op1("Shape", [x], "grad")], "grad")
    if n.op_type == "ReduceMean":  # each input element had weight 1 / (elements per output)
        count = ctx.g.op1("Div", [ctx.g.op1("Size", [x], "grad"), ctx.g.op1("Size", [y], "grad")], "grad")
        g = ctx.g.op1("Div", [g, ctx.g.op1("CastLike", [count, g], "grad")], "grad")
    return [g] + [None] * (len(n.input) - 1)


def _axes(ctx: RuleCtx, n: onnx.NodeProto) -> list[int]:
    rank = len(ctx.shape(n.input[0]) or ())
    if len(n.input) > 1 and n.input[1]:
        if n.input[1] not in ctx.consts:
            raise CompileError(f"{n.op_type} gradient needs constant axes when keepdims=0")
        axes = [int(a) for a in ctx.consts[n.input[1]].reshape(-1)]
    else:
        axes = [int(a) for a in (attr(n, "axes", []) or [])]  # type: ignore[attr-defined]
    if not axes:
        axes = list(range(rank))
    return sorted(a % rank for a in axes)
