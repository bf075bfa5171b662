"""Labels: the values a classification loss can read, checked when the data is loaded.

cross_entropy one-hot encodes its labels, which would silently turn -1 into the last class and
12 (of 10) into no class at all; bce_with_logits reads probabilities. A bad label is a RunError
naming the file, the row and the value, before anything trains on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from dlspec.spec import model as m
from dlspec.spec.errors import RunError


@dataclass(frozen=True)
class Labels:
    """Class indices 0 .. classes - 1, or ignore (cross_entropy); or probabilities in [0, 1]."""

    classes: int | None = None  # None: the model's output width is not known here
    ignore: int | None = None
    probability: bool = False


Classes = int | Mapping[str, int | None] | None  # the output's width, or each target's head's


def label_rules(model: m.Model, classes: Classes) -> dict[str, Labels]:
    """The rule of each target that a classification loss reads, by target name; `classes` is the
    width of the model's output, or (several heads) the width of each target's head by its name."""
    rules: dict[str, Labels] = {}
    if model.loss is None or not model.targets:
        return rules
    for term in model.loss.terms:
        name = term.target or model.targets[0].name
        if isinstance(term.loss, m.CrossEntropy):
            width = classes.get(name) if isinstance(classes, Mapping) else classes
            rules[name] = Labels(classes=width, ignore=term.loss.ignore_index)
        elif isinstance(term.loss, m.BceWithLogits):
            rules[name] = Labels(probability=True)
    return rules


def _sample(i: int) -> str:
    return f"sample {i}"


def check_labels(values: np.ndarray, rule: Labels, where: str, row: Callable[[int], str] = _sample) -> None:
    """A RunError naming `where`, the row (`row(index)`) and the value of the first bad label."""
    v = values.astype(np.float64)
    if rule.probability:
        bad = (v < 0) | (v > 1)
        what = "is outside [0, 1]: bce_with_logits takes 0/1 labels or probabilities"
    else:
        bad = (v != np.round(v)) | (v < 0)
        if rule.classes is not None:
            bad |= v >= rule.classes
        if rule.ignore is not None:
            bad &= v != rule.ignore
        span = f"0 to {rule.classes - 1}" if rule.classes is not None else "a whole number >= 0"
        what = f"is not a class of the model ({span})"
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        if not rule.probability and rule.ignore is None and v[at] < 0:
            what += f"; cross_entropy(ignore_index={values[at]}) would skip such rows"
        raise RunError(f"{where}: label {values[at]} at {row(at[0])} {what}")


def check_all_labels(arrays: dict[str, np.ndarray], rules: dict[str, Labels], source: str) -> None:
    """check_labels on each target of `arrays` that has a rule; `source` names where they came from."""
    for name, rule in rules.items():
        if name in arrays:
            check_labels(arrays[name], rule, f"{source}: target '{name}'")
