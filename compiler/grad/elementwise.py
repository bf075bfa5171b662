"""Gradient rules of elementwise ops: arithmetic (broadcasting undone by `unbroadcast`) and
activations, each the derivative in its comment."""

from __future__ import annotations

import math

from dlspec.compiler.grad.common import masked, rank, sizes, unbroadcast
from dlspec.compiler.grad.shape import reshape_like
from dlspec.compiler.grad.table import Grads, Node, rule, unary
from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op
from dlspec.compiler.graph.value import FLOATS
from dlspec.spec.errors import CompileError

# ---- one input, one output: dx from (g, x, y) ----
unary("Identity", lambda g, x, y: g)
unary("Neg", lambda g, x, y: -g)
unary("Exp", lambda g, x, y: g * y)
unary("Log", lambda g, x, y: g / x)
unary("Sqrt", lambda g, x, y: g / (y + y))  # d sqrt = 1 / (2 y)
unary("Reciprocal", lambda g, x, y: -(g * (y * y)))  # d (1/x) = -1/x^2 = -y^2
unary("Sigmoid", lambda g, x, y: g * (y * (1.0 - y)))  # d sigmoid = y (1 - y)
unary("Tanh", lambda g, x, y: g * (1.0 - y * y))  # d tanh = 1 - y^2
unary("Abs", lambda g, x, y: g * op.Sign(x))
unary("Softplus", lambda g, x, y: g * op.Sigmoid(x))
unary("Sin", lambda g, x, y: g * op.Cos(x))
unary("Cos", lambda g, x, y: -(g * op.Sin(x)))
unary("Tan", lambda g, x, y: g * (1.0 + y * y))  # d tan = 1 + tan^2
unary("Asin", lambda g, x, y: g / op.Sqrt((1.0 - x) * (1.0 + x)))  # d asin = 1 / sqrt(1 - x^2)
unary("Acos", lambda g, x, y: -(g / op.Sqrt((1.0 - x) * (1.0 + x))))  # d acos = -1 / sqrt(1 - x^2)
unary("Atan", lambda g, x, y: g / (1.0 + x * x))  # d atan = 1 / (1 + x^2)
unary("Sinh", lambda g, x, y: g * op.Cosh(x))
unary("Cosh", lambda g, x, y: g * op.Sinh(x))
unary("Asinh", lambda g, x, y: g / op.Sqrt(x * x + 1.0))  # d asinh = 1 / sqrt(x^2 + 1)
unary("Acosh", lambda g, x, y: g / op.Sqrt((x - 1.0) * (x + 1.0)))  # d acosh = 1 / sqrt(x^2 - 1)
unary("Atanh", lambda g, x, y: g / ((1.0 - x) * (1.0 + x)))  # d atanh = 1 / (1 - x^2)
unary("Erf", lambda g, x, y: g * (op.Exp(-(x * x)) * (2 / math.sqrt(math.pi))))  # 2/sqrt(pi) e^(-x^2)
unary("Relu", lambda g, x, y: masked(g, x > 0.0))
unary("Cast", lambda g, x, y: g.cast_like(x))
unary("CastLike", lambda g, x, y: g.cast_like(x))  # the type-giving input takes no gradient


@rule("Softsign")
def _softsign(n: Node, g: Value) -> Grads:
    den = op.Abs(n.inputs[0]) + 1.0  # d x/(1+|x|) = 1/(1+|x|)^2
    return [g / (den * den)]


@rule("Dropout")
def _dropout(n: Node, g: Value) -> Grads:
    # inference mode: the identity (dlspec's training graphs write dropout as Mul by a mask);
    # training mode: y = x * mask / (1 - ratio), so dx = g * mask / (1 - ratio)
    training, ratio, mask, decided = n.input(2), n.input(1), n.output(1), n.const(2)
    if training is None or (decided is not None and not decided.any()):
        return [g, None, None]
    if mask is None:
        raise CompileError("the gradient of Dropout in training mode needs the node's mask output")
    keep = 1.0 - (ratio.cast_like(g) if ratio is not None else g.scalar(0.5))
    dx = g * mask.cast_like(g) / keep
    if decided is None:  # decided at run time
        dx = op.Where(training, dx, g)
    return [dx, None, None]


# ---- arithmetic ----
@rule("Add", "Sum")
def _add(n: Node, g: Value) -> Grads:
    return [unbroadcast(g, x) for x in n.inputs]


@rule("Sub")
def _sub(n: Node, g: Value) -> Grads:
    a, b = n.inputs
    return [unbroadcast(g, a), unbroadcast(-g, b)]


@rule("Mul")
def _mul(n: Node, g: Value) -> Grads:
    a, b = n.inputs
    return [unbroadcast(g * b, a), unbroadcast(g * a, b)]


@rule("Div")
def _div(n: Node, g: Value) -> Grads:
    (a, b), y = n.inputs, n.outputs[0]
    gb = g / b  # d(a/b) = g/b, -g a/b^2 = -(g/b) y
    return [unbroadcast(gb, a), unbroadcast(-(gb * y), b)]


@rule("Mod")
def _mod(n: Node, g: Value) -> Grads:
    # y = a - q b with q the integer quotient of a / b (truncated for fmod=1, floored for fmod=0):
    # da = g, db = -q g; q read back from y as round((a - y) / b), exactly the one the op took.
    # Integer Mod takes no gradient.
    (a, b), y = n.inputs, n.outputs[0]
    if a.dtype not in (None, *FLOATS):
        return [None, None]
    q = op.Round((a - y) / b)
    return [unbroadcast(g, a), unbroadcast(-(g * q), b)]


@rule("DequantizeLinear")
def _dequantize(n: Node, g: Value) -> Grads:
    # y = (x - zero_point) scale, with scale (and zero_point) one number or one per slice along axis:
    # d scale = the sum of g (x - zero_point) over the rest; x and zero_point are integers
    x, scale, zero = n.inputs[0], n.inputs[1], n.input(2)
    r = rank(x, "DequantizeLinear")
    per_axis = sizes(scale, "DequantizeLinear") not in ((), (1,))
    axis = n.i("axis") % r
    centred = x.cast_like(g)
    if zero is not None:
        centred = centred - (op.Reshape(zero, [1] * axis + [-1] + [1] * (r - axis - 1)) if per_axis
                             else zero).cast_like(g)
    if per_axis:
        dscale = op.ReduceSum(g * centred, [a for a in range(r) if a != axis], keepdims=0)
    else:
        dscale = reshape_like(op.ReduceSum(g * centred, keepdims=0), scale)
    return [None, dscale, None][:len(n.inputs)]


@rule("Mean")
def _mean(n: Node, g: Value) -> Grads:
    share = g / float(len(n.inputs))
    return [unbroadcast(share, x) for x in n.inputs]


@rule("Pow")
def _pow(n: Node, g: Value) -> Grads:
    # d a^b / da = b a^(b-1), 0 where b = 0 (not 0 * 0^-1); d a^b / db = a^b log a, 0 where a = 0
    # and b >= 0 (the limit of a^b log a as a -> 0+, not 0 * -inf); as PyTorch's pow
    (a, b), y = n.inputs, n.outputs[0]
    da = op.Where(op.Equal(b, 0.0), 0.0, b.cast_like(a) * a ** (b - 1.0))
    db = op.Where(op.And(op.Equal(a, 0.0), b >= 0.0), 0.0, y * op.Log(a))
    return [unbroadcast(g * da, a), unbroadcast((g * db).cast_like(b), b)]


@rule("Clip")
def _clip(n: Node, g: Value) -> Grads:
    inside = op.Equal(n.inputs[0], n.outputs[0])  # the gradient passes where clipping did nothing
    return [masked(g, inside), None, None]


@rule("Where")
def _where(n: Node, g: Value) -> Grads:
    c, a, b = n.inputs
    return [None, unbroadcast(masked(g, c), a), unbroadcast(masked(g, op.Not(c)), b)]


@rule("Max", "Min")
def _maxmin(n: Node, g: Value) -> Grads:
    # the gradient goes to the inputs equal to the result, split evenly on ties (as PyTorch)
    hits = [op.Equal(x, n.outputs[0]).cast_like(g) for x in n.inputs]
    share = g / (hits[0] if len(hits) == 1 else op.Sum(hits))
    return [unbroadcast(share * h, x) for h, x in zip(hits, n.inputs)]


# ---- activations with parameters or branches ----
@rule("LeakyRelu")
def _leaky(n: Node, g: Value) -> Grads:
    x = n.inputs[0]
    return [op.Where(x > 0.0, g, g * n.f("alpha"))]


@rule("PRelu")
def _prelu(n: Node, g: Value) -> Grads:
    # y = x (x > 0), slope x (x <= 0): dx = g or g slope; dslope = g x where x <= 0
    x, slope = n.inputs
    pos = x > 0.0
    return [op.Where(pos, g, g * slope), unbroadcast(op.Where(pos, 0.0, g * x), slope)]


@rule("HardSigmoid")
def _hard_sigmoid(n: Node, g: Value) -> Grads:
    y = n.outputs[0]  # y = clip(alpha x + beta, 0, 1): d = alpha where 0 < y < 1
    return [masked(g * n.f("alpha"), op.And(y > 0.0, y < 1.0))]


@rule("HardSwish")
def _hard_swish(n: Node, g: Value) -> Grads:
    # y = x clip(x/6 + 1/2, 0, 1): d = 0 (x < -3), x/3 + 1/2 (-3 <= x <= 3), 1 (x > 3)
    x = n.inputs[0]
    local = op.Where(x > 3.0, 1.0, x * (1 / 3) + 0.5)
    return [g * op.Where(x < -3.0, 0.0, local)]


@rule("ThresholdedRelu")
def _thresholded_relu(n: Node, g: Value) -> Grads:
    return [masked(g, n.inputs[0] > n.f("alpha"))]  # y = x where x > alpha, else 0


@rule("Shrink")
def _shrink(n: Node, g: Value) -> Grads:
    # y = x - bias (x > lambd), x + bias (x < -lambd), 0 between: d = 1 outside [-lambd, lambd]
    return [masked(g, op.Abs(n.inputs[0]) > n.f("lambd"))]


@rule("Mish")
def _mish(n: Node, g: Value) -> Grads:
    # y = x t, t = tanh(softplus(x)): d = t + x (1 - t^2) sigmoid(x)
    x = n.inputs[0]
    t = op.Tanh(op.Softplus(x))
    return [g * (t + x * (1.0 - t * t) * op.Sigmoid(x))]


def _exp_branch(n: Node, g: Value, pos_slope: float, neg_local: Value) -> Value:
    """ELU-like ops: slope `pos_slope` where x > 0, `neg_local` (computed from y) elsewhere."""
    return g * op.Where(n.inputs[0] > 0.0, pos_slope, neg_local)


@rule("Elu")
def _elu(n: Node, g: Value) -> Grads:
    y = n.outputs[0]  # y = alpha (e^x - 1) for x <= 0: d = alpha e^x = y + alpha
    return [_exp_branch(n, g, 1.0, y + n.f("alpha"))]


@rule("Selu")
def _selu(n: Node, g: Value) -> Grads:
    # y = gamma x (x > 0), gamma alpha (e^x - 1) (x <= 0): d = gamma, y + gamma alpha
    y, gamma = n.outputs[0], n.f("gamma")
    return [_exp_branch(n, g, gamma, y + n.f("alpha") * gamma)]


@rule("Celu")
def _celu(n: Node, g: Value) -> Grads:
    y, alpha = n.outputs[0], n.f("alpha")  # y = alpha (e^(x/alpha) - 1), x <= 0: d = y / alpha + 1
    return [_exp_branch(n, g, 1.0, y * (1 / alpha) + 1.0)]


@rule("Gelu")
def _gelu(n: Node, g: Value) -> Grads:
    x = n.inputs[0]
    if n.s("approximate") == "tanh":
        return [g * _gelu_tanh_slope(x)]
    # d gelu = Phi(x) + x phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2, phi(x) = exp(-x^2/2) / sqrt(2 pi)
    cdf = (op.Erf(x * (1 / math.sqrt(2))) + 1.0) * 0.5
    pdf = op.Exp((x * x) * -0.5) * (1 / math.sqrt(2 * math.pi))
    return [g * (cdf + x * pdf)]


def _gelu_tanh_slope(x: Value) -> Value:
    # y = x (1 + t) / 2, t = tanh(u), u = c (x + a x^3): d = (1 + t) / 2 + x (1 - t^2) c (1 + 3 a x^2) / 2
    c, a = math.sqrt(2 / math.pi), 0.044715
    sq = x * x
    t = op.Tanh(x * ((sq * a + 1.0) * c))
    du = (sq * (3 * a) + 1.0) * c
    slope = (x * (1.0 - t * t)) * du
    return ((t + 1.0) + slope) * 0.5
