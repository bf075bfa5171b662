"""`dlspec plot`: a PNG of a run's loss and metric curves, and one-line errors that write nothing."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from dlspec import checkpoint, plot
from dlspec.cli import main
from dlspec.plot import best_epoch, figure, read_metrics
from dlspec.spec.errors import RunError

Capture = pytest.CaptureFixture[str]
PNG = b"\x89PNG\r\n\x1a\n"
BLUE, ORANGE = (0x1F / 255, 0x77 / 255, 0xB4 / 255), (0xFF / 255, 0x7F / 255, 0x0E / 255)  # C0 train, C1 val

# fit.py's keys: epoch, step, lr, train_<output>, val_<metric>, seconds
CLASSIFIER = [{"epoch": e, "step": 10 * e, "lr": 1e-3, "train_loss": 2.0 / e, "train_accuracy": 1 - 0.5 / e,
               "val_accuracy": acc, "seconds": 0.5} for e, acc in enumerate([0.5, 0.7, 0.9, 0.8], 1)]
REGRESSION = [{"epoch": e, "step": 5 * e, "lr": 1e-2, "train_loss": 1.0 / e, "train_mae": 0.9 / e,
               "val_mae": mae, "val_rmse": 1.5 * mae, "seconds": 0.1}
              for e, mae in enumerate([0.6, 0.3, 0.4], 1)]


def make_run(path: Path, records: list[dict[str, float]], best: int | None = None) -> Path:
    """A run folder with metrics.jsonl and, when `best` (1-based) is given, a best.npz holding that epoch."""
    path.mkdir()
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if best is not None:
        checkpoint.save(path / "best.npz", {"w": np.zeros(2, np.float32)}, 10 * best, best - 1, -0.9)
    return path


def run(argv: list[str | Path], capsys: Capture) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def coloured(pixels: np.ndarray, rgb: tuple[float, float, float]) -> int:
    return int((np.abs(pixels[..., :3] - np.array(rgb)).max(-1) < 0.02).sum())


def test_plot_writes_a_png_with_a_loss_and_a_metric_panel(tmp_path: Path, capsys: Capture) -> None:
    src = make_run(tmp_path / "mnist", CLASSIFIER, best=3)
    code, out, err = run(["plot", src], capsys)
    assert code == 0, err
    dest = src / "curves.png"
    assert out.strip() == f"wrote {dest}"
    assert dest.read_bytes().startswith(PNG)
    pixels = imread(dest)
    assert pixels.shape == (400, 1000, 4)
    left, right = pixels[:, :500], pixels[:, 500:]
    assert coloured(left, BLUE) > 200 and coloured(right, BLUE) > 200  # train_loss, train_accuracy
    assert coloured(right, ORANGE) > 200 and coloured(left, ORANGE) == 0  # val_accuracy; no val loss
    assert sorted(p.name for p in src.iterdir()) == ["best.npz", "curves.png", "metrics.jsonl"]


def test_plot_writes_where_o_says(tmp_path: Path, capsys: Capture) -> None:
    src = make_run(tmp_path / "run", REGRESSION)
    code, out, _ = run(["plot", src, "-o", tmp_path / "lp.png"], capsys)
    assert code == 0
    assert out.strip() == f"wrote {tmp_path / 'lp.png'}"
    assert (tmp_path / "lp.png").read_bytes().startswith(PNG)
    assert not (src / "curves.png").exists()


def test_the_figure_has_titled_panels_legends_and_the_best_epoch(tmp_path: Path) -> None:
    fig = figure(REGRESSION, 2, "land_price")
    loss, metric = fig.axes
    assert fig.get_suptitle() == "land_price"
    assert (loss.get_ylabel(), metric.get_ylabel()) == ("loss", "mae / rmse")
    assert loss.get_xlabel() == metric.get_xlabel() == "epoch"
    legend = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in (loss, metric)]
    assert legend == [["train_loss", "best (epoch 2)"],
                      ["train_mae", "val_mae", "val_rmse", "best (epoch 2)"]]
    stars = [[tuple(np.ravel(line.get_xydata())) for line in ax.lines if line.get_marker() == "*"]
             for ax in (loss, metric)]
    assert stars == [[(2, 0.5)], [(2, pytest.approx(0.45)), (2, 0.3), (2, pytest.approx(0.45))]]


def test_a_run_without_metrics_gets_a_note_instead_of_an_empty_legend() -> None:
    records = [{"epoch": 1, "step": 3, "lr": 0.1, "train_loss": 0.5, "seconds": 0.1}]
    _, metric = figure(records, 1, "run").axes
    assert metric.get_legend() is None
    assert [t.get_text() for t in metric.texts] == ["no metric recorded"]


def test_the_best_epoch_is_the_one_best_npz_holds(tmp_path: Path) -> None:
    # val accuracy peaks at epoch 3, but the checkpoint is what model.onnx was exported from
    assert best_epoch(make_run(tmp_path / "run", CLASSIFIER, best=2), CLASSIFIER) == 2


@pytest.mark.parametrize("records, best", [
    (CLASSIFIER, 3),  # highest val accuracy
    (CLASSIFIER + [{**CLASSIFIER[2], "epoch": 5}], 5),  # a tie goes to the later epoch, as in fit.py
    (REGRESSION, 2),  # lowest val mae
    ([{"epoch": e, "train_loss": 1.0} for e in (1, 2, 3)], 3),  # no validation split: the last
])
def test_without_best_npz_the_best_epoch_is_chosen_as_fit_does(
        tmp_path: Path, records: list[dict[str, float]], best: int) -> None:
    assert best_epoch(make_run(tmp_path / "run", records), records) == best


def test_a_resumed_epoch_replaces_its_earlier_record(tmp_path: Path) -> None:
    again = {**CLASSIFIER[1], "train_loss": 0.123}
    src = make_run(tmp_path / "run", CLASSIFIER[:3] + [again])
    records = read_metrics(src / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[1]["train_loss"] == 0.123


def lines(last: str) -> str:
    """Two good records, then `last` on line 3."""
    return "".join(json.dumps(r) + "\n" for r in CLASSIFIER[:2]) + last + "\n"


GOOD = lines(json.dumps(CLASSIFIER[2]))


@pytest.mark.parametrize("run_is, metrics, args, message", [
    (None, None, [], "no run folder {run}"),
    ("file", None, [], "{run} is not a run folder"),
    ("dir", None, [], "no metrics.jsonl in {run}"),
    ("dir", "", [], "{run}/metrics.jsonl is empty: no epoch has finished yet"),
    ("dir", "\n  \n", [], "{run}/metrics.jsonl is empty"),
    ("dir", lines('{"epoch": 3, "train_lo'), [], "{run}/metrics.jsonl:3: not a JSON record"),
    ("dir", lines("[1, 2]"), [], "{run}/metrics.jsonl:3: expected a JSON object with an integer 'epoch'"),
    ("dir", lines('{"train_loss": 1.0}'), [], "{run}/metrics.jsonl:3: expected a JSON object"),
    ("dir", lines('{"epoch": 3, "val_accuracy": "high"}'), [],
     "{run}/metrics.jsonl:3: 'val_accuracy' is \"high\", expected a number"),
    ("dir", lines('{"epoch": 3, "train_grad_norm:backbone.x": null}'), [],  # an internal error before
     "{run}/metrics.jsonl:3: 'train_grad_norm:backbone.x' is null, expected a number"),
    ("dir", GOOD, ["-o", "{tmp}/curves.svg"], "cannot write {tmp}/curves.svg: plot writes PNG"),
    ("dir", GOOD, ["-o", "{tmp}/missing/c.png"], "cannot write {tmp}/missing/c.png: folder"),
], ids=["no-run", "run-is-a-file", "no-metrics", "empty", "blank-lines", "truncated-line", "not-an-object",
        "no-epoch", "not-a-number", "a-norm-not-a-number", "not-png", "no-such-folder"])
def test_errors_are_one_line_and_write_nothing(tmp_path: Path, capsys: Capture, run_is: str | None,
                                               metrics: str | None, args: list[str], message: str) -> None:
    src = tmp_path / "run"
    if run_is == "file":
        src.write_text("")
    elif run_is == "dir":
        src.mkdir()
    if metrics is not None:
        (src / "metrics.jsonl").write_text(metrics)
    before = sorted(tmp_path.rglob("*"))
    code, out, err = run(["plot", src, *[a.format(tmp=tmp_path) for a in args]], capsys)
    assert code == 2
    assert out == ""
    assert err.startswith(message.format(run=src, tmp=tmp_path)), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert sorted(tmp_path.rglob("*")) == before  # no PNG, no temporary file


def test_a_failed_plot_leaves_the_previous_png_alone(tmp_path: Path, capsys: Capture) -> None:
    src = make_run(tmp_path / "run", CLASSIFIER)
    assert run(["plot", src], capsys)[0] == 0
    first = (src / "curves.png").read_bytes()
    with (src / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 5, "train_loss": NaN, "val_accuracy": [1]}\n')
    code, _, err = run(["plot", src], capsys)
    assert code == 2 and "metrics.jsonl:5: 'val_accuracy' is [1], expected a number" in err
    assert (src / "curves.png").read_bytes() == first


def test_matplotlib_is_imported_only_when_a_plot_is_drawn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command imports runtime.plot through runtime.cli; only `dlspec plot` pays for matplotlib."""
    for name in ["matplotlib", *(m for m in sys.modules if m.startswith("matplotlib."))]:
        monkeypatch.setitem(sys.modules, name, None)  # `import matplotlib...` now raises ImportError
    module = importlib.reload(plot)
    with pytest.raises(RunError, match="dlspec plot needs matplotlib: pip install"):
        module.figure(CLASSIFIER, 1, "run")
