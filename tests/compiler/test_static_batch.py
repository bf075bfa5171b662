"""With the batch dimension fixed (a free-dimension override, as StepRunner does on CUDA),
onnxruntime's basic optimisations must fold every shape computation of a train step to constants.

Shape and Size are the only nodes whose outputs the CUDA provider keeps in host memory, and the
arithmetic after them is what it moves to the CPU; a graph with none left runs wholly on the GPU.
Size never folds (onnxruntime folds Shape of a known shape, not Size), so the compiler counts
elements as ReduceProd(Shape(x)).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from dlspec.compiler import compile_training
from dlspec.compiler.graph.proto import BATCH_DIM
from dlspec.spec import load

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EVERY_AUGMENTATION = ("hflip -> vflip -> translate(1) -> crop(1) -> noise(0.02) -> brightness(0.2) "
                      "-> contrast(0.2) -> cutout(3)")


def basic_optimised(model: onnx.ModelProto, batch: int | None) -> onnx.ModelProto:
    """The graph onnxruntime hands to its providers: after the basic, provider-independent passes."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.log_severity_level = 3
    if batch is not None:
        so.add_free_dimension_override_by_name(BATCH_DIM, batch)
    with tempfile.TemporaryDirectory() as tmp:
        so.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return onnx.load(so.optimized_model_filepath)


def host_shaped(model: onnx.ModelProto) -> list[str]:
    return [f"{n.op_type} {n.name}" for n in model.graph.node if n.op_type in ("Shape", "Size")]


@pytest.mark.parametrize("example", ["digits", "resnet18_cifar", "vgg11"])
def test_a_fixed_batch_folds_every_shape_computation(tmp_path: Path, example: str) -> None:
    text = (EXAMPLES / f"{example}.dlspec").read_text()
    if example == "digits":  # every augmentation, so each one's shape arithmetic is covered
        text = text.replace("translate(1) -> noise(0.02)", EVERY_AUGMENTATION)
        assert EVERY_AUGMENTATION in text
    path = tmp_path / f"{example}.dlspec"
    path.write_text(text)
    tg = compile_training(load(path))
    assert host_shaped(basic_optimised(tg.train_step, None)), "a dynamic batch keeps Shape nodes"
    assert host_shaped(basic_optimised(tg.train_step, 16)) == []
