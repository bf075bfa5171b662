"""Dense prediction: `segment(classes)`, a class score for every pixel of the input image."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op
from dlspec.compiler.lower.layers import Layer, _pair, _spatial, layer
from dlspec.spec.model import Size

if TYPE_CHECKING:
    from dlspec.compiler.lower.context import LayerCtx


@layer("segment")
class Segment(Layer):
    """`segment(classes, size=[h, w])`: per-pixel class scores [N, classes, H, W] from one feature
    map or several (an fpn's levels): a 1x1 conv per map to the classes, each resized bilinearly
    to the input image's H x W (or `size`), summed.

    The sum is a 1x1 conv over all the maps upsampled and concatenated (resizing and a 1x1 conv
    commute), computed at each map's own resolution.
    """

    positional: ClassVar[tuple[str, ...]] = ("classes",)
    maps: ClassVar[bool] = False
    classes: Size
    size: Size | list[Size] | None = None

    def build_many(self, ctx: LayerCtx, xs: list[Value]) -> list[Value]:
        h, w = self._size(ctx)
        out: Value | None = None
        for i, x in enumerate(xs):
            xh, xw = _spatial(ctx, x, "segment")
            prefix = "" if len(xs) == 1 else f"level{i + 1}."
            c = x.channels
            weight = ctx.weight(f"{prefix}weight", (self.classes, c, 1, 1), c, self.classes)
            bias = ctx.zeros(f"{prefix}bias", (self.classes,))
            ctx.flops += 2 * self.classes * c * xh * xw
            y = op.Conv(x, weight, bias, kernel_shape=[1, 1]).with_shape((None, self.classes, xh, xw))
            if (xh, xw) != (h, w):
                ctx.flops += 4 * self.classes * h * w  # two taps per axis
                y = resize(y, h, w)
            out = y if out is None else (out + y).with_shape(y.shape)
        assert out is not None
        return [out]

    def _size(self, ctx: LayerCtx) -> tuple[int, int]:
        """The output's H and W: `size`, else the model's image input's."""
        if self.size is not None:
            return _pair(ctx, self.size, "size")
        sizes = sorted(set(ctx.comp.image_sizes))
        if len(sizes) != 1:
            had = ", ".join(f"{h}x{w}" for h, w in sizes) or "none"
            raise ctx.error(f"segment scores the pixels of the model's image input, and the model has "
                            f"{'several sizes of them' if sizes else 'no image input [N, C, H, W]'} "
                            f"({had}): give the output's size, segment(classes, size=[h, w])")
        return sizes[0]


def resize(x: Value, h: int, w: int) -> Value:
    """Bilinear resize of [N, C, h0, w0] to [N, C, h, w], as torch's F.interpolate(x, size=(h, w),
    mode="bilinear", align_corners=False): half-pixel centres, edges clamped. The output's size is
    given on axes 2 and 3 (opset 18's `axes`): scales would round h0 * (h / h0) below h for some
    sizes, and the gradient's interpolation matrices are then constants."""
    return op.Resize(x, sizes=[h, w], axes=[2, 3], mode="linear", coordinate_transformation_mode="half_pixel")
