"""examples/segment_digits.dlspec trained briefly end to end: `mask` derived
from the bundled digits, the mask moved by translate, mean IoU picking best.npz, and `dlspec
eval` reporting pixel accuracy and mean IoU as sklearn computes them from the model's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from sklearn.metrics import jaccard_score

from dlspec.api import evaluate, export, predict
from dlspec.cli import main
from dlspec.data import load_dataset
from dlspec.spec import load
from dlspec.training import FitOptions, fit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "segment_digits.dlspec"
CLASSES = 11


def test_segment_digits_trains_and_evaluates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prog = load(EXAMPLE)
    result = fit(prog, EXAMPLE, None, FitOptions(epochs=2, out=tmp_path / "run", threads=2),
                 Console(quiet=True))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"train_mean_iou", "val_mean_iou", "val_accuracy", "train_loss:dice"} <= set(records[-1])
    best = max(records, key=lambda r: r["val_mean_iou"])  # best.npz is the highest val mean IoU
    saved = np.load(tmp_path / "run" / "best.npz")
    assert int(saved["__epoch__"]) + 1 == best["epoch"]

    # the test split through the trained model.onnx, scored by sklearn
    model = tmp_path / "run" / "model.onnx"
    train = prog.train("segment_digits")
    assert train is not None
    test = load_dataset(train, prog.model(), EXAMPLE.parent, CLASSES).test
    scores = predict(model, {"image": test["image"]})["logits"]
    assert scores.shape == (len(test["mask"]), CLASSES, 8, 8)
    pred, truth = scores.argmax(1).ravel(), test["mask"].ravel()
    want = {"accuracy": float((pred == truth).mean()),
            "mean_iou": float(jaccard_score(truth, pred, average="macro"))}
    got = evaluate(model, EXAMPLE)
    assert got == pytest.approx({**want, "samples": float(len(truth) // 64)}, rel=1e-9)
    assert result.metrics["mean_iou"] == pytest.approx(want["mean_iou"], rel=1e-9)
    # well past background everywhere (mean IoU 0.06) after two short epochs
    assert want["mean_iou"] > 0.2 and want["accuracy"] > 0.7

    assert main(["eval", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert f"accuracy {want['accuracy']:.4f}, mean_iou {want['mean_iou']:.4f}" in out

    # the deployable model gives each pixel's class probabilities
    (tmp_path / "exported.onnx").write_bytes(export(tmp_path / "run").SerializeToString())
    probs = predict(tmp_path / "exported.onnx", {"image": test["image"][:5]})["probabilities"]
    assert probs.shape == (5, CLASSES, 8, 8)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
