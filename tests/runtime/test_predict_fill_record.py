"""A model whose metadata `filled` or `fill` (the inputs whose missing values it fills) is damaged:
predict from an .npz, a .csv or dlspec.predict is one error line naming the record, exit code 2,
as for a damaged class_names or image_policy; not a JSON or type error from inside dlspec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper
from test_predict import FILLED

from dlspec import api
from dlspec.cli import main
from dlspec.spec.errors import RunError


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("filled")
    (root / "filled.dlspec").write_text(FILLED)
    assert main(["compile", str(root / "filled.dlspec"), "-o", str(root / "filled.onnx")]) == 0
    return root / "filled.onnx"


def damaged(model: Path, tmp_path: Path, key: str, value: str) -> Path:
    proto = onnx.load(str(model))
    helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, key: value})
    path = tmp_path / "damaged.onnx"
    onnx.save(proto, str(path))
    return path


def test_the_record_is_read_as_compiled(compiled: Path) -> None:
    out = api.predict(compiled, {"a": np.array([np.nan, 1], np.float32), "b": np.ones(2, np.float32)})
    assert np.isfinite(out["output"]).all()  # a filled: its NaN is the model's to fill


@pytest.mark.parametrize(("key", "value"), [("filled", "{bad"), ("filled", "null"), ("filled", "5"),
                                            ("filled", "[1]"), ("fill", "[\"a\""), ("fill", "3")])
def test_a_damaged_record_is_one_clean_error(
        compiled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        key: str, value: str) -> None:
    model = damaged(compiled, tmp_path, key, value)
    inputs = {"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)}
    with pytest.raises(RunError, match=f"metadata {key} is not"):
        api.predict(model, inputs)
    np.savez(tmp_path / "in.npz", **inputs)
    (tmp_path / "in.csv").write_text("a,b\n1,2\n")
    for data in ("in.npz", "in.csv"):
        capsys.readouterr()
        assert main(["predict", str(model), str(tmp_path / data)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1 and f"metadata {key} is not" in err, err
