"""Fit the table columns of a spec's features on the training split: each category's vocabulary
(a string input, read by one_hot or index) and each `fill(x, mean)`'s mean of the present values.

They are kept in the run folder as vocab.json, so --resume compiles the same graph, and compiled
into every graph (compiler.lower.columns): model.onnx takes the raw strings. The training graphs
take each string's index instead (onnxruntime binds no strings), which `encode` looks up here with
the same vocabulary.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlspec.compiler.lower.columns import FillMean, Vocab, categorical, column_of, filled, key
from dlspec.compiler.lower.features import Fitted
from dlspec.data import Dataset, Split, size
from dlspec.spec import model as m
from dlspec.spec.errors import RunError

FILE = "vocab.json"


def fit(model: m.Model, train: Split) -> dict[str, Fitted]:
    """Each string input's words on `train`, sorted (an empty cell is no word: it stays unknown), and
    the mean of each input that fill(x, mean) reads, over its present values."""
    out: dict[str, Fitted] = {}
    for name in categorical(model.inputs):
        out[key("vocab", name)] = Vocab(tuple(sorted({str(w) for w in train[name].tolist() if w})))
    for name, mean in filled(model.features).items():
        if not mean or name not in train:
            continue
        column = np.asarray(train[name], np.float64)
        present = column[~np.isnan(column)]
        if present.size == 0:
            raise RunError(f"fill({name}, mean): every value of '{name}' on the training split is missing, "
                           f"so there is no mean to fill with; fill({name}, 0) takes a constant")
        out[key("fill", name)] = FillMean(float(present.mean()))
    return out


def encode_split(split: Split, fitted: Mapping[str, Fitted]) -> Split:
    """The split with each string input replaced by its words' indices (0: unknown), as the
    compiled lookup gives them."""
    out = dict(split)
    for k, v in fitted.items():
        name = column_of(k)
        if isinstance(v, Vocab) and name in out:
            index = {w: i for i, w in enumerate(v.words, start=1)}
            words = out[name].tolist()
            out[name] = np.fromiter((index.get(w, 0) for w in words), np.int64, len(words))
    return out


def encoded(data: Dataset, fitted: Mapping[str, Fitted]) -> Dataset:
    """encode_split on each split of `data`."""
    if not any(isinstance(v, Vocab) for v in fitted.values()):
        return data
    return dataclasses.replace(data, train=encode_split(data.train, fitted),
                               val=encode_split(data.val, fitted), test=encode_split(data.test, fitted))


def encode(fitted: Mapping[str, Fitted]) -> bytes:
    """JSON: {"vocab": {input: [words]}, "fill": {input: mean}}; floats round-trip exactly."""
    vocab = {column_of(k): list(v.words) for k, v in fitted.items() if isinstance(v, Vocab)}
    fill = {column_of(k): v.value for k, v in fitted.items() if isinstance(v, FillMean)}
    return (json.dumps({"vocab": vocab, "fill": fill}, indent=1, ensure_ascii=False) + "\n").encode()


def load(path: Path) -> dict[str, Fitted]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        out: dict[str, Fitted] = {key("vocab", k): Vocab(tuple(str(w) for w in v))
                                  for k, v in raw["vocab"].items()}
        out.update({key("fill", k): FillMean(float(v)) for k, v in raw["fill"].items()})
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise RunError(f"cannot read {path}: {err}") from None


def wanted(model: m.Model) -> list[str]:
    """The keys a model's columns need fitted."""
    return sorted([key("vocab", n) for n in categorical(model.inputs)]
                  + [key("fill", n) for n, mean in filled(model.features).items() if mean])


@dataclass(frozen=True)
class RunColumns:
    fitted: dict[str, Fitted]
    fitted_now: bool  # fitted now (to be saved in the run folder), not read back from it


def for_run(model: m.Model, train: Split, run_dir: Path, resume: bool,
            note: Callable[[str], None]) -> RunColumns:
    """A fresh run fits on its training split; a resumed run reads what it saved in run_dir."""
    keys = wanted(model)
    path = run_dir / FILE
    if not keys:
        return RunColumns({}, fitted_now=False)
    if resume and path.exists():
        fitted = load(path)
        if sorted(fitted) == keys:
            return RunColumns(fitted, fitted_now=False)
        note(f"{path} has {', '.join(sorted(fitted)) or 'nothing'}, the spec needs {', '.join(keys)}: "
             "fitting them again on the training split")
    fitted = fit(model, train)
    for k, v in fitted.items():
        name = column_of(k)
        if isinstance(v, Vocab):
            shown = ", ".join(v.words[:8]) + (", ..." if len(v.words) > 8 else "")
            note(f"categories of {name}: {len(v.words)} on the {size(train)} training samples ({shown}) and "
                 f"the unknown slot: one_hot({name}) has {v.width} columns, index({name}) is 0 to "
                 f"{v.width - 1} (embedding({v.width}, dim))")
        elif isinstance(v, FillMean):
            missing = int(np.isnan(np.asarray(train[name], np.float64)).sum())
            note(f"fill({name}, mean): {v.value:.6g}, the mean of its {size(train) - missing} present values "
                 f"on the training split ({missing} missing)")
    return RunColumns(fitted, fitted_now=True)
