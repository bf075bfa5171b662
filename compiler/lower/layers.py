"""The layer registry: each layer validates its arguments, infers its shape and lowers to ONNX.

Each class's docstring shows the DSL form it handles.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dlspec.compiler.graph import Shape, Value, show
from dlspec.compiler.graph import ops as op
from dlspec.compiler.graph.composite import channel_sum, per_channel
from dlspec.compiler.lower.random import stream_seed, uniform_like
from dlspec.compiler.target import lowering
from dlspec.spec.limits import MAX_SIZE
from dlspec.spec.model import Size

if TYPE_CHECKING:
    from dlspec.compiler.lower.context import LayerCtx

LAYERS: dict[str, type[Layer]] = {}
Window = Annotated[int, Field(le=MAX_SIZE)]  # a kernel, stride, dilation or padding; _pair checks the least


def layer(name: str) -> Any:
    def register(cls: type[Layer]) -> type[Layer]:
        assert name not in LAYERS, f"layer {name} registered twice"
        cls.kind = name
        LAYERS[name] = cls
        return cls
    return register


class Layer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ClassVar[str] = ""
    positional: ClassVar[tuple[str, ...]] = ()
    maps: ClassVar[bool] = True  # applied to each tensor of a list (param-free, one input)
    # alone in a section or stage, it takes that scope's name (`backbone.<param>`, not
    # `backbone.onnx1.<param>`)
    names_scope: ClassVar[bool] = False

    def build(self, ctx: LayerCtx, x: Value) -> Value:
        raise NotImplementedError

    def build_many(self, ctx: LayerCtx, xs: list[Value]) -> list[Value]:
        if self.maps:
            return [self.build(ctx, x) for x in xs]
        if len(xs) != 1:
            raise ctx.error(f"{self.kind} takes one tensor but gets {len(xs)} "
                            f"({', '.join(show(x.dims) for x in xs)}); join them first with concat or add")
        return [self.build(ctx, xs[0])]


def _pair(ctx: LayerCtx, v: int | list[int], what: str, least: int = 1) -> tuple[int, int]:
    """One number or two ([h, w]), each at least `least`."""
    pair = (v, v) if isinstance(v, int) else tuple(v)
    if len(pair) != 2:
        raise ctx.error(f"{what} takes one number or two ([h, w]), got {v}")
    if min(pair) < least:
        raise ctx.error(f"{what} must be {'a whole number' if isinstance(v, int) else 'whole numbers'} "
                        f">= {least}, got {v}")
    return (pair[0], pair[1])


def _spatial(ctx: LayerCtx, x: Value, what: str) -> tuple[int, int]:
    if x.rank != 4:
        raise ctx.error(f"{what} expects an image-like tensor [N, C, H, W], got {show(x.dims)}")
    h, w = x.dims[2], x.dims[3]
    assert isinstance(h, int) and isinstance(w, int)
    return h, w


def _window_out(ctx: LayerCtx, size: int, k: int, s: int, p0: int, p1: int, d: int, what: str) -> int:
    span = d * (k - 1) + 1
    if size + p0 + p1 < span:
        raise ctx.error(f"{what} window {k} (span {span}) is larger than its padded input ({size} + "
                        f"{p0 + p1} padding)")
    return (size + p0 + p1 - span) // s + 1


def _pads(ctx: LayerCtx, padding: Any, k: tuple[int, int], d: tuple[int, int]) -> list[int]:
    """ONNX pads [top, left, bottom, right]; 'same' centres the window (odd or even k)."""
    if padding == "valid":
        return [0, 0, 0, 0]
    if padding == "same":
        tot = [d[i] * (k[i] - 1) for i in range(2)]
        return [tot[0] // 2, tot[1] // 2, tot[0] - tot[0] // 2, tot[1] - tot[1] // 2]
    ph, pw = _pair(ctx, padding, "padding", least=0)
    return [ph, pw, ph, pw]


@layer("conv")
class Conv(Layer):
    """`conv(out, k=3, stride=1, padding=same|valid|p|[ph, pw], dilation=1, groups=1, bias=true)`.

    Default padding is 'same' (the ResNet convention at stride 2). A conv directly followed by
    `bn` has no bias unless `bias=true` is written: batch norm's shift makes it redundant.
    """

    positional: ClassVar[tuple[str, ...]] = ("out",)
    maps: ClassVar[bool] = False
    out: Size
    k: Window | list[Window] = 3
    stride: Window | list[Window] = 1
    padding: Literal["same", "valid"] | Window | list[Window] = "same"
    dilation: Window | list[Window] = 1
    groups: Size = 1
    bias: bool | None = None

    def build(self, ctx: LayerCtx, x: Value) -> Value:
        h, w = _spatial(ctx, x, "conv")
        k, s = _pair(ctx, self.k, "k"), _pair(ctx, self.stride, "stride")
        d = _pair(ctx, self.dilation, "dilation")
        pads = _pads(ctx, self.padding, k, d)
        cin = x.channels
        if cin % self.groups or self.out % self.groups:
            raise ctx.error(f"groups={self.groups} must divide both the input channels ({cin}) "
                            f"and the output channels ({self.out})")
        ho = _window_out(ctx, h, k[0], s[0], pads[0], pads[2], d[0], "conv")
        wo = _window_out(ctx, w, k[1], s[1], pads[1], pads[3], d[1], "conv")
        fan_in = cin // self.groups * k[0] * k[1]
        weight = ctx.weight("weight", (self.out, cin // self.groups, k[0], k[1]), fan_in,
                            self.out // self.groups * k[0] * k[1])
        with_bias = self.bias if self.bias is not None else ctx.next_kind != "bn"
        bias = ctx.zeros("bias", (self.out,)) if with_bias else None
        ctx.flops += 2 * self.out * ho * wo * fan_in
        y = op.Conv(x, weight, bias, kernel_shape=list(k), strides=list(s), pads=pads, dilations=list(d),
                    group=self.groups)
        return y.with_shape((None, self.out, ho, wo))


@layer("bn")
class BatchNorm(Layer):
    """`bn(eps=1e-5, momentum=0.1)`: batch norm over channels; running statistics are parameters."""

    maps: ClassVar[bool] = False
    eps: float = Field(1e-5, gt=0)
    momentum: float = Field(0.1, gt=0, le=1)

    def build(self, ctx: LayerCtx, x: Value) -> Value:
        if x.rank < 2:
            raise ctx.error(f"bn expects [N, C, ...], got {show(x.dims)}")
        c = (x.channels,)
        weight, bias = ctx.ones("weight", c), ctx.zeros("bias", c)
        run_mean, run_var = ctx.zeros("running_mean", c, state=True), ctx.ones("running_var", c, state=True)
        if not ctx.training:
            return op.BatchNormalization(x, weight, bias, run_mean, run_var, epsilon=self.eps,
                                         momentum=1.0 - self.momentum)
        stats = batch_norm_train(x, weight, bias, self.eps)

        def blend(old: Value, new: Value) -> Value:  # (1 - momentum) old + momentum new
            return old * (1.0 - self.momentum) + new * self.momentum

        ctx.comp.state_updates[run_mean.name] = blend(run_mean, stats.mean)
        ctx.comp.state_updates[run_var.name] = blend(run_var, stats.unbiased_var())
        return stats.y


@dataclass
class BatchStats:
    """Training-mode batch norm: its output, the batch's mean and (biased) variance per channel,
    and the count of values per channel."""

    y: Value
    mean: Value
    var: Value
    count: Value

    def unbiased_var(self) -> Value:
        """var n / (n - 1), as PyTorch keeps the running variance; a batch of one value per
        channel (whose var is 0) keeps 0, where n / (n - 1) would make it 0 * inf = NaN."""
        return self.var * (self.count / op.Max([self.count - 1.0, 1.0]))


@lowering
def batch_norm_train(x: Value, weight: Value, bias: Value, eps: float) -> BatchStats:
    """y = (x - mean) w / sqrt(var + eps) + b with the statistics of the batch, per channel, in
    primitive ops (the CUDA provider refuses training-mode BatchNormalization at opset >= 14)."""
    c = x.channels
    n = (op.numel(x) / x.graph.ints([c])).cast("float32")  # values per channel
    mean = channel_sum(x, c) / n  # [C]
    d = x - per_channel(mean, x.rank)
    var = channel_sum(d * d, c) / n  # biased, [C]
    inv = op.Reciprocal(op.Sqrt(var + eps))
    y = d * per_channel(weight * inv, x.rank) + per_channel(bias, x.rank)
    return BatchStats(y.with_shape(x.shape), mean, var, n)


class _Activation(Layer):
    """A layer that is one elementwise op."""

    fn: ClassVar[Callable[[Value], Value]]

    def build(self, ctx: LayerCtx, x: Value) -> Value:
        return type(self).fn(x)


@layer("relu")
class Relu(_Activation):
    """`relu`"""

    fn = op.Relu


@layer("relu6")
class Relu6(Layer):
    """`relu6`: min(max(x, 0), 6), MobileNet's activation"""

    def build(self, ctx: LayerCtx, x: Value) -> Value:
        return op.Clip(x, 0.0, 6.0)


@layer("sigmoid")
class Sigmoid(_Activation):
    """`sigmoid`"""

    fn = op.Sigmoid


@layer("tanh")
class Tanh(_Activation):
    """`tanh`"""

    fn = op.Tanh


@layer("gelu")
class Gelu(_Activation):
    """`gelu` (exact, erf form)"""

    fn = op.Gelu


@layer("identity")
class Identity(Layer):
    """`identity`"""

    def build(self, ctx: LayerCtx, x: Value) -> Value:
        return x


@layer("leaky_relu")
class LeakyRelu(Layer):
    """`leaky_relu(slope=0.01)`"""

    positional: ClassVar[tuple[str, ...]] = ("slope",)
    slope: float = 0.01

    def build(self, ctx: LayerCtx, x: Value) -> Value:
        return op.LeakyRelu(x, alpha=self.slope)


@layer("silu")
class Silu(Layer):
    """`silu`: x * sigmoid(x)"""

    def build(self, ctx: LayerCtx, x: Value) -> Value:
        return x * op.Sigmoid(x)


@layer("softmax")
class Softmax(Layer):
    """`softmax(axis=1)`"""

    axis: int = 1

    def build(self, ctx: LayerCtx, x: Value) -> Value:
        if not -x.rank <= self.axis < x.rank:
            raise ctx.error(f"softmax axis {self.axis} is out of range for {show(x.dims)}")
        return op.Softmax(x, axis=self.axis)


class _Pool(Layer):
    positional: ClassVar[tuple[str, ...]] = ("k",)
    k: Window | list[Window] = 2
    stride: Window | list[Window] | None = None
    padding: Window | list[Window] = 0

    def build(self, ctx: LayerCtx, x: Value) -> Value:
        h, w = _spatial(ctx, x, self.kind)
        k = _pair(ctx, self.k, "k")
        s = _pair(ctx, self.stride, "stride") if self.stride is not None else k
        pads = _pads(ctx, self.padding, k, (1, 1))
        if any(2 * p > kk for p, kk in zip(pads, k + k)):
            # PyTorch's rule; past it (from pad >= k) windows would lie wholly in the padding
            raise ctx.error(f"padding {self.padding} is more than half the window {self.k}; "
                            "pooling allows at most k / 2")
        ho = _window_out(ctx, h, k[0], s[0], pads[0], pads[2], 1, self.kind)
        wo = _window_out(ctx, w, k[1], s[1], pads[1], pads[3], 1, self.kind)
        return self.pool(x, list(k), list(s), pads).with_shape((None, x.dims[1], ho, wo))

    def pool(self, x: Value, k: list[int], s: list[int], pads: list[int]) -> Value:
        raise NotImplementedError


@layer("maxpool")
class MaxPool(_Pool):
    """`maxpool(k=2, stride=k, padding=0)`"""

    def pool(self, x: Value, k: list[int], s: list[int], pads: list[int]) -> Value:
        return op.MaxPool(x, k, s, pads)


@layer("avgpool")
class AvgPool(_Pool):
    """`avgpool(k=2, stride=k, padding=0)` (padding counts as zeros, as in PyTorch)"""

    def pool(self, x: Value, k: list[int], s: list[int], pads: list[int]) -> Value:
        return op.AveragePool(x, k, s, pads, count_include_pad=1)


@layer("gap")
class GlobalAvgPool(Layer):
    """`gap`: global average pooling, [N, C, H, W] -> [N, C, 1, 1]"""

    def build(self, ctx: LayerCtx, x: Value) -> Value:
        if x.rank < 3:
            raise ctx.error(f"gap expects [N, C, H, W], got {show(x.dims)}")
        return op.GlobalAveragePool(x)


@layer("flatten")
class Flatten(Layer):
    """`flatten`: [N, ...] -> [N, prod(...)]"""

    def build(self, ctx: LayerCtx, x: Value) -> Value:
        if x.rank == 2:
            return x
        size = int(np.prod([d for d in x.dims[1:] if isinstance(d, int)]))
        return op.Flatten(x, axis=1).with_shape((None, size))


@layer("linear")
class Linear(Layer):
    """`linear(out, bias=true)`: y = x W^T + b with W of shape [out, in], on the last axis:
    [N, in] -> [N, out], and [N, ..., in] -> [N, ..., out] (each position of a sequence alike)"""

    positional: ClassVar[tuple[str, ...]] = ("out",)
    maps: ClassVar[bool] = False
    out: Size
    bias: bool = True

    def build(self, ctx: LayerCtx, x: Value) -> Value:
        if x.rank < 2:
            raise ctx.error(f"linear expects [N, features] or [N, ..., features], got {show(x.dims)}")
        fin = x.dims[-1]
        assert isinstance(fin, int)
        weight = ctx.weight("weight", (self.out, fin), fin, self.out)
        bias = ctx.zeros("bias", (self.out,)) if self.bias else None
        ctx.flops += 2 * fin * self.out * math.prod(static(x.dims[1:-1]))
        return dense(x, weight, bias)


def dense(x: Value, weight: Value, bias: Value | None) -> Value:
    """x W^T + b on the last axis of x [N, ..., in], W [out, in]: one Gemm over the rows of every
    position ([N * ..., in]), whose gradient is one Gemm per operand too."""
    out = static(weight.dims)[0]
    if x.rank == 2:
        return op.Gemm(x, weight, bias, transB=1).with_shape((None, out))
    *inner, fin = static(x.dims[1:])
    y = op.Gemm(op.Reshape(x, [-1, fin]), weight, bias, transB=1)
    return op.Reshape(y, [-1, *inner, out]).with_shape((None, *inner, out))


def static(dims: Shape) -> list[int]:
    """Sizes a layer knows: every axis of a value but the batch."""
    out = []
    for d in dims:
        assert isinstance(d, int), f"a size of {show(dims)} is not known"
        out.append(d)
    return out


@layer("dropout")
class Dropout(Layer):
    """`dropout(p=0.5)`: inverted dropout while training, identity at inference"""

    positional: ClassVar[tuple[str, ...]] = ("p",)
    p: float = Field(0.5, ge=0.0, lt=1.0)

    def build(self, ctx: LayerCtx, x: Value) -> Value:
        if not ctx.training or self.p == 0:
            return x
        # inverted dropout: keep with probability 1 - p, scale kept values by 1 / (1 - p)
        u = uniform_like(x, ctx.comp.step, stream_seed(ctx.comp.policy.seed, ctx.path))
        keep = (u >= self.p).cast("float32")
        return (x * (keep * (1.0 / (1.0 - self.p)))).with_shape(x.shape)


@layer("upsample")
class Upsample(Layer):
    """`upsample(2)`: nearest-neighbour upsampling by an integer factor"""

    positional: ClassVar[tuple[str, ...]] = ("scale",)
    scale: Size = 2

    def build(self, ctx: LayerCtx, x: Value) -> Value:
        _spatial(ctx, x, "upsample")
        return upsample(x, self.scale, self.scale)


def upsample(x: Value, fh: int, fw: int) -> Value:
    """Nearest upsampling by integer factors: asymmetric coordinates + floor, as PyTorch's 'nearest'."""
    scales = x.graph.const([1.0, 1.0, float(fh), float(fw)])
    y = op.Resize(x, scales, mode="nearest", coordinate_transformation_mode="asymmetric",
                  nearest_mode="floor")
    h, w = x.dims[2], x.dims[3]
    assert isinstance(h, int) and isinstance(w, int)
    return y.with_shape((None, x.dims[1], h * fh, w * fw))


def _same_shapes(ctx: LayerCtx, xs: list[Value], what: str, skip_axis: int | None = None) -> None:
    ref = xs[0].dims
    for x in xs[1:]:
        ok = len(x.dims) == len(ref) and all(
            a == b for i, (a, b) in enumerate(zip(x.dims, ref)) if i != skip_axis)
        if not ok:
            kind = "channel" if len(ref) > 1 and x.dims[2:] == ref[2:] else "shape"
            raise ctx.error(f"{what}: {kind} mismatch between {show(ref)} and {show(x.dims)}")


def broadcast_shapes(ctx: LayerCtx, xs: list[Value], what: str) -> None:
    """NumPy broadcasting between tensors of one rank (the batch axis comes first in each, so
    ranks are not padded on the left): each axis has one size, or 1."""
    ref = xs[0].dims
    for x in xs[1:]:
        if x.rank != len(ref):
            raise ctx.error(f"{what}: cannot broadcast {show(ref)} and {show(x.dims)}: the ranks differ; "
                            "each tensor's first axis is the batch, so give them one rank (reshape adds "
                            "axes of size 1)")
    for axis in range(1, len(ref)):
        big = [x.dims for x in xs if x.dims[axis] != 1]
        b = next((d for d in big if d[axis] != big[0][axis]), None)
        if b is not None:
            a = big[0]
            kind = "channel" if axis == 1 and a[2:] == b[2:] else "shape"
            raise ctx.error(f"{what}: {kind} mismatch between {show(a)} and {show(b)} (axis {axis}: "
                            "sizes broadcast only where they are equal or 1)")


@layer("add")
class Add(Layer):
    """`add` or `add(from=[a, b, ...])`: elementwise sum, broadcasting axes of size 1
    (`[N, T, D]` + `[N, 1, D]`)"""

    maps: ClassVar[bool] = False

    def build_many(self, ctx: LayerCtx, xs: list[Value]) -> list[Value]:
        broadcast_shapes(ctx, xs, "add")
        y = xs[0]
        for x in xs[1:]:
            y = y + x
        return [y]


@layer("mul")
class Mul(Layer):
    """`mul(from=[x, gate, ...])`: elementwise product, broadcasting axes of size 1 (a gate
    [N, C, 1, 1] scales each channel of [N, C, H, W])"""

    maps: ClassVar[bool] = False

    def build_many(self, ctx: LayerCtx, xs: list[Value]) -> list[Value]:
        broadcast_shapes(ctx, xs, "mul")
        y = xs[0]
        for x in xs[1:]:
            y = y * x
        return [y]


@layer("sub")
class Sub(Layer):
    """`sub(from=[a, b])`: a - b elementwise, broadcasting axes of size 1"""

    maps: ClassVar[bool] = False

    def build_many(self, ctx: LayerCtx, xs: list[Value]) -> list[Value]:
        if len(xs) != 2:
            raise ctx.error(f"sub takes two tensors (a - b), got {len(xs)}; name them with from=[a, b]")
        broadcast_shapes(ctx, xs, "sub")
        return [xs[0] - xs[1]]


@layer("concat")
class Concat(Layer):
    """`concat` or `concat(from=[a, b], axis=1)`: join tensors along the channel axis"""

    maps: ClassVar[bool] = False
    axis: int = 1

    def build_many(self, ctx: LayerCtx, xs: list[Value]) -> list[Value]:
        if len(xs) == 1:
            return xs
        if not 1 <= self.axis < xs[0].rank:
            raise ctx.error(f"concat axis {self.axis} is out of range for {show(xs[0].dims)}")
        _same_shapes(ctx, xs, "concat", skip_axis=self.axis)
        return [op.Concat(xs, axis=self.axis)]


# the layers of the other modules register themselves on import; every user of LAYERS imports this
import dlspec.compiler.lower.layers_attention  # noqa: E402, F401
import dlspec.compiler.lower.layers_dense  # noqa: E402, F401
import dlspec.compiler.lower.layers_norm  # noqa: E402, F401
import dlspec.compiler.lower.layers_recurrent  # noqa: E402, F401
import dlspec.compiler.lower.layers_sequence  # noqa: E402, F401
import dlspec.compiler.lower.layers_shape  # noqa: E402, F401
