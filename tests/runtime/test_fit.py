"""`dlspec train`: learning on real data, exported model, exact resume, NaN detection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from rich.console import Console

import dlspec.training as fit_module
from dlspec.cli import main
from dlspec.spec import load
from dlspec.spec.errors import RunError
from dlspec.training import FitOptions, fit

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "examples" / "digits.dlspec"

SMALL = """
model small {
  input  image: float32[N, 1, 8, 8]
  target label: int64[N]
  features { image = image / 16 }
  backbone { stem: conv(8, k=3) -> bn -> relu -> maxpool(2) }
  head classify(classes=10, dropout=0.1)
  loss cross_entropy
}

train {
  data      digits(test=0.2, val=0.1)
  batch     32
  epochs    3
  optimizer OPTIMIZER
  schedule  cosine(warmup=1)
  seed      3
}
"""


def _spec(tmp_path: Path, optimizer: str = "adam(lr=3e-3)") -> Path:
    path = tmp_path / "small.dlspec"
    path.write_text(SMALL.replace("OPTIMIZER", optimizer))
    return path


def _quiet() -> Console:
    return Console(quiet=True)


def test_digits_example_learns_and_exports_a_raw_pixel_model(tmp_path: Path) -> None:
    """A shortened run of the example; the exported model takes raw 0..16 pixels."""
    result = fit(load(DIGITS), DIGITS, None, FitOptions(epochs=10, out=tmp_path / "run"), _quiet())
    assert result.metrics["accuracy"] >= 0.97, result.metrics
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    sess = ort.InferenceSession(str(tmp_path / "run" / "model.onnx"))
    logits = sess.run(None, {"image": x.reshape(-1, 1, 8, 8).astype(np.float32)})[0]
    assert (logits.argmax(1) == y).mean() >= 0.97
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 10


def test_resume_gives_the_same_parameters_bit_for_bit(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(tmp_path)
    fit(load(spec), spec, None, FitOptions(out=tmp_path / "straight"), _quiet())
    calls = {"n": 0}
    real = fit_module.evaluate

    def interrupt_in_epoch_three(*args: object, **kwargs: object) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 3:  # after epoch 3's steps, before its checkpoint
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fit_module, "evaluate", interrupt_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        fit(load(spec), spec, None, FitOptions(out=tmp_path / "resumed"), _quiet())
    monkeypatch.setattr(fit_module, "evaluate", real)
    fit(load(spec), spec, None, FitOptions(out=tmp_path / "resumed", resume=True), _quiet())
    a = np.load(tmp_path / "straight" / "last.npz")
    b = np.load(tmp_path / "resumed" / "last.npz")
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        assert np.array_equal(a[key], b[key]), key


def test_a_diverging_run_stops_with_a_clear_error(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path, "sgd(lr=1e30)")
    code = main(["train", str(spec), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "the loss became" in err and "Traceback" not in err


def test_resume_without_a_checkpoint_says_so(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    with pytest.raises(RunError, match="no checkpoint"):
        fit(load(spec), spec, None, FitOptions(out=tmp_path / "none", resume=True), _quiet())


def test_cuda_without_the_gpu_build_names_the_extra(tmp_path: Path) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    spec = _spec(tmp_path)
    with pytest.raises(RunError, match=r"dlspec\[gpu\]"):
        fit(load(spec), spec, None, FitOptions(out=tmp_path / "run", device="cuda"), _quiet())
    assert not (tmp_path / "run").exists()  # nothing written for a run that cannot start


def test_many_threads_train_with_their_own_lowering_to_the_same_losses(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """--threads 8 compiles the step for many threads (dlspec.compiler.tune): other ops, the same
    function, so the same epoch losses as at 2 threads up to float32 rounding."""
    spec = _spec(tmp_path)
    steps = {}
    real = fit_module.compile_training

    def keep(*args: object, **kwargs: object) -> object:
        tg = real(*args, **kwargs)  # type: ignore[arg-type]
        steps[args[-1].threads] = tg.train_step  # type: ignore[attr-defined]
        return tg

    monkeypatch.setattr(fit_module, "compile_training", keep)
    for threads in (2, 8):
        opts = FitOptions(epochs=1, threads=threads, out=tmp_path / f"t{threads}")
        fit(load(spec), spec, None, opts, _quiet())
    ops = {t: {n.op_type for n in s.graph.node} for t, s in steps.items()}
    assert "BatchNormalization" in ops[2] and "BatchNormalization" not in ops[8]
    records = [[json.loads(line) for line in (tmp_path / f"t{t}" / "metrics.jsonl").read_text().splitlines()]
               for t in (2, 8)]
    few, many = records[0][0], records[1][0]
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert many[key] == pytest.approx(few[key], rel=1e-4), key



def test_an_epochs_line_shows_a_small_rate_and_a_warmup_past_the_run_is_noted(tmp_path: Path) -> None:
    """A rate of 2e-5 printed as 'lr 0.0000'; a warmup as long as the run was accepted silently."""
    import io

    spec = _spec(tmp_path, "adam(lr=2e-5)")
    out = io.StringIO()
    fit(load(spec), spec, None, FitOptions(out=tmp_path / "run", epochs=1), Console(file=out, width=300))
    printed = out.getvalue()
    assert ("warmup=1 epochs is as long as the run's 1: the learning rate never reaches the optimizer's "
            "lr") in printed
    line = next(ln for ln in printed.splitlines() if ln.startswith("epoch 1 "))
    assert " lr 1.95e-05 " in line, line  # the epoch's last step: 38/39 of the way up the warmup


def test_a_run_with_nothing_trainable_says_so(tmp_path: Path) -> None:
    """It ran every epoch and ended with 'trained', the weights as they began, without a word."""
    import io

    path = tmp_path / "small.dlspec"
    path.write_text(SMALL.replace("OPTIMIZER", "adam(lr=3e-3)").replace("  seed      3", "  seed      3\n"
                                                                          "  freeze backbone, head"))
    out = io.StringIO()
    fit(load(path), path, None, FitOptions(out=tmp_path / "run", epochs=1), Console(file=out, width=300))
    assert "no parameter is trainable (freeze or lr_mult 0 covers them all)" in out.getvalue()
    with np.load(tmp_path / "run" / "last.npz") as last:
        assert "backbone.stem.conv1.weight" in last.files


def test_a_batch_larger_than_the_training_split_scales_the_rate_by_the_split(tmp_path: Path) -> None:
    """scale_with_batch scaled by the nominal batch: 0.1 * 1000 / 16 = 6.25 for steps of 120 samples."""
    import io

    path = tmp_path / "iris.dlspec"
    path.write_text("model m {\n  input x: float32[N, 4]\n  target y: int64[N]\n  head linear(3)\n"
                    "  loss cross_entropy\n}\ntrain {\n  data iris(test=0.2)\n  optimizer sgd(lr=0.1)\n"
                    "  schedule constant(scale_with_batch=16)\n}\n")
    out = io.StringIO()
    fit(load(path), path, None, FitOptions(out=tmp_path / "run", epochs=1, batch=1000), Console(file=out))
    assert "batch 1000 is larger than the 120 training samples: each step takes them all" in out.getvalue()
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["step"] == 1 and record["lr"] == pytest.approx(0.1 * 120 / 16)
