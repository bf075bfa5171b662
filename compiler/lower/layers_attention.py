"""Multi-head self-attention, as nn.MultiheadAttention(D, heads, batch_first=True) computes it
and with its parameters: in_proj_weight [3 dim, D] (the q, k and v projections, stacked in that
order), in_proj_bias [3 dim], out_proj.weight [D, dim], out_proj.bias [D].

The scores are written MatMul -> scale -> (mask add) -> Softmax -> MatMul, the form onnxruntime's
attention fusions look for.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from pydantic import Field

from dlspec.compiler.graph import Graph, Value
from dlspec.compiler.graph import ops as op
from dlspec.compiler.lower.layers import Layer, dense, layer
from dlspec.compiler.lower.layers_sequence import sequence_and_lengths, valid_positions
from dlspec.compiler.lower.random import stream_seed, uniform_like
from dlspec.spec.limits import MAX_SAMPLE_VALUES
from dlspec.spec.model import Size

if TYPE_CHECKING:
    from dlspec.compiler.lower.context import LayerCtx


@layer("attention")
class Attention(Layer):
    """`attention(heads, dim=D, causal=false, dropout=0, bias=true)`: multi-head self-attention on
    [N, T, D] -> [N, T, D]: q, k and v projected to `dim` (default D, a multiple of heads), split
    into heads, softmax(q k^T / sqrt(dim / heads)) v, projected back to D. `causal=true` lets a
    position see only itself and those before it; `dropout` drops attention weights while
    training; `from=[seq, lengths]` hides each sample's padded keys (torch's key_padding_mask)."""

    positional: ClassVar[tuple[str, ...]] = ("heads",)
    maps: ClassVar[bool] = False
    heads: Size
    dim: Size | None = None
    causal: bool = False
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bias: bool = True

    def build_many(self, ctx: LayerCtx, xs: list[Value]) -> list[Value]:
        x, lens = sequence_and_lengths(ctx, xs, "attention")
        _, t, d = x.dims
        assert isinstance(t, int) and isinstance(d, int)
        dim = self.dim or d
        if dim % self.heads:
            raise ctx.error(f"attention: heads={self.heads} must divide the width dim={dim} (each head "
                            "takes dim / heads of it)")
        hd = dim // self.heads
        held = self.heads * t * t  # scores per sample, held whole: [N, heads, T, T]
        if held > MAX_SAMPLE_VALUES:
            raise ctx.error(f"attention over {t} positions with {self.heads} heads holds {held:,} scores "
                            f"per sample; the limit on the values of one sample is {MAX_SAMPLE_VALUES:,}")
        in_w = ctx.weight("in_proj_weight", (3 * dim, d), d, dim)
        in_b = ctx.zeros("in_proj_bias", (3 * dim,)) if self.bias else None
        out_w = ctx.weight("out_proj.weight", (d, dim), dim, d)
        out_b = ctx.zeros("out_proj.bias", (d,)) if self.bias else None
        ctx.flops += 2 * t * d * 3 * dim + 2 * 2 * t * t * dim + 2 * t * dim * d

        def heads(v: Value, perm: list[int]) -> Value:  # [N, T, dim] -> per head, by perm
            return op.Transpose(op.Reshape(v, [0, t, self.heads, hd]), perm)

        q, k, v = op.Split(dense(x, in_w, in_b), [dim] * 3, axis=2)
        scores = op.MatMul(heads(q, [0, 2, 1, 3]), heads(k, [0, 2, 3, 1])) * (1.0 / math.sqrt(hd))
        mask = self._mask(x.graph, lens, t)
        if mask is not None:
            scores = scores + mask
        weights = op.Softmax(scores, axis=-1)  # [N, heads, T, T]
        if ctx.training and self.dropout > 0:  # inverted dropout, as the dropout layer
            u = uniform_like(weights, ctx.comp.step, stream_seed(ctx.comp.policy.seed, ctx.path))
            weights = weights * ((u >= self.dropout).cast("float32") * (1.0 / (1.0 - self.dropout)))
        mixed = op.MatMul(weights, heads(v, [0, 2, 1, 3]))  # [N, heads, T, hd]
        joined = op.Reshape(op.Transpose(mixed, [0, 2, 1, 3]), [0, t, dim]).with_shape((None, t, dim))
        return [dense(joined, out_w, out_b)]

    def _mask(self, g: Graph, lens: Value | None, t: int) -> Value | None:
        """What is added to the scores: -inf where a query may not see a key, else 0; [T, T] for
        causal, [N, 1, 1, T] for padded keys, [N, 1, T, T] for both."""
        causal = g.const(np.triu(np.full((t, t), -np.inf), k=1)) if self.causal else None
        if lens is None:
            return causal
        hidden = op.Not(valid_positions(lens, t))  # [N, T]
        padded = op.Reshape(op.Where(hidden, float("-inf"), g.const(0.0)), [-1, 1, 1, t])
        return padded if causal is None else padded + causal
