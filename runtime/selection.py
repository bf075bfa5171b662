"""Which epoch is best, and when to stop: the validation score that picks best.npz, and
early_stop's patience counter over it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from dlspec.spec import model as m
from dlspec.spec.errors import RunError


def val_score(val: dict[str, float], epoch: int) -> float:
    """What picks best.npz and what early_stop watches, lower is better: -mean IoU (per-pixel
    classes), else -accuracy, else MAE, else (a model with named heads, whose metrics are each
    head's) the total loss; without a validation split, -epoch: the last epoch is the best."""
    if "mean_iou" in val:
        return -val["mean_iou"]
    if "accuracy" in val:
        return -val["accuracy"]
    return val.get("mae", val.get("loss", -epoch))


def kept(score: float, best: float) -> bool:
    """Whether an epoch of this score replaces best.npz, which holds the best so far: on a tie, the
    later epoch."""
    return score <= best


def watched(val: dict[str, float]) -> str:
    """The name of what val_score reads."""
    if "mean_iou" in val:
        return "mean IoU"
    return "accuracy" if "accuracy" in val else "MAE" if "mae" in val else "loss"


def read_records(path: Path) -> list[dict]:
    """The epoch records of metrics.jsonl, skipping a line that a kill cut short; where an epoch
    was trained again after an interruption, its later record."""
    return records_and_skipped(path)[0]


def records_and_skipped(path: Path) -> tuple[list[dict], int]:
    """read_records, and the number of non-blank lines it skipped."""
    by_epoch: dict[int, dict] = {}
    skipped = 0
    try:
        text = path.read_bytes().decode(errors="replace")  # a damaged line is skipped like a torn one
    except FileNotFoundError:
        text = ""
    except OSError as err:
        raise RunError(f"cannot read {path}: {err.strerror or err}") from None
    for line in text.splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            skipped += bool(line.strip())
            continue
        if isinstance(r, dict) and isinstance(r.get("epoch"), int):
            by_epoch[r["epoch"]] = r
        else:
            skipped += 1
    return [by_epoch[e] for e in sorted(by_epoch)], skipped


@dataclass
class Patience:
    """early_stop's counter: epochs since the score last improved by more than min_delta."""

    rule: m.EarlyStop
    best: float = math.inf  # the score the next epoch must beat by more than min_delta
    stale: int = 0
    watched: str = "MAE"
    saved: float = math.inf  # the score of the epoch in best.npz, which min_delta does not gate
    saved_epoch: int = 0  # 1-based

    def update(self, val: dict[str, float], epoch: int) -> bool:
        """Count one finished epoch (1-based) by its validation metrics; True when training should stop."""
        score = val_score(val, epoch - 1)
        self.watched = watched(val)
        if score < self.best - self.rule.min_delta:
            self.best, self.stale = score, 0
        else:
            self.stale += 1
        if kept(score, self.saved):
            self.saved, self.saved_epoch = score, epoch
        return self.stale >= self.rule.patience

    def replay(self, records: Path, done: int) -> bool:
        """The counter as it stood after epoch `done` (1-based), from metrics.jsonl: a resumed run
        keeps its patience."""
        stop = False
        for r in read_records(records):
            if r["epoch"] <= done:
                val = {k[4:]: v for k, v in r.items()
                       if k.startswith("val_") and isinstance(v, (int, float))}  # a hand-edited file too
                stop = self.update(val, r["epoch"])
        return stop

    def reason(self, epoch: int) -> str:
        best = -self.saved if self.watched in ("accuracy", "mean IoU") else self.saved
        return (f"early stop after epoch {epoch}: validation {self.watched} has not improved by more than "
                f"{self.rule.min_delta:g} for {self.stale} epochs (patience {self.rule.patience}); "
                f"the best, {best:.4f} at epoch {self.saved_epoch}, is in best.npz and model.onnx")
