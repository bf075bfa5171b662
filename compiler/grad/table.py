"""The gradient table: one rule per ONNX op type, and the node as a rule sees it.

A rule takes the forward node and the gradient of its output and returns one gradient per input
(None where an input takes none: shapes, indices, running statistics). Ops whose outputs are
piecewise constant, integer or shape-valued are in NO_GRADIENT instead; differentiable ops that
dlspec has no rule for say why in REFUSED.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any

import numpy as np
import onnx
from onnx import helper

from dlspec.compiler.graph import OPSET, Graph, Value
from dlspec.compiler.graph.infer import Type
from dlspec.spec.errors import CompileError

Grads = Sequence[Value | None]
Rule = Callable[["Node", list[Value | None]], Grads]
RULES: dict[str, Rule] = {}

NO_GRADIENT = frozenset({
    "Shape", "Size", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And", "Or",
    "Xor", "ArgMax", "ArgMin", "OneHot", "Range", "ConstantOfShape", "EyeLike", "Sign", "Floor", "Ceil",
    "Round", "Hardmax", "IsNaN", "IsInf", "NonZero", "NonMaxSuppression", "RandomUniformLike",
    "RandomNormalLike", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot",
    "HannWindow", "HammingWindow", "BlackmanWindow", "MelWeightMatrix",
})

# ops that dlspec refuses to differentiate, and why (the refusal names the node and gives the reason)
REFUSED = {
    "RoiAlign": "its gradient scatters each region's bilinear sampling weights back into X and "
                "differentiates the sampling points by the region boxes; dlspec has not written it",
    "DeformConv": "its gradient differentiates bilinear sampling at learned offsets inside a "
                  "convolution; dlspec has not written it",
    # the weights of a quantized (QDQ) model pass through these: refused, rather than silently
    # given the zero gradient of a rounding
    "QuantizeLinear": "it rounds x to integers, whose gradient is zero; train the float model and "
                      "quantize it afterwards",
    "DynamicQuantizeLinear": "it rounds x to integers, whose gradient is zero; train the float model "
                             "and quantize it afterwards",
}


class Node:
    """A forward node with typed inputs and outputs (an omitted optional one has an empty name),
    attributes read under ONNX's names with ONNX's defaults, and its constant inputs' values."""

    def __init__(self, proto: onnx.NodeProto, graph: Graph, types: Mapping[str, Type],
                 consts: Mapping[str, np.ndarray]):
        def typed(name: str) -> Value:
            t = types.get(name)
            return graph.value(name, t.dtype, t.shape) if t else graph.value(name)

        self.proto = proto
        self.op_type = proto.op_type
        self.inputs = [typed(i) for i in proto.input]
        self.outputs = [typed(o) for o in proto.output]
        self._attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}
        self._consts = consts

    def input(self, i: int) -> Value | None:
        """Input i, or None where it is omitted."""
        return self.inputs[i] if i < len(self.inputs) and self.inputs[i].given else None

    def output(self, i: int) -> Value | None:
        return self.outputs[i] if i < len(self.outputs) and self.outputs[i].given else None

    def has(self, name: str) -> bool:
        """Whether the node sets attribute `name` itself."""
        return name in self._attrs

    def attr(self, name: str) -> Any:
        if name in self._attrs:
            return self._attrs[name]
        default = _defaults(self.op_type).get(name)
        if default is None:
            raise CompileError(f"{self.op_type} node {self.proto.name} has no attribute '{name}'")
        return default

    def i(self, name: str) -> int:
        return int(self.attr(name))

    def f(self, name: str) -> float:
        return float(self.attr(name))

    def s(self, name: str) -> str:
        v = self.attr(name)
        return v.decode() if isinstance(v, bytes) else str(v)

    def ints(self, name: str) -> list[int]:
        """A list attribute; [] where neither the node nor ONNX gives one."""
        if name not in self._attrs and name not in _defaults(self.op_type):
            return []
        return [int(v) for v in self.attr(name)]

    def const(self, i: int) -> np.ndarray | None:
        """Input i's value where it is known before the graph runs."""
        v = self.input(i)
        return None if v is None else self._consts.get(v.name)

    def const_ints(self, i: int) -> list[int] | None:
        """Input i as a list of ints; None where omitted, a CompileError where computed at run time."""
        v = self.input(i)
        if v is None:
            return None
        value = self.const(i)
        if value is None:
            raise CompileError(f"the {self.op_type} gradient needs input {i} ('{v.name}') to be a constant")
        return [int(x) for x in value.reshape(-1)]

    def again(self, inputs: Sequence[Value | None], n_out: int = 1, **changes: Any) -> list[Value]:
        """This node's op on other inputs, with its attributes (some changed): a recomputation."""
        attrs = {**self._attrs, **changes}
        graph = next(v for v in inputs if v is not None).graph
        outs = graph.node(self.op_type, inputs, n_out=n_out, **attrs)
        return [graph.value(o) for o in outs]


@cache
def _defaults(op_type: str) -> dict[str, Any]:
    try:
        schema = onnx.defs.get_schema(op_type, OPSET, "")
    except onnx.defs.SchemaError:
        return {}
    return {name: helper.get_attribute_value(a.default_value) for name, a in schema.attributes.items()
            if a.default_value.type != onnx.AttributeProto.UNDEFINED}


def _register(op_types: Sequence[str], fn: Rule) -> None:
    for op in op_types:
        assert op not in RULES, f"gradient rule for {op} registered twice"
        RULES[op] = fn


def rule(*op_types: str) -> Callable[[Callable[[Node, Value], Grads]], Callable[[Node, Value], Grads]]:
    """A rule of an op with one differentiable output: fn(node, g) with g = d loss / d output 0."""
    def register(fn: Callable[[Node, Value], Grads]) -> Callable[[Node, Value], Grads]:
        def single(n: Node, gy: list[Value | None]) -> Grads:
            return fn(n, gy[0]) if gy[0] is not None else [None] * len(n.inputs)
        _register(op_types, single)
        return fn
    return register


def rule_multi(*op_types: str) -> Callable[[Rule], Rule]:
    """A rule of an op with several differentiable outputs: fn(node, [d loss / d output_i or None])."""
    def register(fn: Rule) -> Rule:
        _register(op_types, fn)
        return fn
    return register


def unary(op_type: str, dx: Callable[[Value, Value, Value], Value]) -> None:
    """An elementwise op y = f(x): its rule is dx(g, x, y), as JAX's defjvp states one."""
    def elementwise(n: Node, g: Value) -> Grads:
        return [dx(g, n.inputs[0], n.outputs[0])] + [None] * (len(n.inputs) - 1)
    rule(op_type)(elementwise)
