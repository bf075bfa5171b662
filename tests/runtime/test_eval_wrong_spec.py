"""`dlspec eval MODEL DATA --spec FILE` with a spec that is not the model's: where the model's
output cannot be scored as the spec's head (class scores, per-pixel scores, one logit per label,
one value per target value), one error line that asks whether it is a model of this spec, not a
numpy error in the metric."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import dlspec
from dlspec.spec.errors import RunError

HEADS = {  # name: (target, head width, loss)
    "binary": ("float32[N]", 1, "bce_with_logits"),
    "labels": ("float32[N, 3]", 3, "bce_with_logits"),
    "classify": ("int64[N]", 3, "cross_entropy"),
    "regress": ("float32[N, 2]", 2, "mse"),
}


def spec(tmp_path: Path, kind: str) -> Path:
    target, width, loss = HEADS[kind]
    path = tmp_path / f"{kind}.dlspec"
    path.write_text(f"model m {{\n  input x: float32[N, 4]\n  target y: {target}\n"
                    f"  backbone {{ linear(8) -> relu }}\n  head linear({width})\n  loss {loss}\n}}\n")
    return path


def data(tmp_path: Path, kind: str) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    y = {"binary": (x[:, 0] > 0).astype(np.float32), "labels": (x[:, :3] > 0).astype(np.float32),
         "classify": np.arange(6) % 3, "regress": x[:, :2]}[kind]
    path = tmp_path / f"{kind}.npz"
    np.savez(path, x=x, y=y)
    return path


@pytest.mark.parametrize(("model", "other"), [("binary", "classify"), ("classify", "binary"),
                                              ("labels", "binary"), ("binary", "labels"),
                                              ("classify", "regress")])
def test_an_output_the_spec_cannot_score_is_one_clean_error(tmp_path: Path, model: str, other: str) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(dlspec.compile(spec(tmp_path, model)).onnx, str(path))
    assert dlspec.evaluate(path, spec(tmp_path, model), data(tmp_path, model))["samples"] == 6
    with pytest.raises(RunError, match=r"output 'logits' has shape .* for target 'y' of shape .*: is it "
                                       r"a model of this spec\?$"):
        dlspec.evaluate(path, spec(tmp_path, other), data(tmp_path, other))
