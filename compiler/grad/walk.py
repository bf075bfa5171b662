"""Reverse-mode autodiff over ONNX nodes: a reverse walk that sums gradients where values fan out.

The rules live in the table (dlspec.compiler.grad.table); this module only orders the work,
prunes what needs no gradient, and reports ops without a rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx

from dlspec.compiler.grad.table import NO_GRADIENT, REFUSED, RULES, Node
from dlspec.compiler.graph import Graph, Value
from dlspec.compiler.graph import ops as op
from dlspec.compiler.graph.infer import Type
from dlspec.compiler.target import lowering
from dlspec.spec.errors import CompileError, Span


@lowering
def add_up(parts: Sequence[Value]) -> Value:
    """The sum of the gradients that meet at one value."""
    return op.Sum(parts)


def backward(graph: Graph, nodes: Sequence[onnx.NodeProto], loss: str, wrt: Sequence[str], seed: Value,
             types: Mapping[str, Type], consts: Mapping[str, np.ndarray]) -> dict[str, Value]:
    """The gradients of `wrt` (those that reach `loss`), given `seed` = d loss / d loss; `types`
    and `consts` are what is known of the forward values before the graph runs.

    Nodes it adds to `graph` that no returned gradient needs (the gradient of a frozen weight that
    a rule computes alongside the one wanted) are removed again before it returns."""
    start = len(graph.nodes)
    reach = set(wrt)  # only nodes on a path from some wrt value to the loss get a gradient
    for node in nodes:
        if node.op_type not in NO_GRADIENT and any(i in reach for i in _reads(node)):
            reach.update(node.output)
    needed = {loss}
    live: list[onnx.NodeProto] = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output) and any(i in reach for i in _reads(node)):
            live.append(node)
            needed.update(i for i in node.input if i in reach)
    # control flow anywhere on the path is refused first: a rule met before it (walking back from
    # the loss) would fail on the unknown shapes of the values the loop or branch makes
    flow = next((n for n in reversed(live) if n.op_type in CONTROL_FLOW and n.domain in ("", "ai.onnx")),
                None)
    if flow is not None:
        raise _no_rule(flow)
    grads: dict[str, list[Value]] = {loss: [seed]}

    def total(name: str) -> Value | None:
        """The summed gradient of `name` (summed once: later reads reuse it), typed as the value."""
        parts = grads.get(name)
        if not parts:
            return None
        if len(parts) > 1:
            parts[:] = [add_up(parts)]
        t = types.get(name)
        return graph.value(parts[0].name, t.dtype, t.shape) if t else parts[0]

    with graph.at("grad"):
        for proto in live:  # already in reverse topological order
            gouts = [total(o) for o in proto.output]
            if all(g is None for g in gouts):
                continue
            graph.where = proto.doc_string
            custom = graph.custom_gradients.get(proto.output[0])
            if custom is not None:
                assert gouts[0] is not None, "a value with a custom gradient has one output"
                pairs = zip([v.name for v in custom.inputs], custom.rule(gouts[0]))
            else:
                fn = RULES.get(proto.op_type) if proto.domain in ("", "ai.onnx") else None
                if fn is None:
                    raise _no_rule(proto)
                pairs = zip(list(proto.input), fn(Node(proto, graph, types, consts), gouts))
            for name, gi in pairs:
                if gi is not None and name in needed:
                    grads.setdefault(name, []).append(gi)
        out = {name: g for name in wrt if (g := total(name)) is not None}
    graph.drop_nodes(used_nodes(graph.nodes[start:], [v.name for v in out.values()]), start)
    return out


CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})


def _reads(node: onnx.NodeProto) -> list[str]:
    """The values a node reads: its inputs, and for control flow the outer values its subgraphs
    use (so that the walk meets an If whose branches read a weight, and refuses it)."""
    if node.op_type not in CONTROL_FLOW:
        return list(node.input)
    return list(node.input) + sorted(_outer(node))


def _outer(node: onnx.NodeProto) -> set[str]:
    """Names that node's subgraphs read but do not define."""
    names: set[str] = set()
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            defined = {v.name for v in list(sub.input) + list(sub.initializer)}
            for inner in sub.node:
                names.update(i for i in list(inner.input) + sorted(_outer(inner)) if i and i not in defined)
                defined.update(inner.output)
    return names


def _no_rule(node: onnx.NodeProto) -> CompileError:
    path, span = _span_of(node)
    op_name = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
    if node.op_type in CONTROL_FLOW and node.domain in ("", "ai.onnx"):
        where = f"node {node.name or node.output[0]}" + (f", from {path}" if path != node.name else "")
        return CompileError(f"ONNX op {op_name} ({where}) is control flow, which cannot be differentiated: "
                            "dlspec has no gradient for If, Loop or Scan; export the model with its loops "
                            "unrolled and its branches decided", span)
    why = REFUSED.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    return CompileError(f"no gradient rule for ONNX op {op_name} (node {node.name}, from {path}); it "
                        f"cannot be trained through{': ' + why if why else ''}", span)


def _span_of(node: onnx.NodeProto) -> tuple[str, Span | None]:
    """Nodes carry 'file:line:col path' in doc_string: point errors at the layer that made them."""
    doc = node.doc_string or ""
    loc, _, path = doc.partition(" ")
    parts = loc.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        line, col = int(parts[1]), int(parts[2])
        return path, Span(parts[0], line, col, line, col + 1)
    return doc or node.name, None


def used_nodes(nodes: list[onnx.NodeProto], outputs: Iterable[str]) -> list[onnx.NodeProto]:
    """The nodes that some of `outputs` depend on, in their order."""
    wanted, kept = set(outputs), []
    for node in reversed(nodes):
        if any(o in wanted for o in node.output):
            kept.append(node)
            wanted.update(node.input)
    return kept[::-1]
