"""Early stopping in `dlspec train`: it stops at the right epoch, says why, records it, and a
resumed run keeps its patience counter."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

import dlspec.training as fit_module
from dlspec import checkpoint
from dlspec.spec import load
from dlspec.spec.errors import RunError
from dlspec.training import FitOptions, FitResult, fit

# sgd at lr 1e-12 leaves the weights as they were: the validation accuracy of epoch 1 is never
# beaten, so with patience 3 the run ends after epoch 1 + 3 = 4 of its 20.
STALLED = """
model flowers {
  input  x: float32[N, 4]
  target y: int64[N]
  head mlp(3, hidden=[16])
  loss cross_entropy
}

train {
  data       iris(test=0.2, val=0.2)
  batch      16
  epochs     20
  optimizer  sgd(lr=1e-12)
  early_stop(patience=3)
  seed       0
}
"""


def _spec(tmp_path: Path, text: str = STALLED) -> Path:
    path = tmp_path / "flowers.dlspec"
    path.write_text(text)
    return path


def _fit(spec: Path, out: Path, resume: bool = False, epochs: int | None = None) -> tuple[FitResult, str]:
    buf = io.StringIO()
    result = fit(load(spec), spec, None, FitOptions(out=out, resume=resume, epochs=epochs),
                 Console(file=buf, width=300, color_system=None))
    return result, buf.getvalue()


def _records(run: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_stalled_run_stops_after_patience_epochs(tmp_path: Path) -> None:
    result, printed = _fit(_spec(tmp_path), tmp_path / "run")
    assert result.epochs == 4 and result.steps == 4 * 6  # 90 training samples in batches of 16
    assert result.stopped_early is not None
    line = ("early stop after epoch 4: validation accuracy has not improved by more than 0 for 3 epochs "
            "(patience 3); the best, ")
    # every epoch scores the same: best.npz holds the last of them, as the message says
    assert line in printed and "at epoch 4, is in best.npz and model.onnx" in printed
    assert checkpoint.load(tmp_path / "run" / "best.npz")[2] + 1 == 4
    assert result.stopped_early in printed
    records = _records(tmp_path / "run")
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert [r["stale_epochs"] for r in records] == [0, 1, 2, 3]
    assert [r.get("early_stop", False) for r in records] == [False, False, False, True]
    assert (tmp_path / "run" / "model.onnx").exists() and "accuracy" in result.metrics


def _reference_stop(accuracies: list[float], patience: int, min_delta: float) -> list[int]:
    """Epochs without an improvement by more than min_delta, the rule written out plainly."""
    best, stale, out = -1.0, 0, []
    for acc in accuracies:
        if acc > best + min_delta:
            best, stale = acc, 0
        else:
            stale += 1
        out.append(stale)
        if stale >= patience:
            break
    return out


def test_min_delta_decides_what_counts_as_an_improvement(tmp_path: Path) -> None:
    """A learning run: no accuracy improves by more than 1.0, so with min_delta 1.0 it stops after
    exactly 1 + 2 epochs; with min_delta 0 its counter follows the rule on its own accuracies
    (on this machine 0.67, 1.0, 0.9, 1.0: stops after epoch 4)."""
    learning = STALLED.replace("sgd(lr=1e-12)", "adam(lr=0.05)")
    for min_delta in (0.0, 1.0):
        text = learning.replace("early_stop(patience=3)", f"early_stop(patience=2, min_delta={min_delta})")
        run = tmp_path / f"run{min_delta}"
        result, printed = _fit(_spec(tmp_path, text), run)
        records = _records(run)
        accuracies = [float(r["val_accuracy"]) for r in records]  # type: ignore[arg-type]
        assert [r["stale_epochs"] for r in records] == _reference_stop(accuracies, 2, min_delta)
        assert result.epochs == len(records) < 20
        if min_delta == 1.0:
            assert result.epochs == 3
        # the message names the epoch best.npz holds, which min_delta does not gate (it named the
        # last epoch that beat min_delta)
        saved = checkpoint.load(run / "best.npz")[2] + 1
        assert accuracies[saved - 1] == max(accuracies) and saved == max(
            e for e, a in enumerate(accuracies, 1) if a == max(accuracies))
        assert f"the best, {accuracies[saved - 1]:.4f} at epoch {saved}, is in best.npz" in printed, printed


def test_running_out_of_patience_at_the_last_epoch_is_no_early_stop(tmp_path: Path) -> None:
    spec = _spec(tmp_path, STALLED.replace("epochs     20", "epochs     4"))
    result, printed = _fit(spec, tmp_path / "run")
    assert result.epochs == 4 and result.stopped_early is None and "early stop" not in printed
    assert [r["stale_epochs"] for r in _records(tmp_path / "run")] == [0, 1, 2, 3]


def test_without_early_stop_the_records_stay_as_they_were(tmp_path: Path) -> None:
    text = STALLED.replace("  early_stop(patience=3)\n", "").replace("epochs     20", "epochs     2")
    result, printed = _fit(_spec(tmp_path, text), tmp_path / "run")
    assert result.epochs == 2 and result.stopped_early is None and "early stop" not in printed
    assert all("stale_epochs" not in r for r in _records(tmp_path / "run"))


def test_a_resumed_run_keeps_its_patience(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted in epoch 3 (before its record and checkpoint), then resumed: it still stops
    after epoch 4, so the counter came back as 1, not 0 (which would run to epoch 6)."""
    spec = _spec(tmp_path)
    calls = {"n": 0}
    real = fit_module.evaluate

    def interrupt_in_epoch_three(*args: object, **kwargs: object) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fit_module, "evaluate", interrupt_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        _fit(spec, tmp_path / "run")
    monkeypatch.setattr(fit_module, "evaluate", real)
    assert [r["epoch"] for r in _records(tmp_path / "run")] == [1, 2]
    result, printed = _fit(spec, tmp_path / "run", resume=True)
    assert "resuming" in printed and "early stop after epoch 4" in printed
    assert result.epochs == 4 and result.steps == 4 * 6
    assert [r["stale_epochs"] for r in _records(tmp_path / "run")] == [0, 1, 2, 3]

    again, printed = _fit(spec, tmp_path / "run", resume=True)  # a stopped run stays stopped
    assert "before this resume: nothing more to train" in printed
    assert again.epochs == 4 and again.steps == 4 * 6 and again.metrics == result.metrics
    assert len(_records(tmp_path / "run")) == 4


def test_a_record_left_by_an_unfinished_epoch_does_not_count(tmp_path: Path) -> None:
    """metrics.jsonl may hold an epoch the checkpoint does not (killed between the two writes):
    the replay reads only up to the checkpoint's epoch."""
    spec = _spec(tmp_path)
    _fit(spec, tmp_path / "run", epochs=2)
    with (tmp_path / "run" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"epoch": 3, "val_accuracy": 0.0}) + "\n")
        f.write(json.dumps({"epoch": 4, "val_accuracy": 0.0}) + "\n")
    result, _ = _fit(spec, tmp_path / "run", resume=True, epochs=20)  # the spec's, not the run's 2
    assert result.epochs == 4  # epochs 3 and 4 redone; still stops after 4
    by_epoch = {int(r["epoch"]): r for r in _records(tmp_path / "run")}  # type: ignore[call-overload]
    assert [by_epoch[e]["stale_epochs"] for e in (3, 4)] == [2, 3]


def test_a_damaged_record_that_resume_leaves_out_is_named(tmp_path: Path) -> None:
    """Resume rewrote metrics.jsonl without the lines it could not read, silently: early_stop's
    patience lost those epochs without a word."""
    spec = _spec(tmp_path)
    _fit(spec, tmp_path / "run", epochs=2)
    path = tmp_path / "run" / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(lines[0][:20] + "\n" + lines[1] + "\n")
    _, printed = _fit(spec, tmp_path / "run", resume=True, epochs=3)
    assert f"{path}: 1 line(s) that are not an epoch's record (cut short, or damaged) are left out" in printed
    assert [r["epoch"] for r in _records(tmp_path / "run")] == [2, 3]


def test_an_empty_validation_split_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    # a spec without val fails at load (spec/loader.py); a share too small for the data, here
    spec = _spec(tmp_path, STALLED.replace("iris(test=0.2, val=0.2)", "iris(test=0.2, val=0.001)"))
    with pytest.raises(RunError, match=r"val=0.001 leaves it no samples"):
        _fit(spec, tmp_path / "run")
    assert not (tmp_path / "run").exists()
