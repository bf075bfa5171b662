"""The recurrent, GridSample and Resize rules on shapes the gradient table's rows do not have: a
symbolic batch, a symbolic sequence length (refused by name), Resize sizes computed at run time."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from dlspec.compiler import gradient_model
from dlspec.compiler.graph import OPSET
from dlspec.spec.errors import CompileError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grad_reference import reference  # noqa: E402


def _summed(nodes: list[onnx.NodeProto], outs: list[str], inputs: list[onnx.ValueInfoProto],
            inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    """loss = the sum of sum(y * y) over `outs`."""
    for k, y in enumerate(outs):
        nodes = nodes + [helper.make_node("Mul", [y, y], [f"sq{k}"]),
                         helper.make_node("ReduceSum", [f"sq{k}"], [f"l{k}"], keepdims=0)]
    nodes.append(helper.make_node("Sum", [f"l{k}" for k in range(len(outs))], ["loss"]))
    graph = helper.make_graph(nodes, "m", inputs, [helper.make_tensor_value_info("loss", TP.FLOAT, [])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


def _recurrent(op: str, steps: int | str, batch: int | str) -> onnx.ModelProto:
    gates, hid = {"RNN": 1, "GRU": 3, "LSTM": 4}[op], 3
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, ["X", "W", "R", "B", "lens"], outs, hidden_size=hid,
                            direction="bidirectional", name="cell")
    inputs = [helper.make_tensor_value_info("X", TP.FLOAT, [steps, batch, 2]),
              helper.make_tensor_value_info("lens", TP.INT32, [batch])]
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.uniform(-1, 1, s).astype(np.float32), n) for n, s in
             (("W", [2, gates * hid, 2]), ("R", [2, gates * hid, hid]), ("B", [2, 2 * gates * hid]))]
    return _summed([node], outs, inputs, inits)


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_recurrent_gradient_takes_a_symbolic_batch(op: str) -> None:
    rng = np.random.default_rng(1)
    feeds = {"X": rng.uniform(-1, 1, (4, 3, 2)).astype(np.float32), "lens": np.array([4, 1, 3], np.int32)}
    wrt = ["X", "W", "R", "B"]
    symbolic = gradient_model(_recurrent(op, 4, "N"), "loss", wrt)
    feeds.update({t.name: numpy_helper.to_array(t) for t in _recurrent(op, 4, 3).graph.initializer})
    got = _ort(symbolic, feeds)
    want = reference(gradient_model(_recurrent(op, 4, 3), "loss", wrt)).run(None, feeds)
    for name, a, b in zip(["loss", *wrt], got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)


def test_symbolic_sequence_length_is_refused_by_name() -> None:
    expected = "the GRU gradient unrolls the time loop .* static: node cell has a sequence length of 'T'"
    with pytest.raises(CompileError, match=expected):
        gradient_model(_recurrent("GRU", "T", 3), "loss", ["W"])


def test_grid_sample_gradient_takes_a_symbolic_batch() -> None:
    node = helper.make_node("GridSample", ["X", "grid"], ["Y"], mode="linear", padding_mode="reflection")
    rng = np.random.default_rng(2)
    feeds = {"X": rng.standard_normal((2, 3, 4, 5)).astype(np.float32),
             "grid": rng.uniform(-1.2, 1.2, (2, 3, 2, 2)).astype(np.float32)}

    def model(batch: int | str) -> onnx.ModelProto:
        return _summed([node], ["Y"], [helper.make_tensor_value_info("X", TP.FLOAT, [batch, 3, 4, 5]),
                                       helper.make_tensor_value_info("grid", TP.FLOAT, [batch, 3, 2, 2])], [])

    symbolic = gradient_model(model("N"), "loss", ["X", "grid"])
    got = _ort(symbolic, feeds)
    want = reference(gradient_model(model(2), "loss", ["X", "grid"])).run(None, feeds)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode, transform", [("linear", "align_corners"), ("cubic", "half_pixel")])
def test_resize_gradient_takes_sizes_computed_at_run_time(mode: str, transform: str) -> None:
    """Resize to the spatial size of another input, as exporters write F.interpolate(x, size=...)."""
    shape = helper.make_node("Shape", ["like"], ["like_shape"], start=2)
    sizes = helper.make_node("Concat", ["head", "like_shape"], ["sizes"], axis=0)
    resize = helper.make_node("Resize", ["X", "", "", "sizes"], ["Y"], mode=mode,
                              coordinate_transformation_mode=transform)
    head = numpy_helper.from_array(np.array([1, 2], np.int64), "head")
    inputs = [helper.make_tensor_value_info("X", TP.FLOAT, ["N", 2, 3, 4]),
              helper.make_tensor_value_info("like", TP.FLOAT, [1, 1, 5, 3])]
    computed = gradient_model(_summed([shape, sizes, resize], ["Y"], inputs, [head]), "loss", ["X"])
    fixed = helper.make_node("Resize", ["X", "", "", "fixed"], ["Y"], mode=mode,
                             coordinate_transformation_mode=transform)
    known = gradient_model(_summed([fixed], ["Y"], inputs[:1], [numpy_helper.from_array(
        np.array([1, 2, 5, 3], np.int64), "fixed")]), "loss", ["X"])
    x = np.random.default_rng(3).standard_normal((1, 2, 3, 4)).astype(np.float32)
    got = _ort(computed, {"X": x, "like": np.zeros((1, 1, 5, 3), np.float32)})
    want = _ort(known, {"X": x})
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
