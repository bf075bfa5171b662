"""Which ops the gradient rules choose where several lowerings compute the same thing: the
choices are measured speed-ups in onnxruntime (bench/lowering_choices.py times them against the
forms they replaced), so a change that silently falls back to the slow form fails here (the
values themselves are checked in test_grad_rules.py and the parity tests)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import onnx
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from dlspec.compiler.gradients import gradient_model
from dlspec.compiler.opset import IR_VERSION, OPSET
from dlspec.compiler.optim import PACK_BELOW

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train_helpers import compile_training_text  # noqa: E402

SMALL_CNN = """model m {
  input x: float32[N, 3, 8, 8]
  target label: int64[N]
  backbone { a: conv(4, k=3) -> bn -> relu -> conv(8, k=3) -> bn -> relu }
  head classify(classes=3)
  loss cross_entropy
}
train { optimizer adamw(lr=1e-3)  clip grad_norm(1.0) }
"""


Shapes = dict[str, list[int | str]]


def _grad_nodes(node: onnx.NodeProto, shapes: Shapes, wrt: list[str],
                device: str = "cpu") -> list[onnx.NodeProto]:
    inputs = [helper.make_tensor_value_info(n, TP.FLOAT, s) for n, s in shapes.items()]
    loss = helper.make_node("ReduceSum", [node.output[0]], ["loss"], keepdims=0)
    out = [helper.make_tensor_value_info("loss", TP.FLOAT, [])]
    graph = helper.make_graph([node, loss], "g", inputs, out)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    return list(gradient_model(model, "loss", wrt, device).graph.node[len(model.graph.node):])


def _grad_ops(node: onnx.NodeProto, shapes: Shapes, wrt: list[str]) -> Counter[str]:
    return Counter(n.op_type for n in _grad_nodes(node, shapes, wrt))


def test_stride_one_conv_input_gradient_is_a_conv_not_a_conv_transpose() -> None:
    conv = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    ops = _grad_ops(conv, {"x": ["N", 8, 6, 6], "w": [4, 8, 3, 3]}, ["x"])
    assert ops["Conv"] == 1 and ops["ConvTranspose"] == 0


def test_strided_conv_input_gradient_stays_a_conv_transpose() -> None:
    conv = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2])
    ops = _grad_ops(conv, {"x": ["N", 8, 6, 6], "w": [4, 8, 3, 3]}, ["x"])
    assert ops["ConvTranspose"] == 1 and ops["Conv"] == 0


def test_pointwise_conv_weight_gradient_is_one_gemm_without_channels_last_copies() -> None:
    for strides in ([1, 1], [2, 2]):
        conv = helper.make_node("Conv", ["x", "w"], ["y"], strides=strides)
        nodes = _grad_nodes(conv, {"x": ["N", 8, 6, 6], "w": [4, 8, 1, 1]}, ["w"])
        ops = Counter(n.op_type for n in nodes)
        assert ops["Concat"] == 0 and ops["Gemm"] == 1 and ops["MatMul"] == 0
        perms = [list(a.ints) for n in nodes if n.op_type == "Transpose" for a in n.attribute]
        assert perms == [[1, 0, 2, 3]] * 2  # channels first for X and G, never [0, 2, 3, 1]


def test_conv_weight_gradient_multiplies_per_tap_without_an_im2col_copy() -> None:
    conv = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    nodes = _grad_nodes(conv, {"x": ["N", 8, 6, 6], "w": [4, 8, 3, 3]}, ["w"])
    assert Counter(n.op_type for n in nodes)["MatMul"] == 9
    made = {o: n.op_type for n in nodes for o in n.output}
    (concat,) = [n for n in nodes if n.op_type == "Concat"]
    assert {made[i] for i in concat.input} == {"Unsqueeze"}  # stacks [O, C] results, not the taps
    # the CPU reads the 9 taps from one zero-padded copy of x
    ops = Counter(n.op_type for n in nodes)
    assert ops["Pad"] == 1 and ops["Slice"] == 9
    # CUDA reads no padded copy (onnxruntime's CUDA Pad is slow): on maps above
    # CONV_WEIGHT_GRAD_MAX_MAP each of the 8 border taps slices both x and G to the positions it
    # reaches; the centre tap takes G whole
    nodes = _grad_nodes(conv, {"x": ["N", 8, 12, 12], "w": [4, 8, 3, 3]}, ["w"], "cuda")
    ops = Counter(n.op_type for n in nodes)
    assert ops["Pad"] == 0 and ops["Slice"] == 9 + 8 and ops["MatMul"] == 9


def test_cuda_conv_weight_gradient_on_small_maps_is_one_conv_over_the_batch() -> None:
    """On CUDA, a 6x6 output map: dW is one Conv of x as [C, N, 6, 6] with G as [O, N, 6, 6] as
    its kernel; strided, the forward stride becomes the kernel's dilation. 12x12 stays taps."""
    for strides, x, dilations in (([1, 1], 6, [1, 1]), ([2, 2], 11, [2, 2])):
        conv = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], strides=strides)
        nodes = _grad_nodes(conv, {"x": ["N", 8, x, x], "w": [4, 8, 3, 3]}, ["w"], "cuda")
        ops = Counter(n.op_type for n in nodes)
        assert ops["Conv"] == 1 and ops["MatMul"] == 0 and ops["Pad"] == 0
        (dw,) = [n for n in nodes if n.op_type == "Conv"]
        attrs = {a.name: list(a.ints) for a in dw.attribute}
        assert attrs["dilations"] == dilations and attrs["strides"] == [1, 1]
        made = {o: n for n in nodes for o in n.output}
        assert all(made[i].op_type == "Transpose" and list(made[i].attribute[0].ints) == [1, 0, 2, 3]
                   for i in dw.input)


def test_grouped_conv_weight_gradients_take_every_group_at_once() -> None:
    """No per-group copies of the lowering: a depthwise layer's dW is one grouped Conv (on the
    CPU too: onnxruntime threads it over the groups), and groups of many filters batch the 9
    tap products over the groups."""
    dw = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], group=32)
    for device in ("cpu", "cuda"):
        nodes = _grad_nodes(dw, {"x": ["N", 32, 6, 6], "w": [32, 1, 3, 3]}, ["w"], device)
        ops = Counter(n.op_type for n in nodes)
        assert ops["Conv"] == 1 and ops["MatMul"] == 0 and ops["Slice"] == 0, (device, ops)
    wide = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], group=2)
    nodes = _grad_nodes(wide, {"x": ["N", 32, 12, 12], "w": [64, 16, 3, 3]}, ["w"])
    ops = Counter(n.op_type for n in nodes)
    assert ops["MatMul"] == 9 and ops["Slice"] == 9 and ops["Conv"] == 0


def test_relu_gradient_masks_with_a_multiply_not_where() -> None:
    ops = _grad_ops(helper.make_node("Relu", ["x"], ["y"]), {"x": ["N", 3, 4]}, ["x"])
    assert ops["Where"] == 0 and ops["Mul"] == 1


def test_nearest_upsampling_with_a_symbolic_batch_sums_blocks() -> None:
    factors = helper.make_tensor("s", TP.FLOAT, [4], [1, 1, 2, 2])
    scales = helper.make_node("Constant", [], ["s"], value=factors)
    resize = helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest",
                              coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    inputs = [helper.make_tensor_value_info("x", TP.FLOAT, ["N", 3, 4, 4])]
    loss = helper.make_node("ReduceSum", ["y"], ["loss"], keepdims=0)
    graph = helper.make_graph([scales, resize, loss], "g", inputs,
                              [helper.make_tensor_value_info("loss", TP.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    ops = Counter(n.op_type for n in gradient_model(model, "loss", ["x"]).graph.node[3:])
    assert ops["ScatterElements"] == 0 and ops["AveragePool"] == 1


def test_training_batch_norm_takes_its_closed_form_gradient(tmp_path: Path) -> None:
    """The closed form takes 22 nodes (seven of them constants, four full-size) where the op-by-op
    rules would differentiate each primitive op of the forward, and recompute its statistics."""
    tg = compile_training_text(tmp_path, SMALL_CNN)
    bn = [n.op_type for n in tg.gradients.graph.node
          if n.name.startswith("grad/") and n.doc_string.endswith("backbone.a.bn1")]
    assert 0 < len(bn) <= 22 and "Sqrt" not in bn and "Expand" not in bn
    # the per-channel affine maps are single inference-mode BatchNormalization passes
    assert bn.count("BatchNormalization") == 2
    forward = [n for n in tg.train_step.graph.node if n.op_type == "BatchNormalization"
               and not n.name.startswith("grad/") and n.doc_string.endswith("backbone.a.bn1")]
    assert len(forward) == 2  # x - mean, then the normalization; neither in training mode
    assert not any(a.name == "training_mode" and a.i for n in forward for a in n.attribute)


def test_per_channel_sums_reduce_one_contiguous_block_of_axes_at_a_time(tmp_path: Path) -> None:
    """Batch-norm statistics, their gradients and conv bias gradients sum over (0, 2, 3) as two
    reductions, space then batch: onnxruntime's CUDA provider runs a contiguous block with its
    own kernels, and anything else through cuDNN's slower general reduction."""
    tg = compile_training_text(tmp_path, SMALL_CNN)
    graph = tg.train_step.graph
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t).tolist()
              for n in graph.node if n.op_type == "Constant"}
    axes = [consts.get(n.input[1]) for n in graph.node
            if n.op_type in ("ReduceSum", "ReduceMean") and len(n.input) > 1]
    assert axes.count([2]) >= 8 and axes.count([0]) >= 8  # two BNs: mean, var, and two grad sums each
    assert not any(a and 0 in a and len(a) > 1 for a in axes)


def test_small_parameters_share_one_optimizer_update(tmp_path: Path) -> None:
    tg = compile_training_text(tmp_path, SMALL_CNN)
    small = [n for n, v in tg.init.items() if not n.endswith((".m", ".v", "running_mean", "running_var"))
             and v.size < PACK_BELOW]
    assert len(small) >= 6
    ops = Counter(n.op_type for n in tg.train_step.graph.node if n.name.startswith("optim/"))
    assert ops["Sqrt"] == 3  # sqrt(v) once for the pack; sqrt(1 - b2^t); the clipping norm
    assert ops["Split"] == 3  # the pack's parameters, m and v go back to their own names
