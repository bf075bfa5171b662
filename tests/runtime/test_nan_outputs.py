"""A model that turns finite inputs into NaN or infinity (its features: a log of a negative
number, a division by 0) gives an error that names the output and the sample, in predict, eval
and dlspec.predict: they printed `[nan]` and metrics of nan with exit 0."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import onnx
import pytest

import dlspec
from dlspec import RunError
from dlspec.cli import main

SPEC = """
model ratio {
  input  length: float32[N]
  input  width:  float32[N]
  target price:  float32[N]
  features { ratio = length / width }
  head regress
  loss mse
}

train {
  data csv("plots.csv", target=price)
}
"""


@pytest.fixture
def model(tmp_path: Path) -> Path:
    spec = tmp_path / "ratio.dlspec"
    spec.write_text(SPEC)
    path = tmp_path / "ratio.onnx"
    onnx.save(dlspec.compile(spec).onnx, str(path))
    return path


def _cli(*argv: str | Path) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


def test_predict_names_the_sample_whose_output_is_not_finite(model: Path, tmp_path: Path) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text("length,width\n3,2\n5,4\n4,0\n")
    code, err = _cli("predict", model, rows)
    assert code == 2 and f"{model} gives nan in output 'prediction' for sample 2 of {rows}" in err, err
    assert "whose inputs are finite" in err
    with pytest.raises(RunError, match="gives nan in output 'prediction' for sample 1 of the inputs"):
        dlspec.predict(model, {"length": np.array([1, 0], np.float32), "width": np.array([1, 0], np.float32)})
    fine = {"length": np.array([1, 2], np.float32), "width": np.array([1, 4], np.float32)}
    out = dlspec.predict(model, fine)
    assert np.isfinite(out["prediction"]).all()


def test_eval_names_the_sample_whose_output_is_not_finite(model: Path, tmp_path: Path) -> None:
    (tmp_path / "plots.csv").write_text("length,width,price\n3,2,1\n5,4,2\n")
    rows = tmp_path / "rows.csv"
    rows.write_text("length,width,price\n3,2,1\n0,0,2\n")
    code, err = _cli("eval", model, rows, "--spec", tmp_path / "ratio.dlspec")
    assert code == 2 and "gives nan in output 'prediction' for sample 1" in err, err
