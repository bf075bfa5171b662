"""Data augmentation inside the training graph, in standard ONNX ops.

Each augmentation draws from its own counter-based stream, `stream_seed(seed, "augment.{i}.{kind}")`,
so a step's draws are a function of (seed, step, position) alone, the same on every provider.
Per-sample draws come from noise shaped [N, k]: sample n reads elements n*k .. n*k + k - 1.

`p` (the chance to apply) is read by hflip, vflip and cutout; the others apply to every sample
(their amount already spans "no change": offset 0, factor 1), and a `p=` written on them is an
error rather than a silently ignored setting. Everything but noise needs an image [N, C, H, W].

Geometric augmentations (flips, translate, crop) move pixels: a target laid out like the image
(a mask [N, H, W] or [N, C, H, W] of its height and width) moves with it, by the same draws, and
one with other spatial axes cannot, which is refused. The others change values where they are
(cutout too, as torchvision's RandomErasing) and leave targets alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from dlspec.compiler.graph import Value, show
from dlspec.compiler.graph import ops as op
from dlspec.compiler.lower.random import stream_seed, uniform_like
from dlspec.spec.errors import SpecError
from dlspec.spec.model import Augment, TensorDecl

_USES_P = ("hflip", "vflip", "cutout")
_ANY_RANK = ("noise",)
GEOMETRIC = ("hflip", "vflip", "translate", "crop")  # they move pixels; masks move with them


def augment(x: Value, augs: list[Augment], seed: int, step: Value) -> Value:
    """Apply `augs` in order to the network input `x` (training graphs only)."""
    return augment_with(x, [], augs, seed, step)[0]


def augment_with(x: Value, targets: Sequence[Value], augs: list[Augment], seed: int,
                 step: Value) -> tuple[Value, list[Value]]:
    """Apply `augs` in order to the network input `x`, and the geometric ones to each of `targets`
    ([N, H, W] or [N, C, H, W], of x's height and width) with the same draws, so that a target's
    pixel goes where the image's pixel goes (training graphs only)."""
    g = x.graph
    # an image [N, H, W, C] (C 1 or 3, as images(...) reads it) is augmented as [N, C, H, W]
    channels_last = x.rank == 4 and x.dims[1] not in (1, 3) and x.dims[3] in (1, 3)
    if channels_last:
        x = op.Transpose(x, [0, 3, 1, 2])
    masks = [op.Unsqueeze(t, [1]).with_shape((None, 1, *t.dims[1:])) if t.rank == 3 else t for t in targets]
    for i, aug in enumerate(augs):
        hint = f"augment.{i}.{aug.kind}"
        if "p" in aug.arg_spans and aug.kind not in _USES_P:
            raise SpecError(f"{aug.kind} applies to every sample and takes no p= (only "
                            f"{', '.join(_USES_P)} do)", aug.arg_spans["p"])
        if aug.kind not in _ANY_RANK and (x.rank != 4 or any(d is None for d in x.dims[1:])):
            raise SpecError(f"augmentation {aug.kind} needs an image input [N, C, H, W]; the network "
                            f"input is {show(x.dims)}", aug.span)
        with g.at(hint, f"{aug.span} {hint}" if aug.span else hint):
            a = _Aug(x, aug, stream_seed(seed, hint), step)
            x = _apply(a, x)
            if aug.kind in GEOMETRIC:
                masks = [_apply(a, mask) for mask in masks]
    moved = [op.Squeeze(mk, [1]).with_shape(t.shape) if t.rank == 3 else mk
             for mk, t in zip(masks, targets, strict=True)]
    return (op.Transpose(x, [0, 2, 3, 1]) if channels_last else x), moved


def _apply(a: _Aug, x: Value) -> Value:
    """One augmentation's rule on x (the image, or a mask moved by the image's draws)."""
    a.x = x
    y = _RULES[a.aug.kind](a)
    if y.name != x.name and all(d is not None for d in x.dims[1:]):
        # ONNX shape inference loses the static dims through the data-shaped draws; the
        # gradient rules downstream need them, so restate them (a Reshape costs no copy)
        y = op.Reshape(y, [-1, *(d for d in x.dims[1:] if isinstance(d, int))])
    return y.with_shape(x.shape)


def moving_targets(targets: Sequence[TensorDecl], images: Sequence[Value], augs: list[Augment]) -> list[str]:
    """The targets that the geometric augmentations among `augs` move with the images: those laid
    out like an image, [N, H, W] or [N, C, H, W] of its height and width. Targets without spatial
    axes ([N], [N, k]: labels, values) stay as they are; a target with other spatial axes cannot
    follow the image, and is refused at the augmentation (the data would no longer match)."""
    geometric = [a for a in augs if a.kind in GEOMETRIC]
    if not geometric:
        return []
    sizes = {tuple(v.dims[2:]) for v in images if v.rank == 4}
    moving = []
    for t in targets:
        if len(t.shape) <= 2:
            continue
        if len(t.shape) in (3, 4) and tuple(t.shape[-2:]) in sizes:
            moving.append(t.name)
            continue
        aug = geometric[0]
        shape = "[" + ", ".join(str(d) for d in t.shape) + "]"
        images_hw = " or ".join(sorted(f"{h}x{w}" for h, w in sizes)) or "none"
        at = f" (declared at line {t.span.line})" if t.span is not None else ""
        raise SpecError(f"{aug.kind} moves the pixels of the image, but target '{t.name}' {t.dtype}{shape}"
                        f"{at} is not laid out like it (image height x width: {images_hw}): it cannot be "
                        "moved along, and inputs and targets would no longer match; declare it "
                        "[N, H, W] or [N, C, H, W] at the image's size, or leave out "
                        f"{', '.join(dict.fromkeys(a.kind for a in geometric))}", aug.span)
    return moving


class _Aug:
    """One augmentation being lowered: its input, its setting, its noise stream and its draws
    (made once, so every tensor it moves moves alike)."""

    def __init__(self, x: Value, aug: Augment, seed: int, step: Value):
        self.x, self.aug, self.seed, self.step = x, aug, seed, step
        self.draws: dict[int, list[Value]] = {}

    def whole(self, what: str, low: int) -> int:
        """`amount` as a whole number >= low (pixels)."""
        a = self.aug.amount
        if a != int(a) or a < low:
            raise SpecError(f"{self.aug.kind}({a:g}): the {what} must be a whole number >= {low}",
                            self.aug.arg_spans.get("amount", self.aug.span))
        return int(a)

    def dims(self) -> tuple[int, int, int]:
        c, h, w = self.x.dims[1:]
        assert isinstance(c, int) and isinstance(h, int) and isinstance(w, int)
        return c, h, w

    def batch(self) -> Value:
        """N, as a 1-element int64 tensor."""
        return op.Slice(op.Shape(self.x), [0], [1])

    def per_sample(self, k: int) -> list[Value]:
        """k independent U[0, 1) draws per sample, each shaped [N, 1, 1, 1]."""
        if k not in self.draws:
            shape = op.Concat([self.batch(), self.x.graph.ints([k])], axis=0)
            u = uniform_like(op.ConstantOfShape(shape), self.step, self.seed)
            u = op.Reshape(u, [-1, k])  # [N, k] for shape inference
            cols = op.Split(u, axis=1, num_outputs=k) if k > 1 else [u]
            self.draws[k] = [op.Unsqueeze(c, [2, 3]) for c in cols]
        return self.draws[k]

    def integer(self, u: Value, n: int) -> Value:
        """floor(u * n) as float, in 0 .. n-1 (u may round up to 1.0 in float32, hence the Min)."""
        return op.Min([op.Floor(u * float(n)), float(n - 1)])

    def chance(self, u: Value) -> Value:
        """bool [N, 1, 1, 1]: the sample is augmented (probability p)."""
        return u < self.aug.p


def _flip(axis: int) -> Callable[[_Aug], Value]:
    def rule(a: _Aug) -> Value:
        size = a.x.dims[axis]
        assert isinstance(size, int)
        flipped = op.Slice(a.x, [-1], [-size - 1], [axis], [-1])
        return op.Where(a.chance(a.per_sample(1)[0]), flipped, a.x)
    return rule


def _shift(a: _Aug) -> Value:
    """translate(k) / crop(k): zero-pad by k, then cut the original size out at a per-sample
    offset: output[i, j] = x[i + dy, j + dx] (zero outside), dy and dx uniform in -k .. k."""
    k = a.whole("padding" if a.aug.kind == "crop" else "shift in pixels", 0)
    if k == 0:
        return a.x
    c, h, w = a.dims()
    if k >= min(h, w):  # a shift that can leave nothing of the image, and a padded copy of any size
        raise SpecError(f"{a.aug.kind}({k}): the shift must be smaller than the {h}x{w} image",
                        a.aug.arg_spans.get("amount", a.aug.span))
    g = a.x.graph
    out = op.Pad(a.x, [0, 0, k, k, 0, 0, k, k])
    uy, ux = a.per_sample(2)
    n = a.batch()
    # rows, then columns: index[n, c, i, j] = i + oy[n] with oy = dy + k in 0 .. 2k
    for axis, u, size, shape in ((2, uy, h, (c, h, w + 2 * k)), (3, ux, w, (c, h, w))):
        offset = a.integer(u, 2 * k + 1).cast("int64")
        ramp = op.Reshape(g.const(list(range(size)), "int64"),
                          [1, 1, size, 1] if axis == 2 else [1, 1, 1, size])
        index = op.Expand(ramp + offset, op.Concat([n, g.ints(shape)], axis=0))
        out = op.GatherElements(out, index, axis=axis)
    return out


def _noise(a: _Aug) -> Value:
    """x + amount * z, z ~ N(0, 1) per element by Box-Muller: sqrt(-2 ln(1 - u1)) cos(2 pi u2)."""
    both = op.Concat([a.x.graph.ints([2]), op.Shape(a.x)], axis=0)
    u = uniform_like(op.ConstantOfShape(both), a.step, a.seed)
    u1 = op.Squeeze(op.Slice(u, [0], [1]), [0])
    u2 = op.Squeeze(op.Slice(u, [1], [2]), [0])
    tail = op.Max([1.0 - u1, 1e-12])  # in (0, 1]: ln stays finite
    r = op.Sqrt(op.Log(tail) * -2.0)
    z = r * op.Cos(u2 * (2 * math.pi))
    return a.x + z * a.aug.amount


def _signed(a: _Aug) -> Value:
    """amount * (2u - 1), one per sample: uniform in [-amount, amount)."""
    return (a.per_sample(1)[0] * 2.0 - 1.0) * a.aug.amount


def _brightness(a: _Aug) -> Value:
    """x + b, b uniform in [-amount, amount) per sample."""
    return a.x + _signed(a)


def _contrast(a: _Aug) -> Value:
    """m + f (x - m), m the sample's mean over C, H, W, f uniform in [1 - amount, 1 + amount)."""
    mean = op.ReduceMean(a.x, [1, 2, 3], keepdims=1)
    factor = _signed(a) + 1.0
    return mean + (a.x - mean) * factor


def _cutout(a: _Aug) -> Value:
    """With probability p, zero a size x size square (all channels) lying wholly inside the image,
    its top-left corner uniform over the (H - size + 1) x (W - size + 1) places."""
    s = a.whole("square's side", 1)
    _, h, w = a.dims()
    if s > min(h, w):
        raise SpecError(f"cutout({s}): the square is larger than the {h}x{w} image",
                        a.aug.arg_spans.get("amount", a.aug.span))
    u_apply, uy, ux = a.per_sample(3)
    inside = a.chance(u_apply)
    for u, size, shape in ((uy, h, [1, 1, h, 1]), (ux, w, [1, 1, 1, w])):
        start = a.integer(u, size - s + 1)  # float, exact: 0 .. size - s
        ramp = op.Reshape(a.x.graph.const([float(i) for i in range(size)]), shape)
        after = ramp > start - 0.5  # ramp >= start
        before = ramp < start + (s - 0.5)  # ramp < start + s
        inside = op.And(inside, op.And(after, before))
    return op.Where(inside, 0.0, a.x)


_RULES: dict[str, Callable[[_Aug], Value]] = {
    "hflip": _flip(3), "vflip": _flip(2), "translate": _shift, "crop": _shift, "noise": _noise,
    "brightness": _brightness, "contrast": _contrast, "cutout": _cutout,
}
