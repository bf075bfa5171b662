"""Gradient rules, one per ONNX op type: (ctx, node, output grads) -> one grad per input.

A rule returns None for an input that takes no gradient (shapes, indices, running stats).
Broadcasting is undone in one place, `unbroadcast`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import onnx
from onnx import helper

from dlspec.compiler.autodiff import Dim, RuleCtx, rule
from dlspec.spec.errors import CompileError

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
    return sum_to(ctx, grad, os_, ts)


def sum_to(ctx: RuleCtx, grad: str, grad_shape: Sequence[Dim], shape: Sequence[Dim]) -> str:
    """Sum `grad` down to `shape`, which broadcasts to `grad_shape` (right-aligned)."""
    lead = len(grad_shape) - len(shape)
    ones = [lead + i for i, d in enumerate(shape) if d == 1 and grad_shape[lead + i] != 1]
    if ones:
        grad = ctx.g.op1("ReduceSum", [grad, ctx.g.ints(ones)], "grad", keepdims=1)
    if lead:
        grad = ctx.g.op1("ReduceSum", [grad, ctx.g.ints(list(range(lead)))], "grad", keepdims=0)
    return grad


def _scalar(ctx: RuleCtx, v: float, like: str) -> str:
    """A constant of `like`'s element type (float32 unless the graph runs in float64)."""
    c = ctx.g.const(v)
    return ctx.g.op1("CastLike", [c, like], "grad")


def masked(ctx: RuleCtx, g: str, keep: str) -> str:
    """g where `keep` holds, else 0, as g * float(keep): onnxruntime's CPU Where is 5 to 8 times
    slower than Cast and Mul on activation-sized tensors (64x64x8x8: 1.44 ms vs 0.19 ms)."""
    return ctx.g.op1("Mul", [g, ctx.g.op1("CastLike", [keep, g], "grad")], "grad")


def static_shape(ctx: RuleCtx, name: str, op: str, axes: Sequence[int] | None = None) -> tuple[int, ...]:
    """The shape of `name`, which must be known statically (on `axes`, or everywhere).

    Dims outside `axes` may be symbolic: they come back as -1."""
    s = ctx.shape(name)
    if s is None:
        raise CompileError(f"the {op} gradient needs the static shape of '{name}', which is unknown")
    check = range(len(s)) if axes is None else [a % len(s) for a in axes]
    bad = [i for i in check if not isinstance(s[i], int)]
    if bad:
        raise CompileError(f"the {op} gradient needs the static size of '{name}' along axis {bad[0]}, "
                           f"which is {s[bad[0]] or 'unknown'}")
    return tuple(d if isinstance(d, int) else -1 for d in s)


def rank_of(ctx: RuleCtx, name: str, op: str) -> int:
    s = ctx.shape(name)
    if s is None:
        raise CompileError(f"the {op} gradient needs the rank of '{name}', which is unknown")
    return len(s)


def const_ints(ctx: RuleCtx, n: onnx.NodeProto, index: int) -> list[int] | None:
    """A constant integer input as a list (None when absent); CompileError when computed at run time."""
    if len(n.input) <= index or not n.input[index]:
        return None
    name = n.input[index]
    if name not in ctx.consts:
        raise CompileError(f"the {n.op_type} gradient needs input {index} ('{name}') to be a constant")
    return [int(v) for v in ctx.consts[name].reshape(-1)]


def zeros_like(ctx: RuleCtx, x: str) -> str:
    zeros = ctx.g.op1("ConstantOfShape", [ctx.g.op1("Shape", [x], "grad")], "grad")
    return ctx.g.op1("CastLike", [zeros, x], "grad")


# ---- linear and elementwise ----
@rule("Identity")
def _identity(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    return [gy[0]]


@rule("Dropout")
def _dropout(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # inference mode: the identity (dlspec's training graphs write dropout as Mul by a mask);
    # training mode: y = x * mask / (1 - ratio), so dx = g * mask / (1 - ratio)
    g = _need(gy[0])
    training = n.input[2] if len(n.input) > 2 and n.input[2] else None
    if training is None or (training in ctx.consts and not ctx.consts[training].any()):
        return [g, None, None]
    mask = n.output[1] if len(n.output) > 1 and n.output[1] else None
    if mask is None:
        raise CompileError("the gradient of Dropout in training mode needs the node's mask output")
    ratio = n.input[1] if len(n.input) > 1 and n.input[1] else _scalar(ctx, 0.5, g)
    keep = ctx.g.op1("Sub", [_scalar(ctx, 1.0, g), ctx.g.op1("CastLike", [ratio, g], "grad")], "grad")
    kept = ctx.g.op1("Mul", [g, ctx.g.op1("CastLike", [mask, g], "grad")], "grad")
    dx = ctx.g.op1("Div", [kept, keep], "grad")
    if training not in ctx.consts:  # decided at run time
        dx = ctx.g.op1("Where", [training, dx, g], "grad")
    return [dx, None, None]


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
    return [masked(ctx, g, ctx.g.op1("Greater", [x, _scalar(ctx, 0.0, x)], "grad"))]


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
        return [_gelu_tanh(ctx, n, _need(gy[0]))]
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


def _gelu_tanh(ctx: RuleCtx, n: onnx.NodeProto, g: str) -> str:
    # y = x (1 + t) / 2, t = tanh(u), u = c (x + a x^3): d = (1 + t) / 2 + x (1 - t^2) c (1 + 3 a x^2) / 2
    x, op = n.input[0], ctx.g.op1
    c, a = math.sqrt(2 / math.pi), 0.044715
    sq = op("Mul", [x, x], "grad")
    one = _scalar(ctx, 1.0, x)

    def poly(k: float) -> str:  # c (1 + k x^2)
        return op("Mul", [op("Add", [op("Mul", [sq, _scalar(ctx, k, x)], "grad"), one], "grad"),
                          _scalar(ctx, c, x)], "grad")

    t = op("Tanh", [op("Mul", [x, poly(a)], "grad")], "grad")
    du = poly(3 * a)
    sech2 = op("Sub", [one, op("Mul", [t, t], "grad")], "grad")
    slope = op("Mul", [op("Mul", [x, sech2], "grad"), du], "grad")
    local = op("Mul", [op("Add", [op("Add", [t, one], "grad"), slope], "grad"), _scalar(ctx, 0.5, x)], "grad")
    return _unary(ctx, g, local)


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
    return [masked(ctx, g, inside), None, None]


@rule("Where")
def _where(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    g, (c, a, b), y = _need(gy[0]), n.input, n.output[0]
    return [None, unbroadcast(ctx, masked(ctx, g, c), a, y),
            unbroadcast(ctx, masked(ctx, g, ctx.g.op1("Not", [c], "grad")), b, y)]


@rule("Max", "Min")
def _maxmin(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # the gradient goes to the inputs equal to the result, split evenly on ties (as PyTorch)
    g, y = _need(gy[0]), n.output[0]
    hits = [ctx.g.op1("Cast", [ctx.g.op1("Equal", [x, y], "grad")], "grad", to=1) for x in n.input]
    count = hits[0] if len(hits) == 1 else ctx.g.op1("Sum", hits, "grad")
    share = ctx.g.op1("Div", [g, ctx.g.op1("CastLike", [count, g], "grad")], "grad")
    return [unbroadcast(ctx, ctx.g.op1("Mul", [share, ctx.g.op1("CastLike", [h, g], "grad")], "grad"), x, y)
            for h, x in zip(hits, n.input)]


@rule("PRelu")
def _prelu(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # y = x (x > 0), slope x (x <= 0): dx = g or g slope; dslope = g x where x <= 0
    g, (x, slope), y = _need(gy[0]), n.input, n.output[0]
    pos = ctx.g.op1("Greater", [x, _scalar(ctx, 0.0, x)], "grad")
    dx = ctx.g.op1("Where", [pos, g, ctx.g.op1("Mul", [g, slope], "grad")], "grad")
    dslope = ctx.g.op1("Where", [pos, _scalar(ctx, 0.0, g), ctx.g.op1("Mul", [g, x], "grad")], "grad")
    return [dx, unbroadcast(ctx, dslope, slope, y)]


@rule("Sin")
def _sin(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    return [_unary(ctx, _need(gy[0]), ctx.g.op1("Cos", [n.input[0]], "grad"))]  # d sin = cos


@rule("Cos")
def _cos(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    sin = ctx.g.op1("Sin", [n.input[0]], "grad")  # d cos = -sin
    return [ctx.g.op1("Neg", [_unary(ctx, _need(gy[0]), sin)], "grad")]


@rule("Reciprocal")
def _reciprocal(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    y = n.output[0]  # d (1/x) = -1/x^2 = -y^2
    return [ctx.g.op1("Neg", [_unary(ctx, _need(gy[0]), ctx.g.op1("Mul", [y, y], "grad"))], "grad")]


@rule("Softsign")
def _softsign(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    x = n.input[0]  # d x/(1+|x|) = 1/(1+|x|)^2
    den = ctx.g.op1("Add", [ctx.g.op1("Abs", [x], "grad"), _scalar(ctx, 1.0, x)], "grad")
    return [ctx.g.op1("Div", [_need(gy[0]), ctx.g.op1("Mul", [den, den], "grad")], "grad")]


@rule("HardSigmoid")
def _hard_sigmoid(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # y = clip(alpha x + beta, 0, 1): d = alpha where 0 < y < 1
    g, y = _need(gy[0]), n.output[0]
    alpha = float(attr(n, "alpha", 0.2))  # type: ignore[arg-type]
    inside = ctx.g.op1("And", [ctx.g.op1("Greater", [y, _scalar(ctx, 0.0, y)], "grad"),
                               ctx.g.op1("Less", [y, _scalar(ctx, 1.0, y)], "grad")], "grad")
    return [masked(ctx, ctx.g.op1("Mul", [g, _scalar(ctx, alpha, g)], "grad"), inside)]


@rule("HardSwish")
def _hard_swish(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # y = x clip(x/6 + 1/2, 0, 1): d = 0 (x < -3), x/3 + 1/2 (-3 <= x <= 3), 1 (x > 3)
    g, x = _need(gy[0]), n.input[0]
    third = ctx.g.op1("Mul", [x, _scalar(ctx, 1 / 3, x)], "grad")
    local = ctx.g.op1("Add", [third, _scalar(ctx, 0.5, x)], "grad")
    high = ctx.g.op1("Greater", [x, _scalar(ctx, 3.0, x)], "grad")
    local = ctx.g.op1("Where", [high, _scalar(ctx, 1.0, x), local], "grad")
    low = ctx.g.op1("Less", [x, _scalar(ctx, -3.0, x)], "grad")
    return [_unary(ctx, g, ctx.g.op1("Where", [low, _scalar(ctx, 0.0, x), local], "grad"))]


def _exp_branch(ctx: RuleCtx, n: onnx.NodeProto, g: str, pos_slope: float, neg_local: str) -> str:
    """ELU-like ops: slope `pos_slope` where x > 0, `neg_local` (computed from y) elsewhere."""
    x = n.input[0]
    pos = ctx.g.op1("Greater", [x, _scalar(ctx, 0.0, x)], "grad")
    local = ctx.g.op1("Where", [pos, _scalar(ctx, pos_slope, x), neg_local], "grad")
    return _unary(ctx, g, local)


@rule("Elu")
def _elu(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # y = alpha (e^x - 1) for x <= 0: d = alpha e^x = y + alpha
    y, alpha = n.output[0], float(attr(n, "alpha", 1.0))  # type: ignore[arg-type]
    return [_exp_branch(ctx, n, _need(gy[0]), 1.0, ctx.g.op1("Add", [y, _scalar(ctx, alpha, y)], "grad"))]


@rule("Selu")
def _selu(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # y = gamma x (x > 0), gamma alpha (e^x - 1) (x <= 0): d = gamma, y + gamma alpha
    y = n.output[0]
    alpha = float(attr(n, "alpha", 1.67326319217681884765625))  # type: ignore[arg-type]
    gamma = float(attr(n, "gamma", 1.05070102214813232421875))  # type: ignore[arg-type]
    neg = ctx.g.op1("Add", [y, _scalar(ctx, alpha * gamma, y)], "grad")
    return [_exp_branch(ctx, n, _need(gy[0]), gamma, neg)]


@rule("Celu")
def _celu(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # y = alpha (e^(x/alpha) - 1) for x <= 0: d = e^(x/alpha) = y / alpha + 1
    y, alpha = n.output[0], float(attr(n, "alpha", 1.0))  # type: ignore[arg-type]
    neg = ctx.g.op1("Add", [ctx.g.op1("Mul", [y, _scalar(ctx, 1 / alpha, y)], "grad"), _scalar(ctx, 1.0, y)],
                    "grad")
    return [_exp_branch(ctx, n, _need(gy[0]), 1.0, neg)]
