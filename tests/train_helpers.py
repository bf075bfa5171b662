"""Shared machinery of the training-graph tests: compile a spec's training graphs, build the
feeds of train_step.onnx and gradients.onnx by input name, run them in onnxruntime, and carry
the `.next` outputs over to the next step.

Nothing here imports torch: the ONNX-only checks run without it.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from dlspec.compiler import TrainingGraphs, compile_training
from dlspec.spec import load
from dlspec.spec.loader import Program

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
STANDARD_DOMAINS = ("", "ai.onnx")


def load_text(tmp_path: Path, text: str, name: str = "m") -> Program:
    path = tmp_path / f"{name}.dlspec"
    path.write_text(textwrap.dedent(text))
    return load(path)


def compile_training_text(tmp_path: Path, text: str, seed: int | None = None,
                          name: str = "m") -> TrainingGraphs:
    return compile_training(load_text(tmp_path, text, name), seed=seed)


def example_model_text(example: str) -> str:
    """An example's text without its train block (each example ends with at most one)."""
    text = (EXAMPLES / f"{example}.dlspec").read_text()
    return re.split(r"^train\b", text, flags=re.M)[0]


def session(proto: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def input_names(proto: onnx.ModelProto) -> list[str]:
    return [i.name for i in proto.graph.input]


def output_names(proto: onnx.ModelProto) -> list[str]:
    return [o.name for o in proto.graph.output]


def scalars(lr: float | None = None, step: int = 1) -> dict[str, np.ndarray]:
    out = {"step": np.array(step, np.int64)}
    if lr is not None:
        out["lr"] = np.array(lr, np.float32)
    return out


def feeds_for(proto: onnx.ModelProto, *sources: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The graph's inputs, each taken from the first source that has it (all must be found)."""
    feeds: dict[str, np.ndarray] = {}
    for name in input_names(proto):
        for src in sources:
            if name in src:
                feeds[name] = src[name]
                break
        else:
            raise AssertionError(f"no value for input {name}")
    return feeds


def run(sess: ort.InferenceSession, feeds: dict[str, np.ndarray],
        outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    names = outputs or [o.name for o in sess.get_outputs()]
    return dict(zip(names, (np.asarray(v) for v in sess.run(names, feeds))))


def carried(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`w.next` -> `w`: what the next step reads back."""
    return {k[: -len(".next")]: v for k, v in outputs.items() if k.endswith(".next")}


def dropout_masks(proto: onnx.ModelProto, paths: list[str]) -> dict[str, str]:
    """The value each dropout layer multiplies its input by (keep / (1 - p)), by layer path:
    the second input of the layer's last Mul node."""
    out: dict[str, str] = {}
    for path in paths:
        muls = [n for n in proto.graph.node if n.op_type == "Mul" and n.name.startswith(path + "/")]
        assert muls, f"no dropout nodes for {path}"
        out[path] = muls[-1].input[1]
    return out


def with_outputs(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `proto` that also outputs the float values `names`."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    out.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    return out


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """||got - want|| / max(||want||, 1e-12), Frobenius norms in float64."""
    a, b = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    return float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-12))


def param_inputs(tg: TrainingGraphs) -> list[str]:
    """train_step inputs that init.npz provides: parameters, statistics, optimizer state."""
    return [n for n in input_names(tg.train_step) if n in tg.init]


def relu_inputs(proto: onnx.ModelProto) -> list[str]:
    """The inputs of the network's Relu nodes (not the loss's or the backward pass's), in order."""
    return [n.input[0] for n in proto.graph.node
            if n.op_type == "Relu" and not n.name.startswith(("grad", "loss", "optim"))]
