"""Normalisation within each sample: layer norm, group norm and RMS norm, with PyTorch's
parameters (a scale and a shift per feature or channel) and defaults.

Like `bn`, they count no FLOPs in `dlspec check` (only matrix products are counted).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np
from pydantic import Field

from dlspec.compiler.graph import Value, show
from dlspec.compiler.graph import ops as op
from dlspec.compiler.graph.composite import per_channel
from dlspec.compiler.lower.layers import Layer, layer, static
from dlspec.spec.model import Size

if TYPE_CHECKING:
    from dlspec.compiler.lower.context import LayerCtx

FLOAT32_EPS = float(np.finfo(np.float32).eps)  # torch.nn.RMSNorm's eps when none is given


@layer("layernorm")
class LayerNorm(Layer):
    """`layernorm(eps=1e-5)`: each position's last axis normalised to mean 0 and variance 1, then
    scaled and shifted, as nn.LayerNorm(D): [N, ..., D] -> [N, ..., D], weight and bias of [D]."""

    maps: ClassVar[bool] = False
    eps: float = Field(1e-5, gt=0)

    def build(self, ctx: LayerCtx, x: Value) -> Value:
        if x.rank < 2:
            raise ctx.error(f"layernorm expects [N, ..., features], got {show(x.dims)}")
        d = x.dims[-1]
        assert isinstance(d, int)
        weight, bias = ctx.ones("weight", (d,)), ctx.zeros("bias", (d,))
        # one fused kernel on onnxruntime's CPU and CUDA providers (opset 17)
        return op.LayerNormalization(x, weight, bias, axis=-1, epsilon=self.eps)


@layer("groupnorm")
class GroupNorm(Layer):
    """`groupnorm(groups, eps=1e-5)`: statistics per sample over each group of C / groups channels
    (and all positions), then a scale and shift per channel, as nn.GroupNorm(groups, C):
    [N, C, ...] -> [N, C, ...], weight and bias of [C]."""

    positional: ClassVar[tuple[str, ...]] = ("groups",)
    maps: ClassVar[bool] = False
    groups: Size
    eps: float = Field(1e-5, gt=0)

    def build(self, ctx: LayerCtx, x: Value) -> Value:
        if x.rank < 2:
            raise ctx.error(f"groupnorm expects [N, C, ...], got {show(x.dims)}")
        c = x.channels
        if c % self.groups:
            raise ctx.error(f"groupnorm: groups={self.groups} must divide the {c} channels of {show(x.dims)}")
        weight, bias = ctx.ones("weight", (c,)), ctx.zeros("bias", (c,))
        # ONNX's GroupNormalization (opset 18 to 20) has a scale per group, not per channel, and
        # onnxruntime has no kernel for it (it expands the function into ~25 nodes); instance norm
        # of the view [N, groups, rest] is one kernel on the CPU and CUDA providers
        g = x.graph
        view = op.Reshape(x, [0, self.groups, -1])
        ones, zeros = g.const(np.ones(self.groups)), g.const(np.zeros(self.groups))
        normed = op.InstanceNormalization(view, ones, zeros, epsilon=self.eps)
        y = op.Reshape(normed, [0, *static(x.dims[1:])])
        return (y * per_channel(weight, x.rank) + per_channel(bias, x.rank)).with_shape(x.shape)


@layer("rmsnorm")
class RmsNorm(Layer):
    """`rmsnorm(eps=1.19e-7)`: y = x / sqrt(mean(x^2) + eps) * weight over the last axis, as
    torch.nn.RMSNorm(D) (its default eps is float32's machine epsilon): [N, ..., D] -> [N, ..., D],
    weight of [D]."""

    maps: ClassVar[bool] = False
    eps: float = Field(FLOAT32_EPS, gt=0)

    def build(self, ctx: LayerCtx, x: Value) -> Value:
        if x.rank < 2:
            raise ctx.error(f"rmsnorm expects [N, ..., features], got {show(x.dims)}")
        d = x.dims[-1]
        assert isinstance(d, int)
        weight = ctx.ones("weight", (d,))
        # primitives (RMSNormalization is opset 23), in the order of onnxruntime's
        # SimplifiedLayerNormalization fusion: Pow -> ReduceMean -> Add -> Sqrt -> Div -> Mul
        ms = op.ReduceMean(op.Pow(x, 2.0), [-1], keepdims=1)
        return (x / op.Sqrt(ms + self.eps) * weight).with_shape(x.shape)
