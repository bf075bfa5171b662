"""`dlspec grad` with default options on real architectures: the onnx package's light model zoo
(ResNet-50, DenseNet-121, Inception v1 and v2, ShuffleNet, SqueezeNet, VGG-19, AlexNet,
ZFNet-512; the files ship shapes instead of weights, so weights are made random). The gradient
of loss = sum(output * R) along a random direction of every parameter at once must agree with
central differences of the forward model, both run in float64 by onnx's reference evaluator."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from dlspec.compiler import gradient_model
from dlspec.compiler.graph.opsets import to_opset
from dlspec.compiler.graph.precision import to_float64
from dlspec.fastconv import Conv
from dlspec.reference import FIXES

ZOO = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
# minutes of float64 reference evaluation on 2 cores: run on request, DLSPEC_ZOO=1 python -m pytest ...
pytestmark = pytest.mark.skipif(not os.environ.get("DLSPEC_ZOO"), reason="slow; DLSPEC_ZOO=1 runs it")
MODELS = ["resnet50", "densenet121", "inception_v1", "inception_v2", "shufflenet", "squeezenet", "vgg19",
          "bvlc_alexnet", "zfnet512"]


def _with_weights(model: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    """Each ConstantOfShape(<name>__SHAPE) that stands for a float weight becomes a random
    initializer: He-scaled weights, so activations neither vanish nor explode through the depth;
    batch norm's variances in [0.5, 1.5] and means near 0."""
    shapes = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("__SHAPE")}
    role = {n.input[i]: i for n in model.graph.node if n.op_type == "BatchNormalization"
            for i in range(1, len(n.input))}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.ir_version = max(out.ir_version, 4)  # from IR 4 on an initializer need not be an input too
    g = out.graph
    keep = []
    for node in g.node:
        fill = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type == "ConstantOfShape" and node.input[0] in shapes and fill is not None \
                and fill.data_type == TP.FLOAT:
            shape = [int(d) for d in shapes[node.input[0]]]
            kind = role.get(node.output[0])
            if kind == 4:
                value = rng.uniform(0.5, 1.5, shape)
            elif kind in (1, 2, 3):
                value = (1.0 if kind == 1 else 0.0) + 0.1 * rng.standard_normal(shape)
            else:
                fan_in = np.prod(shape[1:]) if len(shape) > 1 else 200.0
                value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
            g.initializer.append(numpy_helper.from_array(value.astype(np.float32), node.output[0]))
        else:
            keep.append(node)
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if not t.name.endswith("__SHAPE") or t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    inputs = [i for i in g.input if not i.name.endswith("__SHAPE") or i.name in used]
    del g.input[:]
    g.input.extend(inputs)
    return out


def _with_loss(model: onnx.ModelProto, r: np.ndarray) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    y = g.output[0].name
    g.initializer.append(numpy_helper.from_array(r, "loss.R"))
    g.node.extend([helper.make_node("Mul", [y, "loss.R"], ["loss.yr"]),
                   helper.make_node("ReduceSum", ["loss.yr"], ["loss"], keepdims=0)])
    elem = g.output[0].type.tensor_type.elem_type
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("loss", elem, []))
    return out


def _reference(model: onnx.ModelProto) -> ReferenceEvaluator:
    """onnx's reference evaluator with dlspec.reference's fixes and a vectorised Conv."""
    return ReferenceEvaluator(model, new_ops=[*(op for op in FIXES if op.__name__ != "Conv"), Conv])


@pytest.mark.parametrize("name", MODELS)
def test_default_gradients_of_a_zoo_model_agree_with_central_differences(name: str) -> None:
    """In float64, by onnx's reference evaluator: the directional derivative of loss along a
    random direction of one parameter tensor at a time (the first, the middle and the last), where
    the loss is smooth there (ReLUs and max pools make kinks: a direction whose one-sided slopes
    differ is not a place to compare, and the next direction is tried)."""
    rng = np.random.default_rng(0)
    # at dlspec's opset: onnx's reference evaluator runs old ops with new defaults (Softmax's axis)
    model = to_opset(to_float64(_with_weights(onnx.load(str(ZOO / f"light_{name}.onnx")), rng)))
    inits = {t.name for t in model.graph.initializer}
    x = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim])
         for i in model.graph.input if i.name not in inits}
    y = _reference(model).run(None, x)[0]
    lossy = _with_loss(model, rng.standard_normal(y.shape) / np.sqrt(y.size))
    grads = gradient_model(lossy, "loss")
    names = [o.name.removeprefix("grad.") for o in grads.graph.output[1:]]
    values = {t.name: numpy_helper.to_array(t) for t in lossy.graph.initializer if t.name in names}
    assert len(names) > 10 and set(names) == set(values)  # every weight, no running statistic
    out = dict(zip(names, _reference(grads).run(None, {**x, **values})[1:]))
    forward = _reference(params_as_inputs(lossy, names))
    weights = [n for n in names if values[n].ndim > 1]
    for name in (weights[0], weights[len(weights) // 2], weights[-2]):
        v = rng.standard_normal(values[name].shape)
        analytic = float(np.sum(out[name] * v))
        assert _smooth_slope(forward, x, values, name, v, analytic), name


def _smooth_slope(forward: ReferenceEvaluator, x: dict[str, np.ndarray], values: dict[str, np.ndarray],
                  name: str, v: np.ndarray, analytic: float) -> bool:
    """Central differences along v at shrinking steps: ReLUs and max pools put kinks near any
    point of a deep network, which large steps cross, and rounding spoils small ones; the slope
    must settle to within 1e-3 of `analytic` before the steps reach rounding."""
    base = np.linalg.norm(values[name]) / np.linalg.norm(v)
    slopes = []
    for rel in (1e-5, 1e-6, 1e-7, 1e-8):
        eps = rel * base

        def loss(step: float) -> float:
            return float(forward.run(None, {**x, **values, name: values[name] + step * v})[0])

        slopes.append((loss(eps) - loss(-eps)) / (2 * eps))
        if abs(slopes[-1] - analytic) <= 1e-3 * max(abs(analytic), 1e-9):
            return True
    pytest.fail(f"{name}: central differences {slopes} do not settle at the rule's {analytic}")


def params_as_inputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    moved = [t for t in g.initializer if t.name in names]
    kept = [t for t in g.initializer if t.name not in names]
    del g.initializer[:]
    g.initializer.extend(kept)
    listed = {i.name for i in g.input}  # before IR 4, initializers are inputs too
    g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in moved
                   if t.name not in listed)
    return out
