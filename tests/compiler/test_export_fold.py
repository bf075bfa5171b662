"""Batch norm folded into convolutions at export keeps every output: a weight another node reads
is not rescaled in place, folded biases get names of their own, a model exported once is
exported again unchanged, and models the fold cannot rewrite (float16 weights, IR version 3)
keep their batch norms."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from dlspec.compiler.lower.export import export


def _bn(name: str, x: str, out: str, rng: np.random.Generator, np_type: type) -> tuple[onnx.NodeProto, list]:
    c = 2
    inits = [numpy_helper.from_array(v.astype(np_type), f"{name}.{k}") for k, v in
             (("scale", rng.uniform(0.5, 2, c)), ("bias", rng.normal(size=c)), ("mean", rng.normal(size=c)),
              ("var", rng.uniform(0.5, 2, c)))]
    return helper.make_node("BatchNormalization", [x, *(t.name for t in inits)], [out], name=name), inits


def _model(case: str, dtype: int = TP.FLOAT, ir: int = 8) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    np_type = {TP.FLOAT: np.float32, TP.FLOAT16: np.float16}[dtype]
    w = lambda n: numpy_helper.from_array(rng.normal(size=(2, 1, 3, 3)).astype(np_type), n)  # noqa: E731
    if case == "shared weight":  # one weight, two convs, one of them batch-normed
        bn, stats = _bn("bn", "c1", "b1", rng, np_type)
        nodes = [helper.make_node("Conv", ["x", "W"], ["c1"]), bn,
                 helper.make_node("Conv", ["x", "W"], ["c2"]),
                 helper.make_node("Add", ["b1", "c2"], ["logits_map"])]
        inits = [w("W"), *stats]
    else:  # two conv + bn pairs whose weights differ only after their last dot
        bn1, s1 = _bn("bn1", "c1", "b1", rng, np_type)
        bn2, s2 = _bn("bn2", "c2", "b2", rng, np_type)
        nodes = [helper.make_node("Conv", ["x", "blk.w1"], ["c1"]), bn1,
                 helper.make_node("Conv", ["x", "blk.w2"], ["c2"]), bn2,
                 helper.make_node("Add", ["b1", "b2"], ["logits_map"])]
        inits = [w("blk.w1"), w("blk.w2"), *s1, *s2]
    nodes.append(helper.make_node("GlobalAveragePool", ["logits_map"], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["logits"]))
    inputs = [helper.make_tensor_value_info("x", dtype, ["N", 1, 6, 6])]
    if ir < 4:  # initializers are graph inputs too
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("logits", dtype, ["N", 2])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=ir)


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


@pytest.mark.parametrize("case,folds", [("shared weight", 0), ("names after the last dot", 2)])
def test_folding_keeps_the_outputs(case: str, folds: int) -> None:
    """The shared weight was rescaled for both convs (logits 60% off); the two biases were both named
    blk.folded_bias (an internal error)."""
    model = _model(case)
    exported, folded = export(model, {})
    onnx.checker.check_model(exported, full_check=True)
    assert folded == folds
    x = np.random.default_rng(1).normal(size=(3, 1, 6, 6)).astype(np.float32)
    (want,) = _run(model, x)
    got, probabilities = _run(exported, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-6)
    again, folded = export(exported, {})  # exporting an exported model: 'probabilities' twice before
    assert folded == 0 and [o.name for o in again.graph.output] == ["logits", "probabilities"]


@pytest.mark.parametrize("dtype,ir", [(TP.FLOAT16, 8), (TP.FLOAT, 3)])
def test_what_the_fold_cannot_rewrite_keeps_its_batch_norms(dtype: int, ir: int) -> None:
    """A float16 weight got a float32 fold, and an IR 3 model a bias that was no graph input."""
    model = _model("names after the last dot", dtype, ir)
    exported, folded = export(model, {})
    onnx.checker.check_model(exported, full_check=True)
    assert folded == 0 and sum(n.op_type == "BatchNormalization" for n in exported.graph.node) == 2
