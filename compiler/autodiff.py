"""Reverse-mode autodiff over ONNX nodes: a reverse walk that sums gradients where values fan out.

Rules live in compiler/grad_rules.py, one per op type; this module only orders the work,
prunes what needs no gradient, and reports ops without a rule.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from dlspec.compiler.graph import Graph
from dlspec.spec.errors import CompileError, Span

Dim = int | str | None


@dataclass
class Composite:
    """A value the compiler built from several nodes whose gradient it knows in closed form:
    `rule(ctx, g)` gives one gradient per name in `inputs`, and the walk skips the nodes inside.
    Only for speed (batch norm's training forward); every op inside still has its own rule."""

    inputs: tuple[str, ...]
    rule: Callable[[RuleCtx, str], Sequence[str | None]]


@dataclass
class RuleCtx:
    """What a gradient rule sees: the graph being built and the static shapes of values."""

    g: Graph
    shapes: dict[str, tuple[Dim, ...]]
    consts: dict[str, np.ndarray] = field(default_factory=dict)  # initializers and Constant outputs
    composites: dict[str, Composite] = field(default_factory=dict)  # by output value
    device: str = "cpu"  # where the graph will run, "cpu" or "cuda": some lowerings differ
    many_threads: bool = False  # the CPU step runs on many threads (compiler/threads.py)

    def shape(self, name: str) -> tuple[Dim, ...] | None:
        return self.shapes.get(name)


# Ops whose outputs are piecewise constant, integer or shape-valued: no gradient flows through
# them, so the walk treats their outputs as constants instead of asking for a rule.
NO_GRADIENT = frozenset({
    "Shape", "Size", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And", "Or",
    "Xor", "ArgMax", "ArgMin", "OneHot", "Range", "ConstantOfShape", "Sign", "Floor", "Ceil", "Round",
    "IsNaN", "IsInf", "NonZero", "RandomUniformLike", "RandomNormalLike", "Bernoulli", "TopK_indices",
    "Mod", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot",
})

GradRule = Callable[[RuleCtx, onnx.NodeProto, list[str | None]], Sequence[str | None]]
RULES: dict[str, GradRule] = {}


# The modules that fill RULES; backward loads them all, so no caller can miss a rule.
RULE_MODULES = ("dlspec.compiler.grad_rules", "dlspec.compiler.grad_rules_nn",
                "dlspec.compiler.grad_rules_shape",
                "dlspec.compiler.grad_rules_norm", "dlspec.compiler.grad_rules_einsum")


def load_rules() -> dict[str, GradRule]:
    for module in RULE_MODULES:
        importlib.import_module(module)
    return RULES


def rule(*op_types: str) -> Callable[[GradRule], GradRule]:
    def register(fn: GradRule) -> GradRule:
        for op in op_types:
            assert op not in RULES, f"gradient rule for {op} registered twice"
            RULES[op] = fn
        return fn
    return register


# Ops that onnx's shape inference leaves untyped (opset 18's GroupNormalization has no inference
# function); their output has the type and shape of their first input.
SHAPE_OF_INPUT = frozenset({"GroupNormalization"})


def static_shapes(model: onnx.ModelProto, data_prop: bool = False) -> dict[str, tuple[Dim, ...]]:
    """Shapes of every value (symbolic dims as names) from ONNX shape inference. `data_prop` also
    follows shapes computed in the graph (Reshape to Shape(x)), at several times the cost."""
    try:
        inferred = shape_inference.infer_shapes(_typed(model), strict_mode=True, data_prop=data_prop)
    except shape_inference.InferenceError as err:
        raise CompileError(f"ONNX shape inference fails on the model: {str(err).strip()[:400]}") from None
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


def _typed(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with value_info for the outputs of SHAPE_OF_INPUT ops, so inference carries on past them."""
    pending = [n for n in model.graph.node if n.op_type in SHAPE_OF_INPUT]
    if not pending:
        return model
    typed = onnx.ModelProto()
    typed.CopyFrom(model)
    for _ in pending:  # each round types at least one more, or stops
        g = shape_inference.infer_shapes(typed).graph
        known = {vi.name: vi for vi in list(g.input) + list(g.value_info) + list(g.output)
                 if vi.type.tensor_type.elem_type}
        added = [n for n in pending if n.output[0] not in known and n.input[0] in known]
        for n in added:
            vi = typed.graph.value_info.add()
            vi.CopyFrom(known[n.input[0]])
            vi.name = n.output[0]
        if not added:
            break
    return typed


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
    """Gradient names of `wrt` (those that reach `loss`), given `seed` = d loss / d loss.

    Nodes it adds to ctx.g that no returned gradient needs (the gradient of a frozen weight that a
    rule computes alongside the one wanted) are removed again before it returns."""
    rules, start = load_rules(), len(ctx.g.nodes)
    # Prune: only nodes on a path from some wrt value to the loss get a gradient.
    reach = set(wrt)
    for node in nodes:
        if node.op_type not in NO_GRADIENT and any(i in reach for i in node.input):
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
        composite = ctx.composites.get(node.output[0])
        if composite is not None:
            ctx.g.where = node.doc_string
            for name, gi in zip(composite.inputs, composite.rule(ctx, _need_grad(gouts[0]))):
                if gi is not None and name in needed:
                    grads.setdefault(name, []).append(gi)
            continue
        fn = rules.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if fn is None:
            path, span = _span_of(node)
            op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            raise CompileError(f"no gradient rule for ONNX op {op} (node {node.name}, from "
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
    ctx.g.nodes[start:] = used_nodes(ctx.g.nodes[start:], out.values())
    return out


def _need_grad(g: str | None) -> str:
    assert g is not None, "a composite value has a single output"
    return g


def used_nodes(nodes: list[onnx.NodeProto], outputs: Iterable[str]) -> list[onnx.NodeProto]:
    """The nodes that some of `outputs` depend on, in their order."""
    wanted, kept = set(outputs), []
    for node in reversed(nodes):
        if any(o in wanted for o in node.output):
            kept.append(node)
            wanted.update(node.input)
    return kept[::-1]


def _total(ctx: RuleCtx, parts: list[str] | None) -> str | None:
    """Gradients that meet at one value are summed (once, so later reads reuse it): by one Sum, or
    for a CPU step on many threads by Adds, which onnxruntime threads and its Sum does not."""
    if not parts:
        return None
    if len(parts) > 1 and ctx.many_threads:
        total = parts[0]
        for part in parts[1:]:
            total = ctx.g.op1("Add", [total, part], "grad")
        parts[:] = [total]
    elif len(parts) > 1:
        parts[:] = [ctx.g.op1("Sum", list(parts), "grad")]
    return parts[0]
