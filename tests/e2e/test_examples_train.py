"""The ViT, LSTM and two-head examples train: three epochs of each as `dlspec train` runs them
(their full runs' accuracies are in examples/README.md). Each loss term falls and the test
metrics leave chance behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlspec.api import fit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EPOCHS = 3


def epochs_of(run_dir: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("example,least", [("vit_digits", 0.3), ("lstm_digits", 0.5)])
def test_a_sequence_model_learns(tmp_path: Path, example: str, least: float) -> None:
    result = fit(EXAMPLES / f"{example}.dlspec", epochs=EPOCHS, out=tmp_path / example, threads=2)
    records = epochs_of(result.run_dir)
    assert len(records) == EPOCHS
    assert records[-1]["train_loss"] < 0.9 * records[0]["train_loss"]
    assert result.metrics["accuracy"] >= least, result.metrics  # chance is 0.1
    assert (result.run_dir / "model.onnx").is_file()


def test_two_heads_learn_both_tasks(tmp_path: Path) -> None:
    result = fit(EXAMPLES / "two_heads.dlspec", epochs=EPOCHS, out=tmp_path / "two_heads", threads=2)
    first, last = epochs_of(result.run_dir)[0], epochs_of(result.run_dir)[-1]
    # 100 * mse dominates the first steps (the head starts far from ink's mean of 0.3): it falls
    # twenty-fold in three epochs, cross entropy less
    assert last["train_loss:mass"] < 0.2 * first["train_loss:mass"], (first, last)
    assert last["train_loss:cls"] < 0.9 * first["train_loss:cls"], (first, last)
    assert result.metrics["accuracy:cls"] >= 0.4, result.metrics
    assert result.metrics["mae:mass"] < 0.1, result.metrics  # predicting 0 would be off by 0.3
