"""The gradients graph of an ONNX model: inputs + parameters -> loss and `grad.<param>`."""

from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import TensorProto, helper

from compiler import grad_rules, grad_rules_nn  # noqa: F401  (registers the rules)
from compiler.autodiff import RuleCtx, backward, constants, static_shapes
from compiler.graph import Graph
from compiler.opset import IR_VERSION, OPSET
from spec.errors import CompileError

FLOATS = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)


def gradient_model(model: onnx.ModelProto, loss: str, wrt: Sequence[str] | None = None) -> onnx.ModelProto:
    """Append the backward pass: outputs `loss` and `grad.<name>` for every name in `wrt`
    (default: every float initializer). Those initializers become graph inputs, so the caller
    feeds the current parameters (no constant folding of weights)."""
    src = model.graph
    inits = {t.name: t for t in src.initializer}
    if wrt is None:
        wrt = [n for n, t in inits.items() if t.data_type in FLOATS]
    outputs = {o.name for o in src.output} | {o for node in src.node for o in node.output}
    if loss not in outputs:
        raise CompileError(f"no value named '{loss}' to use as the loss")
    known = set(inits) | {i.name for i in src.input}
    for name in wrt:
        if name not in known:
            raise CompileError(f"cannot differentiate with respect to '{name}': not an input or "
                               "initializer of the model")
    shapes = static_shapes(model)
    if shapes.get(loss, ()) not in ((), (1,)):
        raise CompileError(f"the loss '{loss}' must be a scalar, it has shape {list(shapes[loss])}")
    g = Graph()
    ctx = RuleCtx(g, shapes, constants(model))
    seed = g.op1("CastLike", [g.const(1.0), loss], "grad.seed")
    if shapes.get(loss) == (1,):
        seed = g.op1("Reshape", [seed, g.ints([1])], "grad.seed")
    grads = backward(ctx, list(src.node), loss, list(wrt), seed)
    missing = [n for n in wrt if n not in grads]
    if missing:
        raise CompileError(f"the loss does not depend on: {', '.join(missing)}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    as_inputs = [inits[n] for n in wrt if n in inits]
    kept = [t for t in graph.initializer if t.name not in set(wrt)]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for t in as_inputs:
        graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    graph.node.extend(g.nodes)
    for name, value in g.initializers.items():
        graph.initializer.append(onnx.numpy_helper.from_array(value, name))
    del graph.output[:]
    loss_type = _elem_type(model, loss)
    graph.output.append(helper.make_tensor_value_info(loss, loss_type, list(shapes.get(loss, ()))))
    for name in wrt:
        gname = f"grad.{name}"
        graph.node.append(helper.make_node("Identity", [grads[name]], [gname], name=f"{gname}/Identity"))
        graph.output.append(helper.make_tensor_value_info(gname, _elem_type(model, name),
                                                          list(shapes.get(name, ())) or None))
    if not any(o.domain in ("", "ai.onnx") and o.version >= OPSET for o in out.opset_import):
        raise CompileError(f"the model's opset is older than {OPSET}; convert it first")
    out.ir_version = max(out.ir_version, IR_VERSION)
    return out


def _elem_type(model: onnx.ModelProto, name: str) -> int:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.name == name:
            return int(vi.type.tensor_type.elem_type)
    for t in g.initializer:
        if t.name == name:
            return int(t.data_type)
    return TensorProto.FLOAT
