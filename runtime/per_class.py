"""Per-class precision, recall and F1 and the confusion matrix of a classifier's predictions, for
`dlspec eval` (tables) and `dlspec plot --confusion` (an image); api.evaluation computes them from
the same outputs as the metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.table import Table


@dataclass(frozen=True)
class PerClass:
    """The confusion matrix of one classifying output: row = true class, column = predicted."""

    output: str
    names: list[str]
    confusion: np.ndarray  # [C, C] counts

    @property
    def support(self) -> np.ndarray:
        return self.confusion.sum(1)

    @property
    def precision(self) -> np.ndarray:
        """Of the samples predicted as the class, the share that are (0 where none is predicted)."""
        return _ratio(np.diag(self.confusion), self.confusion.sum(0))

    @property
    def recall(self) -> np.ndarray:
        """Of the samples of the class, the share predicted as it (0 where the class has none)."""
        return _ratio(np.diag(self.confusion), self.support)

    @property
    def f1(self) -> np.ndarray:
        """2 p r / (p + r), 0 where both are 0."""
        p, r = self.precision, self.recall
        return _ratio(2 * p * r, p + r)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def per_class(output: str, logits: np.ndarray, truth: np.ndarray, names: list[str] | None = None) -> PerClass:
    """The confusion of logits [N, C] against labels [N]; labels outside 0..C-1 (an ignore_index)
    are left out."""
    classes = logits.shape[1]
    labels = np.asarray(truth).astype(np.int64).reshape(-1)
    keep = (labels >= 0) & (labels < classes)
    confusion = np.zeros((classes, classes), np.int64)
    np.add.at(confusion, (labels[keep], logits.argmax(1)[keep]), 1)
    shown = names if names is not None and len(names) == classes else [str(i) for i in range(classes)]
    return PerClass(output, list(shown), confusion)


def scores_table(pc: PerClass) -> Table:
    """precision, recall, F1 and support per class, and their means (macro) over classes with samples."""
    table = Table(title=f"per class ({pc.output})", title_justify="left")
    table.add_column("class")
    for col in ("precision", "recall", "f1", "support"):
        table.add_column(col, justify="right")
    for i, name in enumerate(pc.names):
        table.add_row(name, f"{pc.precision[i]:.4f}", f"{pc.recall[i]:.4f}", f"{pc.f1[i]:.4f}",
                      str(int(pc.support[i])))
    present = pc.support > 0
    table.add_section()
    table.add_row("macro mean", *(f"{v[present].mean():.4f}" if present.any() else "-"
                                  for v in (pc.precision, pc.recall, pc.f1)), str(int(pc.support.sum())))
    return table


def confusion_table(pc: PerClass) -> Table:
    """The confusion matrix: a row per true class, a column per predicted class."""
    table = Table(title=f"confusion matrix ({pc.output}): rows true, columns predicted", title_justify="left")
    table.add_column("true \\ predicted")
    for name in pc.names:
        table.add_column(name, justify="right")
    for name, row in zip(pc.names, pc.confusion):
        table.add_row(name, *(str(int(v)) for v in row))
    return table
