"""dlspec from Python, as a notebook uses it: load, compile, fit, predict, evaluate, export and
grad return values (and the same errors the CLI prints), without the command line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import dlspec
from dlspec import RunError, SpecError
from dlspec.training import FitResult

SMALL = """
model small {
  input  image: float32[N, 1, 8, 8]
  target label: int64[N]
  features { image = image / 16 }
  backbone { stem: conv(32, k=3) -> bn -> relu -> maxpool(2) }
  head { flatten -> linear(10) }
  loss cross_entropy
}

train {
  data      digits(test=0.2, val=0.1)
  batch     32
  epochs    3
  optimizer adam(lr=1e-2)
  seed      3
}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FitResult]:
    tmp = tmp_path_factory.mktemp("api")
    spec = tmp / "small.dlspec"
    spec.write_text(SMALL)
    return spec, dlspec.fit(spec, out=tmp / "run", threads=2)


def test_compile_takes_a_path_or_a_loaded_program(tmp_path: Path) -> None:
    spec = tmp_path / "small.dlspec"
    spec.write_text(SMALL)
    by_path, by_program = dlspec.compile(spec), dlspec.compile(dlspec.load(spec))
    assert by_path.output.name == by_program.output.name == "logits"
    assert by_path.onnx.graph.output[0].name == "logits"
    assert [r.path for r in by_path.records] == [r.path for r in by_program.records]
    tg = dlspec.compile_training(str(spec), target=dlspec.Target("cpu", threads=16))
    assert tg.metrics == ["accuracy"] and "backbone.stem.conv1.weight" in tg.trainable


def test_fit_trains_and_predict_evaluate_export_use_the_run(run: tuple[Path, FitResult]) -> None:
    spec, result = run
    assert result.epochs == 3 and result.metrics["accuracy"] > 0.9
    model = result.run_dir / "model.onnx"
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    out = dlspec.predict(model, {"image": x[:50].reshape(-1, 1, 8, 8).astype(np.float32)})
    assert list(out) == ["logits"] and out["logits"].shape == (50, 10)
    assert (out["logits"].argmax(1) == y[:50]).mean() > 0.8
    scores = dlspec.evaluate(model, spec)
    assert scores["accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert scores["samples"] == 359  # the test split of 1797 digits at test=0.2
    exported = dlspec.export(result.run_dir)
    assert [o.name for o in exported.graph.output] == ["logits", "probabilities"]


def test_evaluate_reads_data_files_whatever_the_case_of_their_suffix(run: tuple[Path, FitResult],
                                                                     tmp_path: Path) -> None:
    """eval refused DATA.NPZ and DATA.CSV, which predict reads."""
    spec, result = run
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    with open(tmp_path / "DIGITS.NPZ", "wb") as f:  # savez would append .npz to the name
        np.savez(f, image=x[:40].reshape(-1, 1, 8, 8), label=y[:40])
    scores = dlspec.evaluate(result.run_dir / "model.onnx", spec, tmp_path / "DIGITS.NPZ")
    assert scores["samples"] == 40 and scores["accuracy"] > 0.8


def test_grad_differentiates_a_model_or_a_file(tmp_path: Path) -> None:
    spec = tmp_path / "small.dlspec"
    spec.write_text(SMALL)
    tg = dlspec.compile_training(spec)
    path = tmp_path / "evaluate.onnx"
    onnx.save(tg.evaluate, str(path))
    loss = tg.evaluate.graph.output[1].name
    grads = dlspec.grad(path, loss, ["head.linear1.weight"])
    assert [o.name for o in grads.graph.output] == [loss, "grad.head.linear1.weight"]


def test_errors_are_the_clis(tmp_path: Path, run: tuple[Path, FitResult]) -> None:
    spec, result = run
    with pytest.raises(RunError, match="missing input 'image'"):
        dlspec.predict(result.run_dir / "model.onnx",
                       {"pixels": np.zeros((1, 1, 8, 8), np.float32)})
    bad = tmp_path / "bad.dlspec"
    bad.write_text(SMALL.replace("conv(32, k=3)", "conv(32, kk=3)"))
    with pytest.raises(SpecError, match="conv has no argument 'kk'") as err:
        dlspec.compile(bad)
    assert err.value.span is not None and err.value.span.line == 6


@pytest.mark.parametrize("kwargs,message", [
    ({"epochs": 0}, "epochs must be a whole number >= 1, got 0"),  # was the spec's epochs, silently
    ({"batch": 0}, "batch must be a whole number >= 1, got 0"),
    ({"threads": 0}, "threads must be a whole number >= 1, got 0"),  # was every core
    ({"epochs": -1}, "epochs must be a whole number >= 1, got -1"),  # was 'no such file: last.npz'
    ({"threads": -2}, "threads must be a whole number >= 1, got -2"),  # a ValueError
    ({"epochs": 2.5}, "epochs must be a whole number >= 1, got 2.5"),  # a TypeError
    ({"threads": "x"}, "threads must be a whole number >= 1, got 'x'"),
    ({"seed": True}, "seed must be a whole number >= 0, got True"),
    ({"device": "gpu"}, "device must be 'cpu' or 'cuda', got 'gpu'"),
    ({"force": True}, "force goes with resume=True"),  # was ignored
])
def test_fit_refuses_what_the_command_line_refuses(tmp_path: Path, kwargs: dict, message: str) -> None:
    spec = tmp_path / "small.dlspec"
    spec.write_text(SMALL)
    with pytest.raises(RunError, match=re.escape(f"fit: {message}")):
        dlspec.fit(spec, out=tmp_path / "run", **kwargs)
    assert not (tmp_path / "run").exists()


def test_fit_takes_numpy_integers(tmp_path: Path) -> None:
    spec = tmp_path / "small.dlspec"
    spec.write_text(SMALL)
    result = dlspec.fit(spec, out=tmp_path / "run", epochs=np.int64(1), batch=np.int32(64), threads=1)
    assert result.epochs == 1 and result.steps == 20  # 70% of 1,797 samples in batches of 64
    again = dlspec.fit(spec, out=tmp_path / "run", epochs=np.int64(3), threads=1, resume=True)
    assert again.epochs == 3 and again.steps == 60
    fewer = dlspec.fit(spec, out=tmp_path / "run", epochs=1, threads=1, resume=True)
    assert fewer.epochs == 3 and fewer.steps == 60  # what the run holds: it said 1


def test_importing_the_language_loads_no_onnx() -> None:
    code = "import sys, dlspec.spec; print('onnx' in sys.modules, 'onnxruntime' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_evaluate_refuses_an_empty_test_split(tmp_path: Path) -> None:
    """It printed accuracy nan, numpy's warnings and tables of zeros, and exited 0."""
    spec = tmp_path / "small.dlspec"
    spec.write_text(SMALL.replace("digits(test=0.2, val=0.1)", "digits(test=0.0, val=0.1)"))
    result = dlspec.fit(spec, out=tmp_path / "run", threads=1, epochs=1)
    with pytest.raises(RunError, match="the test split has no samples to evaluate: give the spec"):
        dlspec.evaluate(result.run_dir / "model.onnx", spec)


@pytest.mark.parametrize("kwargs,message", [
    ({"directions": 0}, "directions must be a whole number >= 1, got 0"),  # checked nothing, read as a pass
    ({"batch": 0}, "batch must be a whole number >= 1, got 0"),  # worst error inf, numpy warnings
    ({"eps": 0}, "eps must be a finite number > 0, got 0"),  # a ZeroDivisionError
    ({"eps": -1e-4}, "eps must be a finite number > 0"),
    ({"batch": "4"}, "batch must be a whole number >= 1, got '4'"),  # a TypeError
])
def test_gradcheck_spec_refuses_what_the_cli_refuses(tmp_path: Path, kwargs: dict, message: str) -> None:
    spec = tmp_path / "small.dlspec"
    spec.write_text(SMALL)
    with pytest.raises(RunError, match=re.escape(f"gradcheck_spec: {message}")):
        dlspec.gradcheck_spec(spec, **kwargs)


def test_arguments_of_the_wrong_type_are_refused_by_name(run: tuple[Path, FitResult], tmp_path: Path) -> None:
    """Each was a TypeError, ValueError, AttributeError or AssertionError from deep inside."""
    spec, result = run
    model = result.run_dir / "model.onnx"
    x = np.zeros((1, 1, 8, 8), np.float32)
    calls = [
        (lambda: dlspec.load(None), "a spec is a path"),  # type: ignore[arg-type]
        (lambda: dlspec.compile(spec, 3), "model must be a name"),  # type: ignore[arg-type]
        (lambda: dlspec.compile_training(spec, target="cpu"), "target must be a dlspec.Target"),  # type: ignore
        (lambda: dlspec.predict(model, x), "inputs must map each input's name"),  # type: ignore[arg-type]
        (lambda: dlspec.predict(model, {0: x}), "inputs must map each input's name"),  # type: ignore[dict-item]
        (lambda: dlspec.predict(onnx.load(model), {"image": x}), "model must be a path"),  # type: ignore
        (lambda: dlspec.evaluate(model, spec, 3), "data must be a path"),  # type: ignore[arg-type]
        (lambda: dlspec.export(None), "run must be a path"),  # type: ignore[arg-type]
        (lambda: dlspec.fit(spec, out=3), "out must be a path"),  # type: ignore[arg-type]
        (lambda: dlspec.grad(model, "loss", [1]), "wrt must be a name or a list of names"),  # type: ignore
    ]
    for call, message in calls:
        with pytest.raises(RunError, match=re.escape(message)):
            call()


def test_grad_takes_one_name_as_wrt(tmp_path: Path) -> None:
    """A lone str was split into its letters: 'cannot differentiate with respect to 'W''."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W1"], ["y"]),
                               helper.make_node("ReduceSum", ["y"], ["loss"], keepdims=0)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])],
                              [numpy_helper.from_array(np.ones((3, 4), np.float32), "W1")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert [o.name for o in dlspec.grad(model, "loss", "W1").graph.output] == ["loss", "grad.W1"]
