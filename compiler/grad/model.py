"""The gradients graph of an ONNX model: inputs + parameters -> loss and `grad.<param>`."""

from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import TensorProto, helper

from dlspec.compiler.grad.walk import backward
from dlspec.compiler.graph import DTYPES, IR_VERSION, OPSET, Graph, Value
from dlspec.compiler.graph import ops as op
from dlspec.compiler.graph.fold import fold_constants
from dlspec.compiler.graph.infer import Type, constants, value_types
from dlspec.compiler.graph.opsets import to_opset
from dlspec.compiler.target import Target
from dlspec.spec.errors import CompileError, did_you_mean

FLOATS = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)


def gradient_model(model: onnx.ModelProto, loss: str, wrt: Sequence[str] | None = None,
                   target: Target | None = None) -> onnx.ModelProto:
    """Append the backward pass: outputs `loss` and `grad.<name>` for every name in `wrt`. Those
    initializers become graph inputs, so the caller feeds the current parameters (no constant
    folding of weights). By default `wrt` is every float initializer the loss depends on, but
    batch norm's running statistics; the model's metadata `not_differentiated` lists the others.
    A model of an older opset is converted to OPSET first; the result has opset OPSET and IR
    version IR_VERSION. `target` picks the lowerings, as for compile_training."""
    model = fold_constants(to_opset(model))  # exporters leave shape arithmetic on constants unfolded
    _check_ops(model)
    src = model.graph
    chosen = wrt is None
    wrt = list(wrt) if wrt is not None else _parameters(model)
    types = value_types(model)
    _check_request(model, loss, wrt, types)
    taken = {v for node in src.node for v in list(node.input) + list(node.output)}
    taken |= {v.name for v in list(src.input) + list(src.initializer)} | {node.name for node in src.node}
    g = Graph(taken, target)  # the new nodes must not reuse a name of the model they extend
    with g.at("grad.seed"):
        seed = g.value(loss, types[loss].dtype, types[loss].shape).scalar(1.0)
        if types[loss].shape == (1,):
            seed = op.Reshape(seed, [1])
    grads = backward(g, list(src.node), loss, wrt, seed, types, constants(model))
    missing = [n for n in wrt if n not in grads]
    if missing and not chosen:
        raise CompileError(f"the loss does not depend on: {', '.join(missing)}")
    out = _with_gradients(model, g, loss, {n: grads[n] for n in wrt if n in grads}, types)
    if missing:
        helper.set_model_props(out, {**{p.key: p.value for p in out.metadata_props},
                                     "not_differentiated": ", ".join(missing)})
    return out


def _check_ops(model: onnx.ModelProto) -> None:
    """Every node of the standard domain is an ONNX op at OPSET: a model that imports opset OPSET
    but uses a newer op (Swish, RMSNormalization) would otherwise fail later, and less clearly."""
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or onnx.defs.has(node.op_type, OPSET, ""):
            continue
        added = [s.since_version for s in onnx.defs.get_all_schemas_with_history()
                 if s.name == node.op_type and s.domain == ""]
        what = (f"which ONNX added at opset {min(added)}, newer than opset {OPSET} that dlspec writes and "
                f"differentiates" if added else "which is not an ONNX op")
        raise CompileError(f"node {node.name or node.output[0]} uses {node.op_type}, {what}")


def _parameters(model: onnx.ModelProto) -> list[str]:
    """The float initializers but batch norm's running statistics (its inputs 3 and 4)."""
    stats = {n.input[i] for n in model.graph.node if n.op_type == "BatchNormalization"
             for i in (3, 4) if i < len(n.input)}
    return [t.name for t in model.graph.initializer if t.data_type in FLOATS and t.name not in stats]


def _check_request(model: onnx.ModelProto, loss: str, wrt: Sequence[str], types: dict[str, Type]) -> None:
    """`loss` is a scalar value of the model, and each of `wrt` an input or initializer."""
    src = model.graph
    outputs = {o.name for o in src.output} | {o for node in src.node for o in node.output}
    if loss not in outputs:
        raise CompileError(f"no value named '{loss}' to use as the loss{did_you_mean(loss, outputs)}")
    known = {t.name for t in src.initializer} | {i.name for i in src.input}
    for name in wrt:
        if name not in known:
            raise CompileError(f"cannot differentiate with respect to '{name}': not an input or "
                               f"initializer of the model{did_you_mean(name, known)}")
    shape = types[loss].shape if loss in types else None
    if shape is None:
        raise CompileError(f"the loss '{loss}' must be a scalar, but ONNX shape inference cannot tell "
                           "its shape")
    if shape not in ((), (1,)):
        raise CompileError(f"the loss '{loss}' must be a scalar, it has shape {list(shape)}")


def _with_gradients(model: onnx.ModelProto, g: Graph, loss: str, grads: dict[str, Value],
                    types: dict[str, Type]) -> onnx.ModelProto:
    """The model with the gradient nodes appended, the differentiated initializers as inputs and
    the outputs `loss` and `grad.<name>`."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    moved = [t for t in graph.initializer if t.name in grads]
    kept = [t for t in graph.initializer if t.name not in grads]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    listed = {i.name for i in graph.input}  # before IR 4, initializers are listed as inputs too
    for t in moved:
        if t.name not in listed:
            graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    graph.node.extend(g.nodes)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(loss, _elem_type(types[loss].dtype),
                                                      list(types[loss].shape or ())))
    for name, grad in grads.items():
        gname = f"grad.{name}"
        graph.node.append(helper.make_node("Identity", [grad.name], [gname], name=f"{gname}/Identity"))
        t = types.get(name)
        graph.output.append(helper.make_tensor_value_info(gname, _elem_type(t.dtype if t else None),
                                                          list(t.shape or ()) or None if t else None))
    out.ir_version = IR_VERSION
    return out


def _elem_type(dtype: str | None) -> int:
    return DTYPES[dtype] if dtype is not None else TensorProto.FLOAT
