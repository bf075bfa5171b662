"""The features block alone, as a graph from the raw inputs to what each `standardize` sees, so
the runtime can measure the training split's statistics with the very ops that will use them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import onnx

from dlspec.compiler.graph import Graph
from dlspec.compiler.graph.proto import model_proto, value_info
from dlspec.compiler.lower.compile import Stats, declared_tensor
from dlspec.compiler.lower.features import lower_features
from dlspec.spec.loader import Program


@dataclass
class Probe:
    """A graph from the raw inputs to the argument of each standardize in `ready`, as output
    `standardize.<feature>`: those whose argument does not depend on a standardize still unfitted."""

    onnx: onnx.ModelProto
    ready: list[str]


def probe_features(prog: Program, name: str | None = None, stats: Stats | None = None) -> Probe:
    """The features block alone, exposing what standardize sees, to fit its statistics in rounds:
    a standardize whose argument uses another standardized feature waits for that one's statistics."""
    model = prog.model(name)
    g = Graph()
    inputs = [declared_tensor(g, t) for t in model.inputs]
    if model.features is None:
        return Probe(model_proto(model.name, [], [], [], {}, ""), [])
    low = lower_features(g, model.features, {t.name: t for t in inputs}, stats, model.inputs)
    producer = {o: n for n in g.nodes for o in n.output}
    pending = set(low.unfitted.values())
    ready = []
    outputs = []
    for feature, arg in low.arguments.items():
        if feature not in low.unfitted or _depends_on(arg.name, pending, producer):
            continue
        ready.append(feature)
        out = f"standardize.{feature}"
        g.output(arg, out)
        outputs.append(value_info(g.value(out, "float32", arg.shape)))
    proto = model_proto(model.name, g.nodes, [value_info(t) for t in inputs], outputs, {}, "")
    return Probe(proto, ready)


def _depends_on(value: str, names: set[str], producer: Mapping[str, onnx.NodeProto]) -> bool:
    """Whether `value` is one of `names` or computed from one of them."""
    seen: set[str] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if v in names:
            return True
        if v not in seen and v in producer:
            seen.add(v)
            stack.extend(producer[v].input)
    return False
