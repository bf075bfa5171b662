"""Gradient rules of ops that pick elements by index: the gathers, the scatters (every reduction),
TopK and MaxUnpool. A gather's gradient is a scatter-add of g back to where each element came
from; a scatter's is a gather of g."""

from __future__ import annotations

from collections.abc import Callable

from dlspec.compiler.grad.common import INT64_MAX, masked, rank, sizes
from dlspec.compiler.grad.table import Grads, Node, rule, rule_multi
from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op
from dlspec.spec.errors import CompileError


@rule("Gather")
def _gather(n: Node, g: Value) -> Grads:
    # y = x[..., idx, ...] along axis: add g back at the indices (repeated ones accumulate), by a
    # ScatterND into x with that axis moved first
    x, idx = n.inputs
    r, ri = rank(x, "Gather"), rank(idx, "Gather")
    a = n.i("axis") % r
    if a:  # g: x[:a] + idx + x[a+1:] -> idx + x[:a] + x[a+1:]
        g = op.Transpose(g, list(range(a, a + ri)) + list(range(a)) + list(range(a + ri, r + ri - 1)))
    front = [a] + [i for i in range(r) if i != a]
    zeros = op.ConstantOfShape(op.Gather(op.Shape(x), g.graph.ints(front))).cast_like(x)
    dx = op.ScatterND(zeros, op.Unsqueeze(idx.cast("int64"), [-1]), g, reduction="add")
    if a:
        dx = op.Transpose(dx, [front.index(i) for i in range(r)])
    return [dx.with_shape(x.shape), None]


@rule("GatherElements")
def _gather_elements(n: Node, g: Value) -> Grads:
    # y[i] = x[idx[i]] along axis: scatter-add g back (repeated indices accumulate)
    x, idx = n.inputs
    return [op.ScatterElements(op.zeros_like(x), idx, g, axis=n.i("axis"), reduction="add"), None]


@rule("GatherND")
def _gather_nd(n: Node, g: Value) -> Grads:
    # y[j] = x[idx[j]] (index tuples into x's leading axes): scatter-add g back there. With
    # batch_dims b, the b batch axes are merged into one and its position prepended to each tuple.
    x, idx = n.inputs
    b = n.i("batch_dims")
    if not b:
        return [op.ScatterND(op.zeros_like(x), idx, g, reduction="add"), None]
    ri = rank(idx, "GatherND") - b + 1  # the rank of idx with its batch axes merged
    x1, idx1, g1 = (_merge_lead(v, b) for v in (x, idx, g))
    zero, one = g.graph.const(0, "int64"), g.graph.const(1, "int64")
    batch = op.Reshape(op.Gather(op.Shape(x1), g.graph.ints([0])), [])  # B, the merged batch's size
    lead = op.Reshape(op.Range(zero, batch, one), [-1] + [1] * (ri - 1))  # each tuple's batch position
    where = op.Concat([op.Slice(op.Shape(idx1), [0], [-1]), g.graph.ints([1])], axis=0)  # [B, J.., 1]
    tuples = op.Concat([op.Expand(lead, where), idx1], axis=-1)
    dx = op.ScatterND(op.zeros_like(x1), tuples, g1, reduction="add")
    return [op.Reshape(dx, op.Shape(x)).with_shape(x.shape), None]


def _merge_lead(v: Value, b: int) -> Value:
    """`v` with its first b axes merged into one."""
    return op.Reshape(v, op.Concat([v.graph.ints([-1]), op.Slice(op.Shape(v), [b], [INT64_MAX])], axis=0))


Scatter = Callable[[Value, Value, str], Value]  # (base, values, reduction): values written into base


def _scatter(n: Node, g: Value, scatter: Scatter, gather: Callable[[Value], Value]) -> Grads:
    """The gradients of y = scatter(data, updates, reduction) and `gather`, which reads the
    positions that the updates went to."""
    data, _, upd = n.inputs
    y, reduction = n.outputs[0], n.s("reduction")
    if reduction == "none":  # overwritten elements of data do not reach y
        return [scatter(g, op.zeros_like(upd), "none"), None, gather(g)]
    if reduction == "add":
        return [g, None, gather(g)]
    if reduction == "mul":
        # y[p] = data[p] * the product of the updates u_k written to p: d data = g times that product;
        # d u_k = g data[p] times the product of the other updates at p, from the product of the
        # nonzero ones and the count of zeros (exact where some u are 0)
        zero = op.Equal(upd, 0.0)
        nonzero = op.Where(zero, 1.0, upd)
        product = gather(scatter(op.zeros_like(data) + 1.0, nonzero, "mul"))
        zeros = gather(scatter(op.zeros_like(data), zero.cast_like(upd), "add"))
        others = op.Where(zero, masked(product, op.Equal(zeros, 1.0)),
                          masked(product / nonzero, op.Equal(zeros, 0.0)))
        return [scatter(g, upd, "mul"), None, gather(g * data) * others]
    if reduction in ("max", "min"):
        # y[p] = the max (min) of data[p] and the updates at p: g goes to those equal to y[p], split
        # evenly on ties
        hit_data = op.Equal(data, y).cast_like(g)
        hit_upd = op.Equal(upd, gather(y)).cast_like(g)
        share = g / scatter(hit_data, hit_upd, "add")
        return [share * hit_data, None, gather(share) * hit_upd]
    raise CompileError(f"{n.op_type}(reduction='{reduction}') has no gradient rule")


@rule("ScatterElements")
def _scatter_elements(n: Node, g: Value) -> Grads:
    # y = data with updates written or combined (add, mul, max, min) at indices along axis
    idx, axis = n.inputs[1], n.i("axis")
    return _scatter(n, g, lambda base, v, red: op.ScatterElements(base, idx, v, axis=axis, reduction=red),
                    lambda v: op.GatherElements(v, idx, axis=axis))


@rule("ScatterND")
def _scatter_nd(n: Node, g: Value) -> Grads:
    # y = data with updates written or combined (add, mul, max, min) at index tuples
    idx = n.inputs[1]
    return _scatter(n, g, lambda base, v, red: op.ScatterND(base, idx, v, reduction=red),
                    lambda v: op.GatherND(v, idx))


@rule_multi("TopK")
def _top_k(n: Node, gy: list[Value | None]) -> Grads:
    # values = x at indices along axis: write their gradient back there (indices take none)
    g = gy[0]
    if g is None:
        return [None, None]
    x, idx = n.inputs[0], n.outputs[1]
    return [op.ScatterElements(op.zeros_like(x), idx, g, axis=n.i("axis")), None]


@rule("MaxUnpool")
def _max_unpool(n: Node, g: Value) -> Grads:
    # y = zeros of the pool's input shape with y.flat[idx] = x; an output_shape larger than that
    # shape extends it with zeros at the end of each spatial axis (as onnx's reference and tests):
    # dx = g, cut back to the pool's input shape, read at idx
    x, idx = n.inputs[0], n.inputs[1]
    if n.input(2) is not None:
        nd = rank(x, "MaxUnpool") - 2
        size = sizes(x, "MaxUnpool", list(range(2, nd + 2)))[2:]
        k, s = n.ints("kernel_shape"), n.ints("strides") or [1] * nd
        p = n.ints("pads") or [0] * (2 * nd)
        unpooled = [(size[i] - 1) * s[i] - p[i] - p[nd + i] + k[i] for i in range(nd)]
        g = op.Slice(g, [0] * nd, unpooled, list(range(2, nd + 2)))
    return [op.Gather(op.Reshape(g, [-1]), idx)] + [None] * (len(n.inputs) - 1)
