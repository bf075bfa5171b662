"""The dlspec command line: check, compile, predict, and the commands that are not there yet."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from dlspec.cli import main
from dlspec.compiler import compile_model
from dlspec.compiler.graph import show
from dlspec.spec.loader import load

Capture = pytest.CaptureFixture[str]
REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "examples" / "digits.dlspec"
LAND = REPO / "examples" / "land_price.dlspec"

TWO_MODELS = """
model small {
  input x: float32[N, 4]
  head { fc: linear(3) }
}

model large extends small {
  head { fc: linear(16) -> relu -> linear(3) }
}

train {
  model large
  seed 4
}
"""

BROKEN = """
model m {
  input x: float32[N, 4]
  head { fc: linaer(3) }
}
"""


def run(argv: Sequence[str | Path], capsys: Capture) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    save: Any = np.savez  # the stubs reserve the keyword 'allow_pickle'
    save(path, **arrays)


def trainable(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer
               if not t.name.endswith((".running_mean", ".running_var")))


def inits(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """digits and land_price compiled once through the CLI."""
    d = tmp_path_factory.mktemp("built")
    out = {}
    for spec in (DIGITS, LAND):
        dest = d / f"{spec.stem}.onnx"
        assert main(["compile", str(spec), "-o", str(dest)]) == 0
        out[spec.stem] = dest
    return out


# ---------------------------------------------------------------- check


def test_check_prints_every_layer_with_its_path_shape_and_params(capsys: Capture) -> None:
    code, out, err = run(["check", DIGITS], capsys)
    assert code == 0, err
    c = compile_model(load(DIGITS))
    lines = out.splitlines()
    for r in c.records:
        shapes = " ".join(show(s) for s in r.shapes)
        row = [ln for ln in lines if re.search(rf"│ {re.escape(r.path)} +│", ln)]
        assert len(row) == 1, f"no single row for {r.path}"
        assert r.kind in row[0] and shapes in row[0] and f" {r.params:,} " in row[0], row[0]
    assert "backbone.stage1.0.shortcut.conv" in out  # long paths are printed whole
    total = [ln for ln in lines if ln.startswith("│ total ")]
    assert len(total) == 1 and "logits [N, 10]" in total[0]
    assert "digits.dlspec is valid" in out


def test_check_parameter_total_equals_the_onnx_initializers(
        capsys: Capture, built: dict[str, Path]) -> None:
    code, out, _ = run(["check", DIGITS], capsys)
    assert code == 0
    total = next(ln for ln in out.splitlines() if ln.startswith("│ total "))
    shown = int(re.findall(r"│ +([\d,]+) │", total)[0].replace(",", ""))
    expected = trainable(onnx.load(str(built["digits"])))
    assert shown == expected
    assert f"{expected:,} parameters, {expected:,} trainable;" in out
    # the running statistics of bn are in the file but are not trainable
    assert any(t.name.endswith("running_var") for t in onnx.load(str(built["digits"])).graph.initializer)


def test_check_reports_a_spec_error_with_its_location(tmp_path: Path, capsys: Capture) -> None:
    spec = write(tmp_path / "bad.dlspec", BROKEN)
    code, out, err = run(["check", spec], capsys)
    assert code == 2
    assert f"{spec}:4:" in err and "linaer" in err and "did you mean 'linear'" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------- compile


def test_compile_writes_a_valid_onnx_model(built: dict[str, Path]) -> None:
    model = onnx.load(str(built["digits"]))
    onnx.checker.check_model(model, full_check=True)
    assert dict((p.key, p.value) for p in model.metadata_props)["model"] == "digits"
    assert not [p for p in built["digits"].parent.iterdir() if p.name.endswith(".tmp")]


def test_compile_prints_what_it_wrote(tmp_path: Path, capsys: Capture) -> None:
    code, out, _ = run(["compile", LAND, "-o", tmp_path / "lp.onnx"], capsys)
    assert code == 0
    assert "wrote" in out and "lp.onnx" in out and "1,377 parameters" in out


def test_compile_is_byte_identical_for_one_spec_and_seed(tmp_path: Path, built: dict[str, Path]) -> None:
    again = tmp_path / "again.onnx"
    assert main(["compile", str(DIGITS), "-o", str(again)]) == 0
    assert again.read_bytes() == built["digits"].read_bytes()


def test_compile_default_output_is_the_spec_name_in_the_current_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["compile", str(LAND)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["land_price.onnx"]
    onnx.checker.check_model(str(tmp_path / "land_price.onnx"), full_check=True)


def test_compile_into_a_missing_folder_fails_cleanly(tmp_path: Path, capsys: Capture) -> None:
    dest = tmp_path / "nope" / "m.onnx"
    code, out, err = run(["compile", LAND, "-o", dest], capsys)
    assert code == 2
    assert str(dest) in err and "does not exist" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_compile_onto_a_folder_fails_cleanly(tmp_path: Path, capsys: Capture) -> None:
    (tmp_path / "out.onnx").mkdir()
    code, _, err = run(["compile", LAND, "-o", tmp_path / "out.onnx"], capsys)
    assert code == 2 and "out.onnx" in err and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"] and (tmp_path / "out.onnx").is_dir()


def test_a_bad_spec_writes_nothing(tmp_path: Path, capsys: Capture) -> None:
    spec = write(tmp_path / "bad.dlspec", BROKEN)
    code, _, err = run(["compile", spec, "-o", tmp_path / "bad.onnx"], capsys)
    assert code == 2 and "linaer" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.dlspec"]


def test_a_bad_spec_leaves_an_earlier_output_alone(tmp_path: Path, capsys: Capture) -> None:
    spec = write(tmp_path / "bad.dlspec", BROKEN)
    (tmp_path / "bad.onnx").write_bytes(b"earlier")
    code, _, _ = run(["compile", spec, "-o", tmp_path / "bad.onnx"], capsys)
    assert code == 2
    assert (tmp_path / "bad.onnx").read_bytes() == b"earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.dlspec", "bad.onnx"]


def test_compile_train_writes_the_four_artifacts(tmp_path: Path, capsys: Capture) -> None:
    code, out, _ = run(["compile", "--train", LAND, "-o", tmp_path / "run"], capsys)
    assert code == 0, out
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["apply.onnx", "gradients.onnx", "init.npz", "model.onnx", "train_step.onnx"]
    assert "trainable" in out


@pytest.mark.parametrize("threads,batch_norms", [(None, True), ("8", False)])
def test_compile_train_threads_picks_the_lowering(tmp_path: Path, capsys: Capture, threads: str | None,
                                                  batch_norms: bool) -> None:
    """--threads 8: batch norm's affine maps as Mul and Add, which onnxruntime threads."""
    code, out, _ = run(["compile", "--train", DIGITS, "-o", tmp_path / "run",
                        *(["--threads", threads] if threads else [])], capsys)
    assert code == 0, out
    step = onnx.load(tmp_path / "run" / "train_step.onnx")
    assert any(n.op_type == "BatchNormalization" for n in step.graph.node) == batch_norms


def test_compile_train_into_a_file_fails_cleanly(tmp_path: Path, capsys: Capture) -> None:
    (tmp_path / "t.onnx").write_bytes(b"x")
    code, _, err = run(["compile", "--train", DIGITS, "-o", tmp_path / "t.onnx"], capsys)
    assert code == 2 and "is a file, not a folder" in err and "Traceback" not in err
    assert (tmp_path / "t.onnx").read_bytes() == b"x"


# ---------------------------------------------------------------- --model and --seed


def test_a_file_with_two_models_needs_model(tmp_path: Path, capsys: Capture) -> None:
    spec = write(tmp_path / "two.dlspec", TWO_MODELS)
    code, _, err = run(["check", spec], capsys)
    assert code == 2 and "2 models (small, large)" in err and "--model" in err
    code, _, err = run(["check", spec, "--model", "lage"], capsys)
    assert code == 2 and "no model 'lage'" in err and "did you mean 'large'" in err


def test_model_selects_which_model_to_check_and_compile(tmp_path: Path, capsys: Capture) -> None:
    spec = write(tmp_path / "two.dlspec", TWO_MODELS)
    code, out, _ = run(["check", spec, "--model", "large"], capsys)
    assert code == 0 and "model large" in out and "head.fc.linear2" in out
    code, out, _ = run(["check", spec, "--model", "small"], capsys)
    assert code == 0 and "model small" in out and "head.fc.linear2" not in out
    for name, n_params in (("small", 4 * 3 + 3), ("large", 4 * 16 + 16 + 16 * 3 + 3)):
        dest = tmp_path / f"{name}.onnx"
        assert main(["compile", str(spec), "--model", name, "-o", str(dest)]) == 0
        model = onnx.load(str(dest))
        assert dict((p.key, p.value) for p in model.metadata_props)["model"] == name
        assert model.graph.name == name and trainable(model) == n_params


def test_seed_changes_the_weights(tmp_path: Path) -> None:
    paths = {}
    for tag, seed in (("a", "1"), ("b", "2"), ("c", "1")):
        paths[tag] = tmp_path / f"{tag}.onnx"
        assert main(["compile", str(LAND), "--seed", seed, "-o", str(paths[tag])]) == 0
    a, b = inits(paths["a"]), inits(paths["b"])
    weights = [k for k in a if k.endswith(".weight")]
    assert len(weights) == 3
    assert all(not np.array_equal(a[k], b[k]) for k in weights)
    assert all(np.array_equal(a[k], b[k]) for k in a if k.endswith(".bias"))
    assert paths["a"].read_bytes() == paths["c"].read_bytes()


def test_seed_defaults_to_the_train_blocks(tmp_path: Path) -> None:
    spec = write(tmp_path / "two.dlspec", TWO_MODELS)  # its train block (for 'large') says seed 4
    for tag, extra in (("default", []), ("four", ["--seed", "4"]), ("zero", ["--seed", "0"])):
        dest = str(tmp_path / f"{tag}.onnx")
        assert main(["compile", str(spec), "--model", "large", "-o", dest, *extra]) == 0
    default, four, zero = (inits(tmp_path / f"{t}.onnx") for t in ("default", "four", "zero"))
    name = "head.fc.linear1.weight"
    assert np.array_equal(default[name], four[name]) and not np.array_equal(default[name], zero[name])


@pytest.mark.parametrize("seed", ["-1", "x"])
def test_a_bad_seed_is_a_usage_error(seed: str, capsys: Capture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["check", str(LAND), "--seed", seed])
    assert exc.value.code == 2
    assert "--seed" in capsys.readouterr().err


# ---------------------------------------------------------------- predict


def digits_batch(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 16, (n, 1, 8, 8)).astype(np.float32)


def reference(model: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, feeds)[0])


def test_predict_prints_the_outputs(tmp_path: Path, built: dict[str, Path],
                                    capsys: Capture) -> None:
    np.savez(tmp_path / "in.npz", image=digits_batch())
    code, out, err = run(["predict", built["digits"], tmp_path / "in.npz"], capsys)
    assert code == 0, err
    assert "logits [3, 10] float32:" in out
    expected = reference(built["digits"], {"image": digits_batch()})
    assert f"{expected[0, 0]:.4f}"[:6] in out


def test_predict_saves_an_npz(tmp_path: Path, built: dict[str, Path], capsys: Capture) -> None:
    np.savez(tmp_path / "in.npz", image=digits_batch())
    code, out, _ = run(["predict", built["digits"], tmp_path / "in.npz", "-o", tmp_path / "out.npz"], capsys)
    assert code == 0 and "wrote" in out and "logits [3, 10]" in out
    with np.load(tmp_path / "out.npz") as saved:
        assert saved.files == ["logits"]
        np.testing.assert_allclose(saved["logits"], reference(built["digits"], {"image": digits_batch()}),
                                   rtol=1e-5, atol=1e-5)


def test_predict_casts_float64_and_integer_inputs(tmp_path: Path, built: dict[str, Path]) -> None:
    cols = {k: np.array([10.0, 20.0, 5.5]) for k in ("length", "width")} | {"distance": np.array([1, 2, 30])}
    district = np.array(["north", "south", ""])  # a category: strings
    savez(tmp_path / "in.npz", {**cols, "district": district})
    argv = ["predict", built["land_price"], tmp_path / "in.npz", "-o", tmp_path / "o.npz"]
    assert main([str(a) for a in argv]) == 0
    feeds = {k: v.astype(np.float32) for k, v in cols.items()} | {"district": district.astype(object)}
    with np.load(tmp_path / "o.npz") as saved:
        np.testing.assert_allclose(saved["prediction"], reference(built["land_price"], feeds), rtol=1e-6)
        assert saved["prediction"].shape == (3,)


LAND_OK = {k: np.ones(4, np.float32) for k in ("length", "width", "distance")}
LAND_OK["district"] = np.array(["north"] * 4)

BAD_INPUTS: dict[str, tuple[str, dict[str, np.ndarray], list[str]]] = {
    "missing input": ("land_price", {"length": LAND_OK["length"], "width": LAND_OK["width"],
                                     "dist": LAND_OK["distance"]}, ["distance", "missing"]),
    "wrong dtype": ("digits", {"image": np.ones((2, 1, 8, 8), np.complex64)},
                    ["image", "complex64", "float32"]),
    "string dtype": ("digits", {"image": np.full((2, 1, 8, 8), "a")}, ["image", "float32"]),
    "wrong shape": ("digits", {"image": np.ones((2, 1, 8, 9), np.float32)},
                    ["image", "[2, 1, 8, 9]", "[N, 1, 8, 8]"]),
    "wrong rank": ("digits", {"image": np.ones((2, 8, 8), np.float32)}, ["image", "[2, 8, 8]"]),
    "batch sizes": ("land_price", {**LAND_OK, "width": np.ones(5, np.float32)}, ["width", "5", "4"]),
    "object array": ("digits", {"image": np.array([None, 1], dtype=object)}, ["image", "objects"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_predict_rejects_bad_inputs(case: str, tmp_path: Path, built: dict[str, Path],
                                    capsys: Capture) -> None:
    model, arrays, words = BAD_INPUTS[case]
    npz = tmp_path / "bad_inputs.npz"
    savez(npz, arrays)
    code, out, err = run(["predict", built[model], npz, "-o", tmp_path / "out.npz"], capsys)
    assert code == 2
    assert str(npz) in err, err
    for word in words:
        assert word in err, (word, err)
    assert "Traceback" not in err and not (tmp_path / "out.npz").exists()


def test_predict_rejects_a_file_that_is_not_onnx(tmp_path: Path, capsys: Capture) -> None:
    np.savez(tmp_path / "in.npz", image=digits_batch())
    junk = {"text.onnx": b"hello", "random.onnx": bytes(range(256)) * 4, "empty.onnx": b""}
    for name, content in junk.items():
        (tmp_path / name).write_bytes(content)
        code, _, err = run(["predict", tmp_path / name, tmp_path / "in.npz"], capsys)
        assert code == 2 and f"{tmp_path / name} is not a valid ONNX model" in err and "Traceback" not in err
    code, _, err = run(["predict", tmp_path / "in.npz", tmp_path / "in.npz"], capsys)
    assert code == 2 and "in.npz is not a valid ONNX model" in err


def test_predict_names_a_missing_model_or_inputs_file(tmp_path: Path, built: dict[str, Path],
                                                      capsys: Capture) -> None:
    code, _, err = run(["predict", tmp_path / "none.onnx", tmp_path / "in.npz"], capsys)
    assert code == 2 and "none.onnx" in err
    code, _, err = run(["predict", built["digits"], tmp_path / "none.npz"], capsys)
    assert code == 2 and "none.npz" in err and "Traceback" not in err


def test_predict_rejects_inputs_that_are_not_an_npz(tmp_path: Path, built: dict[str, Path],
                                                    capsys: Capture) -> None:
    np.save(tmp_path / "one.npy", digits_batch())
    (tmp_path / "text.npz").write_text("hello")
    for name in ("one.npy", "text.npz"):
        code, _, err = run(["predict", built["digits"], tmp_path / name], capsys)
        assert code == 2 and name in err and ".npz" in err and "Traceback" not in err, err


def test_predict_into_a_missing_folder_fails_cleanly(tmp_path: Path, built: dict[str, Path],
                                                     capsys: Capture) -> None:
    np.savez(tmp_path / "in.npz", image=digits_batch())
    dest = tmp_path / "no" / "o.npz"
    code, _, err = run(["predict", built["digits"], tmp_path / "in.npz", "-o", dest], capsys)
    assert code == 2 and "does not exist" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz"]


# ---------------------------------------------------------------- not yet


def _line_of(path: Path, prefix: str) -> int:
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if ln.startswith(prefix))


def test_train_without_data_says_what_is_missing(tmp_path: Path, capsys: Capture) -> None:
    spec = write(tmp_path / "m.dlspec", "model tiny {\n  input x: float32[N, 4]\n  target y: int64[N]\n"
                 "  head linear(2)\n  loss cross_entropy\n}\n")
    code, out, err = run(["train", spec, "--out", tmp_path / "run"], capsys)
    assert code == 2 and "names no data set" in err and "Traceback" not in err and out == ""


def test_train_validates_the_spec_first(tmp_path: Path, capsys: Capture) -> None:
    spec = write(tmp_path / "t.dlspec", TWO_MODELS.replace("seed 4", "batch 0"))
    code, _, err = run(["train", spec, "--model", "large"], capsys)
    assert code == 2 and "batch" in err and "not supported yet" not in err


def test_the_training_summary_prints_whole_column_names_when_piped(tmp_path: Path, capsys: Capture,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Piped at 80 columns, named heads' metrics ("test accuracy:cls") stay whole, not "accurac…"."""
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run(["train", REPO / "examples" / "two_heads.dlspec", "--epochs", "1", "--threads", "1",
                          "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    header = next(line for line in out.splitlines() if "epochs" in line and "steps" in line)
    names = ["test loss", "test loss:cls", "test loss:mass", "test accuracy:cls", "test mae:mass",
             "test rmse:mass"]
    assert [c.strip() for c in header.strip("┃ ").split("┃")] == ["epochs", "steps", *names]
    assert len(header) > 80 and "…" not in out


# ---------------------------------------------------------------- the installed console script


def test_the_dlspec_console_script_is_installed(tmp_path: Path) -> None:
    exe = shutil.which("dlspec")
    assert exe is not None, "the dlspec console script is not on PATH: pip install -e ."
    env = {**os.environ, "COLUMNS": "80"}
    ok = subprocess.run([exe, "check", str(LAND)], capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "head.linear1" in ok.stdout and "land_price.dlspec is valid" in ok.stdout
    bad = subprocess.run([exe, "train", str(DIGITS), "--resume", "--out", str(tmp_path / "none")],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "no checkpoint" in bad.stderr and "Traceback" not in bad.stderr


def test_paths_are_printed_literally(tmp_path: Path, capsys: Capture) -> None:
    folder = tmp_path / "[red]x"
    folder.mkdir()
    spec = folder / "land_price.dlspec"
    spec.write_text(LAND.read_text())
    code, out, _ = run(["check", spec], capsys)
    assert code == 0 and f"{spec} is valid" in out
    code, out, _ = run(["compile", spec, "-o", folder / "m.onnx"], capsys)
    assert code == 0 and f"wrote {folder / 'm.onnx'}" in out


def test_a_stage_no_output_reads_is_a_note_at_check_and_a_located_error_at_compile_train(
        tmp_path: Path, capsys: Capture) -> None:
    """check said valid without a word, and compile --train failed with no file:line:col."""
    path = tmp_path / "m.dlspec"
    path.write_text("model m {\n  input image: float32[N, 1, 8, 8]\n  target label: int64[N]\n"
                    "  backbone {\n    a: conv(8) -> relu\n    b: conv(8) -> relu\n  }\n"
                    "  head { gap(from=a) -> flatten -> linear(10) }\n  loss cross_entropy\n}\n")
    code, out, _ = run(["check", str(path)], capsys)
    assert code == 0 and "no output depends on backbone.b.conv1.weight, backbone.b.conv1.bias" in out, out
    code, _, err = run(["compile", str(path), "--train", "-o", str(tmp_path / "graphs")], capsys)
    assert code == 2 and f"{path}:6:8: error: the loss does not depend on backbone.b.conv1.weight" in err, err
    path.write_text(path.read_text() + "train {\n  freeze backbone.b\n}\n")
    code, out, _ = run(["check", str(path)], capsys)
    assert code == 0 and "no output depends on" not in out


def test_check_counts_what_the_train_block_freezes_and_catches_its_typos(tmp_path: Path,
                                                                        capsys: Capture) -> None:
    """`freeze backbone` and `lr_mult x: 0` leave those weights out of the trainable count, as
    train does; a freeze, lr_mult or `from ... except` target that names no parameter fails at
    check, not at train (an except typo loaded what it meant to start fresh)."""
    path = tmp_path / "m.dlspec"
    spec = ("model m {\n  input x: float32[N, 4]\n  target y: float32[N]\n"
            "  backbone { a: linear(8) -> relu }\n  head { linear(1) }\n  loss mse\n}\n"
            "train {\n  FREEZE\n}\n")
    path.write_text(spec.replace("FREEZE", "freeze backbone"))
    code, out, _ = run(["check", str(path)], capsys)
    assert code == 0 and "49 parameters, 9 trainable (40 of them frozen)" in out  # 4*8+8 frozen
    path.write_text(spec.replace("FREEZE", "lr_mult head: 0"))
    code, out, _ = run(["check", str(path)], capsys)
    assert code == 0 and "49 parameters, 40 trainable (9 of them frozen)" in out
    for typo, column in (("freeze backbone.b", 3), ("lr_mult hed: 0.1", 11), ('from "r" except hed', 3)):
        path.write_text(spec.replace("FREEZE", typo))
        code, _, err = run(["check", str(path)], capsys)
        assert code == 2 and "matches no parameter" in err and f"m.dlspec:9:{column}:" in err, err
