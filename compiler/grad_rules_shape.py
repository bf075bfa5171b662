"""Gradient rules for ops that move, select or reduce elements: reshapes, slices, pads, scatters,
reductions. Selections are undone by padding or scattering the gradient back into zeros."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from dlspec.compiler.autodiff import RuleCtx, rule
from dlspec.compiler.grad_rules import (
    G,
    _need,
    attr,
    const_ints,
    rank_of,
    static_shape,
    unbroadcast,
    zeros_like,
)
from dlspec.spec.errors import CompileError

INT64_MIN, INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


# ---- reshapes and permutations ----
def _reshape_back(ctx: RuleCtx, g: str, x: str) -> str:
    # allowzero: a 0 in x's shape is a 0, not "copy that dim from g"
    return ctx.g.op1("Reshape", [g, ctx.g.op1("Shape", [x], "grad")], "grad", allowzero=1)


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    return [_reshape_back(ctx, _need(gy[0]), n.input[0])] + [None] * (len(n.input) - 1)


@rule("Expand")
def _expand(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    return [unbroadcast(ctx, _need(gy[0]), n.input[0], n.output[0]), None]


@rule("Transpose")
def _transpose(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    perm = list(attr(n, "perm", []) or [])  # type: ignore[call-overload]
    if not perm:
        perm = list(range(rank_of(ctx, n.input[0], "Transpose")))[::-1]
    inverse = [perm.index(i) for i in range(len(perm))]
    return [ctx.g.op1("Transpose", [_need(gy[0])], "grad", perm=inverse)]


# ---- joining and selecting ----
@rule("Concat")
def _concat(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    axis = int(attr(n, "axis"))  # type: ignore[call-overload]
    sizes = [static_shape(ctx, x, "Concat", [axis])[axis] for x in n.input]
    return ctx.g.op("Split", [_need(gy[0]), ctx.g.ints(sizes)], "grad", n_out=len(sizes), axis=axis)


@rule("Split")
def _split(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # dx = concat of the outputs' gradients; an unused output contributes zeros, not nothing
    parts = [g if g is not None else zeros_like(ctx, y) for g, y in zip(gy, n.output)]
    axis = int(attr(n, "axis", 0))  # type: ignore[call-overload]
    dx = parts[0] if len(parts) == 1 else ctx.g.op1("Concat", parts, "grad", axis=axis)
    return [dx] + [None] * (len(n.input) - 1)


@rule("Slice")
def _slice(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # dx = zeros with g written back at the selected positions: a Pad for an ascending run,
    # else a Gather from g with one zero row appended (positions not selected read the zero)
    x, g = n.input[0], _need(gy[0])
    starts, ends = const_ints(ctx, n, 1), const_ints(ctx, n, 2)
    assert starts is not None and ends is not None, "Slice has starts and ends"
    rank = rank_of(ctx, x, "Slice")
    axes = [a % rank for a in const_ints(ctx, n, 3) or range(len(starts))]
    steps = const_ints(ctx, n, 4) or [1] * len(axes)
    dims = static_shape(ctx, x, "Slice", axes)
    pads: dict[int, tuple[int, int]] = {}
    for a, start, end, step in zip(axes, starts, ends, steps):
        picked = np.arange(dims[a])[slice(start, end, step)]
        if len(picked) == 0:
            return [zeros_like(ctx, x)] + [None] * (len(n.input) - 1)
        if len(picked) == 1 or step == 1:
            pads[a] = (int(picked[0]), dims[a] - int(picked[-1]) - 1)
            continue
        where = np.full(dims[a], len(picked), np.int64)  # where[i]: the row of g that x[i] went to
        where[picked] = np.arange(len(picked))
        padded = ctx.g.op1("Pad", [g, ctx.g.ints([0, 1]), "", ctx.g.ints([a])], "grad")
        g = ctx.g.op1("Gather", [padded, ctx.g.ints(list(where), "index")], "grad", axis=a)
    if any(b or e for b, e in pads.values()):
        order = sorted(pads)
        amounts = [pads[a][0] for a in order] + [pads[a][1] for a in order]
        g = ctx.g.op1("Pad", [g, ctx.g.ints(amounts), "", ctx.g.ints(order)], "grad")
    return [g] + [None] * (len(n.input) - 1)


@rule("Pad")
def _pad(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    g, x = _need(gy[0]), n.input[0]
    mode = attr(n, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode == "constant":
        dx = _unpad(ctx, n, g)
        out: list[G] = [dx, None]
        if len(n.input) > 2 and n.input[2]:  # d value = sum of g over the padded positions
            total = ctx.g.op1("Sub", [ctx.g.op1("ReduceSum", [g], "grad", keepdims=0),
                                      ctx.g.op1("ReduceSum", [dx], "grad", keepdims=0)], "grad")
            out.append(_reshape_back(ctx, total, n.input[2]))
        return out + [None] * (len(n.input) - len(out))
    return [_pad_fold(ctx, n, g, x, mode)] + [None] * (len(n.input) - 1)


def _unpad(ctx: RuleCtx, n: onnx.NodeProto, g: str) -> str:
    """The inverse of a constant Pad: crop what it added, zero-fill what a negative pad cropped."""
    axes_in = n.input[3] if len(n.input) > 3 and n.input[3] else None
    if n.input[1] not in ctx.consts:  # pads computed at run time: a Pad by -pads does both
        neg = ctx.g.op1("Neg", [n.input[1]], "grad")
        return ctx.g.op1("Pad", [g, neg] + (["", axes_in] if axes_in else []), "grad")
    pads = const_ints(ctx, n, 1) or []
    k = len(pads) // 2
    axes = const_ints(ctx, n, 3) or list(range(k))
    begin, end = pads[:k], pads[k:]
    if any(b > 0 or e > 0 for b, e in zip(begin, end)):
        starts, ends = [max(b, 0) for b in begin], [-e if e > 0 else INT64_MAX for e in end]
        g = ctx.g.op1("Slice", [g, ctx.g.ints(starts), ctx.g.ints(ends), ctx.g.ints(axes)], "grad")
    if any(b < 0 or e < 0 for b, e in zip(begin, end)):
        refill = [max(-b, 0) for b in begin] + [max(-e, 0) for e in end]
        g = ctx.g.op1("Pad", [g, ctx.g.ints(refill), "", ctx.g.ints(axes)], "grad")
    return g


def _pad_fold(ctx: RuleCtx, n: onnx.NodeProto, g: str, x: str, mode: str) -> str:
    """edge, reflect and wrap: each padded row copied some row of x; add its gradient back there."""
    pads = const_ints(ctx, n, 1) or []
    rank = rank_of(ctx, x, "Pad")
    axes = [a % rank for a in const_ints(ctx, n, 3) or range(rank)]
    dims = static_shape(ctx, x, "Pad", [a for i, a in enumerate(axes) if pads[i] or pads[len(axes) + i]])
    gr = ctx.g
    for i, a in enumerate(axes):
        b, e, d = pads[i], pads[len(axes) + i], dims[a]
        if not (b or e):
            continue
        limit = d - 1 if mode == "reflect" else d
        if min(b, e) < 0 or max(b, e) > limit:
            raise CompileError(f"the Pad gradient supports {mode} pads from 0 to {limit} on axis {a} "
                               f"(got {b}, {e})")

        def cut(start: int, end: int, step: int = 1, v: str = g, a: int = a) -> str:
            bounds = [gr.ints([start]), gr.ints([end]), gr.ints([a]), gr.ints([step])]
            return gr.op1("Slice", [v] + bounds, "grad")

        def place(v: str, before: int, after: int, a: int = a) -> str:
            return gr.op1("Pad", [v, gr.ints([before, after]), "", gr.ints([a])], "grad")

        parts = [cut(b, b + d)]
        if mode == "edge":  # every padded row copied the first (last) row
            if b:
                parts.append(place(gr.op1("ReduceSum", [cut(0, b), gr.ints([a])], "grad"), 0, d - 1))
            if e:
                last = gr.op1("ReduceSum", [cut(b + d, b + d + e), gr.ints([a])], "grad")
                parts.append(place(last, d - 1, 0))
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
        g = parts[0] if len(parts) == 1 else gr.op1("Sum", parts, "grad")
    return g


@rule("ScatterElements")
def _scatter_elements(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # y = data with updates written (none) or added (add) at indices along axis
    g, (_, idx, upd) = _need(gy[0]), n.input
    axis = int(attr(n, "axis", 0))  # type: ignore[call-overload]
    reduction = attr(n, "reduction", b"none")
    reduction = reduction.decode() if isinstance(reduction, bytes) else str(reduction)
    if reduction not in ("none", "add"):
        raise CompileError(f"ScatterElements(reduction='{reduction}') has no gradient rule (none and add do)")
    dupd = ctx.g.op1("GatherElements", [g, idx], "grad", axis=axis)  # d updates = g at the indices
    if reduction == "add":
        return [g, None, dupd]
    # overwritten elements of data do not reach y
    ddata = ctx.g.op1("ScatterElements", [g, idx, zeros_like(ctx, upd)], "grad", axis=axis)
    return [ddata, None, dupd]


@rule("GatherElements")
def _gather_elements(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # y[i] = x[idx[i]] along axis: scatter-add g back (repeated indices accumulate)
    g, (x, idx) = _need(gy[0]), n.input
    axis = int(attr(n, "axis", 0))  # type: ignore[call-overload]
    dx = ctx.g.op1("ScatterElements", [zeros_like(ctx, x), idx, g], "grad", axis=axis, reduction="add")
    return [dx, None]


# ---- reductions ----
def _axes(ctx: RuleCtx, n: onnx.NodeProto) -> list[int]:
    """The reduced axes, sorted and non-negative; [] when the op reduces nothing (noop_with_empty_axes)."""
    rank = rank_of(ctx, n.input[0], n.op_type)
    if len(n.input) > 1 and n.input[1]:
        if n.input[1] not in ctx.consts:
            raise CompileError(f"the {n.op_type} gradient needs constant axes when keepdims=0")
        axes = [int(a) for a in ctx.consts[n.input[1]].reshape(-1)]
    else:
        axes = [int(a) for a in (attr(n, "axes", []) or [])]  # type: ignore[attr-defined]
    if not axes and not attr(n, "noop_with_empty_axes", 0):
        axes = list(range(rank))
    return sorted(a % rank for a in axes)


def _keep(ctx: RuleCtx, n: onnx.NodeProto, v: str) -> str:
    """`v` (shaped like the reduction's output) with the reduced axes present, as keepdims=1 has them."""
    if attr(n, "keepdims", 1):
        return v
    axes = _axes(ctx, n)
    return ctx.g.op1("Unsqueeze", [v, ctx.g.ints(axes)], "grad") if axes else v


def _spread(ctx: RuleCtx, n: onnx.NodeProto, g: str) -> str:
    return ctx.g.op1("Expand", [_keep(ctx, n, g), ctx.g.op1("Shape", [n.input[0]], "grad")], "grad")


@rule("ReduceSum", "ReduceMean")
def _reduce(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    x, y = n.input[0], n.output[0]
    g = _spread(ctx, n, _need(gy[0]))
    if n.op_type == "ReduceMean":  # each input element had weight 1 / (elements per output)
        count = ctx.g.op1("Div", [ctx.g.numel(x, "grad"), ctx.g.numel(y, "grad")], "grad")
        g = ctx.g.op1("Div", [g, ctx.g.op1("CastLike", [count, g], "grad")], "grad")
    return [g] + [None] * (len(n.input) - 1)


@rule("ReduceMax", "ReduceMin")
def _reduce_max(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # the gradient goes to the positions equal to the result, split evenly on ties (as torch.amax)
    x, g = n.input[0], _keep(ctx, n, _need(gy[0]))
    hit = ctx.g.op1("CastLike", [ctx.g.op1("Equal", [x, _keep(ctx, n, n.output[0])], "grad"), g], "grad")
    axes = list(n.input[1:2]) if attr(n, "axes") is None else [ctx.g.ints(_axes(ctx, n))]  # older opsets
    count = ctx.g.op1("ReduceSum", [hit] + axes, "grad", keepdims=1,
                      noop_with_empty_axes=attr(n, "noop_with_empty_axes", None))
    share = ctx.g.op1("Div", [g, count], "grad")
    return [ctx.g.op1("Mul", [hit, share], "grad")] + [None] * (len(n.input) - 1)


@rule("ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp")
def _reduce_smooth(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    x, g, y = n.input[0], _keep(ctx, n, _need(gy[0])), _keep(ctx, n, n.output[0])
    op = ctx.g.op1
    if n.op_type == "ReduceL1":  # d sum |x| = sign(x)
        dx = op("Mul", [_spread(ctx, n, _need(gy[0])), op("Sign", [x], "grad")], "grad")
    elif n.op_type == "ReduceL2":  # d sqrt(sum x^2) = x / y
        dx = op("Mul", [x, op("Div", [g, y], "grad")], "grad")
    elif n.op_type == "ReduceSumSquare":  # d sum x^2 = 2 x
        dx = op("Mul", [op("Add", [x, x], "grad"), g], "grad")
    elif n.op_type == "ReduceLogSum":  # d log sum x = 1 / sum x = exp(-y)
        dx = op("Expand", [op("Mul", [g, op("Exp", [op("Neg", [y], "grad")], "grad")], "grad"),
                           op("Shape", [x], "grad")], "grad")
    else:  # d log sum exp x = exp(x - y), the softmax over the reduced axes
        dx = op("Mul", [g, op("Exp", [op("Sub", [x, y], "grad")], "grad")], "grad")
    return [dx] + [None] * (len(n.input) - 1)
