"""The land_price example trained on the CSV that make_land_price.py writes, with and without its
derived `area` feature (examples/ablation/land_price_no_area.dlspec), as examples/README.md reports:
a district column (a category, 5% empty) and a distance column with 3% of its cells empty."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from rich.console import Console

from dlspec.cli import main
from dlspec.data import load_dataset
from dlspec.spec import load
from dlspec.training import FitOptions, FitResult, fit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _train(spec: Path, out: Path) -> FitResult:
    return fit(load(spec), spec, None, FitOptions(out=out, threads=2), Console(quiet=True))


def _rows(path: Path) -> dict[str, np.ndarray]:
    """The csv's columns: numbers (NaN for an empty cell), and district as strings."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    out = {k: np.array([float(r[k]) if r[k] else math.nan for r in rows], np.float32)
           for k in ("length", "width", "distance", "price")}
    return {**out, "district": np.array([r["district"] for r in rows], dtype=object)}


def test_land_price_with_and_without_area(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Both examples as shipped (50 epochs, about 2 s each). The CSV's noise is N(0, 5): MAE 3.9 and
    RMSE 4.8 on the test split are the floor where the row is complete; an empty district or distance
    costs more (the district scales the price by 0.8 to 1.3)."""
    shutil.copy(EXAMPLES / "land_price.dlspec", tmp_path)
    (tmp_path / "ablation").mkdir()
    shutil.copy(EXAMPLES / "ablation" / "land_price_no_area.dlspec", tmp_path / "ablation")
    make = [sys.executable, str(EXAMPLES / "make_land_price.py"), "-o", str(tmp_path / "land_price.csv")]
    subprocess.run(make, check=True, capture_output=True)
    spec = tmp_path / "land_price.dlspec"
    no_area = tmp_path / "ablation" / "land_price_no_area.dlspec"
    plans = [load(spec).train("land_price"), load(no_area).train("land_price_no_area")]
    settings = [p.model_dump(exclude={"data"}) if p else None for p in plans]
    assert settings[0] is not None and settings[0] == settings[1], "the ablation trains as land_price does"
    with_area = _train(spec, tmp_path / "with")
    without = _train(no_area, tmp_path / "without")
    assert with_area.metrics["mae"] < 5.6 and with_area.metrics["rmse"] < 8.6, with_area.metrics
    assert without.metrics["mae"] < 5.6 and without.metrics["rmse"] < 8.8, without.metrics

    # predicting the training mean instead gives MAE 35.5: the model's error is under 20% of that
    prog = load(spec)
    train = prog.train("land_price")
    assert train is not None
    data = load_dataset(train, prog.model(), tmp_path)
    price = data.test["price"]
    assert with_area.metrics["mae"] < 0.2 * float(np.abs(price - data.train["price"].mean()).mean())

    # model.onnx takes the raw columns (metres, km, the district's name, NaN where empty): the
    # district's vocabulary, the fill and the standardization are inside it
    inputs = ("length", "width", "distance", "district")
    sess = ort.InferenceSession(str(tmp_path / "with" / "model.onnx"), providers=["CPUExecutionProvider"])
    pred = sess.run(None, {k: data.test[k] for k in inputs})[0]
    err = np.abs(pred - price)
    np.testing.assert_allclose(float(err.mean()), with_area.metrics["mae"], rtol=1e-6)
    complete = (data.test["district"] != "") & ~np.isnan(data.test["distance"])
    assert 0 < (~complete).sum() < 0.15 * len(price) and err[complete].mean() < 4.5, err[complete].mean()
    assert (tmp_path / "with" / "standardize.json").exists()
    assert "area" not in (tmp_path / "without" / "standardize.json").read_text()

    # learnt on the training split: the districts it holds, and its mean present distance
    fitted = json.loads((tmp_path / "with" / "vocab.json").read_text())
    assert fitted["vocab"] == {"district": ["centre", "east", "north", "riverside", "south"]}
    mean = np.nanmean(data.train["distance"].astype(np.float64))
    np.testing.assert_allclose(fitted["fill"]["distance"], mean, rtol=1e-12)
    # a district the training split never held is unknown, as an empty cell is
    few = {k: v[:4] for k, v in data.test.items()}
    unseen = sess.run(None, {**{k: few[k] for k in inputs}, "district": np.array(["harbour"] * 4, object)})[0]
    empty = sess.run(None, {**{k: few[k] for k in inputs}, "district": np.array([""] * 4, object)})[0]
    np.testing.assert_array_equal(unseen, empty)

    # `dlspec eval RUN data.csv`: every row of a csv, the target column named like the model's
    rows = (tmp_path / "land_price.csv").read_text().splitlines()
    (tmp_path / "few.csv").write_text("\n".join(rows[:101]) + "\n")
    assert main(["eval", str(tmp_path / "with"), str(tmp_path / "few.csv"), "--spec", str(spec)]) == 0
    out = capsys.readouterr().out
    table = _rows(tmp_path / "few.csv")
    pred = sess.run(None, {k: table[k] for k in inputs})[0]
    assert "(100 samples)" in out and f"mae {float(np.abs(pred - table['price']).mean()):.4f}" in out, out

    # without --spec, eval finds the spec the run came from (run.json): the csv path is relative to it
    assert main(["eval", str(tmp_path / "with")]) == 0
    assert f"mae {with_area.metrics['mae']:.4f}" in capsys.readouterr().out
