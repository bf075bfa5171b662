"""`dlspec grad` on real models: by default the gradients of every float initializer the loss
depends on, never of batch norm's running statistics; an initializer the loss does not reach is
recorded, not an error, unless it was asked for by name."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from dlspec import CompileError
from dlspec.compiler import gradient_model
from dlspec.compiler.graph import IR_VERSION, OPSET


def _model() -> object:
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((3, 2, 3, 3)), "scale": np.ones(3), "bias": np.zeros(3),
             "mean": np.zeros(3), "var": np.ones(3), "unused": np.ones(4)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["b"]),
             helper.make_node("ReduceSum", ["b"], ["loss"], keepdims=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, ["N", 2, 4, 4])],
                              [helper.make_tensor_value_info("loss", TP.FLOAT, [])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def test_defaults_differentiate_the_parameters_and_record_the_rest() -> None:
    grads = gradient_model(_model(), "loss")  # type: ignore[arg-type]
    outputs = [o.name for o in grads.graph.output]
    assert outputs == ["loss", "grad.w", "grad.scale", "grad.bias"]  # not the running statistics
    props = {p.key: p.value for p in grads.metadata_props}
    assert props["not_differentiated"] == "unused"


def test_a_parameter_asked_for_by_name_that_the_loss_does_not_reach_is_an_error() -> None:
    with pytest.raises(CompileError, match="the loss does not depend on: unused"):
        gradient_model(_model(), "loss", ["w", "unused"])  # type: ignore[arg-type]


def test_initializers_listed_as_inputs_too_stay_listed_once() -> None:
    """Before IR 4 every initializer is also a graph input: the gradients model keeps one input
    each, and onnxruntime loads it."""
    import onnxruntime as ort

    model = _model()
    model.ir_version = 3  # type: ignore[attr-defined]
    graph = model.graph  # type: ignore[attr-defined]
    graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                       for t in graph.initializer)
    grads = gradient_model(model, "loss")  # type: ignore[arg-type]
    names = [i.name for i in grads.graph.input]
    assert len(names) == len(set(names))
    ort.InferenceSession(grads.SerializeToString(), providers=["CPUExecutionProvider"])


def test_an_integer_loss_or_value_to_differentiate_by_is_refused() -> None:
    """An int64 loss wrote a graph of 0 gradients, exit 0; an int64 input was 'not depended on'."""
    model = _model()
    cast = helper.make_node("Cast", ["loss"], ["int_loss"], to=TP.INT64)
    model.graph.node.append(cast)  # type: ignore[attr-defined]
    with pytest.raises(CompileError, match="the loss 'int_loss' is int64: gradients are of float values"):
        gradient_model(model, "int_loss")  # type: ignore[arg-type]
    model = _model()
    model.graph.input.append(helper.make_tensor_value_info("ids", TP.INT64, ["N"]))  # type: ignore[attr-defined]
    with pytest.raises(CompileError, match="a value to differentiate by 'ids' is int64"):
        gradient_model(model, "loss", ["w", "ids"])  # type: ignore[arg-type]


def test_a_value_named_like_a_gradient_output_is_refused_by_name() -> None:
    """onnx's checker failed on two outputs named grad.w, a message that read like dlspec's bug."""
    model = _model()
    model.graph.node.append(helper.make_node("Identity", ["w"], ["grad.w"]))  # type: ignore[attr-defined]
    with pytest.raises(CompileError, match="already has a value named 'grad.w'.*rename that value"):
        gradient_model(model, "loss", ["w"])  # type: ignore[arg-type]
