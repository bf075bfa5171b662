"""Ops that ONNX added after OPSET, rewritten into the opset-OPSET ops that compute them exactly,
so that a model using them can be differentiated by the rules of those ops. Each rewrite keeps
the node's output names: the rest of the graph reads the same values. The formulas are those
of the ONNX spec's function bodies and reference implementations (onnx.reference.ops)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from numpy.typing import DTypeLike
from onnx import helper, numpy_helper, shape_inference

from dlspec.spec.errors import CompileError

INT64_MAX = np.iinfo(np.int64).max


class _Rewrite:
    """The nodes of one rewrite, named after the node they replace and apart from the model's names."""

    def __init__(self, node: onnx.NodeProto, taken: set[str],
                 shapes: Callable[[str], Sequence[object] | None]) -> None:
        self.node = node
        self.base = node.name or node.output[0]
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.nodes: list[onnx.NodeProto] = []
        self._taken = taken
        self._shapes = shapes

    def fresh(self, hint: str) -> str:
        name, k = f"{self.base}/{hint}", 1
        while name in self._taken:
            name, k = f"{self.base}/{hint}.{k}", k + 1
        self._taken.add(name)
        return name

    def add(self, op: str, inputs: Sequence[str], out: str | None = None, **attrs: Any) -> str:
        """One node `op`; its output is `out` (a name of the model) or a fresh name."""
        out = out if out is not None else self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=self.fresh(op), **attrs))
        return out

    def const(self, value: object, dtype: DTypeLike = np.int64) -> str:
        return self.add("Constant", [], value=numpy_helper.from_array(np.asarray(value, dtype)))

    def like(self, value: float, x: str) -> str:
        """A float scalar in x's element type."""
        return self.add("CastLike", [self.const(value, np.float32), x])

    def shape(self, x: str) -> Sequence[object]:
        shape = self._shapes(x)
        if shape is None:
            raise CompileError(f"node {self.base} ({self.node.op_type}): ONNX shape inference cannot tell "
                               f"the rank of its input '{x}', which the rewrite into opset-20 ops needs")
        return shape


def _swish_of(r: _Rewrite, x: str, alpha: float, out: str | None = None) -> str:
    scaled = x if alpha == 1.0 else r.add("Mul", [x, r.like(alpha, x)])
    return r.add("Mul", [x, r.add("Sigmoid", [scaled])], out)  # x * sigmoid(alpha * x)


def _swish(r: _Rewrite) -> None:
    _swish_of(r, r.node.input[0], r.attrs.get("alpha", 1.0), r.node.output[0])


def _swiglu(r: _Rewrite) -> None:
    a, b = r.node.input
    r.add("Mul", [_swish_of(r, a, r.attrs.get("alpha", 1.0)), b], r.node.output[0])  # swish(a) * b


def _rms_normalization(r: _Rewrite) -> None:
    """The function body of opset 23: x / sqrt(mean(x^2 over axis..) + eps) in the stash type, cast
    back to x's type, times the scale (broadcast as Mul does)."""
    x, scale = r.node.input
    axis = r.attrs.get("axis", -1)
    stash = r.attrs.get("stash_type", onnx.TensorProto.FLOAT)
    axes = list(range(axis, 0)) if axis < 0 else list(range(axis, len(r.shape(x))))
    xs = r.add("Cast", [x], to=stash)
    mean = r.add("ReduceMean", [r.add("Mul", [xs, xs]), r.const(axes)], keepdims=1)
    eps = r.const(r.attrs.get("epsilon", 1e-5), helper.tensor_dtype_to_np_dtype(stash))
    normed = r.add("Div", [xs, r.add("Sqrt", [r.add("Add", [mean, eps])])])
    r.add("Mul", [r.add("CastLike", [normed, x]), scale], r.node.output[0])


def _rotary_embedding(r: _Rewrite) -> None:
    """The spec's algorithm: the first rotary_embedding_dim features of each head (all when 0), as
    pairs (x1, x2), halves or interleaved, turn to (cos x1 - sin x2, sin x1 + cos x2) with cos and
    sin of the token's position; the other features pass. 4-D input is (batch, heads, seq, head),
    3-D (batch, seq, heads * head) with num_heads."""
    x, cos, sin, *rest = r.node.input
    positions = rest[0] if rest and rest[0] else None
    interleaved, dim = r.attrs.get("interleaved", 0), r.attrs.get("rotary_embedding_dim", 0)
    shape = r.shape(x)
    if len(shape) == 3:
        heads = r.attrs.get("num_heads")
        if not heads:
            raise CompileError(f"node {r.base} (RotaryEmbedding): a 3-D input needs the num_heads attribute")
        x4 = r.add("Reshape", [x, r.const([0, 0, heads, -1])])  # (batch, seq, heads, head)
        head_axis, head = 2, shape[2] // heads if isinstance(shape[2], int) else None
    elif len(shape) == 4:
        x4, head_axis, head = x, 1, shape[3] if isinstance(shape[3], int) else None
    else:
        raise CompileError(f"node {r.base} (RotaryEmbedding): its input '{x}' has rank {len(shape)}, "
                           "not 3 or 4")
    trig = []
    for cache in (cos, sin):  # (batch, seq, dim / 2), then 1 for the heads
        picked = r.add("Gather", [cache, positions], axis=0) if positions else cache
        trig.append(r.add("Unsqueeze", [picked, r.const([head_axis])]))
    c, s = trig
    partial = dim != 0 and dim != head
    turned = r.add("Slice", [x4, r.const([0]), r.const([dim]), r.const([-1])]) if partial else x4
    if interleaved:
        x1, x2 = (r.add("Slice", [turned, r.const([k]), r.const([INT64_MAX]), r.const([-1]), r.const([2])])
                  for k in (0, 1))
    else:
        x1, x2 = r.fresh("x1"), r.fresh("x2")
        r.nodes.append(helper.make_node("Split", [turned], [x1, x2], name=r.fresh("Split"), axis=-1,
                                        num_outputs=2))
    real = r.add("Sub", [r.add("Mul", [c, x1]), r.add("Mul", [s, x2])])
    imag = r.add("Add", [r.add("Mul", [s, x1]), r.add("Mul", [c, x2])])
    if interleaved:  # real and imag back to the even and odd features
        last = r.const([-1])
        pairs = r.add("Concat", [r.add("Unsqueeze", [real, last]), r.add("Unsqueeze", [imag, last])], axis=-1)
        rotated = r.add("Reshape", [pairs, r.const([0, 0, 0, -1])])
    else:
        rotated = r.add("Concat", [real, imag], axis=-1)
    if partial:
        kept = r.add("Slice", [x4, r.const([dim]), r.const([INT64_MAX]), r.const([-1])])
        rotated = r.add("Concat", [rotated, kept], axis=-1)
    r.add("Reshape" if len(shape) == 3 else "Identity",
          [rotated, r.const([0, 0, -1])] if len(shape) == 3 else [rotated], r.node.output[0])


REWRITES: dict[str, Callable[[_Rewrite], None]] = {
    "Swish": _swish,
    "SwiGLU": _swiglu,
    "RMSNormalization": _rms_normalization,
    "RotaryEmbedding": _rotary_embedding,
}


def rewrite_newer_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with each node of REWRITES replaced by its opset-OPSET nodes (`model` itself when
    there is none). Shapes are inferred only when a rewrite needs a rank, on the nodes before it."""
    if not any(n.op_type in REWRITES and n.domain in ("", "ai.onnx") for n in model.graph.node):
        return model
    g = model.graph
    taken = {v for n in g.node for v in [*n.input, *n.output, n.name]}
    taken |= {v.name for v in [*g.input, *g.output, *g.initializer]}
    nodes: list[onnx.NodeProto] = []
    known: dict[str, Sequence[object] | None] = {}

    def shape(name: str) -> Sequence[object] | None:
        if name not in known:
            known.update(_shapes(model, nodes))
        return known.get(name)

    for node in g.node:
        if node.op_type not in REWRITES or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        r = _Rewrite(node, taken, shape)
        REWRITES[node.op_type](r)
        nodes.extend(r.nodes)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _shapes(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> dict[str, Sequence[object] | None]:
    """The shapes (dims as ints or names) that shape inference tells of these nodes' values."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    del m.graph.output[:]
    del m.graph.value_info[:]
    inferred = shape_inference.infer_shapes(m)
    g = inferred.graph
    out: dict[str, Sequence[object] | None] = {}
    for vi in [*g.input, *g.value_info]:
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
        out[vi.name] = tuple(dims) if t.HasField("shape") else None
    out.update({t.name: tuple(t.dims) for t in g.initializer})
    return out
