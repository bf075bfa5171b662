"""to_float64, the float64 copy of a graph that gradient checks run: Resize's scales stay float32
(its schema's type) while a gradient that reads the same scales gets them as float64."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dlspec.compiler import gradient_model
from dlspec.compiler.graph.precision import to_float64
from dlspec.reference import evaluator


def _resized(mode: str) -> onnx.ModelProto:
    """loss = sum(resize(x * w, scales 2)^2), w an initializer; the scales one shared initializer."""
    w = numpy_helper.from_array(np.ones((1, 2, 3, 3), np.float32), "w")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [helper.make_node("Mul", ["x", "w"], ["xw"]),
             helper.make_node("Resize", ["xw", "", "scales"], ["y"], mode=mode),
             helper.make_node("ReduceSumSquare", ["y"], ["loss"], keepdims=0)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])
    loss = helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])
    graph = helper.make_graph(nodes, "g", [x], [loss], [w, scales])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_a_linear_resize_gradient_runs_in_float64_and_matches_central_differences() -> None:
    model = to_float64(gradient_model(_resized("linear"), "loss", ["w"]))
    kinds = {t.name: t.data_type for t in model.graph.initializer}
    assert kinds["scales"] == TensorProto.FLOAT  # as Resize's schema says
    run = evaluator(model)
    rng = np.random.default_rng(0)
    x, w, v = (rng.standard_normal((1, 2, 3, 3)) for _ in range(3))
    loss, grad = run.run(["loss", "grad.w"], {"x": x, "w": w})
    assert grad.dtype == np.float64
    eps = 1e-6
    plus = run.run(["loss"], {"x": x, "w": w + eps * v})[0]
    minus = run.run(["loss"], {"x": x, "w": w - eps * v})[0]
    np.testing.assert_allclose(np.sum(grad * v), (plus - minus) / (2 * eps), rtol=1e-7)
