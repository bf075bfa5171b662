"""examples/transfer/onnx_backbone.dlspec as its comment says to run it: pretrain digits_source,
export it with `dlspec export`, and fine-tune the exported ONNX file as a backbone (no PyTorch)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from rich.console import Console

import dlspec
from dlspec.cli import main
from dlspec.training import FitOptions, fit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "transfer"


def test_the_exported_network_fine_tunes_as_a_backbone(tmp_path: Path) -> None:
    source = tmp_path / "digits_source.dlspec"
    shutil.copy(EXAMPLES / "digits_source.dlspec", source)
    fit(dlspec.load(source), source, None, FitOptions(out=tmp_path / "source", epochs=3), Console(quiet=True))
    assert main(["export", str(tmp_path / "source"), "-o", str(tmp_path / "digits_source.onnx")]) == 0
    spec = tmp_path / "onnx_backbone.dlspec"
    shutil.copy(EXAMPLES / "onnx_backbone.dlspec", spec)  # the file sits beside it, as in examples/

    prog = dlspec.load(spec)
    exported = {t.name: numpy_helper.to_array(t)
                for t in onnx.load(tmp_path / "digits_source.onnx").graph.initializer}
    init = dlspec.compile_training(prog).init
    convs = [n for n in exported if n.endswith("conv1.weight")]
    assert convs, sorted(exported)
    for name in convs:  # the file's weights, under the section's name, before any training
        np.testing.assert_array_equal(init[f"backbone.{name}"], exported[name])

    result = fit(prog, spec, None, FitOptions(out=tmp_path / "run", epochs=10), Console(quiet=True))
    assert result.metrics["accuracy"] > 0.6, result.metrics  # five classes: chance is 0.2
    trained = np.load(tmp_path / "run" / "last.npz")
    moved = np.abs(trained[f"backbone.{convs[0]}"] - exported[convs[0]]).max()
    assert 0 < moved < 0.05, moved  # trained, at a tenth of the head's learning rate
