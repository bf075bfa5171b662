"""Gradient rules of ops that move, repeat or reduce elements: reshapes, slices, pads, tiles,
cumulative sums, block rearrangements, reductions. A selection is undone by padding or scattering
the gradient back into zeros. (Ops that pick elements by index are in select.py.)"""

from __future__ import annotations

import numpy as np

from dlspec.compiler.grad.common import INT64_MAX, INT64_MIN, masked, rank, sizes, unbroadcast
from dlspec.compiler.grad.table import Grads, Node, rule, rule_multi
from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op
from dlspec.spec.errors import CompileError


def _none(n: Node, first: Value | None) -> Grads:
    """`first` for input 0, no gradient for the rest (shapes, axes, indices)."""
    return [first] + [None] * (len(n.inputs) - 1)


# ---- reshapes and permutations ----
def reshape_like(g: Value, x: Value) -> Value:
    # allowzero: a 0 in x's shape is a 0, not "copy that dim from g"
    return Value(g.graph, op.Reshape(g, op.Shape(x), allowzero=1).name, g.dtype, x.shape)


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(n: Node, g: Value) -> Grads:
    return _none(n, reshape_like(g, n.inputs[0]))


@rule("Expand")
def _expand(n: Node, g: Value) -> Grads:
    return _none(n, unbroadcast(g, n.inputs[0]))


@rule("Transpose")
def _transpose(n: Node, g: Value) -> Grads:
    perm = n.ints("perm") or list(range(rank(n.inputs[0], "Transpose")))[::-1]
    return [op.Transpose(g, [perm.index(i) for i in range(len(perm))])]


@rule("ReverseSequence")
def _reverse_sequence(n: Node, g: Value) -> Grads:
    # y = each batch entry's first len steps reversed: a permutation that is its own inverse
    return _none(n, n.again([g, n.inputs[1]])[0])


# ---- joining and selecting ----
@rule("Concat")
def _concat(n: Node, g: Value) -> Grads:
    axis = n.i("axis")
    return op.Split(g, [sizes(x, "Concat", [axis])[axis] for x in n.inputs], axis=axis)


@rule_multi("Split")
def _split(n: Node, gy: list[Value | None]) -> Grads:
    # dx = the outputs' gradients joined; an unused output contributes zeros, not nothing
    parts = [g if g is not None else op.zeros_like(y) for g, y in zip(gy, n.outputs)]
    return _none(n, parts[0] if len(parts) == 1 else op.Concat(parts, axis=n.i("axis")))


@rule("Slice")
def _slice(n: Node, g: Value) -> Grads:
    # dx = zeros with g written back at the selected positions: a Pad for an ascending run,
    # else a Gather from g with one zero row appended (positions not selected read the zero)
    x = n.inputs[0]
    if any(n.input(i) is not None and n.const(i) is None for i in range(1, 5)):
        return _none(n, picked_back(n, g))
    starts, ends = n.const_ints(1), n.const_ints(2)
    assert starts is not None and ends is not None, "Slice has starts and ends"
    r = rank(x, "Slice")
    axes = [a % r for a in n.const_ints(3) or range(len(starts))]
    steps = n.const_ints(4) or [1] * len(axes)
    dims = sizes(x, "Slice", axes)
    pads: dict[int, tuple[int, int]] = {}
    for a, start, end, step in zip(axes, starts, ends, steps):
        picked = np.arange(dims[a])[slice(start, end, step)]
        if len(picked) == 0:
            return _none(n, op.zeros_like(x))
        if len(picked) == 1 or step == 1:
            pads[a] = (int(picked[0]), dims[a] - int(picked[-1]) - 1)
            continue
        where = np.full(dims[a], len(picked), np.int64)  # where[i]: the row of g that x[i] went to
        where[picked] = np.arange(len(picked))
        g = op.Gather(op.Pad(g, [0, 1], axes=[a]), g.graph.ints(list(where)), axis=a)
    if any(b or e for b, e in pads.values()):
        order = sorted(pads)
        g = op.Pad(g, [pads[a][0] for a in order] + [pads[a][1] for a in order], axes=order)
    return _none(n, g)


def picked_back(n: Node, g: Value) -> Value:
    """dx of an op that picks elements of x, each at most once (Slice with starts, ends, axes or steps
    computed at run time, Compress): the same op on x's flat positions says where each element of g
    goes."""
    x = n.inputs[0]
    one = g.graph.const(1, "int64")
    positions = op.Reshape(op.Range(g.graph.const(0, "int64"), op.numel(x), one), op.Shape(x))
    picked = n.again([positions] + n.inputs[1:])[0]
    flat = op.ScatterElements(op.Reshape(op.zeros_like(x), [-1]), op.Reshape(picked, [-1]),
                              op.Reshape(g, [-1]))
    return reshape_like(flat, x)


@rule("Compress")
def _compress(n: Node, g: Value) -> Grads:
    return _none(n, picked_back(n, g))  # y = the slices of x (along axis, or of x flattened) where cond


@rule("Trilu")
def _trilu(n: Node, g: Value) -> Grads:
    return _none(n, n.again([g, *n.inputs[1:]])[0])  # y = x masked: dx = g masked the same way


@rule("CenterCropPad")
def _center_crop_pad(n: Node, g: Value) -> Grads:
    # y = x cropped or zero-padded to `shape` on axes, the kept part centred: both start at
    # floor(|size - target| / 2), so the same op from y's sizes back to x's undoes it (self-adjoint)
    x, axes = n.inputs[0], n.ints("axes")
    back = op.Shape(x) if not axes else op.Gather(op.Shape(x), g.graph.ints(axes))
    return _none(n, n.again([g, back])[0].with_shape(x.shape))


@rule("Pad")
def _pad(n: Node, g: Value) -> Grads:
    mode = n.s("mode")
    if mode != "constant":
        return _none(n, _pad_fold(n, g, mode))
    dx = _unpad(n, g)
    out: list[Value | None] = [dx, None]
    value = n.input(2)
    if value is not None:  # d value = the sum of g over the padded positions
        out.append(reshape_like(op.ReduceSum(g, keepdims=0) - op.ReduceSum(dx, keepdims=0), value))
    return out + [None] * (len(n.inputs) - len(out))


def _unpad(n: Node, g: Value) -> Value:
    """The inverse of a constant Pad: crop what it added, zero-fill what a negative pad cropped."""
    axes_in = n.input(3)
    if n.const(1) is None or (axes_in is not None and n.const(3) is None):
        return op.Pad(g, -n.inputs[1], axes=axes_in)  # computed at run time: a Pad by -pads does both
    pads = n.const_ints(1) or []
    k = len(pads) // 2
    axes = n.const_ints(3) or list(range(k))
    begin, end = pads[:k], pads[k:]
    if any(b > 0 or e > 0 for b, e in zip(begin, end)):
        g = op.Slice(g, [max(b, 0) for b in begin], [-e if e > 0 else INT64_MAX for e in end], axes)
    if any(b < 0 or e < 0 for b, e in zip(begin, end)):
        g = op.Pad(g, [max(-b, 0) for b in begin] + [max(-e, 0) for e in end], axes=axes)
    return g


def _pad_fold(n: Node, g: Value, mode: str) -> Value:
    """edge, reflect and wrap: each padded row copied some row of x; add its gradient back there."""
    x = n.inputs[0]
    pads = n.const_ints(1) or []
    r = rank(x, "Pad")
    axes = [a % r for a in n.const_ints(3) or range(r)]
    dims = sizes(x, "Pad", [a for i, a in enumerate(axes) if pads[i] or pads[len(axes) + i]])
    for i, a in enumerate(axes):
        b, e, d = pads[i], pads[len(axes) + i], dims[a]
        if not (b or e):
            continue
        limit = d - 1 if mode == "reflect" else d
        if min(b, e) < 0 or max(b, e) > limit:
            raise CompileError(f"the Pad gradient supports {mode} pads from 0 to {limit} on axis {a} "
                               f"(got {b}, {e})")

        def cut(start: int, end: int, step: int = 1, v: Value = g, a: int = a) -> Value:
            return op.Slice(v, [start], [end], [a], [step])

        def place(v: Value, before: int, after: int, a: int = a) -> Value:
            return op.Pad(v, [before, after], axes=[a])

        parts = [cut(b, b + d)]
        if mode == "edge":  # every padded row copied the first (last) row
            if b:
                parts.append(place(op.ReduceSum(cut(0, b), [a]), 0, d - 1))
            if e:
                parts.append(place(op.ReduceSum(cut(b + d, b + d + e), [a]), d - 1, 0))
        elif mode == "reflect":  # out[b - j] = x[j] for j in 1..b; out[b + d - 1 + j] = x[d - 1 - j]
            if b:
                parts.append(place(cut(b - 1, INT64_MIN, -1), 1, d - 1 - b))
            if e:
                parts.append(place(cut(b + d + e - 1, b + d - 1, -1), d - 1 - e, 1))
        elif mode == "wrap":  # the leading pad copied the last b rows, the trailing pad the first e
            if b:
                parts.append(place(cut(0, b), d - b, 0))
            if e:
                parts.append(place(cut(b + d, b + d + e), 0, d - e))
        else:
            raise CompileError(f"the Pad gradient does not support mode '{mode}'")
        g = parts[0] if len(parts) == 1 else op.Sum(parts)
    return g


@rule("Tile")
def _tile(n: Node, g: Value) -> Grads:
    # y = x repeated r_i times along axis i: dx = g viewed as [r_0, d_0, r_1, d_1, ...], summed over the r_i
    x, repeats = n.inputs
    r = rank(x, "Tile")
    pairs = op.Concat([op.Unsqueeze(repeats, [1]), op.Unsqueeze(op.Shape(x), [1])], axis=1)
    split = op.Reshape(g, op.Reshape(pairs, [-1]))
    return [op.ReduceSum(split, list(range(0, 2 * r, 2)), keepdims=0).with_shape(x.shape), None]


@rule("CumSum")
def _cumsum(n: Node, g: Value) -> Grads:
    # y_i = the sum of x_j over j <= i (j < i exclusive; j >= i, j > i reversed): dx_j = the sum of g_i
    # over the i that x_j reaches, the cumulative sum of g in the other direction
    return [op.CumSum(g, n.inputs[1], exclusive=n.i("exclusive"), reverse=1 - n.i("reverse")), None]


# ---- rearranging blocks ----
@rule("DepthToSpace")
def _depth_to_space(n: Node, g: Value) -> Grads:
    # a permutation of x: SpaceToDepth undoes DCR's; for CRD the channels it gives, ordered
    # [b, b, C], are transposed to [C, b, b]
    x, b = n.inputs[0], n.i("blocksize")
    dx = op.SpaceToDepth(g, b)
    if n.s("mode") == "CRD":
        c = sizes(x, "DepthToSpace", [1])[1]
        dx = op.Transpose(op.Reshape(dx, [0, b * b, c // (b * b), -1]), [0, 2, 1, 3])
        dx = reshape_like(dx, x)
    return [dx]


@rule("SpaceToDepth")
def _space_to_depth(n: Node, g: Value) -> Grads:
    return [op.DepthToSpace(g, n.i("blocksize"))]  # SpaceToDepth is the inverse of DCR DepthToSpace


# ---- reductions ----
def _axes(n: Node) -> list[int]:
    """The reduced axes, sorted and non-negative; [] when the op reduces nothing (noop_with_empty_axes)."""
    r = rank(n.inputs[0], n.op_type)
    if n.input(1) is not None:
        if n.const(1) is None:
            raise CompileError(f"the {n.op_type} gradient needs constant axes when keepdims=0")
        axes = n.const_ints(1) or []
    else:
        axes = n.ints("axes")
    if not axes and not n.i("noop_with_empty_axes"):
        axes = list(range(r))
    return sorted(a % r for a in axes)


def _keep(n: Node, v: Value) -> Value:
    """`v` (shaped like the reduction's output) with the reduced axes present, as keepdims=1 has them."""
    if n.i("keepdims"):
        return v
    axes = _axes(n)
    return op.Unsqueeze(v, axes) if axes else v


def _spread(n: Node, g: Value) -> Value:
    return op.Expand(_keep(n, g), op.Shape(n.inputs[0]))


@rule("ReduceSum", "ReduceMean")
def _reduce(n: Node, g: Value) -> Grads:
    x, y = n.inputs[0], n.outputs[0]
    dx = _spread(n, g)
    if n.op_type == "ReduceMean":  # each input element had weight 1 / (elements per output)
        dx = dx / (op.numel(x) / op.numel(y)).cast_like(dx)
    return _none(n, dx)


@rule("ReduceMax", "ReduceMin")
def _reduce_max(n: Node, g: Value) -> Grads:
    # the gradient goes to the positions equal to the result, split evenly on ties (as torch.amax)
    x, g = n.inputs[0], _keep(n, g)
    hit = op.Equal(x, _keep(n, n.outputs[0])).cast_like(g)
    count = op.ReduceSum(hit, n.input(1), keepdims=1, noop_with_empty_axes=n.i("noop_with_empty_axes"))
    return _none(n, hit * (g / count))


@rule("ReduceProd")
def _reduce_prod(n: Node, g: Value) -> Grads:
    # dx_i = g times the product of the other elements: P / x_i from the product P of the nonzero
    # elements and the count Z of zeros (P where x_i is the only zero, 0 where another one is)
    x = n.inputs[0]
    axes, noop = n.input(1), n.i("noop_with_empty_axes")
    zero = op.Equal(x, 0.0)
    nonzero = op.Where(zero, 1.0, x)
    product = op.ReduceProd(nonzero, axes, keepdims=1, noop_with_empty_axes=noop)
    zeros = op.ReduceSum(zero.cast_like(x), axes, keepdims=1, noop_with_empty_axes=noop)
    others = op.Where(zero, masked(product, op.Equal(zeros, 1.0)),
                      masked(product / nonzero, op.Equal(zeros, 0.0)))
    return _none(n, _keep(n, g) * others)


@rule("ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp")
def _reduce_smooth(n: Node, gy: Value) -> Grads:
    x, g, y = n.inputs[0], _keep(n, gy), _keep(n, n.outputs[0])
    if n.op_type == "ReduceL1":  # d sum |x| = sign(x)
        dx = _spread(n, gy) * op.Sign(x)
    elif n.op_type == "ReduceL2":  # d sqrt(sum x^2) = x / y
        dx = x * (g / y)
    elif n.op_type == "ReduceSumSquare":  # d sum x^2 = 2 x
        dx = (x + x) * g
    elif n.op_type == "ReduceLogSum":  # d log sum x = 1 / sum x = exp(-y)
        dx = op.Expand(g * op.Exp(-y), op.Shape(x))
    else:  # d log sum exp x = exp(x - y), the softmax over the reduced axes
        dx = g * op.Exp(x - y)
    return _none(n, dx)
