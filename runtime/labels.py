"""Labels: the values a classification loss can read, checked when the data is loaded.

cross_entropy one-hot encodes its labels, which would silently turn -1 into the last class and
12 (of 10) into no class at all; bce_with_logits reads probabilities. A bad label is a RunError
naming the file, the row and the value, before anything trains on it.

Class names (a csv's label names, a bundled set's target names, an image folder's subfolders) go
with the run: classes.json in its folder, metadata `class_names` in its model.onnx.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper

from dlspec.spec import model as m
from dlspec.spec.errors import RunError
from dlspec.spec.heads import resolved

if TYPE_CHECKING:
    from dlspec.compiler.lower.heads import HeadInfo


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
    model = resolved(model)
    if model.loss is None or not model.targets:
        return rules
    for term in model.loss.terms:
        name = term.bound_target
        assert name is not None  # resolved: each term bound to a declared target
        if isinstance(term.loss, (m.CrossEntropy, m.Dice)):
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


# ---- class names: kept in the run folder and in the model's metadata ----
CLASSES_FILE = "classes.json"  # in the run folder: {target: [class names]}
CLASS_NAMES = "class_names"  # model metadata: {output: [class names]}, index i named names[i]


def encode_class_names(names: Mapping[str, list[str]]) -> bytes:
    return (json.dumps(dict(names), indent=1, ensure_ascii=False) + "\n").encode()


def output_class_names(names: Mapping[str, list[str]], heads: Sequence[HeadInfo]) -> dict[str, list[str]]:
    """Each classifying output's class names, from its target's."""
    return {h.output: list(names[h.target]) for h in heads
            if h.kind == "classify" and h.target is not None and h.target in names}


def with_class_names(model: onnx.ModelProto, names: Mapping[str, list[str]]) -> onnx.ModelProto:
    """The model with metadata `class_names` ({output: names}), unless there are none."""
    if names:
        props = {p.key: p.value for p in model.metadata_props}
        helper.set_model_props(model, {**props, CLASS_NAMES: json.dumps(dict(names), ensure_ascii=False)})
    return model


def class_names_of(metadata: Mapping[str, str]) -> dict[str, list[str]]:
    """The `class_names` of a model's metadata ({} without), checked to be lists of strings;
    `metadata`: key -> value, as an onnxruntime session's custom_metadata_map."""
    raw = metadata.get(CLASS_NAMES)
    if raw is None:
        return {}
    try:
        found = json.loads(raw)
    except ValueError:
        found = None
    if not isinstance(found, dict) or not all(isinstance(v, list) and all(isinstance(n, str) for n in v)
                                              for v in found.values()):
        raise RunError(f"the model's metadata {CLASS_NAMES} is not a JSON object of lists of names")
    return {str(k): list(v) for k, v in found.items()}


def target_class_names(metadata: Mapping[str, str], heads: Sequence[HeadInfo]) -> dict[str, list[str]]:
    """The class names of each target, from a model's metadata (by output) and its heads."""
    by_output = class_names_of(metadata)
    return {h.target: by_output[h.output] for h in heads if h.target is not None and h.output in by_output}
