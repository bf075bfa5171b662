"""Data augmentation inside the training graph, in standard ONNX ops.

Each augmentation draws from its own counter-based stream, `stream_seed(seed, "augment.{i}.{kind}")`,
so a step's draws are a function of (seed, step, position) alone, the same on every provider.
Per-sample draws come from noise shaped [N, k]: sample n reads elements n*k .. n*k + k - 1.

`p` (the chance to apply) is read by hflip, vflip and cutout; the others apply to every sample
(their amount already spans "no change": offset 0, factor 1), and a `p=` written on them is an
error rather than a silently ignored setting. Everything but noise needs an image [N, C, H, W].
"""

from __future__ import annotations

import math
from collections.abc import Callable

from dlspec.compiler.graph import Graph
from dlspec.compiler.random import stream_seed, uniform_like
from dlspec.compiler.tensor import Tensor, show
from dlspec.spec.errors import SpecError
from dlspec.spec.model import Augment

_I64 = 7  # TensorProto.INT64
_USES_P = ("hflip", "vflip", "cutout")
_ANY_RANK = ("noise",)


def augment(g: Graph, x: Tensor, augs: list[Augment], seed: int, step: str) -> Tensor:
    """Apply `augs` in order to the network input `x` (training graphs only)."""
    for i, aug in enumerate(augs):
        hint = f"augment.{i}.{aug.kind}"
        g.where = f"{aug.span} {hint}" if aug.span else hint
        if "p" in aug.arg_spans and aug.kind not in _USES_P:
            raise SpecError(f"{aug.kind} applies to every sample and takes no p= (only "
                            f"{', '.join(_USES_P)} do)", aug.arg_spans["p"])
        if aug.kind not in _ANY_RANK and (x.rank != 4 or any(d is None for d in x.shape[1:])):
            raise SpecError(f"augmentation {aug.kind} needs an image input [N, C, H, W]; the network "
                            f"input is {show(x.shape)}", aug.span)
        y = _RULES[aug.kind](_Aug(g, x, aug, stream_seed(seed, hint), step, hint))
        if y != x.name and all(d is not None for d in x.shape[1:]):
            # ONNX shape inference loses the static dims through the data-shaped draws; the
            # gradient rules downstream need them, so restate them (a Reshape costs no copy)
            y = g.op1("Reshape", [y, g.ints([-1, *(d or 0 for d in x.shape[1:])], hint)], hint)
        x = Tensor(y, x.shape)
    return x


class _Aug:
    """One augmentation being lowered: the graph, its input, its setting and its noise stream."""

    def __init__(self, g: Graph, x: Tensor, aug: Augment, seed: int, step: str, hint: str):
        self.g, self.x, self.aug, self.seed, self.step, self.hint = g, x, aug, seed, step, hint

    def op(self, op_type: str, *inputs: str, **attrs: object) -> str:
        return self.g.op1(op_type, list(inputs), self.hint, **attrs)

    def f(self, value: float) -> str:
        return self.g.const(value, hint=self.hint)

    def i(self, *values: int) -> str:
        return self.g.ints(list(values), hint=self.hint)

    def whole(self, what: str, low: int) -> int:
        """`amount` as a whole number >= low (pixels)."""
        a = self.aug.amount
        if a != int(a) or a < low:
            raise SpecError(f"{self.aug.kind}({a:g}): the {what} must be a whole number >= {low}",
                            self.aug.arg_spans.get("amount", self.aug.span))
        return int(a)

    def dims(self) -> tuple[int, int, int]:
        c, h, w = self.x.shape[1:]
        assert c is not None and h is not None and w is not None
        return c, h, w

    def per_sample(self, k: int) -> list[str]:
        """k independent U[0, 1) draws per sample, each shaped [N, 1, 1, 1]."""
        n = self.op("Slice", self.op("Shape", self.x.name), self.i(0), self.i(1))
        shape = self.op("Concat", n, self.i(k), axis=0)
        u = uniform_like(self.g, self.op("ConstantOfShape", shape), self.step, self.seed, self.hint)
        u = self.op("Reshape", u, self.i(-1, k))  # [N, k] for shape inference
        cols = self.g.op("Split", [u], self.hint, n_out=k, axis=1, num_outputs=k) if k > 1 else [u]
        return [self.op("Unsqueeze", c, self.i(2, 3)) for c in cols]

    def integer(self, u: str, n: int) -> str:
        """floor(u * n) as float, in 0 .. n-1 (u may round up to 1.0 in float32, hence the Min)."""
        return self.op("Min", self.op("Floor", self.op("Mul", u, self.f(float(n)))), self.f(float(n - 1)))

    def chance(self, u: str) -> str:
        """bool [N, 1, 1, 1]: the sample is augmented (probability p)."""
        return self.op("Less", u, self.f(self.aug.p))


def _flip(axis: int) -> Callable[[_Aug], str]:
    def rule(a: _Aug) -> str:
        size = a.x.shape[axis]
        assert size is not None
        flipped = a.op("Slice", a.x.name, a.i(-1), a.i(-size - 1), a.i(axis), a.i(-1))
        return a.op("Where", a.chance(a.per_sample(1)[0]), flipped, a.x.name)
    return rule


def _shift(a: _Aug) -> str:
    """translate(k) / crop(k): zero-pad by k, then cut the original size out at a per-sample
    offset: output[i, j] = x[i + dy, j + dx] (zero outside), dy and dx uniform in -k .. k."""
    k = a.whole("padding" if a.aug.kind == "crop" else "shift in pixels", 0)
    if k == 0:
        return a.x.name
    c, h, w = a.dims()
    padded = a.op("Pad", a.x.name, a.i(0, 0, k, k, 0, 0, k, k), mode="constant")
    uy, ux = a.per_sample(2)
    n = a.op("Slice", a.op("Shape", a.x.name), a.i(0), a.i(1))
    out = padded
    # rows, then columns: index[n, c, i, j] = i + oy[n] with oy = dy + k in 0 .. 2k
    for axis, u, size, shape in ((2, uy, h, (c, h, w + 2 * k)), (3, ux, w, (c, h, w))):
        offset = a.op("Cast", a.integer(u, 2 * k + 1), to=_I64)
        ramp = a.g.const(list(range(size)), "int64", hint=a.hint)
        ramp = a.op("Reshape", ramp, a.i(1, 1, size, 1) if axis == 2 else a.i(1, 1, 1, size))
        index = a.op("Expand", a.op("Add", ramp, offset), a.op("Concat", n, a.i(*shape), axis=0))
        out = a.op("GatherElements", out, index, axis=axis)
    return out


def _noise(a: _Aug) -> str:
    """x + amount * z, z ~ N(0, 1) per element by Box-Muller: sqrt(-2 ln(1 - u1)) cos(2 pi u2)."""
    both = a.op("Concat", a.i(2), a.op("Shape", a.x.name), axis=0)
    u = uniform_like(a.g, a.op("ConstantOfShape", both), a.step, a.seed, a.hint)
    u1 = a.op("Squeeze", a.op("Slice", u, a.i(0), a.i(1)), a.i(0))
    u2 = a.op("Squeeze", a.op("Slice", u, a.i(1), a.i(2)), a.i(0))
    tail = a.op("Max", a.op("Sub", a.f(1.0), u1), a.f(1e-12))  # in (0, 1]: ln stays finite
    r = a.op("Sqrt", a.op("Mul", a.op("Log", tail), a.f(-2.0)))
    z = a.op("Mul", r, a.op("Cos", a.op("Mul", u2, a.f(2 * math.pi))))
    return a.op("Add", a.x.name, a.op("Mul", z, a.f(a.aug.amount)))


def _signed(a: _Aug) -> str:
    """amount * (2u - 1), one per sample: uniform in [-amount, amount)."""
    u = a.per_sample(1)[0]
    return a.op("Mul", a.op("Sub", a.op("Mul", u, a.f(2.0)), a.f(1.0)), a.f(a.aug.amount))


def _brightness(a: _Aug) -> str:
    """x + b, b uniform in [-amount, amount) per sample."""
    return a.op("Add", a.x.name, _signed(a))


def _contrast(a: _Aug) -> str:
    """m + f (x - m), m the sample's mean over C, H, W, f uniform in [1 - amount, 1 + amount)."""
    mean = a.op("ReduceMean", a.x.name, a.i(1, 2, 3), keepdims=1)
    factor = a.op("Add", _signed(a), a.f(1.0))
    return a.op("Add", mean, a.op("Mul", a.op("Sub", a.x.name, mean), factor))


def _cutout(a: _Aug) -> str:
    """With probability p, zero a size x size square (all channels) lying wholly inside the image,
    its top-left corner uniform over the (H - size + 1) x (W - size + 1) places."""
    s = a.whole("square's side", 1)
    _, h, w = a.dims()
    if s > min(h, w):
        raise SpecError(f"cutout({s}): the square is larger than the {h}x{w} image",
                        a.aug.arg_spans.get("amount", a.aug.span))
    u_apply, uy, ux = a.per_sample(3)
    inside = a.chance(u_apply)
    for u, size, shape in ((uy, h, (1, 1, h, 1)), (ux, w, (1, 1, 1, w))):
        start = a.integer(u, size - s + 1)  # float, exact: 0 .. size - s
        ramp = a.op("Reshape", a.g.const([float(i) for i in range(size)], hint=a.hint), a.i(*shape))
        after = a.op("Greater", ramp, a.op("Sub", start, a.f(0.5)))  # ramp >= start
        before = a.op("Less", ramp, a.op("Add", start, a.f(s - 0.5)))  # ramp < start + s
        inside = a.op("And", inside, a.op("And", after, before))
    return a.op("Where", inside, a.f(0.0), a.x.name)


_RULES: dict[str, Callable[[_Aug], str]] = {
    "hflip": _flip(3), "vflip": _flip(2), "translate": _shift, "crop": _shift, "noise": _noise,
    "brightness": _brightness, "contrast": _contrast, "cutout": _cutout,
}
