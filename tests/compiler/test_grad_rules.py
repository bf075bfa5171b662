"""One row per gradient rule: the rule's vector-Jacobian product against central differences.

Each row builds a one-node model in float64, takes loss = sum(y * R) for a random R, and
compares <grad, v> with (L(x + eps v) - L(x - eps v)) / 2 eps along a random direction v,
evaluated by onnx's reference evaluator (an implementation of ONNX that dlspec did not write).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper
from onnx.reference import ReferenceEvaluator
from scipy.special import erf

from compiler.autodiff import RULES
from compiler.gradients import gradient_model
from compiler.opset import OPSET


@dataclass
class Row:
    op: str
    shapes: list[tuple[int, ...]]  # the differentiated inputs
    attrs: dict[str, Any] = field(default_factory=dict)
    consts: list[Any] = field(default_factory=list)  # constant inputs after the differentiated ones
    low: float = -1.0
    high: float = 1.0
    tol: float = 1e-6
    id: str = ""
    exact: Any = None  # float64 forward in numpy where the reference evaluator computes in float32


def _c(v: Any, dtype: Any = np.int64) -> np.ndarray:
    return np.asarray(v, dtype=dtype)


ROWS = [
    Row("Identity", [(3, 4)]),
    Row("Dropout", [(3, 4)]),
    Row("Cast", [(3, 4)], {"to": TP.DOUBLE}),
    Row("Neg", [(3, 4)]),
    Row("Add", [(2, 3, 4), (3, 1)], id="broadcast"),
    Row("Sub", [(2, 3), (2, 3)]),
    Row("Mul", [(2, 3, 4), (4,)], id="broadcast"),
    Row("Div", [(3, 5), (5,)], low=0.5, high=2.0),
    Row("Sum", [(3, 4), (4,), (3, 4)]),
    Row("Mean", [(3, 4), (3, 4)]),
    Row("Relu", [(4, 5)]),
    Row("LeakyRelu", [(4, 5)], {"alpha": 0.1}),
    Row("Sigmoid", [(4, 5)], low=-3, high=3),
    Row("Tanh", [(4, 5)], low=-2, high=2),
    Row("Exp", [(4, 5)]),
    Row("Log", [(4, 5)], low=0.5, high=3.0),
    Row("Sqrt", [(4, 5)], low=0.5, high=3.0),
    Row("Abs", [(4, 5)]),
    Row("Softplus", [(4, 5)], low=-3, high=3),
    Row("Erf", [(4, 5)], exact=lambda x: erf(x)),
    Row("Gelu", [(4, 5)], low=-3, high=3, exact=lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2)))),
    Row("Pow", [(3, 5), (5,)], low=0.5, high=2.0),
    Row("Clip", [(4, 5)], consts=[_c(-0.5, np.float64), _c(0.5, np.float64)]),
    Row("Max", [(3, 5), (3, 5)]),
    Row("Min", [(3, 5), (5,)]),
    Row("Reshape", [(2, 3, 4)], consts=[_c([6, 4])]),
    Row("Flatten", [(2, 3, 4)], {"axis": 1}),
    Row("Squeeze", [(2, 1, 4)], consts=[_c([1])]),
    Row("Unsqueeze", [(2, 4)], consts=[_c([1])]),
    Row("Expand", [(3, 1)], consts=[_c([2, 3, 4])]),
    Row("Transpose", [(2, 3, 4)], {"perm": [2, 0, 1]}),
    Row("Concat", [(2, 3), (2, 5)], {"axis": 1}),
    Row("ReduceSum", [(2, 3, 4)], {"keepdims": 1}, consts=[_c([1])]),
    Row("ReduceMean", [(2, 3, 4)], {"keepdims": 0}, consts=[_c([2])]),
    Row("MatMul", [(2, 3, 4), (4, 5)]),
    Row("Gemm", [(3, 4), (5, 4), (5,)], {"transB": 1, "alpha": 0.5, "beta": 2.0}),
    Row("Gemm", [(4, 3), (4, 5), (1, 5)], {"transA": 1}, id="transA"),
    Row("Conv", [(2, 3, 7, 7), (4, 3, 3, 3), (4,)], {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    Row("Conv", [(2, 4, 6, 6), (4, 1, 3, 3)], {"group": 4, "pads": [1, 1, 1, 1]}, id="depthwise"),
    Row("Conv", [(1, 2, 9, 9), (3, 2, 3, 3)], {"dilations": [2, 2], "pads": [0, 1, 2, 1]},
        id="dilated-asymmetric"),
    Row("GlobalAveragePool", [(2, 3, 4, 4)]),
    Row("MaxPool", [(2, 3, 6, 6)], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    Row("AveragePool", [(2, 3, 6, 6)], {"kernel_shape": [3, 3], "strides": [2, 2],
                                        "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    Row("Resize", [(1, 2, 3, 4)], {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                                   "nearest_mode": "floor"},
        consts=[_c([], np.float32), _c([1, 1, 2, 3], np.float32)]),
    Row("Softmax", [(3, 5)], {"axis": 1}),
    Row("LogSoftmax", [(3, 5)], {"axis": -1}),
    Row("BatchNormalization", [(2, 3, 4, 4), (3,), (3,)], {"epsilon": 1e-3},
        consts=[_c([0.1, -0.2, 0.3], np.float64), _c([0.5, 1.5, 2.0], np.float64)]),
    Row("Where", [(3, 4), (3, 4)], id="where"),
]


def _model(row: Row, x_names: list[str], const_names: list[str], with_loss: bool,
           r: np.ndarray | None) -> onnx.ModelProto:
    inputs = x_names + const_names
    if row.op == "Where":
        inputs = ["cond"] + x_names
    nodes = [helper.make_node(row.op, inputs, ["y"], **row.attrs)]
    inits = [onnx.numpy_helper.from_array(c, n) for c, n in zip(row.consts, const_names)]
    if row.op == "Where":
        cond = np.random.default_rng(5).random(row.shapes[0]) > 0.5
        inits.append(onnx.numpy_helper.from_array(cond, "cond"))
    outputs = [helper.make_tensor_value_info("y", TP.DOUBLE, None)]
    if with_loss:
        assert r is not None
        inits.append(onnx.numpy_helper.from_array(r, "R"))
        nodes += [helper.make_node("Mul", ["y", "R"], ["yr"]),
                  helper.make_node("ReduceSum", ["yr"], ["loss"], keepdims=0)]
        outputs = [helper.make_tensor_value_info("loss", TP.DOUBLE, [])]
    graph = helper.make_graph(nodes, row.op, [helper.make_tensor_value_info(n, TP.DOUBLE, s)
                                              for n, s in zip(x_names, row.shapes)], outputs,
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.op}-{r.id}" if r.id else r.op for r in ROWS])
def test_rule_matches_central_differences(row: Row) -> None:
    rng = np.random.default_rng(0)
    xs = [rng.uniform(row.low, row.high, s) for s in row.shapes]
    names = [f"x{i}" for i in range(len(xs))]
    consts = [f"c{i}" for i in range(len(row.consts))]
    y = ReferenceEvaluator(_model(row, names, consts, False, None)).run(None, dict(zip(names, xs)))[0]
    r = rng.standard_normal(np.shape(y))
    model = _model(row, names, consts, True, r)
    grads = ReferenceEvaluator(gradient_model(model, "loss", names)).run(None, dict(zip(names, xs)))
    forward = ReferenceEvaluator(model)
    eps = 1e-6
    for i, name in enumerate(names):
        v = rng.standard_normal(xs[i].shape)

        def loss(step: float, i: int = i, v: np.ndarray = v, name: str = name) -> float:
            feeds = dict(zip(names, xs))
            feeds[name] = xs[i] + step * v
            if row.exact is not None:
                return float(np.sum(row.exact(feeds[name]) * r))  # noqa: B023 (r is fixed per row)
            return float(forward.run(None, feeds)[0])

        numeric = (loss(eps) - loss(-eps)) / (2 * eps)
        analytic = float(np.sum(grads[1 + i] * v))
        assert abs(numeric - analytic) <= row.tol * max(1.0, abs(numeric)), (name, numeric, analytic)


def test_every_rule_has_a_row() -> None:
    assert set(RULES) <= {r.op for r in ROWS}, sorted(set(RULES) - {r.op for r in ROWS})


def test_missing_rule_names_the_op() -> None:
    node = helper.make_node("Det", ["x"], ["loss"])
    graph = helper.make_graph([node], "m", [helper.make_tensor_value_info("x", TP.FLOAT, [3, 3])],
                              [helper.make_tensor_value_info("loss", TP.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    from spec.errors import CompileError
    with pytest.raises(CompileError, match="no gradient rule for ONNX op Det"):
        gradient_model(model, "loss", ["x"])
