"""The data sets bundled with scikit-learn, raw (unscaled). digits, the one the examples train on,
is read from scikit-learn's own file as load_digits reads it, without importing sklearn: that
import brings in scipy, some 70 MB that a training run would otherwise hold to its end."""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIGITS_FILE = ("datasets", "data", "digits.csv.gz")  # under sklearn/: 64 pixels, then the digit


@dataclass
class Bundled:
    data: np.ndarray  # [N, features]
    target: np.ndarray  # [N]
    feature_names: list[str]
    target_names: list[str]  # the classes' names; empty for a regression (diabetes)


def load(kind: str) -> Bundled:
    """digits, iris, wine, breast_cancer or diabetes."""
    if kind == "digits" and (path := _sklearn_file(*DIGITS_FILE)) is not None:
        with gzip.open(path, "rt", encoding="utf-8") as text:
            table = np.loadtxt(text, delimiter=",")
        return Bundled(table[:, :-1], table[:, -1].astype(int, copy=False),
                       [f"pixel_{row}_{col}" for row in range(8) for col in range(8)],
                       [str(n) for n in range(10)])
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{kind}")(**({"scaled": False} if kind == "diabetes" else {}))
    names = [] if kind == "diabetes" else [str(n) for n in bunch.target_names]
    return Bundled(np.asarray(bunch.data), np.asarray(bunch.target), [str(n) for n in bunch.feature_names],
                   names)


def class_names(kind: str) -> list[str]:
    """The classes' names of a bundled set (digits: "0" to "9"); empty for diabetes, a regression."""
    if kind == "digits":
        return [str(n) for n in range(10)]
    return load(kind).target_names


def _sklearn_file(*parts: str) -> Path | None:
    """A file inside the installed sklearn package, found without importing it; None if absent
    (another layout: then sklearn's own loader reads it)."""
    spec = importlib.util.find_spec("sklearn")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    found = [Path(f).joinpath(*parts) for f in folders if Path(f).joinpath(*parts).is_file()]
    return found[0] if found else None
