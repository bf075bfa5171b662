"""Which nodes of a graph training would need a gradient rule for, and has none: found when a
spec is checked, not in the middle of training."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import onnx

from dlspec.compiler.grad.table import NO_GRADIENT, RULES

if TYPE_CHECKING:
    from dlspec.compiler.lower.compile import Compiled


def without_rules(nodes: Sequence[onnx.NodeProto], params: Iterable[str],
                  output: str) -> list[onnx.NodeProto]:
    """The nodes on a path from some parameter to `output` whose op has no gradient rule."""
    reach = set(params)
    for node in nodes:
        if node.op_type not in NO_GRADIENT and any(i in reach for i in node.input):
            reach.update(node.output)
    needed, missing = {output}, []
    for node in reversed(nodes):
        if any(o in needed for o in node.output) and any(i in reach for i in node.input):
            needed.update(i for i in node.input if i in reach)
            if node.domain not in ("", "ai.onnx") or node.op_type not in RULES:
                missing.append(node)
    return missing[::-1]


def describe(node: onnx.NodeProto) -> str:
    """`Op (node name, from spec path)` for a message."""
    op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
    where = node.doc_string.partition(" ")[2] if node.doc_string else ""
    return f"{op} (node {node.name}{', from ' + where if where else ''})"


def with_untrainable_notes(c: Compiled) -> Compiled:
    """`c`, its notes telling of the ops its trainable parameters' gradients would pass that have
    no rule (what `dlspec check` and `dlspec.compile` report)."""
    trainable = [p.name for p in c.params if not p.state and p.name not in c.frozen]
    c.notes.extend(untrainable_notes(c.nodes, trainable, c.output.name))
    dead = unreached(c.nodes, trainable, list(c.outputs) or [c.output.name])
    if dead:
        more = f" and {len(dead) - 3} more" if len(dead) > 3 else ""
        c.notes.append(f"no output depends on {', '.join(dead[:3])}{more}: compile --train refuses "
                       "parameters the loss cannot reach; freeze them or remove their layers")
    return c


def unreached(nodes: Sequence[onnx.NodeProto], params: Sequence[str], outputs: Sequence[str]) -> list[str]:
    """The parameters that no output depends on."""
    needed = set(outputs)
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            needed.update(node.input)
    return [p for p in params if p not in needed]


def untrainable_notes(nodes: Sequence[onnx.NodeProto], trainable: Sequence[str], output: str) -> list[str]:
    """Ops that training would need a gradient for and that have no rule (from an imported
    graph): said when the spec is checked, not first when it trains."""
    missing = without_rules(nodes, trainable, output)
    if not missing:
        return []
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    shown = ", ".join(describe(n) for n in missing[:5]) + more
    return [f"training cannot pass gradients through {shown}: dlspec has no gradient rule for "
            f"{'these ops' if len(missing) > 1 else 'this op'}; freeze the parameters that lead to "
            f"{'them' if len(missing) > 1 else 'it'} (`freeze backbone`) to train what follows"]
