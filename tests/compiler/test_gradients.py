"""gradient_model on whole graphs: fan-out sums, pruning, opset conversion, and its errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from dlspec.compiler import gradient_model
from dlspec.compiler.graph import IR_VERSION, OPSET
from dlspec.spec.errors import CompileError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grad_reference import reference  # noqa: E402


def _model(nodes: list[onnx.NodeProto], inputs: dict[str, list[int | str]], inits: dict[str, np.ndarray],
           outputs: list[str], opset: int = OPSET, elem: int = TP.DOUBLE) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info(n, elem, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(o, elem, None) for o in outputs],
        initializer=[numpy_helper.from_array(v, n) for n, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _central(model: onnx.ModelProto, feeds: dict[str, np.ndarray], name: str, v: np.ndarray,
             eps: float = 1e-6) -> float:
    run = reference(model)

    def loss(step: float) -> float:
        return float(run.run(["loss"], {**feeds, name: feeds[name] + step * v})[0])

    return (loss(eps) - loss(-eps)) / (2 * eps)


def test_fan_out_gradients_are_summed() -> None:
    # x feeds three uses: loss = sum(x * x + sin(x)) -> d/dx = 2 x + cos(x)
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("Sin", ["x"], ["s"]),
             helper.make_node("Add", ["sq", "s"], ["t"]),
             helper.make_node("ReduceSum", ["t"], ["loss"], keepdims=0)]
    model = _model(nodes, {"x": [3, 4]}, {}, ["loss"])
    grads = gradient_model(model, "loss", ["x"])
    x = np.random.default_rng(0).uniform(-2, 2, (3, 4))
    (_, dx) = reference(grads).run(None, {"x": x})
    np.testing.assert_allclose(dx, 2 * x + np.cos(x), rtol=1e-12)
    sums = [n for n in grads.graph.node if n.op_type == "Sum"]
    assert len(sums) == 1 and len(sums[0].input) == 3  # the three contributions meet once


def test_unused_branches_and_frozen_weights_add_no_gradient_nodes() -> None:
    # h = x @ W (W frozen) -> y = h + b -> loss = sum(y * y); side branches u = sin(h), v = tanh(x)
    rng = np.random.default_rng(1)
    w, b = rng.standard_normal((3, 4)), rng.standard_normal(4)
    core = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"]),
            helper.make_node("Mul", ["y", "y"], ["yy"]),
            helper.make_node("ReduceSum", ["yy"], ["loss"], keepdims=0)]
    side = [helper.make_node("Sin", ["h"], ["u"]), helper.make_node("Tanh", ["x"], ["v"])]
    full = _model(core + side, {"x": [2, 3]}, {"W": w, "b": b}, ["loss", "u", "v"])
    lean = _model(core, {"x": [2, 3]}, {"W": w, "b": b}, ["loss"])

    def added(model: onnx.ModelProto, wrt: list[str]) -> list[onnx.NodeProto]:
        return list(gradient_model(model, "loss", wrt).graph.node)[len(model.graph.node):]

    only_b = added(full, ["b"])
    assert len(only_b) == len(added(lean, ["b"]))  # the side branches cost nothing
    assert not any(n.op_type in ("Cos", "Tanh", "MatMul", "Transpose") for n in only_b), \
        [n.op_type for n in only_b]  # no gradient through sin/tanh, none for W or x
    assert not any(i in ("W", "x") for n in only_b for i in n.input)
    assert len(added(full, ["b", "W"])) > len(only_b)
    x = rng.standard_normal((2, 3))
    _, db = reference(gradient_model(full, "loss", ["b"])).run(None, {"x": x, "b": b})
    np.testing.assert_allclose(db, (2 * (x @ w + b)).sum(axis=0), rtol=1e-12)


def _opset9_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Ops whose form changed after opset 9: attributes that became inputs, renamed ops."""
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("Upsample", ["r", "scales"], ["up"], mode="nearest"),
        helper.make_node("Slice", ["up"], ["sl"], starts=[1, 0], ends=[7, -1], axes=[2, 3]),
        helper.make_node("Pad", ["sl"], ["pd"], pads=[0, 0, 1, 0, 0, 0, 0, 2], mode="constant"),
        helper.make_node("Split", ["pd"], ["s1", "s2"], axis=1, split=[1, 2]),
        helper.make_node("ReduceMean", ["s2"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("Squeeze", ["s1"], ["sq"], axes=[1]),
        helper.make_node("ReduceSum", ["sq"], ["t"], axes=[1, 2], keepdims=0),
        helper.make_node("Unsqueeze", ["t"], ["tu"], axes=[1]),
        helper.make_node("Mul", ["m", "tu"], ["p"]),
        helper.make_node("ReduceSum", ["p"], ["loss"], keepdims=0),
    ]
    inits = {"w": rng.standard_normal((3, 2, 3, 3)), "gamma": rng.uniform(0.5, 1.5, 3),
             "beta": rng.standard_normal(3), "mean": rng.standard_normal(3), "var": rng.uniform(0.5, 2, 3),
             "scales": np.array([1, 1, 2, 2], np.float32)}
    model = _model(nodes, {"x": [2, 2, 4, 4]}, {k: v.astype(np.float64) if k != "scales" else v
                                                for k, v in inits.items()}, ["loss"], opset=9)
    return model, {"x": rng.standard_normal((2, 2, 4, 4))}


def test_old_opset_models_are_converted_first() -> None:
    model, feeds = _opset9_model()
    grads = gradient_model(model, "loss", ["x", "w", "gamma", "beta"])
    assert [o.version for o in grads.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    assert grads.ir_version == IR_VERSION
    onnx.checker.check_model(grads)
    params = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    feeds = {**feeds, **{n: params[n] for n in ("w", "gamma", "beta")}}
    frozen = _model(list(model.graph.node), {"x": [2, 2, 4, 4], "w": [3, 2, 3, 3], "gamma": [3], "beta": [3]},
                    {k: v for k, v in params.items() if k not in feeds}, ["loss"], opset=9)
    got = dict(zip([o.name for o in grads.graph.output], reference(grads).run(None, feeds)))
    rng = np.random.default_rng(3)
    for name in ("x", "w", "gamma", "beta"):
        v = rng.standard_normal(feeds[name].shape)
        expected = _central(frozen, feeds, name, v)  # the opset-9 model, run as opset 9
        assert abs(float(np.sum(got[f"grad.{name}"] * v)) - expected) <= 1e-6 * max(1, abs(expected)), name


def test_newer_opset_is_refused() -> None:
    model = _model([helper.make_node("ReduceSum", ["x"], ["loss"], keepdims=0)], {"x": [3]}, {}, ["loss"],
                   opset=OPSET + 1)
    with pytest.raises(CompileError, match=f"opset {OPSET + 1}, newer than opset {OPSET}"):
        gradient_model(model, "loss", ["x"])


def test_too_old_opset_is_refused() -> None:
    model = _model([helper.make_node("Relu", ["x"], ["loss"])], {"x": []}, {}, ["loss"], opset=8)
    with pytest.raises(CompileError, match="opset 8; dlspec converts opsets 9 to"):
        gradient_model(model, "loss", ["x"])


def test_failed_conversion_names_the_node() -> None:
    # opset 9 BatchNormalization with its training outputs has no adapter to opset 14
    c = np.ones(2)
    nodes = [helper.make_node("BatchNormalization", ["x", "c", "c", "c", "c"], ["y", "m", "v", "sm", "sv"],
                              name="bn1"),
             helper.make_node("ReduceSum", ["y"], ["loss"], keepdims=0)]
    model = _model(nodes, {"x": [1, 2, 3]}, {"c": c}, ["loss"], opset=9)
    with pytest.raises(CompileError, match=r"from ONNX opset 9 to 20 at node bn1 \(BatchNormalization\)"):
        gradient_model(model, "loss", ["x"])


def test_op_unknown_at_the_models_opset_is_named() -> None:
    model = _model([helper.make_node("Gelu", ["x"], ["y"]), helper.make_node("ReduceSum", ["y"], ["loss"])],
                   {"x": [3]}, {}, ["loss"], opset=13)
    with pytest.raises(CompileError, match="uses Gelu, which is not an ONNX op at the model's opset 13"):
        gradient_model(model, "loss", ["x"])


def test_loss_errors() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["act"]), helper.make_node("ReduceSum", ["act"], ["total"])]
    model = _model(nodes, {"x": [2, 3]}, {}, ["total"])
    with pytest.raises(CompileError, match="no value named 'totl' to use as the loss .*did you mean 'total'"):
        gradient_model(model, "totl", ["x"])
    with pytest.raises(CompileError, match=r"the loss 'act' must be a scalar, it has shape \[2, 3\]"):
        gradient_model(model, "act", ["x"])
    with pytest.raises(CompileError, match="not an input or initializer of the model .*did you mean 'x'"):
        gradient_model(model, "total", ["x2"])


def test_other_domains_have_no_rule() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["y"], domain="com.example"),
             helper.make_node("ReduceSum", ["y"], ["loss"], keepdims=0)]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TP.FLOAT, [3])],
                              [helper.make_tensor_value_info("loss", TP.FLOAT, [])],
                              value_info=[helper.make_tensor_value_info("y", TP.FLOAT, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("com.example", 1)])
    with pytest.raises(CompileError, match="no gradient rule for ONNX op com.example.Relu"):
        gradient_model(model, "loss", ["x"])


@pytest.mark.parametrize("node, message", [
    (helper.make_node("Slice", ["x", "s", "e", "a"], ["y"]),
     "the Slice gradient needs the static size of 'x' along axis 0, which is N"),
    (helper.make_node("Concat", ["x", "x"], ["y"], axis=0),
     "the Concat gradient needs the static size of 'x' along axis 0, which is N"),
])
def test_rules_that_need_static_shapes_name_the_op(node: onnx.NodeProto, message: str) -> None:
    ints = {"s": np.array([1]), "e": np.array([2]), "a": np.array([0])}
    nodes = [node, helper.make_node("ReduceSum", ["y"], ["loss"], keepdims=0)]
    model = _model(nodes, {"x": ["N", 3]}, ints, ["loss"])
    with pytest.raises(CompileError, match=message):
        gradient_model(model, "loss", ["x"])
