"""Per-class precision, recall and F1 and the confusion matrix of a classifier's predictions, for
`dlspec eval` (tables) and `dlspec plot --confusion` (an image)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.table import Table

from dlspec.compiler.lower.heads import head_infos
from dlspec.data import load_all, load_dataset
from dlspec.inference import check_inputs, run_model, session
from dlspec.labels import class_names_of, target_class_names
from dlspec.spec import model as m
from dlspec.spec.loader import load


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


def evaluate_per_class(model: str | Path, spec: str | Path, data: str | None = None,
                       model_name: str | None = None) -> list[PerClass]:
    """The per-class scores of each classifying output ([N, C] logits) of a model file on the spec's
    test split, or on every sample of `data`, named by the model's metadata `class_names`."""
    prog = load(spec)
    decl = prog.model(model_name)
    sess = session(model)
    shapes = {o.name: o.shape for o in sess.get_outputs()}
    heads = [h for h in head_infos(decl) if h.kind == "classify" and h.target is not None
             and len(shapes.get(h.output, ())) == 2 and isinstance(shapes[h.output][1], int)]
    if not heads:
        return []
    metadata = sess.get_modelmeta().custom_metadata_map
    classes: dict[str, int | None] = {h.target: shapes[h.output][1] for h in heads if h.target is not None}
    if data is not None:
        split = load_all(data, decl, classes, target_class_names(metadata, heads))
    else:
        split = load_dataset(prog.train(decl.name) or m.Train(), decl, Path(prog.root).parent, classes).test
    where = data if data is not None else "the test split"
    feeds = check_inputs(sess, {t.name: split[t.name] for t in decl.inputs}, where)
    outputs = run_model(sess, feeds, model, where)
    names = class_names_of(metadata)
    return [per_class(h.output, outputs[h.output], split[h.target], names.get(h.output))
            for h in heads if h.target is not None]


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
