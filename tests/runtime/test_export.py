"""`dlspec export`: batch norm folded, probabilities added, same predictions as the run's model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from rich.console import Console

from dlspec.cli import main
from dlspec.spec import load
from dlspec.training import FitOptions, fit

SPEC = """
model small {
  input  image: float32[N, 1, 8, 8]
  target label: int64[N]
  features { image = image / 16 }
  backbone {
    stem:  conv(8, k=3) -> bn -> relu
    stage: basic(16, stride=2)
  }
  head classify(classes=10)
  loss cross_entropy
}
train {
  data digits(test=0.2)
  batch 64
  epochs 2
  optimizer adam(lr=3e-3)
}
"""


TRAINED: dict[str, float] = {}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    spec = root / "small.dlspec"
    spec.write_text(SPEC)
    result = fit(load(spec), spec, None, FitOptions(out=root / "run"), Console(quiet=True))
    TRAINED.update(result.metrics)
    return root / "run"


def test_eval_of_the_run_agrees_with_training(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`dlspec eval` reads the exported model and the run's spec; training measured the same
    test split through the training graphs' eval model."""
    assert main(["eval", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"accuracy {TRAINED['accuracy']:.4f}" in out, (out, TRAINED)


def test_eval_of_a_run_without_its_source_spec_reads_the_copy(run_dir: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A run folder moved away from its spec (or written before run.json) still evaluates: the
    copy spec.dlspec in the folder holds the model and the bundled data set."""
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    (moved / "run.json").write_text('{"spec": "/nonexistent/small.dlspec"}')
    assert main(["eval", str(moved)]) == 0
    assert f"accuracy {TRAINED['accuracy']:.4f}" in capsys.readouterr().out


def test_eval_on_a_data_file_or_bundled_set_uses_every_sample(run_dir: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.data.reshape(-1, 1, 8, 8).astype(np.float32)
    sess = ort.InferenceSession(str(run_dir / "model.onnx"))
    want = float((sess.run(None, {"image": images})[0].argmax(1) == digits.target).mean())
    np.savez(tmp_path / "all.npz", image=images, label=digits.target)
    np.savez(tmp_path / "half.npz", image=images[::2], label=digits.target[::2])
    for data, n in (("digits", 1797), (str(tmp_path / "all.npz"), 1797), (str(tmp_path / "half.npz"), 899)):
        assert main(["eval", str(run_dir), data]) == 0
        out = capsys.readouterr().out
        assert f"({n} samples)" in out, out
        if n == 1797:
            assert f"accuracy {want:.4f}" in out, (out, want)


@pytest.mark.parametrize("data,message", [
    ("digitz", "neither an .npz or .csv file nor a bundled set (did you mean 'digits'?)"),
    ("missing.npz", "no data file missing.npz"),
    ("wrong.npz", "target 'label': the file has no array 'label' (did you mean 'lab'?)"),
])
def test_eval_data_errors_say_what_is_wrong(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str], data: str,
                                           message: str) -> None:
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "wrong.npz", image=np.zeros((3, 1, 8, 8), np.float32), lab=np.zeros(3, np.int64))
    assert main(["eval", str(run_dir), data]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_export_folds_batch_norm_and_keeps_the_predictions(run_dir: Path, tmp_path: Path) -> None:
    assert main(["export", str(run_dir), "-o", str(tmp_path / "m.onnx")]) == 0
    exported = onnx.load(tmp_path / "m.onnx")
    ops = [n.op_type for n in exported.graph.node]
    assert "BatchNormalization" not in ops  # every bn here follows a conv: all folded
    props = {p.key: p.value for p in exported.metadata_props}
    assert props["batch_norm_folded"] == "4" and "spec_hash" in props
    x = (np.random.default_rng(0).random((16, 1, 8, 8)) * 16).astype(np.float32)
    want = ort.InferenceSession(str(run_dir / "model.onnx")).run(None, {"image": x})[0]
    logits, probs = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"image": x})
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(logits - want).max() <= 1e-4 * scale
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert (probs.argmax(1) == want.argmax(1)).all()


def test_export_of_a_missing_run_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "no trained model" in err and "Traceback" not in err
