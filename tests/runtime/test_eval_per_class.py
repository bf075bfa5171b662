"""`dlspec eval` per class: precision, recall, F1 and the confusion matrix against scikit-learn's,
printed with the model's class names, from the one run of the model that gives the metrics;
`dlspec plot --confusion` draws the matrix."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from rich.console import Console
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from test_predict import FLOWERS, write_iris

import dlspec
from dlspec.api import evaluation
from dlspec.cli import main
from dlspec.data import load_dataset
from dlspec.per_class import per_class
from dlspec.spec import load
from dlspec.spec import model as m
from dlspec.training import FitOptions, fit


@pytest.mark.parametrize("seed", range(4))
def test_per_class_scores_are_scikit_learns(seed: int) -> None:
    rng = np.random.default_rng(seed)
    classes, n = 5, 60
    logits = rng.standard_normal((n, classes))
    logits[:, 3] -= 10  # class 3 is never predicted: its precision is 0, not NaN
    truth = rng.integers(0, classes - 1, n)  # class 4 has no samples: its recall is 0
    truth[:3] = -100  # an ignore_index: left out, as the loss leaves it out
    pc = per_class("logits", logits, truth, [f"c{i}" for i in range(classes)])
    kept = truth >= 0
    pred = logits.argmax(1)[kept]
    p, r, f, support = precision_recall_fscore_support(truth[kept], pred, labels=range(classes),
                                                       zero_division=0)
    np.testing.assert_allclose(pc.precision, p, rtol=1e-12)
    np.testing.assert_allclose(pc.recall, r, rtol=1e-12)
    np.testing.assert_allclose(pc.f1, f, rtol=1e-12)
    np.testing.assert_array_equal(pc.support, support)
    np.testing.assert_array_equal(pc.confusion, confusion_matrix(truth[kept], pred, labels=range(classes)))
    assert pc.precision[3] == 0 and pc.recall[4] == 0 and pc.confusion.sum() == n - 3


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("flowers")
    write_iris(folder / "iris.csv")
    spec = folder / "flowers.dlspec"
    spec.write_text(FLOWERS.replace("epochs    8", "epochs    3"))
    fit(load(spec), spec, None, FitOptions(out=folder / "run", threads=1), Console(file=io.StringIO()))
    return folder / "run"


def test_eval_prints_the_table_and_the_matrix_with_class_names(run: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    (pc,) = evaluation(run / "model.onnx", run.parent / "flowers.dlspec").per_class
    assert pc.names == ["setosa", "versicolor", "virginica"] and pc.confusion.sum() == 30  # the test split
    for i, name in enumerate(pc.names):
        row = next(line for line in out.splitlines() if line.startswith(f"│ {name} ") and "." in line)
        cells = [c.strip() for c in row.strip("│").split("│")]
        assert cells == [name, f"{pc.precision[i]:.4f}", f"{pc.recall[i]:.4f}", f"{pc.f1[i]:.4f}",
                         str(int(pc.support[i]))], row
        matrix = [line for line in out.splitlines() if line.startswith(f"│ {name} ") and "." not in line]
        assert [c.strip() for c in matrix[0].strip("│").split("│")][1:] == [str(v) for v in pc.confusion[i]]
    assert "confusion matrix (logits): rows true, columns predicted" in out
    found = re.search(r"\(30 samples\): accuracy (\d\.\d{4})", out)
    assert found is not None, out
    accuracy = float(found.group(1))
    assert accuracy == pytest.approx(np.trace(pc.confusion) / pc.confusion.sum(), abs=1e-4)


def test_eval_on_a_csv_reads_its_names_as_the_models(run: Path, tmp_path: Path) -> None:
    write_iris(tmp_path / "late.csv", slice(100, None))  # virginica alone: index 2 of the model's
    (pc,) = evaluation(run / "model.onnx", run.parent / "flowers.dlspec", tmp_path / "late.csv").per_class
    assert pc.support.tolist() == [0, 0, 50]


def test_plot_draws_the_confusion_matrix(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plot", str(run), "--confusion"]) == 0
    assert f"wrote {run / 'confusion.png'}" in capsys.readouterr().out
    assert (run / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class Runs:
    """Every onnxruntime session run, with the outputs it returned."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.outputs: list[dict[str, np.ndarray]] = []
        self.feeds: list[dict[str, np.ndarray]] = []
        real = ort.InferenceSession.run

        def run(sess: ort.InferenceSession, names: list[str] | None, feeds: dict[str, np.ndarray],
                *args: object, **kw: object) -> list[np.ndarray]:
            got = real(sess, names, feeds, *args, **kw)  # type: ignore[arg-type]
            wanted = names or [o.name for o in sess.get_outputs()]
            self.feeds.append(dict(feeds))
            self.outputs.append(dict(zip(wanted, got)))
            return got

        monkeypatch.setattr(ort.InferenceSession, "run", run)


def test_eval_runs_the_model_once_for_the_metrics_and_the_confusion(
        run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    spec = run.parent / "flowers.dlspec"
    runs = Runs(monkeypatch)
    result = evaluation(run / "model.onnx", spec)
    assert len(runs.outputs) == 1
    (pc,) = result.per_class
    # scikit-learn on the predictions of that one run, against the test split loaded apart
    prog = load(spec)
    test = load_dataset(prog.train(None) or m.Train(), prog.model(None), run.parent, 3).test
    truth, pred = test["species"], runs.outputs[0]["logits"].argmax(1)
    np.testing.assert_array_equal(pc.confusion, confusion_matrix(truth, pred, labels=range(3)))
    p, r, f, support = precision_recall_fscore_support(truth, pred, labels=range(3), zero_division=0)
    np.testing.assert_allclose(np.stack([pc.precision, pc.recall, pc.f1]), np.stack([p, r, f]), rtol=1e-12)
    np.testing.assert_array_equal(pc.support, support)
    assert result.metrics == {"accuracy": pytest.approx(float((truth == pred).mean()), abs=1e-12),
                              "samples": 30.0}
    assert dlspec.evaluate(run / "model.onnx", spec) == result.metrics
    assert len(runs.outputs) == 2  # evaluate: one more run, not two
    assert main(["eval", str(run)]) == 0
    assert len(runs.outputs) == 3  # the command line: metrics and tables from one run
    assert "per class (logits)" in capsys.readouterr().out
