"""Token sequences [N, T, D]: embeddings of token ids, positions, a class token, and pooling
over the positions. Sequence lengths, where a layer takes them, come as a second tensor
(`from=[seq, lengths]`, int64 [N]): positions from a sample's length on are padding."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
from pydantic import Field

from dlspec.compiler.graph import Value, show
from dlspec.compiler.graph import ops as op
from dlspec.compiler.lower.columns import id_count
from dlspec.compiler.lower.layers import Layer, layer
from dlspec.spec.model import Size

if TYPE_CHECKING:
    from dlspec.compiler.lower.context import LayerCtx


def sequence_and_lengths(ctx: LayerCtx, xs: list[Value], what: str) -> tuple[Value, Value | None]:
    """A layer's sequence [N, T, D] and, where `from=[seq, lengths]` gives them, the lengths [N]
    as int64 clamped to [1, T] (a length past T means the whole sequence; 0 would leave nothing to
    attend to or average)."""
    if len(xs) not in (1, 2):
        raise ctx.error(f"{what} takes a sequence and, optionally, its lengths (from=[seq, lengths]); "
                        f"it gets {len(xs)} tensors ({', '.join(show(x.dims) for x in xs)})")
    x = xs[0]
    if x.rank != 3:
        raise ctx.error(f"{what} expects a sequence [N, T, features], got {show(x.dims)}")
    if len(xs) == 1:
        return x, None
    lens = xs[1]
    if lens.rank == 2 and lens.dims[1] == 1:  # a declared int64[N] input reaches the layers as a column
        lens = op.Reshape(lens, [-1]).with_shape((None,))
    if lens.rank != 1:
        raise ctx.error(f"{what}: the lengths (the second tensor of from=) must be one whole number per "
                        f"sample, [N] or [N, 1], got {show(lens.dims)}")
    t = x.dims[1]
    assert isinstance(t, int)
    return x, op.Clip(lens.cast("int64"), 1, t).with_shape((None,))


def valid_positions(lens: Value, t: int) -> Value:
    """[N, T] bool: position j of sample n is inside its length."""
    positions = lens.graph.const(np.arange(t), "int64")
    return op.Less(positions, op.Unsqueeze(lens, [1])).with_shape((None, t))


@layer("embedding")
class Embedding(Layer):
    """`embedding(vocab, dim)`: token ids [N, T] (int64, or whole floats) -> rows of a learned
    table [vocab, dim]: [N, T, dim]. An id outside [0, vocab) is clamped to the nearest valid one
    (0 or vocab - 1) inside the graph, so it never reads past the table on any device; check ids
    at data load where a bad one must be an error. Fed by index(x) of a category whose vocabulary
    is known (`dlspec train`), a table with fewer rows than its ids is a compile error."""

    positional: ClassVar[tuple[str, ...]] = ("vocab", "dim")
    maps: ClassVar[bool] = False
    vocab: Size
    dim: Size

    def build(self, ctx: LayerCtx, x: Value) -> Value:
        if x.rank < 2:
            raise ctx.error(f"embedding expects token ids [N, T], got {show(x.dims)}")
        known = id_count(x)
        if known is not None and known[0] > self.vocab:  # the ids past the table would all read its last row
            needed, what = known
            raise ctx.error(f"embedding({self.vocab}, {self.dim}) reads {what}: use embedding({needed}, "
                            f"{self.dim}) or more")
        weight = ctx.weight("weight", (self.vocab, self.dim), self.dim, self.vocab)
        # a float id is truncated to a whole number first (the network input arrives as float32)
        ids = op.Clip(x.cast("int64"), 0, self.vocab - 1)
        return op.Gather(weight, ids, axis=0).with_shape((*x.dims, self.dim))


@layer("pos_embedding")
class PosEmbedding(Layer):
    """`pos_embedding(max_len)`: a learned vector per position added to [N, T, D] (T <= max_len):
    weight [max_len, D], rows 0 to T - 1 used. `pos_embedding` alone has one row per position of
    the sequence it gets (max_len = T), as ViT's, whose T the image size fixes."""

    positional: ClassVar[tuple[str, ...]] = ("max_len",)
    maps: ClassVar[bool] = False
    max_len: Size | None = None

    def build(self, ctx: LayerCtx, x: Value) -> Value:
        if x.rank != 3:
            raise ctx.error(f"pos_embedding expects a sequence [N, T, features], got {show(x.dims)}")
        _, t, d = x.dims
        assert isinstance(t, int) and isinstance(d, int)
        rows_held = self.max_len or t
        if t > rows_held:
            raise ctx.error(f"pos_embedding(max_len={rows_held}) is shorter than the sequence "
                            f"{show(x.dims)}: max_len must be at least {t}")
        weight = ctx.weight("weight", (rows_held, d), d, d)
        rows = weight if t == rows_held else op.Slice(weight, [0], [t], [0])
        return (x + rows).with_shape(x.shape)


def sinusoid_table(t: int, d: int, base: float) -> np.ndarray:
    """[T, D]: column 2i is sin(pos / base^(2i / D)), column 2i + 1 its cos (Vaswani et al.)."""
    pos = np.arange(t, dtype=np.float64)[:, None]
    freq = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    table = np.zeros((t, d))
    table[:, 0::2] = np.sin(pos * freq)
    table[:, 1::2] = np.cos(pos * freq[: d // 2])
    return table.astype(np.float32)


@layer("sinusoidal")
class Sinusoidal(Layer):
    """`sinusoidal(base=10000)`: the fixed sine and cosine position codes of "Attention is all you
    need" added to [N, T, D]; no parameters."""

    base: float = Field(10000.0, gt=1)

    def build(self, ctx: LayerCtx, x: Value) -> Value:
        if x.rank != 3:
            raise ctx.error(f"sinusoidal expects a sequence [N, T, features], got {show(x.dims)}")
        _, t, d = x.dims
        assert isinstance(t, int) and isinstance(d, int)
        return (x + x.graph.const(sinusoid_table(t, d, self.base))).with_shape(x.shape)


@layer("cls_token")
class ClsToken(Layer):
    """`cls_token`: a learned vector put before the first position, as ViT's and BERT's class
    token: [N, T, D] -> [N, T + 1, D], token [1, 1, D]. `pool(cls)` reads it back."""

    maps: ClassVar[bool] = False

    def build(self, ctx: LayerCtx, x: Value) -> Value:
        if x.rank != 3:
            raise ctx.error(f"cls_token expects a sequence [N, T, features], got {show(x.dims)}")
        _, t, d = x.dims
        assert isinstance(t, int) and isinstance(d, int)
        token = ctx.weight("token", (1, 1, d), d, d)
        # x shifted one position on, plus the token alone at position 0 (zeros after it): static
        # shapes throughout, which the gradient rules read from shape inference
        shifted = op.Pad(x, [0, 1, 0, 0, 0, 0])
        return (shifted + op.Pad(token, [0, 0, 0, 0, t, 0])).with_shape((None, t + 1, d))


@layer("pool")
class Pool(Layer):
    """`pool(mean)`, `pool(max)` or `pool(cls)`: a sequence [N, T, D] to one vector per sample
    [N, D]: the mean or the largest value over the positions, or position 0 (where cls_token put
    the class token). With `from=[seq, lengths]`, mean and max skip each sample's padding."""

    positional: ClassVar[tuple[str, ...]] = ("mode",)
    maps: ClassVar[bool] = False
    mode: Literal["mean", "max", "cls"] = "mean"

    def build_many(self, ctx: LayerCtx, xs: list[Value]) -> list[Value]:
        x, lens = sequence_and_lengths(ctx, xs, f"pool({self.mode})")
        _, t, d = x.dims
        assert isinstance(t, int)
        out = (None, d)
        if self.mode == "cls":
            # a Slice, whose gradient is a Pad (a Gather's scatters into zeros)
            return [op.Squeeze(op.Slice(x, [0], [1], [1]), [1]).with_shape(out)]
        if lens is None:
            if self.mode == "max":
                return [op.ReduceMax(x, [1], keepdims=0).with_shape(out)]
            return [op.ReduceMean(x, [1], keepdims=0).with_shape(out)]
        valid = op.Unsqueeze(valid_positions(lens, t), [2])  # [N, T, 1]
        if self.mode == "max":
            return [op.ReduceMax(op.Where(valid, x, float("-inf")), [1], keepdims=0).with_shape(out)]
        total = op.ReduceSum(x * valid.cast_like(x), [1], keepdims=0)
        return [(total / op.Unsqueeze(lens.cast_like(x), [1])).with_shape(out)]
