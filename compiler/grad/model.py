"""The gradients graph of an ONNX model: inputs + parameters -> loss and `grad.<param>`."""

from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import TensorProto, helper

from dlspec.compiler.grad.walk import backward
from dlspec.compiler.graph import DTYPES, IR_VERSION, OPSET, Graph, Value
from dlspec.compiler.graph import ops as op
from dlspec.compiler.graph.builder import output_node
from dlspec.compiler.graph.fold import fold_constants
from dlspec.compiler.graph.infer import (
    Constants,
    Type,
    original_inputs,
    skeleton,
    value_types,
    without_initializers,
)
from dlspec.compiler.graph.newer_ops import REWRITES, rewrite_newer_ops
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
    A model of an older opset is converted to OPSET first, and the newer ops that have an exact
    opset-OPSET form (newer_ops.REWRITES) are rewritten to it; the result has opset OPSET and IR
    version IR_VERSION. `target` picks the lowerings, as for compile_training."""
    # The weights stay in `model` until the end: every copy of them (each conversion, shape
    # inference, CopyFrom, to_array) costs a second per few hundred megabytes.
    light, weights = skeleton(model)
    converted = to_opset(light)
    work = fold_constants(converted)  # exporters leave shape arithmetic on constants unfolded
    # the initializers as the model lists them; after a conversion the weights come last
    tensors = (list(model.graph.initializer) if converted is light
               else [*converted.graph.initializer, *weights.values()])
    _check_ops(work)
    work = rewrite_newer_ops(work)  # Swish, RMSNormalization, ... as the opset-OPSET ops they compute
    src = work.graph
    chosen = wrt is None
    wrt = list(wrt) if wrt is not None else _parameters(src.node, tensors)
    types = value_types(work)
    _check_request(work, loss, wrt, types)
    taken = {v for node in src.node for v in list(node.input) + list(node.output)}
    taken |= {v.name for v in list(src.input) + list(src.initializer)} | {node.name for node in src.node}
    g = Graph(taken, target)  # the new nodes must not reuse a name of the model they extend
    with g.at("grad.seed"):
        seed = g.value(loss, types[loss].dtype, types[loss].shape).scalar(1.0)
        if types[loss].shape == (1,):
            seed = op.Reshape(seed, [1])
    grads = backward(g, list(src.node), loss, wrt, seed, types, Constants(tensors, src.node))
    missing = [n for n in wrt if n not in grads]
    if missing and not chosen:
        raise CompileError(f"the loss does not depend on: {', '.join(missing)}")
    # the fields of the model as given (or as converted), the nodes and inputs of `work`
    base = model if converted is light else converted
    out = _with_gradients(base, list(src.node), original_inputs(src.input, weights, model), tensors, g, loss,
                          {n: grads[n] for n in wrt if n in grads}, types)
    if missing:
        helper.set_model_props(out, {**{p.key: p.value for p in out.metadata_props},
                                     "not_differentiated": ", ".join(missing)})
    return out


def _check_ops(model: onnx.ModelProto) -> None:
    """Every node of the standard domain is an ONNX op at OPSET or one that rewrite_newer_ops rewrites
    into such ops: a model that imports opset OPSET but uses another newer op (Attention) would
    otherwise fail later, and less clearly."""
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or onnx.defs.has(node.op_type, OPSET, "") or \
                node.op_type in REWRITES:
            continue
        added = [s.since_version for s in onnx.defs.get_all_schemas_with_history()
                 if s.name == node.op_type and s.domain == ""]
        what = (f"which ONNX added at opset {min(added)}, newer than opset {OPSET} that dlspec writes and "
                f"differentiates" if added else "which is not an ONNX op")
        raise CompileError(f"node {node.name or node.output[0]} uses {node.op_type}, {what}")


def _parameters(nodes: Sequence[onnx.NodeProto], tensors: Sequence[onnx.TensorProto]) -> list[str]:
    """The float initializers but batch norm's running statistics (its inputs 3 and 4)."""
    stats = {n.input[i] for n in nodes if n.op_type == "BatchNormalization"
             for i in (3, 4) if i < len(n.input)}
    return [t.name for t in tensors if t.data_type in FLOATS and t.name not in stats]


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
    floats = ("float32", "float64", "float16", "bfloat16")
    for name, what in ((loss, "the loss"), *((w, "a value to differentiate by") for w in wrt)):
        dtype = types[name].dtype if name in types else None
        if dtype is not None and dtype not in floats:  # an integer has no gradient
            raise CompileError(f"{what} '{name}' is {dtype}: gradients are of float values")
    taken = [f"grad.{w}" for w in wrt if f"grad.{w}" in outputs | known]
    if taken:  # the gradients graph names its outputs so
        raise CompileError(f"the model already has a value named '{taken[0]}', the name of an output the "
                           "gradients graph adds: rename that value")


def _with_gradients(base: onnx.ModelProto, nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
                    tensors: list[onnx.TensorProto], g: Graph, loss: str, grads: dict[str, Value],
                    types: dict[str, Type]) -> onnx.ModelProto:
    """`base` with these nodes, inputs and initializers, the gradient nodes appended, the
    differentiated initializers as inputs and the outputs `loss` and `grad.<name>`. Only the
    initializers that stay are copied."""
    out = without_initializers(base)
    graph = out.graph
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.input[:]
    graph.input.extend(inputs)
    graph.initializer.extend(t for t in tensors if t.name not in grads)
    listed = {i.name for i in graph.input}  # before IR 4, initializers are listed as inputs too
    for w in tensors:
        if w.name in grads and w.name not in listed:
            graph.input.append(helper.make_tensor_value_info(w.name, w.data_type, list(w.dims)))
    graph.node.extend(g.nodes)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(loss, _elem_type(types[loss].dtype),
                                                      list(types[loss].shape or ())))
    for name, grad in grads.items():
        gname = f"grad.{name}"
        graph.node.append(output_node(grad.name, gname))
        t = types.get(name)
        graph.output.append(helper.make_tensor_value_info(gname, _elem_type(t.dtype if t else None),
                                                          list(t.shape or ()) or None if t else None))
    out.ir_version = IR_VERSION
    return out


def _elem_type(dtype: str | None) -> int:
    return DTYPES[dtype] if dtype is not None else TensorProto.FLOAT
