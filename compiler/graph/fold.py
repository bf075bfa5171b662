"""Constant folding for graphs from elsewhere: the small computations on constants that exporters leave
in place (PyTorch with do_constant_folding=False writes `Mod(-1, 3)` for an axis and slices
shapes with it), computed once so that shape inference knows the ranks that gradient rules need.

Only nodes whose every input is a small constant are folded, and never one that reads a float
initializer (a parameter), draws random numbers or holds a subgraph.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from dlspec.compiler.graph.infer import FLOAT_CODES

MAX_FOLDED = 1 << 16  # values in one folded input or output: shapes, axes and indices, not weights
RANDOM = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                    "Multinomial", "Bernoulli", "Dropout"})


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with each node that computes a small constant from small constants replaced by a
    Constant node holding its value (the model itself when there is none)."""
    parameters = {t.name for t in model.graph.initializer if t.data_type in FLOAT_CODES}
    known = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
             if t.name not in parameters and math.prod(t.dims) <= MAX_FOLDED}
    nodes: list[onnx.NodeProto] = []
    folded = 0
    for node in model.graph.node:
        value = _fold(node, known, model.opset_import)
        if value is None:
            nodes.append(node)
            continue
        if node.op_type != "Constant":
            folded += 1
            node = helper.make_node("Constant", [], [node.output[0]], name=node.name,
                                    value=numpy_helper.from_array(value), doc_string=node.doc_string)
        known[node.output[0]] = value
        nodes.append(node)
    if not folded:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _fold(node: onnx.NodeProto, known: dict[str, np.ndarray],
          opsets: list[onnx.OperatorSetIdProto]) -> np.ndarray | None:
    """The value of a one-output node computed from `known` constants, or None."""
    if node.op_type == "Constant":
        attr = node.attribute[0] if len(node.attribute) == 1 else None
        if attr is not None and attr.name == "value" and math.prod(attr.t.dims) <= MAX_FOLDED:
            return numpy_helper.to_array(attr.t)
        return None
    inputs = [i for i in node.input if i]
    if (len(node.output) != 1 or not inputs or node.domain not in ("", "ai.onnx") or node.op_type in RANDOM
            or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
            or not all(i in known for i in inputs)):
        return None
    graph = helper.make_graph([node], "fold", [], [helper.make_empty_tensor_value_info(node.output[0])],
                              initializer=[numpy_helper.from_array(known[i], i) for i in inputs])
    try:
        outputs = ReferenceEvaluator(helper.make_model(graph, opset_imports=opsets)).run(None, {})
        value = np.asarray(list(outputs)[0])
    except Exception:  # an op the reference evaluator lacks, or values it refuses: leave it to run
        return None
    return value if value.size <= MAX_FOLDED else None
