"""One or more rows per gradient rule: the rule's vector-Jacobian product against central differences.

Each row builds a one-node model in float64, takes loss = sum(y * R) for a random R, and
compares <grad, v> with (L(x + eps v) - L(x - eps v)) / 2 eps along a random direction v,
evaluated by onnx's reference evaluator (an implementation of ONNX that dlspec did not write;
dlspec.reference fixes the ops where it disagrees with the spec). That checks the
plain lowering of each rule; every tuned lowering (dlspec.compiler.tune) must give the plain
one's gradients on every row and Target. Every row also runs its gradient graph in float32 in
plain onnxruntime, which must agree with the reference.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper

from dlspec.compiler import Target, gradient_model
from dlspec.compiler.grad import RULES
from dlspec.compiler.graph import OPSET
from dlspec.compiler.target import Lowering
from dlspec.compiler.tune import conv as tuned_conv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import grad_rows_select  # noqa: E402
import grad_rows_sequence  # noqa: E402
from grad_reference import reference as _ref  # noqa: E402
from grad_row import BIG, Row  # noqa: E402
from grad_row import const as _c  # noqa: E402

ROWS = [
    Row("Identity", [(3, 4)]),
    Row("Dropout", [(3, 4)]),
    Row("Dropout", [(3, 4)], {"seed": 3}, consts=[_c(0.3, np.float64), _c(True, np.bool_)], outputs=2,
        loss_on=[0], id="training", no_ort="the mask is random: onnxruntime draws another one"),
    Row("Cast", [(3, 4)], {"to": TP.DOUBLE}),
    Row("Neg", [(3, 4)]),
    Row("Add", [(2, 3, 4), (3, 1)], id="broadcast"),
    Row("Sub", [(2, 3), (2, 3)]),
    Row("Mul", [(2, 3, 4), (4,)], id="broadcast"),
    Row("Mul", [(3, 4)], inputs=["x0", "x0"], id="fan-out"),  # gradients that meet at x0 are summed
    Row("Div", [(3, 5), (5,)], low=0.5, high=2.0),
    Row("Sum", [(3, 4), (4,), (3, 4)]),
    Row("Mean", [(3, 4), (3, 4)]),
    Row("Relu", [(4, 5)]),
    Row("LeakyRelu", [(4, 5)], {"alpha": 0.1}),
    Row("PRelu", [(2, 3, 4), (4,)], id="broadcast-slope"),
    Row("PRelu", [(2, 3, 4), (2, 3, 4)], id="full-slope"),
    Row("Sigmoid", [(4, 5)], low=-3, high=3),
    Row("Tanh", [(4, 5)], low=-2, high=2),
    Row("Exp", [(4, 5)]),
    Row("Log", [(4, 5)], low=0.5, high=3.0),
    Row("Sqrt", [(4, 5)], low=0.5, high=3.0),
    Row("Abs", [(4, 5)]),
    Row("Softplus", [(4, 5)], low=-3, high=3),
    Row("Softsign", [(4, 5)], low=-3, high=3),
    Row("Sin", [(4, 5)], low=-3, high=3),
    Row("Cos", [(4, 5)], low=-3, high=3),
    Row("Reciprocal", [(4, 5)], low=0.5, high=2.0),
    Row("HardSigmoid", [(4, 5)], {"alpha": 0.3, "beta": 0.4}, low=-4, high=4),
    Row("HardSwish", [(4, 5)], low=-5, high=5),
    Row("Elu", [(4, 5)], {"alpha": 0.7}, low=-3, high=3),
    Row("Selu", [(4, 5)], low=-3, high=3),
    Row("Celu", [(4, 5)], {"alpha": 1.5}, low=-3, high=3, dtype=TP.FLOAT, tol=2e-3),
    Row("Erf", [(4, 5)]),
    Row("Gelu", [(4, 5)], low=-3, high=3),
    Row("Gelu", [(4, 5)], {"approximate": "tanh"}, low=-3, high=3, id="tanh"),
    Row("Pow", [(3, 5), (5,)], low=0.5, high=2.0),
    Row("Clip", [(4, 5)], consts=[_c(-0.5, np.float64), _c(0.5, np.float64)]),
    Row("Max", [(3, 5), (3, 5)]),
    Row("Min", [(3, 5), (5,)]),
    Row("Reshape", [(2, 3, 4)], consts=[_c([6, 4])]),
    Row("Flatten", [(2, 3, 4)], {"axis": 1}),
    Row("Squeeze", [(2, 1, 4)], consts=[_c([1])]),
    Row("Squeeze", [(1, 3, 1, 1)], id="all-ones"),
    Row("Squeeze", [(2, 1, 4, 1)], consts=[_c([-1, -3])], id="negative-axes"),
    Row("Unsqueeze", [(2, 4)], consts=[_c([1])]),
    Row("Unsqueeze", [(2, 4)], consts=[_c([-1, 0, 3])], id="unsorted-negative"),
    Row("Unsqueeze", [()], consts=[_c([0])], id="scalar"),
    Row("Expand", [(3, 1)], consts=[_c([2, 3, 4])]),
    Row("Transpose", [(2, 3, 4)], {"perm": [2, 0, 1]}),
    Row("Concat", [(2, 3), (2, 5)], {"axis": 1}),
    Row("Split", [(2, 5, 3)], {"axis": 1}, consts=[_c([2, 3])], outputs=2),
    Row("Split", [(2, 7)], {"axis": -1, "num_outputs": 3}, outputs=3, loss_on=[0, 2], id="middle-unused"),
    Row("Split", [(6, 2)], {"num_outputs": 2}, outputs=2, loss_on=[1], id="first-unused"),
    Row("Slice", [(4, 6)], consts=[_c([1]), _c([3]), _c([1])]),
    Row("Slice", [(5, 6, 3)], consts=[_c([-1, 0, 1]), _c([-BIG, 6, 3]), _c([0, 1, -1]), _c([-1, 2, 1])],
        id="negative-steps-clamped"),
    Row("Slice", [(4, 6)], consts=[_c([-100, 1]), _c([100, -1])], id="default-axes-out-of-range"),
    Row("Slice", [(7, 3)], consts=[_c([5]), _c([0]), _c([0]), _c([-2])], id="step-minus-two"),
    Row("Slice", [(4, 3)], consts=[_c([2]), _c([2]), _c([0])], id="empty"),
    Row("Pad", [(2, 3, 4), ()], {"mode": "constant"}, consts=[_c([0, 1, 2, 0, 2, 1])],
        inputs=["x0", "c0", "x1"], id="constant-value"),
    Row("Pad", [(2, 3, 4)], {"mode": "constant"}, consts=[_c([1, -1, -2, 2]), _c([-1, 1])],
        inputs=["x0", "c0", "", "c1"], id="negative-pads-axes"),
    Row("Pad", [(2, 4, 5)], {"mode": "reflect"}, consts=[_c([0, 3, 1, 0, 2, 4])], id="reflect"),
    Row("Pad", [(2, 4, 5)], {"mode": "edge"}, consts=[_c([1, 2, 0, 0, 3, 1])], id="edge"),
    Row("Pad", [(2, 4, 5)], {"mode": "wrap"}, consts=[_c([2, 5]), _c([2])], inputs=["x0", "c0", "", "c1"],
        id="wrap-axes"),
    Row("ReduceSum", [(2, 3, 4)], {"keepdims": 1}, consts=[_c([1])]),
    Row("ReduceSum", [(2, 3, 4)], {"keepdims": 0, "noop_with_empty_axes": 1}, consts=[_c([], np.int64)],
        id="noop"),
    Row("ReduceMean", [(2, 3, 4)], {"keepdims": 0}, consts=[_c([2])]),
    Row("ReduceMax", [(2, 3, 4)], {"keepdims": 0}, consts=[_c([1])]),
    Row("ReduceMax", [(2, 3, 4)], {"keepdims": 1}, id="all-axes"),
    Row("ReduceMin", [(2, 3, 4)], {"keepdims": 0}, consts=[_c([-1, 0])]),
    Row("ReduceL1", [(2, 3, 4)], {"keepdims": 0}, consts=[_c([1])]),
    Row("ReduceL2", [(2, 3, 4)], {"keepdims": 1}, consts=[_c([0, 2])]),
    Row("ReduceSumSquare", [(2, 3, 4)], {"keepdims": 0}),
    Row("ReduceLogSum", [(2, 3, 4)], {"keepdims": 0}, consts=[_c([2])], low=0.5, high=2.0),
    Row("ReduceLogSumExp", [(2, 3, 4)], {"keepdims": 1}, consts=[_c([-1])]),
    Row("ScatterElements", [(3, 4), (2, 4)], {"axis": 0}, consts=[_c([[2, 0, 1, 2], [0, 1, 2, 1]])],
        inputs=["x0", "c0", "x1"], id="none"),
    Row("ScatterElements", [(3, 4), (3, 3)], {"axis": 1, "reduction": "add"},
        consts=[_c([[0, 0, 3], [1, -1, 1], [2, 2, 2]])], inputs=["x0", "c0", "x1"], id="add-repeats"),
    Row("GatherElements", [(3, 4)], {"axis": 1}, consts=[_c([[0, 0, 3], [1, -1, 1], [2, 2, 2]])]),
    Row("MatMul", [(2, 3, 4), (4, 5)]),
    Row("MatMul", [(4,), (2, 4, 5)], id="vector-left"),
    Row("MatMul", [(2, 3, 4), (4,)], id="vector-right"),
    Row("MatMul", [(4,), (4,)], id="vector-vector"),
    Row("Gemm", [(3, 4), (5, 4), (5,)], {"transB": 1, "alpha": 0.5, "beta": 2.0}),
    Row("Gemm", [(4, 3), (4, 5), (1, 5)], {"transA": 1}, id="transA"),
    Row("Einsum", [(3, 4), (4, 5)], {"equation": "ij,jk->ik"}, id="matmul"),
    Row("Einsum", [(2, 3, 4), (2, 4, 5)], {"equation": "bij, bjk -> bik"}, id="batch-matmul"),
    Row("Einsum", [(2, 3), (4, 3, 5), (2, 5)], {"equation": "bi,oij,bj->bo"}, id="bilinear"),
    Row("Einsum", [(2, 1, 3, 4), (1, 3, 4, 5)], {"equation": "...ij,...jk->...ik"}, id="ellipsis-broadcast"),
    Row("Einsum", [(2, 3, 4), (4, 5)], {"equation": "...ij,jk->...ik"}, id="ellipsis-one-side"),
    Row("Einsum", [(3, 4), (5,)], {"equation": "ij,k->ik"}, id="lonely-letter"),
    Row("Einsum", [(4,), (4,)], {"equation": "i,i"}, id="implicit-inner"),
    Row("Einsum", [(3, 4)], {"equation": "ij"}, id="implicit-identity"),
    Row("Einsum", [(2, 4, 4)], {"equation": "...ii->...i"}, id="diagonal"),
    Row("Einsum", [(4, 4)], {"equation": "ii->"}, id="trace"),
    Row("Conv", [(2, 3, 7, 7), (4, 3, 3, 3), (4,)], {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    Row("Conv", [(2, 4, 6, 6), (4, 1, 3, 3)], {"group": 4, "pads": [1, 1, 1, 1]}, id="depthwise"),
    Row("Conv", [(2, 6, 6, 5), (4, 3, 3, 3), (4,)], {"group": 2, "pads": [1, 0, 1, 2]}, id="grouped"),
    Row("Conv", [(2, 6, 5, 5), (4, 3, 1, 1)], {"group": 2, "strides": [2, 2]}, id="grouped-pointwise"),
    Row("Conv", [(1, 2, 8, 8), (3, 2, 3, 3)], {"strides": [2, 2], "pads": [1, 1, 1, 1]},
        id="stride-skips-the-end"),  # the last input row and column reach no output
    Row("Conv", [(1, 2, 9, 9), (3, 2, 3, 3)], {"dilations": [2, 2], "pads": [0, 1, 2, 1]},
        id="dilated-asymmetric"),
    Row("Conv", [(2, 4, 6, 5), (6, 2, 3, 3), (6,)], {"group": 2, "pads": [1, 1, 1, 1]}, id="groups"),
    Row("Conv", [(2, 3, 5, 5), (4, 3, 1, 1)], id="pointwise"),
    # a 2x2 input under a 5x5 kernel with pads 2: the corner taps only ever read padding
    Row("Conv", [(2, 2, 2, 2), (3, 2, 5, 5), (3,)], {"pads": [2, 2, 2, 2]}, id="taps-all-padding"),
    Row("Conv", [(1, 2, 6, 5), (2, 2, 3, 3)], {"strides": [2, 2], "pads": [2, 0, 1, 2]}, id="uneven-pads"),
    Row("Conv", [(2, 3, 7, 6), (4, 3, 1, 1), (4,)], {"strides": [2, 3], "pads": [1, 0, 0, 2]},
        id="pointwise-strided-padded"),
    Row("Conv", [(2, 4, 5, 5), (6, 2, 1, 1)], {"group": 2}, id="pointwise-groups"),
    Row("Conv", [(2, 3, 7), (2, 3, 1)], {"strides": [2]}, id="pointwise-1d"),
    Row("Conv", [(2, 3, 9), (4, 3, 3)], {"dilations": [2], "pads": [2, 2]}, id="1d-dilated"),
    Row("Conv", [(1, 2, 4, 4, 3), (2, 2, 3, 3, 2)], {"pads": [1, 1, 0, 1, 1, 1]}, id="3d"),
    Row("Conv", [(1, 2, 8, 7), (3, 2, 3, 2)], {"strides": [2, 3], "auto_pad": "SAME_LOWER"}, id="same-lower"),
    Row("Conv", [(1, 2, 8, 7), (3, 2, 3, 2)], {"dilations": [2, 2], "auto_pad": "SAME_UPPER"},
        id="dilated-same-upper", no_ort="onnxruntime refuses dilations with auto_pad SAME"),
    Row("ConvTranspose", [(2, 3, 4, 4), (3, 2, 3, 3), (2,)],
        {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}),
    Row("ConvTranspose", [(1, 2, 4, 5), (2, 3, 2, 3)], {"dilations": [2, 1], "pads": [0, 1, 1, 0]},
        id="dilated-asymmetric"),
    Row("ConvTranspose", [(2, 4, 3, 3), (4, 1, 3, 3)], {"group": 4, "strides": [2, 1]}, id="depthwise"),
    Row("ConvTranspose", [(2, 4, 3, 3), (4, 3, 2, 3), (6,)], {"group": 2, "strides": [2, 1],
                                                             "pads": [1, 0, 0, 1]}, id="groups"),
    Row("ConvTranspose", [(1, 2, 3, 3), (2, 2, 3, 3)], {"strides": [2, 2], "auto_pad": "SAME_UPPER"},
        id="same-upper"),
    Row("ConvTranspose", [(1, 1, 3, 3), (1, 2, 3, 3)], {"strides": [3, 2], "output_shape": [10, 8]},
        id="output-shape"),
    Row("ConvTranspose", [(2, 2, 5), (2, 3, 3)], {"strides": [2], "pads": [2, 1], "output_padding": [1]},
        id="1d"),
    Row("GlobalAveragePool", [(2, 3, 4, 4)]),
    Row("MaxPool", [(2, 3, 6, 6)], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    Row("MaxPool", [(2, 3, 5, 5)], {"kernel_shape": [2, 2], "storage_order": 1}, outputs=2, loss_on=[0],
        id="column-major-indices"),
    Row("AveragePool", [(2, 3, 6, 6)], {"kernel_shape": [3, 3], "strides": [2, 2],
                                        "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    Row("AveragePool", [(2, 3, 7, 6)], {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 0, 2, 1]},
        id="exclude-pad"),
    Row("AveragePool", [(1, 2, 9, 8)], {"kernel_shape": [3, 3], "dilations": [2, 1], "pads": [2, 0, 1, 1]},
        id="dilated"),
    Row("AveragePool", [(1, 2, 9, 8)], {"kernel_shape": [3, 2], "strides": [2, 3], "auto_pad": "SAME_UPPER"},
        id="same-upper"),
    Row("Resize", [(1, 2, 3, 4)], {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                                   "nearest_mode": "floor"},
        consts=[_c([], np.float32), _c([1, 1, 2, 3], np.float32)]),
    Row("Resize", [(2, 3, 4, 2)], {"mode": "nearest"}, consts=[_c([1, 1, 2, 3], np.float32)],
        inputs=["x0", "", "c0"], id="half-pixel-blocks"),
    Row("Resize", [(2, 3, 3, 2)], {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                                   "nearest_mode": "floor"}, consts=[_c([1, 1, 2, 2], np.float32)],
        inputs=["x0", "", "c0"], id="blocks-pooled"),
    Row("Resize", [(1, 2, 2, 3, 2)], {"mode": "nearest"}, consts=[_c([1, 1, 2, 1, 4], np.float32)],
        inputs=["x0", "", "c0"], id="blocks-pooled-3d"),
    Row("Resize", [(1, 2, 3, 4)], {"mode": "nearest", "coordinate_transformation_mode": "align_corners"},
        consts=[_c([1, 2, 5, 7])], inputs=["x0", "", "", "c0"], id="align-corners"),
    Row("Resize", [(1, 2, 5, 7)], {"mode": "nearest", "nearest_mode": "ceil", "axes": [3, 2]},
        consts=[_c([0.5, 0.6], np.float32)], inputs=["x0", "", "c0"], id="downsample-axes"),
    Row("Softmax", [(3, 5)], {"axis": 1}),
    Row("LogSoftmax", [(3, 5)], {"axis": -1}),
    Row("BatchNormalization", [(2, 3, 4, 4), (3,), (3,)], {"epsilon": 1e-3},
        consts=[_c([0.1, -0.2, 0.3], np.float64), _c([0.5, 1.5, 2.0], np.float64)]),
    Row("InstanceNormalization", [(2, 3, 4, 5), (3,), (3,)], {"epsilon": 1e-3}),
    Row("InstanceNormalization", [(3, 2, 6), (2,), (2,)], id="rank-3"),
    Row("GroupNormalization", [(2, 6, 3, 2), (3,), (3,)], {"num_groups": 3, "epsilon": 1e-3}),
    Row("LayerNormalization", [(3, 4, 5), (5,), (5,)]),
    Row("LayerNormalization", [(2, 3, 4), (3, 1), (4,)], {"axis": 1, "epsilon": 1e-3}, id="axis-1-broadcast"),
    Row("LayerNormalization", [(3, 4, 5), (4, 5), (5,)], {"axis": -2}, outputs=3, dtype=TP.FLOAT, tol=2e-3,
        id="mean-and-inv-std-used"),
    Row("LRN", [(2, 5, 3, 3)], {"size": 3, "alpha": 0.5, "beta": 0.75, "bias": 1.5}),
    Row("LRN", [(2, 6, 4, 1)], {"size": 4, "alpha": 0.9, "beta": 0.6}, id="even-size",
        no_ort="onnxruntime's LRN takes 4-D input with an odd size only"),
    Row("LRN", [(3, 4, 5)], {"size": 2, "alpha": 0.9, "beta": 0.6}, id="rank-3",
        no_ort="onnxruntime's LRN takes 4-D input with an odd size only"),
    Row("Where", [(3, 4), (3, 4)], id="where"),
    # ---- ops whose onnx node cases have no float input, or that need more configurations ----
    Row("Mod", [(3, 4), (4,)], {"fmod": 1}, low=-3, high=3, given={1: [0.7, -1.3, 2.1, -0.9]}),
    Row("CastLike", [(3, 4)], consts=[_c([], np.float64)]),
    Row("DequantizeLinear", [()], consts=[_c([[-3, 5], [7, 0]], np.int8), _c(2, np.int8)],
        inputs=["c0", "x0", "c1"]),
    Row("DequantizeLinear", [(3,)], {"axis": -2}, consts=[_c(np.arange(18).reshape(2, 3, 3), np.uint8),
                                                         _c([1, 0, 4], np.uint8)],
        inputs=["c0", "x0", "c1"], id="per-axis"),
    Row("Trilu", [(3, 4, 5)], consts=[_c(1)]),
    Row("Trilu", [(5, 3)], {"upper": 0}, consts=[_c(-1)], id="lower"),
    Row("ReverseSequence", [(5, 3, 2)], {"time_axis": 0, "batch_axis": 1}, consts=[_c([5, 2, 1])]),
    Row("ReverseSequence", [(3, 4)], {"time_axis": 1, "batch_axis": 0}, consts=[_c([4, 1, 3])],
        id="batch-first"),
    # odd differences: crop 5 -> 4 and pad 6 -> 9 (the kept part starts at floor(difference / 2))
    Row("CenterCropPad", [(5, 6, 3)], consts=[_c([4, 9, 3])]),
    Row("CenterCropPad", [(2, 7, 4)], {"axes": [-2, -1]}, consts=[_c([4, 7])], id="axes"),
    Row("MaxUnpool", [(1, 2, 2, 2)], {"kernel_shape": [2, 2], "strides": [2, 2]},
        consts=[_c([[[[0, 3], [9, 14]], [[17, 22], [24, 31]]]])]),
    Row("Compress", [(4, 3)], {"axis": 0}, consts=[_c([True, False, True], np.bool_)]),
    Row("Compress", [(2, 3)], consts=[_c([False, True, True, False, True], np.bool_)], id="flattened"),
    Row("AffineGrid", [(2, 2, 3)], consts=[_c([2, 3, 4, 5])]),
    Row("AffineGrid", [(1, 3, 4)], {"align_corners": 1}, consts=[_c([1, 1, 2, 3, 4])], id="3d-align-corners"),
    Row("Det", [(3, 3)]),
    Row("Det", [(2, 4, 4)], id="batch"),
    Row("Det", [(2, 1, 1)], id="1x1"),
    Row("Det", [(3, 3)], given={0: [[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [1.0, 0.0, 1.0]]}, id="singular"),
    Row("Col2Im", [(1, 12, 4)], consts=[_c([3, 4]), _c([2, 3])]),
    Row("Col2Im", [(2, 4, 12)], {"strides": [2, 1], "pads": [1, 0, 0, 1], "dilations": [1, 2]},
        consts=[_c([5, 5]), _c([2, 2])], id="strides-pads-dilations"),
    Row("DFT", [(2, 6, 1)], consts=[_c(1)], inputs=["x0", "", "c0"], id="real"),
    Row("DFT", [(2, 5, 3, 2)], {"inverse": 1}, consts=[_c(7), _c(1)], id="inverse-longer"),
    Row("DFT", [(3, 8, 1)], {"onesided": 1}, consts=[_c(6), _c(-2)], id="onesided-shorter"),
    Row("DFT", [(2, 4, 2)], {"inverse": 1, "onesided": 1}, consts=[_c(1)], inputs=["x0", "", "c0"],
        id="irfft"),
    Row("STFT", [(2, 20, 1), (6,)], consts=[_c(3)], inputs=["x0", "c0", "x1"], id="window"),
    Row("STFT", [(1, 16, 2)], {"onesided": 0}, consts=[_c(4), _c(5)], inputs=["x0", "c0", "", "c1"],
        id="complex-frame-length"),
]
# rows of further op families, a module each
ROWS += grad_rows_select.ROWS + grad_rows_sequence.ROWS


def _model(row: Row, x_names: list[str], const_names: list[str], rs: list[np.ndarray] | None,
           dtype_code: int) -> onnx.ModelProto:
    """The row's one-node model; with `rs`, loss = sum_k sum(y_k * R_k) over the outputs in loss_on."""
    inputs = row.inputs or x_names + const_names
    if row.op == "Where":
        inputs = ["cond"] + x_names
    ys = ["y"] if row.outputs == 1 else [f"y{k}" for k in range(row.outputs)]
    nodes = [helper.make_node(row.op, inputs, ys, **row.attrs)]
    dtype = helper.tensor_dtype_to_np_dtype(dtype_code)
    inits = [onnx.numpy_helper.from_array(c.astype(dtype) if c.dtype == np.float64 else c, n)
             for c, n in zip(row.consts, const_names)]  # float64 constants take the row's type
    for i in row.computed:
        inits[i].name = f"{const_names[i]}.value"
        nodes.insert(0, helper.make_node("Identity", [inits[i].name], [const_names[i]]))
    if row.op == "Where":
        cond = np.random.default_rng(5).random(row.shapes[0]) > 0.5
        inits.append(onnx.numpy_helper.from_array(cond, "cond"))
    outputs = [helper.make_tensor_value_info(y, dtype_code, None) for y in ys]
    if rs is not None:
        terms = []
        for k, r in zip(row.loss_on or range(row.outputs), rs):
            inits.append(onnx.numpy_helper.from_array(r.astype(dtype), f"R{k}"))
            nodes += [helper.make_node("Mul", [ys[k], f"R{k}"], [f"yr{k}"]),
                      helper.make_node("ReduceSum", [f"yr{k}"], [f"l{k}"], keepdims=0)]
            terms.append(f"l{k}")
        nodes.append(helper.make_node("Sum", terms, ["loss"]))
        outputs = [helper.make_tensor_value_info("loss", dtype_code, [])]
    graph = helper.make_graph(nodes, row.op, [helper.make_tensor_value_info(n, dtype_code, s)
                                              for n, s in zip(x_names, row.shapes)], outputs,
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _row_id(r: Row) -> str:
    return f"{r.op}-{r.id}" if r.id else r.op


def _setup(row: Row, dtype_code: int | None = None
           ) -> tuple[list[str], list[np.ndarray], onnx.ModelProto, np.random.Generator]:
    """Inputs and the model with its loss for a row (the same values for every caller)."""
    rng = np.random.default_rng(0)
    dtype_code = dtype_code or row.dtype
    dtype = helper.tensor_dtype_to_np_dtype(dtype_code)
    xs = [np.asarray(rng.uniform(row.low, row.high, s)).astype(dtype) for s in row.shapes]
    for i, v in row.given.items():
        assert np.shape(v) == row.shapes[i], (i, np.shape(v), row.shapes[i])
        xs[i] = np.asarray(v, dtype)
    names = [f"x{i}" for i in range(len(xs))]
    consts = [f"c{i}" for i in range(len(row.consts))]
    ys = _ref(_model(row, names, consts, None, dtype_code)).run(None, dict(zip(names, xs)))
    rs = [rng.standard_normal(np.shape(ys[k])) for k in row.loss_on or range(row.outputs)]
    return names, xs, _model(row, names, consts, rs, dtype_code), rng


PLAIN = Target(tuned=False)


@pytest.mark.parametrize("row", ROWS, ids=[_row_id(r) for r in ROWS])
def test_rule_matches_central_differences(row: Row) -> None:
    names, xs, model, rng = _setup(row)
    grads = _ref(gradient_model(model, "loss", names, PLAIN)).run(None, dict(zip(names, xs)))
    forward = _ref(model)
    r = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name.startswith("R")))
    eps = 1e-6 if row.dtype == TP.DOUBLE else 1e-3
    for i, name in enumerate(names):
        v = rng.standard_normal(xs[i].shape).astype(xs[i].dtype)

        def loss(step: float, i: int = i, v: np.ndarray = v, name: str = name) -> float:
            feeds = dict(zip(names, xs))
            feeds[name] = xs[i] + step * v
            if row.exact is not None:
                return float(np.sum(row.exact(*feeds.values()) * r))
            return float(forward.run(None, feeds)[0])

        numeric = (loss(eps) - loss(-eps)) / (2 * eps)
        analytic = float(np.sum(grads[1 + i].astype(np.float64) * v))
        assert abs(numeric - analytic) <= row.tol * max(1.0, abs(numeric)), (name, numeric, analytic)


# Each tuned Target, and on CUDA the border-tap form of conv weight gradients, which the rows' small
# maps would not reach otherwise (CUDA_CONV_MAX_MAP 0)
TARGETS = {"cpu": (Target("cpu"), None), "cpu-16-threads": (Target("cpu", 16), None),
           "cuda": (Target("cuda"), None), "cuda-taps": (Target("cuda"), 0)}


def _tuned_gradients(row: Row, target: Target, max_map: int | None, monkeypatch: pytest.MonkeyPatch,
                     dtype_code: int | None = None) -> tuple[list[np.ndarray], onnx.ModelProto]:
    if max_map is not None:
        monkeypatch.setattr(tuned_conv, "CUDA_CONV_MAX_MAP", max_map)
    names, xs, model, _ = _setup(row, dtype_code)
    tuned = gradient_model(model, "loss", names, target)
    return _ref(tuned).run(None, dict(zip(names, xs))), tuned


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("row", ROWS, ids=[_row_id(r) for r in ROWS])
def test_tuned_lowering_gives_the_plain_gradients(row: Row, target: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The same sums in other ops: the gradients of the plain lowering, which the central
    differences above check, to rounding (float64, in the reference evaluator)."""
    names, xs, model, _ = _setup(row)
    plain = _ref(gradient_model(model, "loss", names, PLAIN)).run(None, dict(zip(names, xs)))
    tuned, _ = _tuned_gradients(row, *TARGETS[target], monkeypatch)
    for name, a, b in zip(["loss", *names], plain, tuned):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12, err_msg=name)


def test_every_tuned_lowering_is_checked_by_some_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each variant that dlspec.compiler.tune registers for gradient rules gives a gradient for at
    least one row and Target above, so the test above compares it with the plain lowering."""
    from dlspec.compiler.grad import common, conv, resize, walk
    from dlspec.compiler.graph import composite

    lowerings: list[Lowering] = [conv.conv_input_grad, conv.conv_transpose, conv.conv_weight_grad,
                                 common.masked, walk.add_up, resize.block_sum, composite.channel_sum]
    used: set[str] = set()
    expected = {f"{low.__name__}:{fn.__name__}" for low in lowerings for _, fn in low.variants}

    def traced(fn: Any, name: str) -> Any:
        def call(*args: Any, **kw: Any) -> Any:
            out = fn(*args, **kw)
            if out is not None:
                used.add(name)
            return out
        return call

    for low in lowerings:
        monkeypatch.setattr(low, "variants", [(when, traced(fn, f"{low.__name__}:{fn.__name__}"))
                                              for when, fn in low.variants])
    with monkeypatch.context() as m:
        for row in ROWS:
            for target, max_map in TARGETS.values():
                _tuned_gradients(row, target, max_map, m)
    assert expected - used == set(), sorted(expected - used)


@pytest.mark.parametrize("row", [r for r in ROWS if not r.no_ort and r.op in ("Conv", "ConvTranspose")],
                         ids=_row_id)
def test_many_thread_lowering_runs_in_onnxruntime(row: Row, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 3-D Conv forms of the many-thread lowering in float32 in onnxruntime, against the
    reference's plain gradients."""
    names, xs, model, _ = _setup(row)
    plain = _ref(gradient_model(model, "loss", names, PLAIN)).run(None, dict(zip(names, xs)))
    names, xs32, model32, _ = _setup(row, TP.FLOAT)
    sess = ort.InferenceSession(gradient_model(model32, "loss", names, Target("cpu", 16)).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    for name, e, g in zip(names, plain[1:], sess.run(None, dict(zip(names, xs32)))[1:]):
        np.testing.assert_allclose(g, e, rtol=1e-3, atol=1e-4, err_msg=name)


def test_split_gradient_fills_zeros_for_unused_outputs() -> None:
    row = next(r for r in ROWS if r.id == "middle-unused")
    names, xs, model, _ = _setup(row)
    grad = _ref(gradient_model(model, "loss", names)).run(None, dict(zip(names, xs)))[1]
    assert grad.shape == (2, 7)
    np.testing.assert_array_equal(grad[:, 3:6], 0.0)  # num_outputs=3 splits 7 as 3, 3, 1
    assert np.all(grad[:, :3] != 0) and np.all(grad[:, 6:] != 0)


def test_reduce_max_splits_ties_evenly() -> None:
    # like torch.amax: tied maxima share the gradient
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0], [5.0, 5.0, 5.0]])
    node = helper.make_node("ReduceMax", ["x", "axes"], ["y"], keepdims=0)
    loss = helper.make_node("ReduceSum", ["y"], ["loss"], keepdims=0)
    graph = helper.make_graph([node, loss], "m", [helper.make_tensor_value_info("x", TP.DOUBLE, [3, 3])],
                              [helper.make_tensor_value_info("loss", TP.DOUBLE, [])],
                              initializer=[onnx.numpy_helper.from_array(_c([1]), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    grad = _ref(gradient_model(model, "loss", ["x"])).run(None, {"x": x})[1]
    np.testing.assert_allclose(grad, [[0, 0.5, 0.5], [0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3]])


ORT_ROWS = [r for r in ROWS if r.op != "Cast"]  # the Cast row casts to float64 on purpose


@pytest.mark.parametrize("row", ORT_ROWS, ids=[_row_id(r) for r in ORT_ROWS])
def test_rule_runs_in_onnxruntime(row: Row) -> None:
    """The gradient graph in float32 runs in plain onnxruntime (CPU) and agrees with the reference."""
    if row.no_ort:
        pytest.skip(row.no_ort)
    names, xs, model, _ = _setup(row)
    expected = _ref(gradient_model(model, "loss", names)).run(None, dict(zip(names, xs)))
    names, xs32, model32, _ = _setup(row, TP.FLOAT)
    sess = ort.InferenceSession(gradient_model(model32, "loss", names).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    got = sess.run(None, dict(zip(names, xs32)))
    for name, e, g in zip(names, expected[1:], got[1:]):  # gradients (the reference's forward may differ)
        np.testing.assert_allclose(g, e, rtol=1e-3, atol=1e-4, err_msg=name)


def test_every_rule_has_a_row() -> None:
    assert set(RULES) <= {r.op for r in ROWS}, sorted(set(RULES) - {r.op for r in ROWS})


def test_missing_rule_names_the_op_and_why() -> None:
    nodes = [helper.make_node("RoiAlign", ["x", "rois", "batch"], ["y"], name="roi", output_height=2,
                              output_width=2),
             helper.make_node("ReduceSum", ["y"], ["loss"], keepdims=0)]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TP.FLOAT, [1, 2, 5, 5])],
                              [helper.make_tensor_value_info("loss", TP.FLOAT, [])], initializer=[
                                  onnx.numpy_helper.from_array(np.array([[0, 0, 3, 3]], np.float32), "rois"),
                                  onnx.numpy_helper.from_array(np.array([0], np.int64), "batch")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    from dlspec.spec.errors import CompileError
    with pytest.raises(CompileError, match="no gradient rule for ONNX op RoiAlign .node roi.*bilinear"):
        gradient_model(model, "loss", ["x"])


@pytest.mark.parametrize("opset, message", [
    (24, "the model uses ONNX opset 24, newer than opset 20"),
    (OPSET, "node attention uses Attention, which ONNX added at opset 23, newer than opset 20"),
])
def test_newer_ops_are_refused_naming_the_opset(opset: int, message: str) -> None:
    # Attention is not rewritten into opset-20 ops (Swish and others are: compiler/graph/newer_ops.py)
    nodes = [helper.make_node("Attention", ["x", "x", "x"], ["y"], name="attention"),
             helper.make_node("ReduceSum", ["y"], ["loss"], keepdims=0)]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TP.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("loss", TP.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    from dlspec.spec.errors import CompileError
    with pytest.raises(CompileError, match=message):
        gradient_model(model, "loss", ["x"])
