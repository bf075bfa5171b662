"""A run that diverges stops with one located error, and nothing it writes holds a NaN or inf:
the loss of a step is computed before its update, so the update's overflow shows first in the
gradient norm, the parameters or the validation metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import dlspec
from dlspec import RunError

REGRESSION = """
model reg {
  input  x: float32[N, 10]
  target y: float32[N]
  backbone { body: linear(16) -> relu }
  head regress(1)
  loss mse
}

train {
  data      diabetes(test=0.2, val=0.2)
  batch     1000
  epochs    EPOCHS
  optimizer sgd(lr=LR)
  seed      0
}
"""


def _fit(tmp_path: Path, lr: str, epochs: int) -> Path:
    spec = tmp_path / "reg.dlspec"
    spec.write_text(REGRESSION.replace("LR", lr).replace("EPOCHS", str(epochs)))
    out = tmp_path / "run"
    dlspec.fit(spec, out=out, threads=1)
    return out


def _strict(constant: str) -> float:
    raise AssertionError(f"metrics.jsonl holds {constant}")


def test_an_update_that_overflows_the_parameters_stops_before_its_epoch_is_written(tmp_path: Path) -> None:
    """One step per epoch: its loss and gradient norm are finite, its update is not."""
    with pytest.raises(RunError, match=r"parameters became inf or nan \('backbone\.body\.linear1\.\w+' "
                                       r"first\) by the epoch's last step \(epoch 1\).*nothing was written"):
        _fit(tmp_path, "1e38", 1)
    assert not (tmp_path / "run").exists()


def test_a_gradient_norm_past_float32_stops_the_run_and_every_record_stays_finite(tmp_path: Path) -> None:
    """At lr 0.5 the first update leaves huge but finite weights (epoch 1 is kept), whose next
    gradients overflow: the old code trained on, wrote val_loss Infinity into metrics.jsonl and
    inf weights into last.npz and best.npz, and called them the last good checkpoint."""
    with pytest.raises(RunError, match=r"gradient norm became (inf|nan) at step 2 \(epoch 2\).*"
                                       r"last good checkpoint is .*last\.npz"):
        _fit(tmp_path, "0.5", 5)
    run = tmp_path / "run"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=_strict) for line in lines]
    assert [r["epoch"] for r in records] == [1]
    for name in ("last.npz", "best.npz"):
        with np.load(run / name) as saved:
            assert all(np.isfinite(saved[k]).all() for k in saved.files if saved[k].dtype.kind == "f"), name


def test_a_nan_at_the_first_step_points_at_the_data_not_the_learning_rate(tmp_path: Path) -> None:
    """The first loss comes before any update; the hint named the learning rate."""
    spec = tmp_path / "reg.dlspec"
    spec.write_text(REGRESSION.replace("LR", "0.01").replace("EPOCHS", "1")
                    .replace("  backbone {", "  features { x = log(x - 1000) }\n  backbone {"))
    with pytest.raises(RunError, match=r"the loss became nan at step 1 .*the model's features \(a log of a "
                                       r"negative number\? .*before any update\)"):
        dlspec.fit(spec, out=tmp_path / "run", threads=1)
