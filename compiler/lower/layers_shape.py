"""Layers that rearrange values without computing: reshape, permute, and an image cut into a
sequence of patches. The batch axis stays axis 0 in each."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, ClassVar

from pydantic import Field

from dlspec.compiler.graph import Value, show
from dlspec.compiler.graph import ops as op
from dlspec.compiler.lower.layers import Layer, Window, _pair, _spatial, layer
from dlspec.spec.limits import MAX_SIZE

if TYPE_CHECKING:
    from dlspec.compiler.lower.context import LayerCtx

Axis = Annotated[int, Field(ge=-1, le=MAX_SIZE)]


@layer("reshape")
class Reshape(Layer):
    """`reshape(shape=[8, 8])`: each sample to the given shape (the batch axis is kept, not
    written); one size may be -1, worked out from the others: [N, 1, 8, 8] -> [N, 8, 8]."""

    positional: ClassVar[tuple[str, ...]] = ("shape",)
    shape: list[Axis]

    def build(self, ctx: LayerCtx, x: Value) -> Value:
        size = math.prod(int(d or 1) for d in x.dims[1:])
        want = list(self.shape)
        if not want:
            raise ctx.error("reshape needs at least one size: shape=[...] (the batch axis is kept)")
        if 0 in want:
            raise ctx.error(f"reshape sizes must be whole numbers >= 1 or one -1, got {want}")
        if want.count(-1) > 1:
            raise ctx.error(f"reshape allows one -1 (a size worked out from the others), got {want}")
        known = math.prod(d for d in want if d != -1)
        if -1 in want:
            if size % known:
                raise ctx.error(f"reshape cannot make {want} of {show(x.dims)}: its {size} values per "
                                f"sample are not a whole multiple of {known}")
            want[want.index(-1)] = size // known
        elif known != size:
            raise ctx.error(f"reshape cannot make {want} of {show(x.dims)}: that holds {known} values per "
                            f"sample, the input {size}")
        return op.Reshape(x, [0, *want]).with_shape((None, *want))


@layer("permute")
class Permute(Layer):
    """`permute(dims=[0, 2, 1])`: reorder the axes as torch's x.permute(0, 2, 1); the batch axis
    stays first (dims starts with 0): [N, C, T] -> [N, T, C]."""

    positional: ClassVar[tuple[str, ...]] = ("dims",)
    dims: list[int]

    def build(self, ctx: LayerCtx, x: Value) -> Value:
        if sorted(self.dims) != list(range(x.rank)):
            raise ctx.error(f"permute dims {self.dims} must order every axis of {show(x.dims)} once: "
                            f"a permutation of 0..{x.rank - 1}")
        if self.dims[0] != 0:
            raise ctx.error(f"permute keeps the batch axis first: dims must start with 0, got {self.dims}")
        return op.Transpose(x, self.dims)


@layer("patches")
class Patches(Layer):
    """`patches(size)` or `patches([ph, pw])`: an image cut into non-overlapping patches, each
    flattened channels first, as a sequence: [N, C, H, W] -> [N, (H / ph) (W / pw), C ph pw].
    `patches(16) -> linear(dim)` is ViT's patch embedding (a conv of kernel and stride 16)."""

    positional: ClassVar[tuple[str, ...]] = ("size",)
    size: Window | list[Window]

    def build(self, ctx: LayerCtx, x: Value) -> Value:
        h, w = _spatial(ctx, x, "patches")
        ph, pw = _pair(ctx, self.size, "patches size")
        if h % ph or w % pw:
            raise ctx.error(f"patches of {ph}x{pw} do not tile the {h}x{w} image of {show(x.dims)}: "
                            "its height and width must be whole multiples of the patch size")
        c = x.channels
        grid = op.Reshape(x, [0, c, h // ph, ph, w // pw, pw])
        tiles = op.Transpose(grid, [0, 2, 4, 1, 3, 5])  # [N, H/ph, W/pw, C, ph, pw]
        out = (None, (h // ph) * (w // pw), c * ph * pw)
        return op.Reshape(tiles, [0, out[1], out[2]]).with_shape(out)
