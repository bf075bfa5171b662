"""The gradient of Resize. Nearest: every output copies one input pixel, so its gradient is added
back there, per whole-number block where the resize is an upsampling, by a scatter otherwise.
Linear and cubic: dlspec.compiler.grad.resize_filter."""

from __future__ import annotations

from dlspec.compiler.grad.common import sizes
from dlspec.compiler.grad.resize_filter import interpolation_grad
from dlspec.compiler.grad.table import Grads, Node, rule
from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op
from dlspec.compiler.target import lowering
from dlspec.spec.errors import CompileError

# (coordinate_transformation_mode, nearest_mode) pairs under which whole-number upsampling copies
# each input pixel into one block of f outputs
_BLOCKS = {(c, m) for c in ("half_pixel", "pytorch_half_pixel", "half_pixel_symmetric")
           for m in ("round_prefer_floor", "round_prefer_ceil")} | {("asymmetric", "floor")}


@lowering
def block_sum(g: Value, x: Value, factors: list[int]) -> Value:
    """The sum of g over each block of `factors` (one per axis of x) that upsampling filled."""
    dims = sizes(x, "Resize", list(range(1, len(factors))))  # a symbolic batch stays -1
    split = [v for size, f in zip(dims, factors) for v in (size, f)]
    return op.ReduceSum(op.Reshape(g, split), list(range(1, len(split), 2)), keepdims=0)


@rule("Resize")
def _resize(n: Node, g: Value) -> Grads:
    if n.s("mode") in ("linear", "cubic"):
        return [interpolation_grad(n, g)] + [None] * (len(n.inputs) - 1)
    if n.s("coordinate_transformation_mode") == "tf_crop_and_resize":
        raise CompileError("the gradient of nearest Resize does not support coordinate_transformation_mode="
                           "tf_crop_and_resize (linear and cubic do)")
    x = n.inputs[0]
    factors = _block_factors(n)
    dx = block_sum(g, x, factors) if factors is not None else _scatter_back(n, g, x)
    return [dx] + [None] * (len(n.inputs) - 1)


def _scatter_back(n: Node, g: Value, x: Value) -> Value:
    """Any other nearest resize: resize the flat positions of x to learn which one each output
    copied, then scatter-add g there."""
    shape = op.Shape(x)
    positions = op.Range(g.graph.const(0, "int64"), op.numel(x), g.graph.const(1, "int64"))
    iota = op.Reshape(positions.cast("int32"), shape)
    source = n.again([iota, *n.inputs[1:]])[0]
    index = op.Reshape(source.cast("int64"), [-1])
    dx = op.ScatterElements(op.zeros_like(op.Reshape(x, [-1])), index, op.Reshape(g, [-1]), axis=0,
                            reduction="add")
    return op.Reshape(dx, shape)


def _block_factors(n: Node) -> list[int] | None:
    """Whole-number upsampling factors per axis where each input pixel fills one block, else None.
    Constant scales give the factors (a symbolic batch axis has scale 1); without them every
    resized axis needs static sizes."""
    xs, ys = n.inputs[0].shape, n.outputs[0].shape
    if xs is None or ys is None or len(xs) != len(ys):
        return None
    if (n.s("coordinate_transformation_mode"), n.s("nearest_mode")) not in _BLOCKS or \
            n.s("keep_aspect_ratio_policy") != "stretch":
        return None
    scales = n.const(2)
    if n.input(2) is not None and (scales is None or not scales.size):
        return None  # scales computed at run time, or none given
    if scales is not None:
        axes = [a % len(xs) for a in n.ints("axes") or range(len(xs))]
        per_axis = [1.0] * len(xs)
        for j, a in enumerate(axes):
            per_axis[a] = float(scales.reshape(-1)[j])
        if any(f < 1 or f != int(f) for f in per_axis):
            return None
        factors = [int(f) for f in per_axis]
    else:
        known = [(a, b) for a, b in zip(xs, ys) if isinstance(a, int) and isinstance(b, int) and a > 0]
        if len(known) != len(xs):
            return None
        factors = [b // a for a, b in known]
    for xa, ya, f in zip(xs, ys, factors):
        if (xa * f != ya) if isinstance(xa, int) and isinstance(ya, int) else f != 1:
            return None
    return factors

