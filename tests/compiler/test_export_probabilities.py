"""The probabilities export adds: a softmax over the classes, but for bce_with_logits a sigmoid of
each logit (a softmax over one logit would always say 1)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort

import dlspec
from dlspec.compiler.lower.export import export

SPEC = """
model m {
  input  x: float32[N, 3]
  target y: TARGET
  head linear(WIDTH)
  loss LOSS
}
"""


def _probabilities(tmp_path: Path, target: str, width: int, loss: str) -> tuple[np.ndarray, np.ndarray]:
    path = tmp_path / "m.dlspec"
    path.write_text(textwrap.dedent(SPEC.replace("TARGET", target).replace("WIDTH", str(width))
                                    .replace("LOSS", loss)))
    model, _ = export(dlspec.compile(dlspec.load(path)).onnx, {})
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    logits, probabilities = sess.run(["logits", "probabilities"], {"x": x})
    return logits, probabilities


def test_a_binary_head_gets_the_sigmoid_of_each_logit(tmp_path: Path) -> None:
    for target, width in (("float32[N, 1]", 1), ("float32[N, 3]", 3)):  # one label, or three
        logits, probabilities = _probabilities(tmp_path, target, width, "bce_with_logits")
        np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-logits)), rtol=1e-5)


def test_a_classifier_gets_the_softmax_over_its_classes(tmp_path: Path) -> None:
    logits, probabilities = _probabilities(tmp_path, "int64[N]", 4, "cross_entropy")
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probabilities, e / e.sum(1, keepdims=True), rtol=1e-5)


def test_probabilities_keep_a_dimension_the_model_leaves_unknown(tmp_path: Path) -> None:
    """A logits dimension with neither size nor name (a damaged or hand-edited file) stays unknown
    in `probabilities`: written as size 0 it contradicted shape inference, and export failed."""
    path = tmp_path / "m.dlspec"
    path.write_text(SPEC.replace("TARGET", "int64[N]").replace("WIDTH", "4").replace("LOSS", "cross_entropy"))
    model = dlspec.compile(dlspec.load(path)).onnx
    logits = next(o for o in model.graph.output if o.name == "logits")
    logits.type.tensor_type.shape.dim[1].Clear()
    exported, _ = export(model, {})
    probabilities = next(o for o in exported.graph.output if o.name == "probabilities")
    assert probabilities.type == logits.type
