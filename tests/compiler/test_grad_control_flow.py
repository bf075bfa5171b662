"""Control flow (If, Loop, Scan) has no gradient: the reverse walk refuses it by name, also where
only its subgraphs read the value being differentiated."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper
from onnx.numpy_helper import from_array

from dlspec.compiler import gradient_model
from dlspec.compiler.graph import OPSET
from dlspec.spec.errors import CompileError


def _info(name: str, dtype: int = TP.FLOAT, shape: list[int] | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, [3] if shape is None else shape)


def _model(node: onnx.NodeProto, inits: list[onnx.TensorProto], w_shape: list[int]) -> onnx.ModelProto:
    """node's output y summed into the loss, w the value differentiated."""
    loss = helper.make_node("ReduceSum", ["y"], ["loss"], keepdims=0)
    graph = helper.make_graph([node, loss], "m", [_info("w", shape=w_shape)], [_info("loss", shape=[])],
                              initializer=inits, value_info=[_info("y")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _if() -> onnx.ModelProto:
    def branch(name: str, op: str) -> onnx.GraphProto:  # reads the outer w, not an input of If
        return helper.make_graph([helper.make_node(op, ["w"], ["out"])], name, [], [_info("out")])

    node = helper.make_node("If", ["cond"], ["y"], name="pick", then_branch=branch("then", "Neg"),
                            else_branch=branch("else", "Abs"))
    return _model(node, [from_array(np.array(True), "cond")], [3])


def _loop() -> onnx.ModelProto:
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c_out"]), helper.make_node("Mul", ["s", "s"], ["s_out"])],
        "body", [_info("i", TP.INT64, []), _info("c", TP.BOOL, []), _info("s")],
        [_info("c_out", TP.BOOL, []), _info("s_out")])
    node = helper.make_node("Loop", ["trips", "", "w"], ["y"], name="repeat", body=body)
    return _model(node, [from_array(np.array(2, np.int64), "trips")], [3])


def _scan() -> onnx.ModelProto:
    body = helper.make_graph(
        [helper.make_node("Add", ["acc", "row"], ["acc_out"]),
         helper.make_node("Identity", ["acc_out"], ["rows"])],
        "body", [_info("acc"), _info("row")], [_info("acc_out"), _info("rows")])
    node = helper.make_node("Scan", ["zero", "w"], ["y", "all"], name="running", body=body, num_scan_inputs=1)
    return _model(node, [from_array(np.zeros(3, np.float32), "zero")], [2, 3])


@pytest.mark.parametrize("make, op, name", [(_if, "If", "pick"), (_loop, "Loop", "repeat"),
                                           (_scan, "Scan", "running")])
def test_control_flow_is_refused_by_name(make: Callable[[], onnx.ModelProto], op: str, name: str) -> None:
    expected = f"ONNX op {op} \\(node {name}\\) is control flow, which cannot be differentiated"
    with pytest.raises(CompileError, match=expected):
        gradient_model(make(), "loss", ["w"])


@pytest.mark.parametrize("make, op", [(_if, "If"), (_loop, "Loop"), (_scan, "Scan")])
def test_control_flow_is_refused_before_a_rule_needs_what_it_makes(make: Callable[[], onnx.ModelProto],
                                                                   op: str) -> None:
    """With nothing declaring y, the ReduceSum rule after a Loop failed first, on y's unknown rank."""
    model = make()
    del model.graph.value_info[:]
    with pytest.raises(CompileError, match=f"ONNX op {op} .* is control flow"):
        gradient_model(model, "loss", ["w"])
