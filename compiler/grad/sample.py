"""The gradients of GridSample (linear and nearest, any number of spatial axes, every padding mode)
and of AffineGrid, which makes its grids.

Each output reads the input at a point that the grid gives in [-1, 1] per axis: in pixels
x = (g + 1) (d - 1) / 2 with align_corners, else ((g + 1) d - 1) / 2, moved inside the input by
the padding mode (border: clamped; reflection: reflected by the borders), then interpolated from
the 2^r pixels around it with weights prod_i (1 - |x_i - corner_i|), or copied from the nearest
pixel. The rule recomputes those pixels and weights: the input's gradient adds g times each weight
back at its pixel; the grid's is the derivative of the weights (zero for nearest).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dlspec.compiler.grad.common import INT64_MAX, sizes
from dlspec.compiler.grad.table import Grads, Node, rule
from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op
from dlspec.spec.errors import CompileError


@dataclass
class _Axis:
    """One spatial axis: the sampling coordinate in pixels (padding applied) and its derivative
    by the grid's coordinate."""

    size: int
    x: Value  # [N, P]
    slope: Value | float  # d x / d g


def _reflect(v: Value, lo: float, hi: float) -> tuple[Value, Value]:
    """v reflected by lo and hi until inside them: lo + s - |u - s| with s = hi - lo and
    u = |v - lo| mod 2 s; and its derivative, sign(v - lo) sign(s - u)."""
    span = hi - lo
    dist = op.Abs(v - lo)
    u = dist - op.Floor(dist * (1 / (2 * span))) * (2 * span)
    return lo + (span - op.Abs(u - span)), op.Sign(v - lo) * op.Sign(span - u)


def _axis(n: Node, g: Value, size: int) -> _Axis:
    """The coordinate of one axis from the grid's component g ([N, P])."""
    scale = (size - 1) / 2 if n.i("align_corners") else size / 2  # x = g scale + (size - 1) / 2
    v = g * scale + (size - 1) / 2
    nearest = n.s("mode") == "nearest"
    if nearest:
        v = op.Round(v)
    pad = n.s("padding_mode")
    if pad == "border":  # clamped: the coordinate stops moving where it is cut
        x = op.Clip(v, 0.0, float(size - 1))
        return _Axis(size, x, op.Equal(x, v).cast_like(v) * scale)
    if pad == "reflection":
        lo, hi = (0.0, size - 1.0) if n.i("align_corners") else (-0.5, size - 0.5)
        if hi == lo:  # one pixel, its corners aligned: every point is that pixel
            return _Axis(size, v * 0.0, 0.0)
        x, sign = _reflect(v, lo, hi)
        return _Axis(size, x, sign * scale)
    return _Axis(size, v, scale)


def _pixel(n: Node, i: Value, size: int) -> tuple[Value, Value | None]:
    """A pixel index (float, whole) moved inside the input by the padding mode, as int64, and
    where it lies outside for zeros padding (those pixels read 0)."""
    pad = n.s("padding_mode")
    if pad == "reflection":
        lo, hi = (0.0, size - 1.0) if n.i("align_corners") else (-0.5, size - 0.5)
        if hi > lo:
            i = _reflect(i, lo, hi)[0]
        return op.Clip(i, 0.0, float(size - 1)).cast("int64"), None
    inside = op.And(i >= 0.0, i <= float(size - 1)) if pad == "zeros" else None
    return op.Clip(i, 0.0, float(size - 1)).cast("int64"), inside


@rule("GridSample")
def _grid_sample(n: Node, g: Value) -> Grads:
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(n.s("mode"), n.s("mode"))
    if mode not in ("linear", "nearest"):
        raise CompileError(f"the GridSample gradient supports the linear and nearest modes; node "
                           f"{n.proto.name or n.proto.output[0]} samples in {mode} mode")
    x, grid = n.inputs
    r = (x.rank if x.shape is not None else 0) - 2
    dims = sizes(x, "GridSample", list(range(2, 2 + r)))[2:]
    flat_grid = op.Reshape(grid, [0, -1, r])  # [N, P, r]
    comps = op.Split(flat_grid, [1] * r, axis=2) if r > 1 else [flat_grid]
    # grid[..., r - 1 - i] addresses spatial axis i (the grid's first component is the width)
    axes = [_axis(n, op.Squeeze(comps[r - 1 - i], [2]), d) for i, d in enumerate(dims)]
    bases = [a.x if mode == "nearest" else op.Floor(a.x) for a in axes]
    # per axis, the weights of the pixel below the point and of the one above: 1 - frac, frac
    fracs = [a.x - b for a, b in zip(axes, bases)] if mode == "linear" else []
    spans = [(1.0 - f, f) for f in fracs]
    idx, weights, inside = [], [], []
    for k in range(1 if mode == "nearest" else 2**r):
        bits = _bits(k, r)
        flat, w, ok = None, None, None
        for i, a in enumerate(axes):
            at, valid = _pixel(n, bases[i] + 1.0 if bits[i] else bases[i], a.size)
            stride = math.prod(dims[i + 1:])
            term = at * stride if stride != 1 else at
            flat = term if flat is None else flat + term
            if spans:
                wi = spans[i][bits[i]]
                w = wi if w is None else w * wi
            if valid is not None:
                ok = valid if ok is None else op.And(ok, valid)
        assert flat is not None
        idx.append(flat)
        if ok is not None:  # zeros padding: a corner outside reads 0
            w = op.Where(ok, w, 0.0) if w is not None else ok.cast_like(g)
        weights.append(w)
        inside.append(ok)
    return _gradients(n, g, x, grid, axes, spans, idx, weights, inside)


def _bits(k: int, r: int) -> list[int]:
    """Corner k of 2^r: for each axis, 0 for the pixel below the point, 1 for the one above."""
    return [(k >> (r - 1 - i)) & 1 for i in range(r)]


def _gradients(n: Node, g: Value, x: Value, grid: Value, axes: list[_Axis], spans: list[tuple[Value, Value]],
               idx: list[Value], weights: list[Value | None], inside: list[Value | None]) -> Grads:
    """dX: g times each corner's weight added back at its pixel; dgrid: per axis, g times the
    corners' values times the derivative of their weights, times d x / d grid."""
    k = len(idx)
    flat_x = op.Reshape(x, [0, 0, -1])  # [N, C, S]
    flat_g = op.Unsqueeze(op.Reshape(g, [0, 0, -1]), [2])  # [N, C, 1, P]
    index = op.Unsqueeze(idx[0] if k == 1 else op.Concat(idx, axis=1), [1])  # [N, 1, K P]
    index = op.Expand(index, op.Shape(op.Slice(flat_x, [0], [1], [2])))  # [N, C, K P]

    def stacked(vs: list[Value]) -> Value:  # [N, P] each -> [N, 1, K, P]
        return op.Unsqueeze(vs[0], [1, 2]) if len(vs) == 1 else \
            op.Unsqueeze(op.Concat([op.Unsqueeze(v, [1]) for v in vs], axis=1), [1])

    known = [w for w in weights if w is not None]
    share = flat_g * stacked(known) if known else flat_g  # nearest, no zeros padding: weight 1
    dx = op.ScatterElements(op.zeros_like(flat_x), index, op.Reshape(share, [0, 0, -1]), axis=2,
                            reduction="add")
    dx = op.Reshape(dx, op.Shape(x))
    if n.s("mode") == "nearest":
        return [dx, op.zeros_like(grid)]
    values = op.Reshape(op.GatherElements(flat_x, index, axis=2), [0, 0, k, -1])  # [N, C, K, P]
    if inside[0] is not None:
        values = op.Where(stacked([v for v in inside if v is not None]), values, 0.0)
    gv = op.ReduceSum(flat_g * values, [1], keepdims=0)  # [N, K, P]: sum over channels of g v
    per_corner = op.Split(gv, [1] * k, axis=1)
    r = len(axes)
    parts = []
    for i, a in enumerate(axes):
        terms = []
        for c in range(k):  # d weight_c / d x_i = +-prod_(j != i) w_j
            bits = _bits(c, r)
            t = op.Squeeze(per_corner[c], [1])
            for j in range(r):
                if j != i:
                    t = t * spans[j][bits[j]]
            terms.append(t if bits[i] else -t)
        d = op.Sum(terms) * a.slope
        parts.append(op.Unsqueeze(d, [2]))
    d_grid = op.Concat(parts[::-1], axis=2) if r > 1 else parts[0]  # component r - 1 - i is axis i
    return [dx, op.Reshape(d_grid, op.Shape(grid))]


@rule("AffineGrid")
def _affine_grid(n: Node, g: Value) -> Grads:
    # grid[n, pixel] = theta[n] (pixel's coordinates, 1): linear in theta, so grid = sum_k theta_k A_k,
    # A_k = the grid of the k-th unit matrix, made by the same op; d theta_k = <g, A_k>
    theta, size = n.inputs
    r, c = sizes(theta, "AffineGrid", [1, 2])[1:]
    units = g.graph.const(np.eye(r * c).reshape(r * c, r, c)).cast_like(theta)
    unit_size = op.Concat([g.graph.ints([r * c]), op.Slice(size, [1], [INT64_MAX])], axis=0)
    grids = op.Reshape(n.again([units, unit_size])[0], [r * c, -1])  # [k, pixels x r]
    dtheta = op.Gemm(op.Reshape(g, [0, -1]), grids, transB=1)  # [N, k]
    return [op.Reshape(dtheta, [-1, r, c]).with_shape(theta.shape), None]
