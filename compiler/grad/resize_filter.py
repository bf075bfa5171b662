"""The gradient of linear and cubic Resize. The resize is separable and linear in x: along each
resized axis a, y = x x_a M_a with M_a [out, in] the interpolation weights (output i is
sum_j M[i, j] x[j]), so dx = g x_a M_a^T, one product per axis.

M_a is computed in the graph from the node's own scales, sizes and roi, so that they may be
computed at run time too (onnxruntime folds it to a constant where they are not). The weights
follow the ONNX spec as onnxruntime reads it: length_resized is the output's length; each output
samples the input at x_original, from the taps k around it with the filter's weight of k - x
(linear: 1 - |d|; cubic: Keys' kernel with A = cubic_coeff_a); taps outside the input are clamped
to its edge, or dropped with exclude_outside; antialias stretches the filter by 1 / scale when
downsampling and normalizes it (how many taps that takes is found as the graph runs).
"""

from __future__ import annotations

import numpy as np

from dlspec.compiler.grad.common import rank
from dlspec.compiler.grad.table import Node
from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op
from dlspec.spec.errors import CompileError


def interpolation_grad(n: Node, g: Value) -> Value:
    """dx = g x_a M_a^T over the resized axes."""
    x = n.inputs[0]
    r = rank(x, "Resize")
    for a, scale in _axes(n, x, g):
        m = _matrix(n, x, g, a, scale)
        if a == r - 1:  # [.., out] [out, in]
            g = g @ m
        elif a == r - 2:  # [in, out] [.., out, w]
            g = op.Transpose(m, [1, 0]) @ g
        else:  # the axis moved last and back
            perm = list(range(r))
            perm[a], perm[-1] = r - 1, a
            g = op.Transpose(op.Transpose(g, perm) @ m, perm)
    return g


def _length(v: Value, a: int, like: Value) -> tuple[Value, Value]:
    """Axis a's length of v, as an int64 scalar and in like's type."""
    d = v.shape[a] if v.shape is not None else None
    n = v.graph.const(d, "int64") if isinstance(d, int) else op.Gather(op.Shape(v), v.graph.const(a, "int64"))
    return n, n.cast_like(like)


def _pick(v: Value, i: int, like: Value) -> Value:
    """Element i of a 1-D input, in like's type."""
    return op.Gather(v, v.graph.const(i, "int64")).cast_like(like)


def _axes(n: Node, x: Value, g: Value) -> list[tuple[int, Value]]:
    """The resized axes, from the last, with their scales (scalars in g's type). An axis whose
    constant scale and sizes make the identity is left out."""
    r = rank(x, "Resize")
    listed = [a % r for a in n.ints("axes")] or list(range(r))
    scales, sizes = n.input(2), n.input(3)
    known_scales, known_sizes = n.const(2), n.const(3)
    if scales is not None and (known_scales is None or known_scales.size):
        per = {a: _pick(scales, i, g) for i, a in enumerate(listed)}
    elif sizes is not None:
        ins = [_length(x, a, g)[1] for a in listed]
        ratios = [_pick(sizes, i, g) / d for i, d in enumerate(ins)]
        policy = n.s("keep_aspect_ratio_policy")
        if policy == "stretch":
            per = dict(zip(listed, ratios))
        else:  # one scale for every listed axis
            pick = op.Min if policy == "not_larger" else op.Max
            one = ratios[0] if len(ratios) == 1 else pick(ratios)
            per = {a: one for a in listed}
    else:
        raise CompileError("the Resize gradient needs scales or sizes")

    def identity(i: int, a: int) -> bool:  # known to leave axis a as it is
        if n.s("coordinate_transformation_mode") == "tf_crop_and_resize" or x.shape is None or \
                not isinstance(x.shape[a], int):
            return False
        if known_scales is not None and known_scales.size:
            return float(known_scales.reshape(-1)[i]) == 1.0
        if known_sizes is not None and n.s("keep_aspect_ratio_policy") == "stretch":
            return int(known_sizes.reshape(-1)[i]) == x.shape[a]
        return False

    keep = [(a, per[a]) for i, a in enumerate(listed) if not identity(i, a)]
    return sorted(keep, key=lambda pair: -pair[0])


def _source(n: Node, x: Value, g: Value, a: int, scale: Value) -> tuple[Value, Value | None]:
    """Where in the input each output pixel samples (x_original, [out]), and for
    tf_crop_and_resize the outputs that fall outside the input (they take the extrapolation value)."""
    n_in, size_in = _length(x, a, g)
    n_out, size_out = _length(g, a, g)
    zero, one = g.graph.const(0, "int64"), g.graph.const(1, "int64")
    y = op.Range(zero, n_out, one).cast_like(g)
    mode = n.s("coordinate_transformation_mode")
    many = size_out > 1.0  # a one-pixel output samples the start (or the middle of the roi)
    gaps = op.Max([size_out - 1.0, 1.0])  # size_out - 1 where it is used
    if mode in ("half_pixel", "pytorch_half_pixel"):
        half = (y + 0.5) / scale - 0.5
        return (half if mode == "half_pixel" else op.Where(many, half, 0.0)), None
    if mode == "half_pixel_symmetric":  # the centre of the input onto the centre of the output
        offset = size_in * 0.5 * (1.0 - size_out / (scale * size_in))
        return offset + ((y + 0.5) / scale - 0.5), None
    if mode == "align_corners":
        return op.Where(many, y * ((size_in - 1.0) / gaps), 0.0), None
    if mode == "asymmetric":
        return y / scale, None
    if mode == "tf_crop_and_resize":
        roi = n.input(1)
        if roi is None:
            raise CompileError("Resize with coordinate_transformation_mode=tf_crop_and_resize needs a roi")
        listed = [b % x.rank for b in n.ints("axes")] or list(range(x.rank))
        k = listed.index(a)
        start, end = _pick(roi, k, g), _pick(roi, len(listed) + k, g)
        span = (end - start) * (size_in - 1.0)
        src = start * (size_in - 1.0) + op.Where(many, y * (span / gaps), span * 0.5)
        return src, op.Or(src < 0.0, src > size_in - 1.0)
    raise CompileError(f"the Resize gradient does not know coordinate_transformation_mode '{mode}'")


def _matrix(n: Node, x: Value, g: Value, a: int, scale: Value) -> Value:
    """M [out, in] of axis a: sum over taps of weight x one-hot(tap clamped into the input)."""
    src, outside = _source(n, x, g, a, scale)
    n_in, size_in = _length(x, a, g)
    linear, antialias = n.s("mode") == "linear", n.i("antialias")
    reach = 1 if linear else 2  # the filter is 0 from this distance on: taps floor(x) - reach ..
    if antialias:  # .. floor(x) + reach + 1, the filter stretched by 1 / min(scale, 1)
        stretch = op.Min([scale, 1.0])
        far = -op.Floor(-(reach / stretch))  # ceil
        one = g.graph.const(1, "int64")
        offsets = op.Unsqueeze(op.Range((-far).cast("int64"), (far + 2.0).cast("int64"), one), [0])
        taps = op.Unsqueeze(op.Floor(src), [1]) + offsets.cast_like(g)  # [out, K]
        d = (taps - op.Unsqueeze(src, [1])) * stretch
    else:
        offsets_k = g.graph.const(np.arange(-reach, reach + 2)[None, :], "int64").cast_like(g)
        taps = op.Unsqueeze(op.Floor(src), [1]) + offsets_k
        d = taps - op.Unsqueeze(src, [1])
    w = op.Relu(1.0 - op.Abs(d)) if linear else _keys(d, n.f("cubic_coeff_a"))
    if antialias:
        w = w / op.ReduceSum(w, [1], keepdims=1)
    if n.i("exclude_outside"):  # taps outside the input dropped, the rest renormalized
        w = op.Where(op.And(taps >= 0.0, taps <= size_in - 1.0), w, 0.0)
        total = op.ReduceSum(w, [1], keepdims=1)
        w = w / op.Where(op.Equal(total, 0.0), 1.0, total)
    if outside is not None:
        w = op.Where(op.Unsqueeze(outside, [1]), 0.0, w)
    index = op.Clip(taps, 0.0, size_in - 1.0).cast("int64")
    columns = op.Range(g.graph.const(0, "int64"), n_in, g.graph.const(1, "int64"))  # [in]
    hit = op.Equal(op.Unsqueeze(index, [2]), columns).cast_like(g)  # [out, K, in]
    return op.ReduceSum(hit * op.Unsqueeze(w, [2]), [1], keepdims=0)


def _keys(d: Value, coeff: float) -> Value:
    """Keys' cubic convolution kernel: (A + 2)|d|^3 - (A + 3)|d|^2 + 1 up to 1,
    A|d|^3 - 5A|d|^2 + 8A|d| - 4A up to 2, else 0."""
    u = op.Abs(d)
    near = ((u * (coeff + 2) - (coeff + 3)) * u) * u + 1.0
    far = ((u * coeff - 5 * coeff) * u + 8 * coeff) * u - 4 * coeff
    return op.Where(u <= 1.0, near, op.Where(u < 2.0, far, 0.0))

