"""Training, evaluating and exporting a model with two heads, and a model with an image and a
table input, each on an .npz written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from rich.console import Console

from dlspec.api import evaluate, export
from dlspec.cli import main
from dlspec.selection import val_score
from dlspec.spec import load
from dlspec.training import FitOptions, fit

TWO_HEADS = """
model two {
  input  image: float32[N, 1, 8, 8]
  target label: int64[N]
  target ink:   float32[N]
  features { image = image / 16 }
  backbone { conv(8) -> bn -> relu -> maxpool(2) -> flatten }
  head cls: dropout(0.1) -> linear(10)
  head mass: linear(16) -> relu -> linear(1)
  loss cross_entropy(cls, label) + 0.5 * huber(mass, ink)
}
train {
  data      npz("digits.npz", test=0.2, val=0.2)
  batch     64
  epochs    3
  optimizer adam(lr=3e-3)
  seed      1
}
"""

MIXED = """
model mixed {
  input  image: float32[N, 1, 8, 8]
  input  table: float32[N, 3]
  target label: int64[N]
  features { image = image / 16 }
  backbone {
    img:  conv(8, from=image) -> relu -> maxpool(2) -> flatten
    tab:  linear(8, from=table) -> relu
    both: concat(from=[img, tab])
  }
  head linear(10)
  loss cross_entropy
}
train {
  data      npz("mixed.npz", test=0.2, val=0.1)
  batch     64
  epochs    4
  optimizer adam(lr=1e-2)
  augment   translate(1)
  seed      2
}
"""


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    image = d.images[:, None].astype(np.float32)
    return {"image": image, "label": d.target.astype(np.int64),
            "ink": (image.sum((1, 2, 3)) / 300).astype(np.float32)}  # the ink mass, about 1


def _write(tmp_path: Path, text: str, name: str) -> Path:
    path = tmp_path / f"{name}.dlspec"
    path.write_text(text)
    return path


def test_two_heads_train_and_log_each_term_and_each_head(tmp_path: Path,
                                                         digits: dict[str, np.ndarray]) -> None:
    np.savez(tmp_path / "digits.npz", **digits)
    spec = _write(tmp_path, TWO_HEADS, "two")
    console = Console(record=True, width=1000)
    result = fit(load(spec), spec, None, FitOptions(out=tmp_path / "run"), console)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_loss", "train_loss:cls", "train_loss:mass", "train_accuracy:cls", "train_mae:mass",
                "val_loss", "val_loss:cls", "val_loss:mass", "val_accuracy:cls", "val_mae:mass",
                "val_rmse:mass", "train_grad_norm:head.cls", "train_grad_norm:head.mass"):
        assert all(key in r for r in records), key
    for r in records:  # the total is the weighted sum of the terms
        assert r["val_loss"] == pytest.approx(r["val_loss:cls"] + 0.5 * r["val_loss:mass"], rel=1e-5)
    assert records[-1]["train_loss:cls"] < records[0]["train_loss:cls"]
    assert records[-1]["train_loss:mass"] < records[0]["train_loss:mass"]
    assert "train_loss:cls" in console.export_text()  # each epoch's line shows every term
    # best.npz: with named heads, the epoch of the lowest total validation loss
    best = min(records, key=lambda r: (r["val_loss"], -r["epoch"]))
    assert val_score({"loss": 1.0, "accuracy:cls": 0.5}, 0) == 1.0
    with np.load(tmp_path / "run" / "best.npz") as ckpt:
        assert int(ckpt["__epoch__"]) + 1 == best["epoch"]
    assert set(result.metrics) == {"loss", "loss:cls", "loss:mass", "accuracy:cls", "mae:mass", "rmse:mass"}
    assert result.metrics["accuracy:cls"] > 0.5

    model = onnx.load(tmp_path / "run" / "model.onnx")
    assert [o.name for o in model.graph.output] == ["cls", "mass"]
    scores = evaluate(tmp_path / "run" / "model.onnx", spec)
    assert scores["accuracy:cls"] == pytest.approx(result.metrics["accuracy:cls"], abs=1e-6)
    assert scores["mae:mass"] == pytest.approx(result.metrics["mae:mass"], rel=1e-4)
    exported = export(tmp_path / "run")
    assert [o.name for o in exported.graph.output] == ["cls", "mass", "probabilities:cls"]
    assert main(["eval", str(tmp_path / "run")]) == 0
    assert main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "deploy.onnx")]) == 0

    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "deploy.onnx"), providers=["CPUExecutionProvider"])
    probs = sess.run(["probabilities:cls"], {"image": digits["image"][:5]})[0]
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)

    # with class names for cls, predict shows the regression head beside the classifier's ranking
    # (it was left out), and --json has an object for each sample of each head; the exported
    # probabilities are the ranking's, not shown again
    from dlspec.labels import with_class_names

    for path in (tmp_path / "named.onnx", tmp_path / "named_deploy.onnx"):
        source = tmp_path / "run" / "model.onnx" if path.name == "named.onnx" else tmp_path / "deploy.onnx"
        onnx.save(with_class_names(onnx.load(source), {"cls": [str(d) for d in range(10)]}), path)
    np.savez(tmp_path / "three.npz", image=digits["image"][:3])
    for model_file in (tmp_path / "named.onnx", tmp_path / "named_deploy.onnx"):
        code, out, _ = _cli("predict", model_file, tmp_path / "three.npz")
        assert code == 0 and out.count(" (cls): ") == 3 and "mass [3] float32:" in out, out
        assert "probabilities" not in out
        code, out, _ = _cli("predict", model_file, tmp_path / "three.npz", "--json")
        doc = json.loads(out)
        assert [d["output"] for d in doc] == ["cls"] * 3 + ["mass"] * 3 and isinstance(doc[3]["value"], float)


def test_two_heads_pass_dlspec_gradcheck(tmp_path: Path) -> None:
    spec = _write(tmp_path, TWO_HEADS.replace("conv(8)", "conv(2)"), "two")
    assert main(["gradcheck", str(spec), "--batch", "3"]) == 0


def test_an_image_and_a_table_train_from_one_npz(tmp_path: Path, digits: dict[str, np.ndarray]) -> None:
    """The table carries the label's parity and size; the image the digit: both paths help."""
    label = digits["label"]
    rng = np.random.default_rng(0)
    table = np.stack([label % 2, label >= 5, rng.normal(size=len(label))], 1).astype(np.float32)
    np.savez(tmp_path / "mixed.npz", image=digits["image"], table=table, label=label)
    spec = _write(tmp_path, MIXED, "mixed")
    result = fit(load(spec), spec, None, FitOptions(out=tmp_path / "run"), Console(quiet=True))
    assert result.metrics["accuracy"] > 0.8, result.metrics
    model = onnx.load(tmp_path / "run" / "model.onnx")
    assert [i.name for i in model.graph.input] == ["image", "table"]
    scores = evaluate(tmp_path / "run" / "model.onnx", spec, tmp_path / "mixed.npz")
    assert scores["samples"] == len(label) and scores["accuracy"] > 0.8


ONE_HEAD_TWO_LOSSES = """
model teacher {
  input  image:  float32[N, 1, 8, 8]
  target label:  int64[N]
  target scores: float32[N, 10]
  features { image = image / 16 }
  backbone { conv(8) -> relu -> maxpool(2) -> flatten }
  head linear(10)
  loss 0.1 * mse(target=scores) + cross_entropy(target=label)
}
train {
  data      npz("digits.npz", test=0.2, val=0.2)
  batch     64
  epochs    2
  optimizer adam(lr=3e-3)
  seed      1
}
"""


def test_a_head_with_a_regression_term_beside_its_classifier_reports_accuracy_everywhere(
        tmp_path: Path, digits: dict[str, np.ndarray]) -> None:
    """mse (on a teacher's scores) before cross_entropy on one head: the head classifies, and the
    training log, the test metrics and `evaluate` all report its accuracy on the labels (the graph
    logged the MAE against the scores while the runtime scored accuracy)."""
    scores = np.eye(10, dtype=np.float32)[digits["label"]] * 4
    np.savez(tmp_path / "digits.npz", **digits, scores=scores)
    spec = _write(tmp_path, ONE_HEAD_TWO_LOSSES, "teacher")
    result = fit(load(spec), spec, None, FitOptions(out=tmp_path / "run"), Console(record=True, width=1000))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("train_accuracy" in r and "val_accuracy" in r for r in records)
    assert not any(k.endswith(("mae", "rmse")) for r in records for k in r)
    assert set(result.metrics) == {"loss", "loss:mse", "loss:cross_entropy", "accuracy"}
    assert result.metrics["accuracy"] > 0.5
    assert evaluate(tmp_path / "run" / "model.onnx", spec)["accuracy"] == pytest.approx(
        result.metrics["accuracy"], abs=1e-6)


def _cli(*argv: object) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()
