"""The bundled data sets: digits is read from scikit-learn's file without importing sklearn (and
scipy behind it, some 70 MB held to the end of a run), and must be what load_digits gives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dlspec import bundled


@pytest.mark.parametrize("where", ["sklearn's file", "sklearn's loader"])
def test_digits_is_scikit_learns_load_digits(where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn import datasets

    if where == "sklearn's loader":  # the file moved in some sklearn version: its loader reads it
        monkeypatch.setattr(bundled, "DIGITS_FILE", ("datasets", "data", "gone.csv.gz"))
    ours, theirs = bundled.load("digits"), datasets.load_digits()
    assert ours.data.dtype == theirs.data.dtype and ours.target.dtype == theirs.target.dtype
    np.testing.assert_array_equal(ours.data, theirs.data)
    np.testing.assert_array_equal(ours.target, theirs.target)
    assert ours.feature_names == theirs.feature_names
    assert ours.target_names == bundled.class_names("digits") == [str(n) for n in theirs.target_names]


@pytest.mark.parametrize("kind", ["iris", "diabetes"])
def test_the_other_sets_come_from_sklearn(kind: str) -> None:
    from sklearn import datasets

    theirs = getattr(datasets, f"load_{kind}")(**({"scaled": False} if kind == "diabetes" else {}))
    ours = bundled.load(kind)
    np.testing.assert_array_equal(ours.data, theirs.data)
    assert bundled.class_names(kind) == ([] if kind == "diabetes" else list(theirs.target_names))


def test_a_digits_run_imports_neither_sklearn_nor_scipy(tmp_path: Path) -> None:
    # a fresh interpreter (this one has sklearn loaded by the tests above), one epoch of the example
    spec = Path(__file__).resolve().parents[2] / "examples" / "digits.dlspec"
    code = ("import sys\n"
            "from dlspec.cli import main\n"
            f"assert main(['train', {str(spec)!r}, '--epochs', '1', '--threads', '1', "
            f"'--out', {str(tmp_path / 'run')!r}]) == 0\n"
            "loaded = {m.split('.')[0] for m in sys.modules}\n"
            "print(sorted(loaded & {'sklearn', 'scipy', 'matplotlib', 'torch'}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "run" / "model.onnx").is_file()
    assert out.stdout.strip().splitlines()[-1] == "[]"
