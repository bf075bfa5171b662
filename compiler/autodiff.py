"""Reverse-mode autodiff over ONNX nodes: a reverse walk that sums gradients where values fan out.

Rules live in compiler/grad_rules.py, one per op type; this module only orders the work,
prunes what needs no gradient, and reports ops without a rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from compiler.graph import Graph
from spec.errors import CompileError, Span

Dim = int | str | None


@dataclass
class RuleCtx:
    """What a gradient rule sees: the graph being built and the static shapes of values."""

    g: Graph
    shapes: dict[str, tuple[Dim, ...]]
    consts: dict[str, np.ndarray] = field(default_factory=dict)  # initializers and Constant outputs

    def shape(self, name: str) -> tuple[Dim, ...] | None:
        return self.shapes.get(name)


GradRule = Callable[[RuleCtx, onnx.NodeProto, list[str | None]], Sequence[str | None]]
RULES: dict[str, GradRule] = {}


def rule(*op_types: str) -> Callable[[GradRule], GradRule]:
    def register(fn: GradRule) -> GradRule:
        for op in op_types:
            assert op not in RULES, f"gradient rule for {op} registered twice"
            RULES[op] = fn
        return fn
    return register


def static_shapes(model: onnx.ModelProto) -> dict[str, tuple[Dim, ...]]:
    """Shapes of every value (symbolic dims as names) from ONNX shape inference."""
    inferred = shape_inference.infer_shapes(model, strict_mode=True)
    out: dict[str, tuple[Dim, ...]] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                 for d in t.shape.dim)
    for init in g.initializer:
        out[init.name] = tuple(init.dims)
    return out


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Values known before the graph runs: initializers and Constant node outputs."""
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def _span_of(node: onnx.NodeProto) -> tuple[str, Span | None]:
    """Nodes carry 'file:line:col path' in doc_string: point errors at the layer that made them."""
    doc = node.doc_string or ""
    loc, _, path = doc.partition(" ")
    parts = loc.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        line, col = int(parts[1]), int(parts[2])
        return path, Span(parts[0], line, col, line, col + 1)
    return doc or node.name, None


def backward(ctx: RuleCtx, nodes: Sequence[onnx.NodeProto], loss: str, wrt: Sequence[str],
             seed: str) -> dict[str, str]:
    """Gradient names of `wrt` (those that reach `loss`), given `seed` = d loss / d loss."""
    # Prune: only nodes on a path from some wrt value to the loss get a gradient.
    reach = set(wrt)
    for node in nodes:
        if any(i in reach for i in node.input):
            reach.update(node.output)
    needed = {loss}
    live: list[onnx.NodeProto] = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output) and any(i in reach for i in node.input):
            live.append(node)
            needed.update(i for i in node.input if i in reach)
    grads: dict[str, list[str]] = {loss: [seed]}
    for node in live:  # already in reverse topological order
        gouts = [_total(ctx, grads.get(o)) for o in node.output]
        if all(g is None for g in gouts):
            continue
        fn = RULES.get(node.op_type)
        if fn is None:
            path, span = _span_of(node)
            raise CompileError(f"no gradient rule for ONNX op {node.op_type} (node {node.name}, from "
                               f"{path}); it cannot be trained through", span)
        ctx.g.where = node.doc_string
        gins = fn(ctx, node, gouts)
        for name, gi in zip(node.input, gins):
            if gi is not None and name in needed:
                grads.setdefault(name, []).append(gi)
    out = {}
    for name in wrt:
        total = _total(ctx, grads.get(name))
        if total is not None:
            out[name] = total
    return out


def _total(ctx: RuleCtx, parts: list[str] | None) -> str | None:
    """Gradients that meet at one value are summed (once, so later reads reuse it)."""
    if not parts:
        return None
    if len(parts) > 1:
        parts[:] = [ctx.g.op1("Sum", list(parts), "grad")]
    return parts[0]
