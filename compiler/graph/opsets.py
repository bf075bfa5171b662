"""Models from elsewhere at dlspec's opset: converted by onnx's version converter from opset 9
on, with the node that fails named where it fails."""

from __future__ import annotations

import onnx
from onnx import helper, version_converter

from dlspec.compiler.graph.infer import constants, skeleton, with_weights_back
from dlspec.compiler.graph.opset import OPSET
from dlspec.spec.errors import CompileError

OLDEST_OPSET = 9  # the oldest opset whose models are converted to OPSET


def onnx_opset(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise CompileError("the model imports no ONNX opset (opset_import names no default domain)")
    return versions[0]


def to_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` at opset OPSET: converted from opsets OLDEST_OPSET..OPSET by onnx's version converter."""
    version = onnx_opset(model)
    if version > OPSET:
        raise CompileError(f"the model uses ONNX opset {version}, newer than opset {OPSET} that dlspec "
                           f"writes and differentiates; export it at opset {OPSET} or older")
    if version == OPSET:
        return model
    if version < OLDEST_OPSET:
        raise CompileError(f"the model uses ONNX opset {version}; dlspec converts opsets "
                           f"{OLDEST_OPSET} to {OPSET}: re-export it at opset {OLDEST_OPSET} or newer")
    for node in model.graph.node:
        if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type, version, ""):
            raise CompileError(f"node {node.name or node.output[0]} uses {node.op_type}, which is not an "
                               f"ONNX op at the model's opset {version}")
    light, moved = skeleton(model)  # the converter serialises the model: leave the weights out
    try:
        converted = version_converter.convert_version(light, OPSET)
    except Exception as err:  # the converter raises bare RuntimeErrors (or worse) from C++
        culprit = _unconvertible(model, version)
        where = (f" at node {culprit.name or culprit.output[0]} ({culprit.op_type})" if culprit is not None
                 else "")
        raise CompileError(f"cannot convert the model from ONNX opset {version} to {OPSET}{where}: "
                           f"{str(err).strip().splitlines()[-1][:200]}") from None
    converted.ir_version = model.ir_version if model.ir_version >= 4 else converted.ir_version
    return with_weights_back(converted, moved, model)


def _unconvertible(model: onnx.ModelProto, version: int) -> onnx.NodeProto | None:
    """The first node that fails to convert on its own (typed inputs, constants kept), if any."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    g = inferred.graph
    typed = {vi.name: vi for vi in list(g.input) + list(g.value_info) + list(g.output)}
    values = {t.name: t for t in g.initializer}
    values.update({name: onnx.numpy_helper.from_array(v, name) for name, v in constants(model).items()})
    for node in model.graph.node:
        ins = [i for i in node.input if i]
        graph = helper.make_graph(
            [node], "probe", [typed[i] for i in ins if i in typed and i not in values],
            [typed.get(o) or helper.make_empty_tensor_value_info(o) for o in node.output if o],
            initializer=[values[i] for i in ins if i in values])
        probe = helper.make_model(graph, opset_imports=list(model.opset_import))
        try:
            version_converter.convert_version(probe, OPSET)
        except Exception:
            return node
    return None
