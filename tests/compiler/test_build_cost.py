"""What building a gradients graph costs, counted rather than timed: `dlspec grad` runs ONNX shape
inference once however deep the model, and its weights pass through neither shape inference, nor
the opset converter, nor numpy (each of those copies every weight, a second per few hundred
megabytes: 112 s for VGG-19 when shape inference ran once per parameter). Where the weights are
not copied, the gradients model must still hold them in their place: the differentiated ones as
inputs, the others (batch norm's running statistics, weights not asked for) as initializers."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper, shape_inference, version_converter

from dlspec.compiler import gradient_model
from dlspec.compiler.graph import OPSET

WIDTH = 16  # a 16x16x3x3 conv weight has 2,304 values: a weight, not a shape or an axis


def _model(depth: int, opset: int = OPSET, listed: bool = False) -> onnx.ModelProto:
    """depth x (conv -> batch norm of 2,048 running values -> relu), loss = sum."""
    rng = np.random.default_rng(depth)
    nodes, inits, x = [], [], "x"
    for i in range(depth):
        w = rng.standard_normal((WIDTH, WIDTH, 3, 3)).astype(np.float32) * 0.1
        stats = {"scale": np.ones(WIDTH), "bias": np.zeros(WIDTH),
                 "mean": rng.standard_normal(WIDTH) * 0.1, "var": rng.uniform(0.5, 1.5, WIDTH)}
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        inits += [numpy_helper.from_array(v.astype(np.float32), f"{k}{i}") for k, v in stats.items()]
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("BatchNormalization", [f"c{i}"] + [f"{k}{i}" for k in stats], [f"b{i}"]),
                  helper.make_node("Relu", [f"b{i}"], [f"r{i}"])]
        x = f"r{i}"
    nodes.append(helper.make_node("ReduceSum", [x], ["loss"], keepdims=0))
    inputs = [helper.make_tensor_value_info("x", TP.FLOAT, ["N", WIDTH, 4, 4])]
    if listed:  # before IR 4 every initializer is a graph input too
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    loss = helper.make_tensor_value_info("loss", TP.FLOAT, [])
    graph = helper.make_graph(nodes, "m", inputs, [loss], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=3 if listed else 8)


@dataclass
class Seen:
    inferred: list[int] = field(default_factory=list)  # bytes of each model shape inference got
    converted: list[int] = field(default_factory=list)  # ... and the opset converter
    read: list[str] = field(default_factory=list)  # tensors numpy_helper.to_array read


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> Iterator[Seen]:
    out = Seen()
    infer, convert = shape_inference.infer_shapes, version_converter.convert_version
    to_array = numpy_helper.to_array

    def counted_infer(model: onnx.ModelProto, *args: object, **kw: object) -> onnx.ModelProto:
        out.inferred.append(model.ByteSize())
        return infer(model, *args, **kw)  # type: ignore[arg-type]

    def counted_convert(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
        out.converted.append(model.ByteSize())
        return convert(model, version)

    def counted_to_array(tensor: onnx.TensorProto, *args: object) -> np.ndarray:
        out.read.append(tensor.name)
        return to_array(tensor, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(shape_inference, "infer_shapes", counted_infer)
    monkeypatch.setattr(version_converter, "convert_version", counted_convert)
    monkeypatch.setattr(numpy_helper, "to_array", counted_to_array)
    yield out


@pytest.mark.parametrize("opset", [OPSET, 11])
@pytest.mark.parametrize("depth", [2, 12])
def test_the_weights_are_never_inferred_converted_or_read(seen: Seen, depth: int, opset: int) -> None:
    model = _model(depth, opset)
    weight_bytes = depth * WIDTH * WIDTH * 9 * 4
    gradient_model(model, "loss")
    assert len(seen.inferred) == 1  # once, not once per parameter or per layer
    assert len(seen.converted) == (opset != OPSET)
    assert max(seen.inferred + seen.converted) < weight_bytes / 4  # the graph, without the weights' data
    assert not [name for name in seen.read if name.startswith("w")]


@pytest.mark.parametrize("opset", [OPSET, 11])
@pytest.mark.parametrize("listed", [False, True])
def test_the_weights_keep_their_place(opset: int, listed: bool) -> None:
    """The differentiated weights become inputs in the model's order, the running statistics and a
    weight not asked for stay initializers with their values, and the gradients model computes the
    model's loss from them."""
    model = _model(3, opset, listed)
    wrt = ["w0", "w2", "scale1", "x"]  # w1 not: it stays an initializer
    grads = gradient_model(model, "loss", wrt)
    onnx.checker.check_model(grads, full_check=True)
    given = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    kept = {t.name: numpy_helper.to_array(t) for t in grads.graph.initializer}
    assert sorted(kept) == sorted(set(given) - set(wrt))
    for name, value in kept.items():
        np.testing.assert_array_equal(value, given[name])
    inputs = [i.name for i in grads.graph.input]
    assert len(inputs) == len(set(inputs))
    fed = [n for n in inputs if n in wrt]
    assert sorted(fed) == sorted(wrt)
    if not listed and opset == OPSET:  # after the model's inputs, in the order of its initializers
        assert inputs == ["x", "w0", "scale1", "w2"]
    x = np.random.default_rng(0).standard_normal((2, WIDTH, 4, 4)).astype(np.float32)
    feeds = {"x": x, **{n: given[n] for n in fed if n != "x"}}
    cpu = ["CPUExecutionProvider"]
    loss, *_ = ort.InferenceSession(grads.SerializeToString(), providers=cpu).run(None, feeds)
    forward = ort.InferenceSession(_model(3, OPSET).SerializeToString(), providers=cpu)
    np.testing.assert_allclose(loss, forward.run(None, {"x": x})[0], rtol=1e-5)




WIDE = """
model wide {
  input  image: float32[N, 3, 8, 8]
  target label: int64[N]
  backbone {
    a: conv(256, k=3) -> bn -> relu
    b: conv(256, k=3) -> bn -> relu
  }
  head classify(classes=10)
  loss cross_entropy
}

train {
  batch     8
  optimizer sgd(lr=0.1, momentum=0.9)
}
"""


@pytest.mark.parametrize("threads", [2, 8])
def test_a_training_build_infers_shapes_a_few_times_and_draws_the_weights_twice(
        seen: Seen, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, threads: int) -> None:
    """Shape inference sees the training graphs without their weights (a fixed number of times,
    whichever lowerings the threads pick); the initial values are drawn for the step and for the
    inference model, not for the evaluation graph, which takes them as inputs."""
    from dlspec import api
    from dlspec.compiler import Target
    from dlspec.compiler.graph.builder import Initial

    draws = []
    value = Initial.value

    def counted(self: Initial) -> np.ndarray:
        draws.append(self.shape)
        return value(self)

    monkeypatch.setattr(Initial, "value", counted)
    spec = tmp_path / "wide.dlspec"
    spec.write_text(WIDE)
    tg = api.compile_training(spec, "wide", target=Target("cpu", threads))
    tg.inference.onnx  # noqa: B018  (drawn when first asked for)
    params = tg.inference.params
    weight_bytes = 4 * sum(math.prod(p.shape) for p in params)
    assert 1 <= len(seen.inferred) <= 3
    assert max(seen.inferred) < weight_bytes / 4
    assert len(draws) == 2 * len(params)
