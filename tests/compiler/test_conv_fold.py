"""compiler/conv_fold.py: convs with more filters than output positions run over the batch folded
into depth, for a CPU step on many threads; the same function, in onnxruntime."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from dlspec.compiler import Target
from dlspec.compiler.graph import OPSET
from dlspec.compiler.tune.conv_fold import fold_crowded_convs

# (x channels, H, W), weight shape, attributes, folded?
CASES: list[tuple[tuple[int, int, int], tuple[int, ...], dict[str, Any], bool]] = [
    ((8, 4, 4), (20, 8, 3, 3), {"pads": [1, 1, 1, 1]}, True),  # 20 filters, 16 positions
    ((8, 4, 4), (20, 8, 3, 3), {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]}, True),
    ((8, 6, 6), (12, 8, 1, 1), {"strides": [2, 2]}, True),  # a strided 1x1: 9 positions
    ((8, 5, 5), (40, 4, 3, 3), {"group": 2, "pads": [1, 0, 2, 1], "dilations": [2, 1]}, True),  # 20 per group
    ((6, 5, 4), (18, 6, 3, 2), {"auto_pad": "SAME_UPPER", "strides": [2, 1]}, True),
    ((8, 4, 4), (20, 8, 1, 1), {}, False),  # a 1x1 at stride 1: threaded over the images already
    ((8, 8, 8), (16, 8, 3, 3), {"pads": [1, 1, 1, 1]}, False),  # 16 filters, 64 positions
    ((8, 4, 4), (16, 2, 3, 3), {"group": 4, "pads": [1, 1, 1, 1]}, False),  # 4 per group
]


def _model(x: tuple[int, int, int], w: tuple[int, ...], attrs: dict[str, Any], bias: bool) -> Any:
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x]),
              helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w))]
    names = ["x", "w"]
    if bias:
        inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [w[0]]))
        names.append("b")
    node = helper.make_node("Conv", names, ["y"], name="conv", **attrs)
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "g", inputs, [output])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


@pytest.mark.parametrize("bias", [False, True], ids=["", "bias"])
@pytest.mark.parametrize("x,w,attrs,folded", CASES, ids=[str(i) for i in range(len(CASES))])
def test_folded_conv_computes_the_same(x: tuple[int, int, int], w: tuple[int, ...], attrs: dict[str, Any],
                                       folded: bool, bias: bool) -> None:
    model = _model(x, w, attrs, bias)
    rewritten = fold_crowded_convs(Target(threads=16), model)
    convs = [n for n in rewritten.graph.node if n.op_type == "Conv"]
    assert len(convs) == 1 and convs[0].name == "conv"
    three_d = any(a.name == "strides" and len(a.ints) == 3 for a in convs[0].attribute)
    assert three_d == folded
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((3, *x)).astype(np.float32),
             "w": rng.standard_normal(w).astype(np.float32),
             "b": rng.standard_normal(w[0]).astype(np.float32)}
    outs = []
    for m in (model, rewritten):
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})[0])
    assert outs[0].shape == outs[1].shape
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-5)
