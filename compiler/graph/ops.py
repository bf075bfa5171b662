"""One typed function per ONNX op that dlspec emits, named as ONNX names the op.

Inputs are Values (numbers, next to a Value, become constants of its type; integer lists, for
shapes, axes and pads, become int64 constants); attributes are keyword arguments under ONNX's
own names. Each result knows its element type and, where it follows from what is known of the
inputs, its shape; a None dim is one that cannot be told.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from onnx import numpy_helper

from dlspec.compiler.graph.value import DTYPES, Dim, Value, broadcast
from dlspec.compiler.graph.value import Shape as Dims

if TYPE_CHECKING:
    from dlspec.compiler.graph.builder import Graph

Operand = Value | float | int
Ints = Sequence[int] | Value


# ---- plumbing ----
def _graph(*xs: object) -> Graph:
    for x in xs:
        if isinstance(x, Value):
            return x.graph
        if isinstance(x, (list, tuple)):
            for item in x:
                if isinstance(item, Value):
                    return item.graph
    raise AssertionError("an op needs at least one Value among its inputs")


def _as_value(x: Operand, like: Value) -> Value:
    return x if isinstance(x, Value) else like.scalar(float(x)) if _is_float(like) else \
        like.graph.const(x, like.dtype or "int64")


def _is_float(v: Value) -> bool:
    return v.dtype is None or v.dtype.startswith(("float", "bfloat"))


def _ints(g: Graph, v: Ints | None) -> Value | None:
    if v is None or isinstance(v, Value):
        return v
    return g.ints([int(i) for i in v])


def _known(v: Ints | None) -> list[int] | None:
    return None if v is None or isinstance(v, Value) else [int(i) for i in v]


def _one(op: str, inputs: Sequence[Value | None], dtype: str | None, shape: Dims | None,
         **attrs: Any) -> Value:
    g = _graph(*inputs)
    return Value(g, g.node(op, inputs, **attrs)[0], dtype, shape)


def _same(op: str, x: Value, **attrs: Any) -> Value:
    return _one(op, [x], x.dtype, x.shape, **attrs)


def _pair(a: Operand, b: Operand) -> tuple[Value, Value]:
    if isinstance(a, Value):
        return a, _as_value(b, a)
    assert isinstance(b, Value), "a binary op needs a Value on one side"
    return _as_value(a, b), b


def _binary(op: str, a: Operand, b: Operand, dtype: str | None = None) -> Value:
    x, y = _pair(a, b)
    return _one(op, [x, y], dtype or x.dtype or y.dtype, broadcast(x.shape, y.shape))


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _numel(dims: Sequence[Dim]) -> int | None:
    return math.prod(d for d in dims if isinstance(d, int)) if all(isinstance(d, int) for d in dims) \
        else None


# ---- elementwise ----
def Neg(x: Value) -> Value:
    return _same("Neg", x)


def Abs(x: Value) -> Value:
    return _same("Abs", x)


def Exp(x: Value) -> Value:
    return _same("Exp", x)


def Log(x: Value) -> Value:
    return _same("Log", x)


def Sqrt(x: Value) -> Value:
    return _same("Sqrt", x)


def Reciprocal(x: Value) -> Value:
    return _same("Reciprocal", x)


def Sigmoid(x: Value) -> Value:
    return _same("Sigmoid", x)


def Tanh(x: Value) -> Value:
    return _same("Tanh", x)


def Relu(x: Value) -> Value:
    return _same("Relu", x)


def LeakyRelu(x: Value, alpha: float = 0.01) -> Value:
    return _same("LeakyRelu", x, alpha=alpha)


def Gelu(x: Value, approximate: str = "none") -> Value:
    return _same("Gelu", x, approximate=None if approximate == "none" else approximate)


def Erf(x: Value) -> Value:
    return _same("Erf", x)


def Sin(x: Value) -> Value:
    return _same("Sin", x)


def Cos(x: Value) -> Value:
    return _same("Cos", x)


def Sinh(x: Value) -> Value:
    return _same("Sinh", x)


def Cosh(x: Value) -> Value:
    return _same("Cosh", x)


def Sign(x: Value) -> Value:
    return _same("Sign", x)


def Floor(x: Value) -> Value:
    return _same("Floor", x)


def Round(x: Value) -> Value:
    """Half-way cases to the even neighbour, as numpy's rint."""
    return _same("Round", x)


def Softplus(x: Value) -> Value:
    return _same("Softplus", x)


def Identity(x: Value) -> Value:
    return _same("Identity", x)


def Not(x: Value) -> Value:
    return _same("Not", x)


def Add(a: Operand, b: Operand) -> Value:
    return _binary("Add", a, b)


def Sub(a: Operand, b: Operand) -> Value:
    return _binary("Sub", a, b)


def Mul(a: Operand, b: Operand) -> Value:
    return _binary("Mul", a, b)


def Div(a: Operand, b: Operand) -> Value:
    return _binary("Div", a, b)


def Pow(a: Operand, b: Operand) -> Value:
    x, y = _pair(a, b)
    return _one("Pow", [x, y], x.dtype, broadcast(x.shape, y.shape))


def Mod(a: Operand, b: Operand) -> Value:
    return _binary("Mod", a, b)


def Equal(a: Operand, b: Operand) -> Value:
    return _binary("Equal", a, b, "bool")


def Greater(a: Operand, b: Operand) -> Value:
    return _binary("Greater", a, b, "bool")


def GreaterOrEqual(a: Operand, b: Operand) -> Value:
    return _binary("GreaterOrEqual", a, b, "bool")


def Less(a: Operand, b: Operand) -> Value:
    return _binary("Less", a, b, "bool")


def LessOrEqual(a: Operand, b: Operand) -> Value:
    return _binary("LessOrEqual", a, b, "bool")


def And(a: Value, b: Value) -> Value:
    return _binary("And", a, b, "bool")


def Or(a: Value, b: Value) -> Value:
    return _binary("Or", a, b, "bool")


def _variadic(op: str, xs: Sequence[Value]) -> Value:
    assert xs, f"{op} takes at least one value"
    return _one(op, list(xs), xs[0].dtype, broadcast(*(x.shape for x in xs)))


def Sum(xs: Sequence[Value]) -> Value:
    return _variadic("Sum", xs)


def Min(xs: Sequence[Operand]) -> Value:
    like = next(x for x in xs if isinstance(x, Value))
    return _variadic("Min", [_as_value(x, like) for x in xs])


def Max(xs: Sequence[Operand]) -> Value:
    like = next(x for x in xs if isinstance(x, Value))
    return _variadic("Max", [_as_value(x, like) for x in xs])


def Where(cond: Value, a: Operand, b: Operand) -> Value:
    x, y = _pair(a, b)
    return _one("Where", [cond, x, y], x.dtype or y.dtype, broadcast(cond.shape, x.shape, y.shape))


def Clip(x: Value, low: Operand | None = None, high: Operand | None = None) -> Value:
    lo = None if low is None else _as_value(low, x)
    hi = None if high is None else _as_value(high, x)
    return _one("Clip", [x, lo, hi], x.dtype, x.shape)


def Cast(x: Value, to: str) -> Value:
    return _one("Cast", [x], to, x.shape, to=DTYPES[to])


def CastLike(x: Value, like: Value) -> Value:
    return _one("CastLike", [x, like], like.dtype, x.shape)


# ---- matrix products ----
def MatMul(a: Value, b: Value) -> Value:
    shape: Dims | None = None
    if a.shape is not None and b.shape is not None:
        sa, sb = list(a.shape), list(b.shape)
        row, col = len(sa) == 1, len(sb) == 1
        sa2, sb2 = ([1] if row else []) + sa, sb + ([1] if col else [])
        batch = broadcast(tuple(sa2[:-2]), tuple(sb2[:-2])) or ()
        out = list(batch) + ([] if row else [sa2[-2]]) + ([] if col else [sb2[-1]])
        shape = tuple(out)
    return _one("MatMul", [a, b], a.dtype, shape)


def Gemm(a: Value, b: Value, c: Value | None = None, alpha: float = 1.0, beta: float = 1.0,
         transA: int = 0, transB: int = 0) -> Value:
    shape: Dims | None = None
    if a.shape is not None and b.shape is not None:
        shape = (a.shape[1 if transA else 0], b.shape[0 if transB else 1])
    return _one("Gemm", [a, b, c], a.dtype, shape, alpha=None if alpha == 1.0 else alpha,
                beta=None if beta == 1.0 else beta, transA=transA or None, transB=transB or None)


def Einsum(xs: Sequence[Value], equation: str) -> Value:
    return _one("Einsum", list(xs), xs[0].dtype, None, equation=equation)


# ---- shapes and layout ----
def Shape(x: Value) -> Value:
    return _one("Shape", [x], "int64", (len(x.shape),) if x.shape is not None else (None,))


def Reshape(x: Value, shape: Ints, allowzero: int = 0) -> Value:
    g = x.graph
    target = _known(shape)
    out: Dims | None = None
    if target is not None:
        dims: list[Dim] = []
        for i, d in enumerate(target):
            if d == 0 and not allowzero:
                dims.append(x.shape[i] if x.shape is not None and i < len(x.shape) else None)
            else:
                dims.append(None if d == -1 else d)
        if -1 in target and x.shape is not None:
            total, rest = _numel(x.shape), _numel([d for d in dims if d is not None])
            if total is not None and rest and None in dims and dims.count(None) == 1:
                dims[dims.index(None)] = total // rest
        out = tuple(dims)
    return _one("Reshape", [x, _ints(g, shape)], x.dtype, out, allowzero=allowzero or None)


def Transpose(x: Value, perm: Sequence[int] | None = None) -> Value:
    shape = None
    if x.shape is not None:
        order = list(perm) if perm is not None else list(range(len(x.shape)))[::-1]
        shape = tuple(x.shape[p] for p in order)
    return _one("Transpose", [x], x.dtype, shape, perm=None if perm is None else list(perm))


def Unsqueeze(x: Value, axes: Sequence[int]) -> Value:
    shape = None
    if x.shape is not None:
        rank = len(x.shape) + len(axes)
        put = sorted(_axis(a, rank) for a in axes)
        rest = iter(x.shape)
        shape = tuple(1 if i in put else next(rest) for i in range(rank))
    return _one("Unsqueeze", [x, x.graph.ints(axes)], x.dtype, shape)


def Squeeze(x: Value, axes: Sequence[int] | None = None) -> Value:
    shape = None
    if x.shape is not None:
        if axes is None:
            shape = tuple(d for d in x.shape if d != 1) if all(isinstance(d, int) for d in x.shape) else None
        else:
            gone = {_axis(a, len(x.shape)) for a in axes}
            shape = tuple(d for i, d in enumerate(x.shape) if i not in gone)
    return _one("Squeeze", [x, None if axes is None else x.graph.ints(axes)], x.dtype, shape)


def Flatten(x: Value, axis: int = 1) -> Value:
    shape = None
    if x.shape is not None:
        a = _axis(axis, len(x.shape))
        shape = (_numel(x.shape[:a]), _numel(x.shape[a:]))
    return _one("Flatten", [x], x.dtype, shape, axis=axis)


def Expand(x: Value, shape: Ints) -> Value:
    known = _known(shape)
    out = broadcast(x.shape, tuple(known)) if known is not None else None
    return _one("Expand", [x, _ints(x.graph, shape)], x.dtype, out)


def Concat(xs: Sequence[Value], axis: int) -> Value:
    shape = None
    if all(x.shape is not None for x in xs):
        first = xs[0].dims
        a = _axis(axis, len(first))
        sizes = [x.dims[a] for x in xs]
        total = sum(s for s in sizes if isinstance(s, int)) if all(isinstance(s, int) for s in sizes) \
            else None
        shape = first[:a] + (total,) + first[a + 1:]
    return _one("Concat", list(xs), xs[0].dtype, shape, axis=axis)


def Split(x: Value, split: Sequence[int] | None = None, axis: int = 0,
          num_outputs: int | None = None) -> list[Value]:
    g = x.graph
    n = len(split) if split is not None else num_outputs
    assert n is not None, "Split needs split sizes or num_outputs"
    outs = g.node("Split", [x, None if split is None else g.ints(split)], n_out=n, axis=axis,
                  num_outputs=num_outputs if split is None else None)
    shapes: list[Dims | None] = [None] * n
    if x.shape is not None and split is not None:
        a = _axis(axis, len(x.shape))
        shapes = [x.shape[:a] + (s,) + x.shape[a + 1:] for s in split]
    return [Value(g, o, x.dtype, s) for o, s in zip(outs, shapes)]


def Slice(x: Value, starts: Ints, ends: Ints, axes: Ints | None = None, steps: Ints | None = None) -> Value:
    g = x.graph
    shape = None
    st, en, ax, sp = _known(starts), _known(ends), _known(axes), _known(steps)
    if x.shape is not None and st is not None and en is not None and (axes is None or ax is not None) \
            and (steps is None or sp is not None):
        dims = list(x.shape)
        for i, (s, e) in enumerate(zip(st, en)):
            a = _axis(ax[i], len(dims)) if ax is not None else i
            step = sp[i] if sp is not None else 1
            d = dims[a]
            dims[a] = len(range(*slice(s, e, step).indices(d))) if isinstance(d, int) else None
        shape = tuple(dims)
    return _one("Slice", [x, _ints(g, starts), _ints(g, ends), _ints(g, axes), _ints(g, steps)], x.dtype,
                shape)


def Pad(x: Value, pads: Ints, value: Value | None = None, axes: Ints | None = None,
        mode: str = "constant") -> Value:
    g = x.graph
    shape = None
    amounts, ax = _known(pads), _known(axes)
    if x.shape is not None and amounts is not None and (axes is None or ax is not None):
        dims = list(x.shape)
        which = [_axis(a, len(dims)) for a in ax] if ax is not None else list(range(len(dims)))
        k = len(which)
        for i, a in enumerate(which):
            d = dims[a]
            dims[a] = d + amounts[i] + amounts[k + i] if isinstance(d, int) else None
        shape = tuple(dims)
    return _one("Pad", [x, _ints(g, pads), value, _ints(g, axes)], x.dtype, shape,
                mode=None if mode == "constant" else mode)


def Gather(x: Value, indices: Value, axis: int = 0) -> Value:
    shape = None
    if x.shape is not None and indices.shape is not None:
        a = _axis(axis, len(x.shape))
        shape = x.shape[:a] + indices.shape + x.shape[a + 1:]
    return _one("Gather", [x, indices], x.dtype, shape, axis=axis)


def GatherElements(x: Value, indices: Value, axis: int = 0) -> Value:
    return _one("GatherElements", [x, indices], x.dtype, indices.shape, axis=axis)


def ScatterElements(data: Value, indices: Value, updates: Value, axis: int = 0,
                    reduction: str = "none") -> Value:
    return _one("ScatterElements", [data, indices, updates], data.dtype, data.shape, axis=axis,
                reduction=None if reduction == "none" else reduction)


def GatherND(x: Value, indices: Value, batch_dims: int = 0) -> Value:
    shape = None
    if x.shape is not None and indices.shape is not None and isinstance(indices.shape[-1], int):
        shape = indices.shape[:-1] + x.shape[batch_dims + indices.shape[-1]:]
    return _one("GatherND", [x, indices], x.dtype, shape, batch_dims=batch_dims or None)


def ScatterND(data: Value, indices: Value, updates: Value, reduction: str = "none") -> Value:
    return _one("ScatterND", [data, indices, updates], data.dtype, data.shape,
                reduction=None if reduction == "none" else reduction)


def CumSum(x: Value, axis: Value, exclusive: int = 0, reverse: int = 0) -> Value:
    return _one("CumSum", [x, axis], x.dtype, x.shape, exclusive=exclusive or None, reverse=reverse or None)


def DepthToSpace(x: Value, blocksize: int, mode: str = "DCR") -> Value:
    shape = None
    if x.shape is not None:
        n, c, h, w = x.shape
        b = blocksize
        shape = (n, c // (b * b) if isinstance(c, int) else None, h * b if isinstance(h, int) else None,
                 w * b if isinstance(w, int) else None)
    return _one("DepthToSpace", [x], x.dtype, shape, blocksize=blocksize,
                mode=None if mode == "DCR" else mode)


def SpaceToDepth(x: Value, blocksize: int) -> Value:
    shape = None
    if x.shape is not None:
        n, c, h, w = x.shape
        b = blocksize
        shape = (n, c * b * b if isinstance(c, int) else None, h // b if isinstance(h, int) else None,
                 w // b if isinstance(w, int) else None)
    return _one("SpaceToDepth", [x], x.dtype, shape, blocksize=blocksize)


def Range(start: Value, limit: Value, delta: Value) -> Value:
    return _one("Range", [start, limit, delta], start.dtype, (None,))


def ConstantOfShape(shape: Value, value: np.ndarray | None = None) -> Value:
    dtype = "float32" if value is None else value.dtype.name
    n = shape.shape[0] if shape.shape is not None else None
    out = (None,) * n if isinstance(n, int) else None
    return _one("ConstantOfShape", [shape], dtype, out,
                value=None if value is None else numpy_helper.from_array(value.reshape(1)))


def OneHot(indices: Value, depth: Value, values: Value, axis: int = -1) -> Value:
    shape = None
    if indices.shape is not None:
        rank = len(indices.shape) + 1
        a = _axis(axis, rank)
        shape = indices.shape[:a] + (None,) + indices.shape[a:]
    return _one("OneHot", [indices, depth, values], values.dtype, shape, axis=axis)


def ArgMax(x: Value, axis: int = 0, keepdims: int = 1) -> Value:
    return _one("ArgMax", [x], "int64", _reduced(x, [axis], keepdims), axis=axis, keepdims=keepdims)


# ---- reductions ----
def _reduced(x: Value, axes: Sequence[int] | None, keepdims: int, noop: int = 0) -> Dims | None:
    if x.shape is None:
        return None
    rank = len(x.shape)
    gone = set(range(rank)) if not axes and not noop else {_axis(a, rank) for a in axes or ()}
    if keepdims:
        return tuple(1 if i in gone else d for i, d in enumerate(x.shape))
    return tuple(d for i, d in enumerate(x.shape) if i not in gone)


def _reduce(op: str, x: Value, axes: Ints | None, keepdims: int, noop_with_empty_axes: int) -> Value:
    known = _known(axes)
    shape = _reduced(x, known, keepdims, noop_with_empty_axes) if axes is None or known is not None \
        else None
    return _one(op, [x, _ints(x.graph, axes)], x.dtype, shape, keepdims=keepdims,
                noop_with_empty_axes=noop_with_empty_axes or None)


def ReduceSum(x: Value, axes: Ints | None = None, keepdims: int = 1, noop_with_empty_axes: int = 0) -> Value:
    return _reduce("ReduceSum", x, axes, keepdims, noop_with_empty_axes)


def ReduceMean(x: Value, axes: Ints | None = None, keepdims: int = 1, noop_with_empty_axes: int = 0) -> Value:
    return _reduce("ReduceMean", x, axes, keepdims, noop_with_empty_axes)


def ReduceProd(x: Value, axes: Ints | None = None, keepdims: int = 1, noop_with_empty_axes: int = 0) -> Value:
    return _reduce("ReduceProd", x, axes, keepdims, noop_with_empty_axes)


def ReduceSumSquare(x: Value, axes: Ints | None = None, keepdims: int = 1,
                    noop_with_empty_axes: int = 0) -> Value:
    return _reduce("ReduceSumSquare", x, axes, keepdims, noop_with_empty_axes)


def ReduceL1(x: Value, axes: Ints | None = None, keepdims: int = 1, noop_with_empty_axes: int = 0) -> Value:
    return _reduce("ReduceL1", x, axes, keepdims, noop_with_empty_axes)


def ReduceL2(x: Value, axes: Ints | None = None, keepdims: int = 1, noop_with_empty_axes: int = 0) -> Value:
    return _reduce("ReduceL2", x, axes, keepdims, noop_with_empty_axes)


def ReduceMax(x: Value, axes: Ints | None = None, keepdims: int = 1, noop_with_empty_axes: int = 0) -> Value:
    return _reduce("ReduceMax", x, axes, keepdims, noop_with_empty_axes)


# ---- networks ----
def _window(size: Dim, k: int, s: int, d: int, p0: int, p1: int, ceil: bool = False) -> Dim:
    if not isinstance(size, int):
        return None
    span = size + p0 + p1 - d * (k - 1) - 1
    return (-(-span // s) if ceil else span // s) + 1


def _spatial(x: Value, k: Sequence[int], s: Sequence[int] | None, d: Sequence[int] | None,
             pads: Sequence[int] | None, channels: Dim, ceil: bool = False) -> Dims | None:
    if x.shape is None:
        return None
    nd = len(k)
    s, d, p = s or [1] * nd, d or [1] * nd, pads or [0] * (2 * nd)
    return (x.shape[0], channels) + tuple(_window(x.shape[2 + i], k[i], s[i], d[i], p[i], p[nd + i], ceil)
                                          for i in range(nd))


def Conv(x: Value, w: Value, b: Value | None = None, kernel_shape: Sequence[int] | None = None,
         strides: Sequence[int] | None = None, pads: Sequence[int] | None = None,
         dilations: Sequence[int] | None = None, group: int = 1) -> Value:
    shape = None
    k = [v for v in w.shape[2:] if isinstance(v, int)] if w.shape is not None else []
    if w.shape is not None and len(k) == len(w.shape) - 2:
        shape = _spatial(x, k, strides, dilations, pads, w.dims[0])
    return _one("Conv", [x, w, b], x.dtype, shape, kernel_shape=kernel_shape, strides=strides, pads=pads,
                dilations=dilations, group=group if group != 1 else None)


def ConvTranspose(x: Value, w: Value, strides: Sequence[int] | None = None,
                  pads: Sequence[int] | None = None, dilations: Sequence[int] | None = None,
                  group: int = 1, output_padding: Sequence[int] | None = None) -> Value:
    shape = None
    k = [v for v in w.shape[2:] if isinstance(v, int)] if w.shape is not None else []
    if x.shape is not None and w.shape is not None and len(k) == len(w.shape) - 2:
        nd = len(k)
        s, d = strides or [1] * nd, dilations or [1] * nd
        p, op = pads or [0] * (2 * nd), output_padding or [0] * nd
        sizes: list[Dim] = []
        for i in range(nd):
            n = x.shape[2 + i]
            sizes.append(s[i] * (n - 1) + op[i] + d[i] * (k[i] - 1) + 1 - p[i] - p[nd + i]
                         if isinstance(n, int) else None)
        cout = w.dims[1]
        shape = (x.shape[0], cout * group if isinstance(cout, int) else None, *sizes)
    return _one("ConvTranspose", [x, w], x.dtype, shape, strides=strides, pads=pads, dilations=dilations,
                group=group if group != 1 else None, output_padding=output_padding)


def MaxPool(x: Value, kernel_shape: Sequence[int], strides: Sequence[int] | None = None,
            pads: Sequence[int] | None = None) -> Value:
    c = x.shape[1] if x.shape is not None else None
    return _one("MaxPool", [x], x.dtype, _spatial(x, kernel_shape, strides, None, pads, c),
                kernel_shape=list(kernel_shape), strides=strides, pads=pads)


def AveragePool(x: Value, kernel_shape: Sequence[int], strides: Sequence[int] | None = None,
                pads: Sequence[int] | None = None, count_include_pad: int = 0) -> Value:
    c = x.shape[1] if x.shape is not None else None
    return _one("AveragePool", [x], x.dtype, _spatial(x, kernel_shape, strides, None, pads, c),
                kernel_shape=list(kernel_shape), strides=strides, pads=pads,
                count_include_pad=count_include_pad or None)


def GlobalAveragePool(x: Value) -> Value:
    shape = x.shape[:2] + (1,) * (len(x.shape) - 2) if x.shape is not None else None
    return _one("GlobalAveragePool", [x], x.dtype, shape)


def BatchNormalization(x: Value, scale: Value, bias: Value, mean: Value, var: Value,
                       epsilon: float = 1e-5, momentum: float | None = None) -> Value:
    return _one("BatchNormalization", [x, scale, bias, mean, var], x.dtype, x.shape, epsilon=epsilon,
                momentum=momentum)


def LayerNormalization(x: Value, scale: Value, bias: Value | None, axis: int = -1,
                       epsilon: float = 1e-5) -> Value:
    return _one("LayerNormalization", [x, scale, bias], x.dtype, x.shape, axis=axis, epsilon=epsilon)


def InstanceNormalization(x: Value, scale: Value, bias: Value, epsilon: float = 1e-5) -> Value:
    return _one("InstanceNormalization", [x, scale, bias], x.dtype, x.shape, epsilon=epsilon)


def Recurrent(op_type: str, x: Value, w: Value, r: Value, b: Value | None, sequence_lens: Value | None,
              hidden_size: int, direction: str, **attrs: Any) -> Value:
    """An RNN, GRU or LSTM node in layout 0, X [T, N, F]; its output Y alone: [T, directions, N, H]
    (onnxruntime's CPU kernels refuse layout 1)."""
    dirs = 2 if direction == "bidirectional" else 1
    shape = None if x.shape is None else (x.shape[0], dirs, x.shape[1], hidden_size)
    return _one(op_type, [x, w, r, b, sequence_lens], x.dtype, shape, hidden_size=hidden_size,
                direction=direction, **attrs)


def Softmax(x: Value, axis: int = -1) -> Value:
    return _same("Softmax", x, axis=axis)


def LogSoftmax(x: Value, axis: int = -1) -> Value:
    return _same("LogSoftmax", x, axis=axis)


def Resize(x: Value, scales: Value | None = None, sizes: Ints | None = None,
           axes: Sequence[int] | None = None, mode: str = "nearest",
           coordinate_transformation_mode: str = "half_pixel", nearest_mode: str | None = None) -> Value:
    """By `scales` or by output `sizes`, of every axis or of `axes` alone; `nearest_mode` unset is
    ONNX's round_prefer_floor."""
    shape = None
    known = _known(sizes)
    if x.shape is not None and known is not None:
        dims = list(x.shape)
        for a, d in zip(axes if axes is not None else range(len(dims)), known):
            dims[_axis(a, len(dims))] = d
        shape = tuple(dims)
    return _one("Resize", [x, None, scales, _ints(x.graph, sizes)], x.dtype, shape,
                axes=None if axes is None else list(axes), mode=mode,
                coordinate_transformation_mode=coordinate_transformation_mode, nearest_mode=nearest_mode)


# ---- helpers that are not one op ----
def numel(x: Value) -> Value:
    """x's element count, an int64 scalar. ReduceProd(Shape(x)) rather than Size(x): once the batch
    is static, onnxruntime folds Shape, and so this, to a constant, but never Size, whose host-side
    output would pull the arithmetic after it off a GPU provider onto the CPU."""
    return ReduceProd(Shape(x), keepdims=0)


def zeros_like(x: Value) -> Value:
    return ConstantOfShape(Shape(x)).cast_like(x)
