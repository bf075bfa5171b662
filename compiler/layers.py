"""The layer registry: each layer validates its arguments, infers its shape and lowers to ONNX.

Each class's docstring shows the DSL form it handles.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from dlspec.compiler.grad_rules_norm import batch_norm_composite, channel_affine, channel_sum, per_channel
from dlspec.compiler.random import stream_seed, uniform_like
from dlspec.compiler.tensor import Tensor, show

if TYPE_CHECKING:
    from dlspec.compiler.context import LayerCtx

LAYERS: dict[str, type[Layer]] = {}


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

    def build(self, ctx: LayerCtx, x: Tensor) -> Tensor:
        raise NotImplementedError

    def build_many(self, ctx: LayerCtx, xs: list[Tensor]) -> list[Tensor]:
        if self.maps:
            return [self.build(ctx, x) for x in xs]
        if len(xs) != 1:
            raise ctx.error(f"{self.kind} takes one tensor but gets {len(xs)} "
                            f"({', '.join(show(x.shape) for x in xs)}); join them first with concat or add")
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


def _spatial(ctx: LayerCtx, x: Tensor, what: str) -> tuple[int, int]:
    if x.rank != 4:
        raise ctx.error(f"{what} expects an image-like tensor [N, C, H, W], got {show(x.shape)}")
    h, w = x.shape[2], x.shape[3]
    assert h is not None and w is not None
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
    out: PositiveInt
    k: int | list[int] = 3
    stride: int | list[int] = 1
    padding: Literal["same", "valid"] | int | list[int] = "same"
    dilation: int | list[int] = 1
    groups: PositiveInt = 1
    bias: bool | None = None

    def build(self, ctx: LayerCtx, x: Tensor) -> Tensor:
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
        wname = ctx.weight("weight", (self.out, cin // self.groups, k[0], k[1]), fan_in,
                           self.out // self.groups * k[0] * k[1])
        inputs = [x.name, wname]
        bias = self.bias if self.bias is not None else ctx.next_kind != "bn"
        if bias:
            inputs.append(ctx.zeros("bias", (self.out,)))
        ctx.flops += 2 * self.out * ho * wo * fan_in
        y = ctx.g.op1("Conv", inputs, ctx.path, kernel_shape=list(k), strides=list(s), pads=pads,
                      dilations=list(d), group=self.groups)
        return Tensor(y, (None, self.out, ho, wo))


@layer("bn")
class BatchNorm(Layer):
    """`bn(eps=1e-5, momentum=0.1)`: batch norm over channels; running statistics are parameters."""

    maps: ClassVar[bool] = False
    eps: float = Field(1e-5, gt=0)
    momentum: float = Field(0.1, gt=0, le=1)

    def build(self, ctx: LayerCtx, x: Tensor) -> Tensor:
        if x.rank < 2:
            raise ctx.error(f"bn expects [N, C, ...], got {show(x.shape)}")
        c = (x.channels,)
        names = [x.name, ctx.ones("weight", c), ctx.zeros("bias", c),
                 ctx.zeros("running_mean", c, state=True), ctx.ones("running_var", c, state=True)]
        if ctx.training:
            return Tensor(self._train(ctx, x, names), x.shape)
        y = ctx.g.op1("BatchNormalization", names, ctx.path, epsilon=self.eps,
                      momentum=1.0 - self.momentum)
        return Tensor(y, x.shape)

    def _train(self, ctx: LayerCtx, x: Tensor, names: list[str]) -> str:
        """Batch statistics in primitive ops (the CUDA provider refuses training-mode
        BatchNormalization at opset >= 14); also emits the updated running statistics."""
        g, p = ctx.g, ctx.path
        _, weight, bias, run_mean, run_var = names
        c = x.channels
        n = g.op1("Cast", [g.op1("Div", [g.numel(x.name, p), g.ints([c])], p)], p, to=1)  # per channel
        mean = g.op1("Div", [channel_sum(g, x.name, c, p), n], p)  # [C]
        if ctx.comp.many_threads:  # ops that onnxruntime threads (compiler/threads.py)
            d = g.op1("Sub", [x.name, per_channel(g, mean, x.rank, p)], p)
        else:  # one pass, where a broadcast Sub takes 1.5x to 2.5x longer in onnxruntime
            d = channel_affine(g, x.name, g.const(np.ones(c, np.float32)), g.op1("Neg", [mean], p), c, p)
        var = g.op1("Div", [channel_sum(g, g.op1("Mul", [d, d], p), c, p), n], p)  # biased, [C]
        inv = g.op1("Reciprocal", [g.op1("Sqrt", [g.op1("Add", [var, g.const(self.eps)], p)], p)], p)
        if ctx.comp.many_threads:
            y = channel_affine(g, d, g.op1("Mul", [weight, inv], p), bias, c, p, mul_add_rank=x.rank)
        else:
            # y = d w / sqrt(var + eps) + b as one inference-mode BatchNormalization of the centred
            # d: one pass, where a broadcast Mul and Add take two slower ones in onnxruntime
            y = g.op1("BatchNormalization", [d, weight, bias, g.const(np.zeros(c, np.float32)), var],
                      p, epsilon=self.eps)
        ctx.comp.composites[y] = batch_norm_composite(x.name, weight, bias, d, inv, n, c, x.rank)
        # running statistics as PyTorch keeps them: the variance unbiased, n / (n - 1)
        unbias = g.op1("Div", [n, g.op1("Sub", [n, g.const(1.0)], p)], p)
        m = g.const(self.momentum)
        keep = g.const(1.0 - self.momentum)

        def blend(old: str, new: str) -> str:  # (1 - momentum) old + momentum new
            return g.op1("Add", [g.op1("Mul", [old, keep], p), g.op1("Mul", [new, m], p)], p)

        ctx.comp.state_updates[run_mean] = blend(run_mean, mean)
        ctx.comp.state_updates[run_var] = blend(run_var, g.op1("Mul", [var, unbias], p))
        return y


class _Unary(Layer):
    op: ClassVar[str] = ""

    def build(self, ctx: LayerCtx, x: Tensor) -> Tensor:
        return Tensor(ctx.g.op1(self.op, [x.name], ctx.path), x.shape)


@layer("relu")
class Relu(_Unary):
    """`relu`"""

    op: ClassVar[str] = "Relu"


@layer("sigmoid")
class Sigmoid(_Unary):
    """`sigmoid`"""

    op: ClassVar[str] = "Sigmoid"


@layer("tanh")
class Tanh(_Unary):
    """`tanh`"""

    op: ClassVar[str] = "Tanh"


@layer("gelu")
class Gelu(_Unary):
    """`gelu` (exact, erf form)"""

    op: ClassVar[str] = "Gelu"


@layer("identity")
class Identity(Layer):
    """`identity`"""

    def build(self, ctx: LayerCtx, x: Tensor) -> Tensor:
        return x


@layer("leaky_relu")
class LeakyRelu(Layer):
    """`leaky_relu(slope=0.01)`"""

    positional: ClassVar[tuple[str, ...]] = ("slope",)
    slope: float = 0.01

    def build(self, ctx: LayerCtx, x: Tensor) -> Tensor:
        return Tensor(ctx.g.op1("LeakyRelu", [x.name], ctx.path, alpha=self.slope), x.shape)


@layer("silu")
class Silu(Layer):
    """`silu`: x * sigmoid(x)"""

    def build(self, ctx: LayerCtx, x: Tensor) -> Tensor:
        s = ctx.g.op1("Sigmoid", [x.name], ctx.path)
        return Tensor(ctx.g.op1("Mul", [x.name, s], ctx.path), x.shape)


@layer("softmax")
class Softmax(Layer):
    """`softmax(axis=1)`"""

    axis: int = 1

    def build(self, ctx: LayerCtx, x: Tensor) -> Tensor:
        if not -x.rank <= self.axis < x.rank:
            raise ctx.error(f"softmax axis {self.axis} is out of range for {show(x.shape)}")
        return Tensor(ctx.g.op1("Softmax", [x.name], ctx.path, axis=self.axis), x.shape)


class _Pool(Layer):
    positional: ClassVar[tuple[str, ...]] = ("k",)
    op: ClassVar[str] = ""
    k: int | list[int] = 2
    stride: int | list[int] | None = None
    padding: int | list[int] = 0

    def build(self, ctx: LayerCtx, x: Tensor) -> Tensor:
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
        extra = {"count_include_pad": 1} if self.op == "AveragePool" else {}
        y = ctx.g.op1(self.op, [x.name], ctx.path, kernel_shape=list(k), strides=list(s),
                      pads=pads, **extra)
        return Tensor(y, (None, x.shape[1], ho, wo))


@layer("maxpool")
class MaxPool(_Pool):
    """`maxpool(k=2, stride=k, padding=0)`"""

    op: ClassVar[str] = "MaxPool"


@layer("avgpool")
class AvgPool(_Pool):
    """`avgpool(k=2, stride=k, padding=0)` (padding counts as zeros, as in PyTorch)"""

    op: ClassVar[str] = "AveragePool"


@layer("gap")
class GlobalAvgPool(Layer):
    """`gap`: global average pooling, [N, C, H, W] -> [N, C, 1, 1]"""

    def build(self, ctx: LayerCtx, x: Tensor) -> Tensor:
        if x.rank < 3:
            raise ctx.error(f"gap expects [N, C, H, W], got {show(x.shape)}")
        y = ctx.g.op1("GlobalAveragePool", [x.name], ctx.path)
        return Tensor(y, x.shape[:2] + (1,) * (x.rank - 2))


@layer("flatten")
class Flatten(Layer):
    """`flatten`: [N, ...] -> [N, prod(...)]"""

    def build(self, ctx: LayerCtx, x: Tensor) -> Tensor:
        size = int(np.prod([d for d in x.shape[1:] if d is not None]))
        if x.rank == 2:
            return x
        return Tensor(ctx.g.op1("Flatten", [x.name], ctx.path, axis=1), (None, size))


@layer("linear")
class Linear(Layer):
    """`linear(out, bias=true)`: y = x W^T + b with W of shape [out, in]"""

    positional: ClassVar[tuple[str, ...]] = ("out",)
    maps: ClassVar[bool] = False
    out: PositiveInt
    bias: bool = True

    def build(self, ctx: LayerCtx, x: Tensor) -> Tensor:
        if x.rank != 2:
            raise ctx.error(f"linear expects [N, features], got {show(x.shape)}; "
                            "put flatten or gap before it")
        fin = x.shape[1]
        assert fin is not None
        wname = ctx.weight("weight", (self.out, fin), fin, self.out)
        inputs = [x.name, wname] + ([ctx.zeros("bias", (self.out,))] if self.bias else [])
        ctx.flops += 2 * fin * self.out
        return Tensor(ctx.g.op1("Gemm", inputs, ctx.path, transB=1), (None, self.out))


@layer("dropout")
class Dropout(Layer):
    """`dropout(p=0.5)`: inverted dropout while training, identity at inference"""

    positional: ClassVar[tuple[str, ...]] = ("p",)
    p: float = Field(0.5, ge=0.0, lt=1.0)

    def build(self, ctx: LayerCtx, x: Tensor) -> Tensor:
        if not ctx.training or self.p == 0:
            return x
        # inverted dropout: keep with probability 1 - p, scale kept values by 1 / (1 - p)
        g = ctx.g
        u = uniform_like(g, x.name, ctx.comp.step, stream_seed(ctx.comp.policy.seed, ctx.path), ctx.path)
        keep = g.op1("Cast", [g.op1("GreaterOrEqual", [u, g.const(self.p)], ctx.path)], ctx.path, to=1)
        scaled = g.op1("Mul", [keep, g.const(1.0 / (1.0 - self.p))], ctx.path)
        return Tensor(g.op1("Mul", [x.name, scaled], ctx.path), x.shape)


@layer("upsample")
class Upsample(Layer):
    """`upsample(2)`: nearest-neighbour upsampling by an integer factor"""

    positional: ClassVar[tuple[str, ...]] = ("scale",)
    scale: PositiveInt = 2

    def build(self, ctx: LayerCtx, x: Tensor) -> Tensor:
        h, w = _spatial(ctx, x, "upsample")
        return upsample(ctx, x, self.scale, self.scale)


def upsample(ctx: LayerCtx, x: Tensor, fh: int, fw: int) -> Tensor:
    """Nearest upsampling by integer factors: asymmetric coordinates + floor, as PyTorch's 'nearest'."""
    scales = ctx.g.const([1.0, 1.0, float(fh), float(fw)], hint=ctx.path + ":scales")
    y = ctx.g.op1("Resize", [x.name, "", scales], ctx.path, mode="nearest",
                  coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    h, w = x.shape[2], x.shape[3]
    assert h is not None and w is not None
    return Tensor(y, (None, x.shape[1], h * fh, w * fw))


def _same_shapes(ctx: LayerCtx, xs: list[Tensor], what: str, skip_axis: int | None = None) -> None:
    ref = xs[0].shape
    for x in xs[1:]:
        ok = len(x.shape) == len(ref) and all(
            a == b for i, (a, b) in enumerate(zip(x.shape, ref)) if i != skip_axis)
        if not ok:
            kind = "channel" if len(ref) > 1 and x.shape[2:] == ref[2:] else "shape"
            raise ctx.error(f"{what}: {kind} mismatch between {show(ref)} and {show(x.shape)}")


@layer("add")
class Add(Layer):
    """`add` or `add(from=[a, b])`: elementwise sum of tensors of one shape"""

    maps: ClassVar[bool] = False

    def build_many(self, ctx: LayerCtx, xs: list[Tensor]) -> list[Tensor]:
        _same_shapes(ctx, xs, "add")
        y = xs[0].name
        for x in xs[1:]:
            y = ctx.g.op1("Add", [y, x.name], ctx.path)
        return [Tensor(y, xs[0].shape)]


@layer("concat")
class Concat(Layer):
    """`concat` or `concat(from=[a, b], axis=1)`: join tensors along the channel axis"""

    maps: ClassVar[bool] = False
    axis: int = 1

    def build_many(self, ctx: LayerCtx, xs: list[Tensor]) -> list[Tensor]:
        if len(xs) == 1:
            return xs
        if not 1 <= self.axis < xs[0].rank:
            raise ctx.error(f"concat axis {self.axis} is out of range for {show(xs[0].shape)}")
        _same_shapes(ctx, xs, "concat", skip_axis=self.axis)
        total = sum(x.shape[self.axis] or 0 for x in xs)
        shape = xs[0].shape[: self.axis] + (total,) + xs[0].shape[self.axis + 1:]
        return [Tensor(ctx.g.op1("Concat", [x.name for x in xs], ctx.path, axis=self.axis), shape)]
