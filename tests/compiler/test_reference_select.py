"""The fixed reference ops of dlspec.reference (pools, norms, losses, AffineGrid, Scatter) agree
with onnxruntime, on the configurations where onnx's own reference evaluator does not."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper

from dlspec.compiler.graph import OPSET

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grad_reference import reference  # noqa: E402


def _both(op: str, x: np.ndarray, *consts: np.ndarray, opset: int = OPSET, **attrs: Any
          ) -> tuple[np.ndarray, np.ndarray]:
    """The op on x (and constant further inputs) in the reference and in onnxruntime."""
    names = [f"c{i}" for i in range(len(consts))]
    node = helper.make_node(op, ["x", *names], ["y"], **attrs)
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info("x", TP.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TP.FLOAT, None)],
                              initializer=[onnx.numpy_helper.from_array(c, n) for c, n in zip(consts, names)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return reference(model).run(None, {"x": x})[0], sess.run(None, {"x": x})[0]


# (size, kernel, stride, dilation, pad begin, pad end): onnxruntime wants pads under the kernel
POOLS = [c for c in itertools.product([4, 5, 7], [2, 3], [1, 2, 3], [1, 2], [0, 1], [0, 1])
         if (c[1] - 1) * c[3] + 1 <= c[0] + c[4] + c[5]]


@pytest.mark.parametrize("op", ["AveragePool", "AveragePool-include-pad", "LpPool", "LpPool-p3"])
def test_pools_agree_with_onnxruntime(op: str) -> None:
    rng = np.random.default_rng(0)
    for ceil, (size, k, s, d, p0, p1) in itertools.product([0, 1], POOLS):
        x = rng.uniform(-1, 1, (1, 2, size, 3)).astype(np.float32)
        attrs: dict[str, Any] = {"kernel_shape": [k, 2], "strides": [s, 1], "dilations": [d, 1],
                                 "pads": [p0, 0, p1, 1], "ceil_mode": ceil}
        if op == "AveragePool-include-pad":
            attrs["count_include_pad"] = 1
        if op == "LpPool-p3":
            attrs["p"] = 3
        ours, theirs = _both(op.split("-")[0], x, **attrs)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6, err_msg=str(attrs))


@pytest.mark.parametrize("p", [1, 2])
def test_lp_normalization_agrees_with_onnxruntime(p: int) -> None:
    x = np.random.default_rng(0).uniform(-1, 1, (3, 4, 2)).astype(np.float32)
    x[1, :, 1] = 0  # a zero vector normalizes to 0
    for axis in (0, 1, -1):
        ours, theirs = _both("LpNormalization", x, axis=axis, p=p)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6, err_msg=f"axis {axis}")



@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss_agrees_with_onnxruntime(reduction: str) -> None:
    x = np.random.default_rng(0).standard_normal((3, 5, 2)).astype(np.float32)
    target = np.array([[1, -1], [4, 0], [-1, -1]], np.int64)
    ours, theirs = _both("NegativeLogLikelihoodLoss", x, target, reduction=reduction, ignore_index=-1)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)


def test_global_max_pool_and_gather_elements_agree_with_onnxruntime() -> None:
    rng = np.random.default_rng(0)
    for shape in [(2, 3, 5), (2, 3, 4, 2), (1, 2, 3, 2, 2)]:
        ours, theirs = _both("GlobalMaxPool", rng.standard_normal(shape).astype(np.float32))
        np.testing.assert_array_equal(ours, theirs)
    x = rng.standard_normal((2, 5)).astype(np.float32)
    ours, theirs = _both("GatherElements", x, np.array([[-1, 0], [4, 4]], np.int64), axis=-1)
    np.testing.assert_array_equal(ours, theirs)


def test_mean_variance_normalization_agrees_with_onnxruntime() -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    for axes in ([0, 2, 3], [1], [-1, 0]):
        ours, theirs = _both("MeanVarianceNormalization", x, axes=axes)
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5, err_msg=str(axes))


def test_affine_grid_and_scatter_agree_with_onnxruntime() -> None:
    rng = np.random.default_rng(0)
    for theta_shape, size in [((2, 2, 3), [2, 3, 4, 5]), ((1, 3, 4), [1, 1, 2, 3, 4])]:
        theta = rng.standard_normal(theta_shape).astype(np.float32)
        for corners in (0, 1):
            ours, theirs = _both("AffineGrid", theta, np.array(size), align_corners=corners)
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6, err_msg=f"{size} {corners}")
    x = rng.standard_normal((3, 4)).astype(np.float32)
    updates = np.ones((2, 2), np.float32)
    ours, theirs = _both("Scatter", x, np.array([[2, 0], [1, 2]]), updates, opset=10, axis=1)
    np.testing.assert_array_equal(ours, theirs)
