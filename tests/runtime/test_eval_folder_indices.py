"""`dlspec eval MODEL FOLDER` for a model without class names: its class folders are named by
class index, in decimal digits; a folder named otherwise, digits that are not decimal ('²') too,
is one error line naming it, not an error from int() inside dlspec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from test_eval_images import MODEL

import dlspec
from dlspec.spec.errors import RunError


def folder(root: Path, names: list[str]) -> Path:
    for name in names:
        (root / name).mkdir(parents=True)
        Image.fromarray(np.full((8, 8, 3), 40, np.uint8)).save(root / name / "a.png")
    return root


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "tiny.dlspec").write_text(MODEL)
    onnx.save(dlspec.compile(tmp_path / "tiny.dlspec").onnx, str(tmp_path / "tiny.onnx"))  # no class names
    return tmp_path / "tiny.onnx", tmp_path / "tiny.dlspec"


def test_folders_named_by_index_are_read(tmp_path: Path, model: tuple[Path, Path]) -> None:
    assert dlspec.evaluate(*model, folder(tmp_path / "set", ["0", "2"]))["samples"] == 2


@pytest.mark.parametrize("name", ["²", "x", "3"])
def test_a_folder_not_named_by_a_class_index_is_refused(tmp_path: Path, model: tuple[Path, Path],
                                                        name: str) -> None:
    with pytest.raises(RunError, match=f"'{name}' is not one$"):
        dlspec.evaluate(*model, folder(tmp_path / "set", ["0", name]))
