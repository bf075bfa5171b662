"""Class names end to end: a csv's label names (and a bundled set's target names) are kept in the
run folder and in model.onnx's metadata, survive `dlspec export`, and `dlspec predict` prints the
top-k names with their probabilities for a csv of rows or image files, as text or --json."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from rich.console import Console
from sklearn.datasets import load_iris

from dlspec import api
from dlspec.cli import main
from dlspec.compiler import compile_model
from dlspec.data import load_all, load_dataset
from dlspec.files import atomic_write
from dlspec.images import Layout, read_image
from dlspec.labels import CLASS_NAMES, with_class_names
from dlspec.spec import load
from dlspec.spec.errors import RunError
from dlspec.training import FitOptions, fit

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
FLOWERS = """
model flowers {
  input  sepal_length: float32[N]
  input  sepal_width:  float32[N]
  input  petal_length: float32[N]
  input  petal_width:  float32[N]
  target species:      int64[N]
  features {
    sepal_length = standardize(sepal_length)
    sepal_width  = standardize(sepal_width)
    petal_length = standardize(petal_length)
    petal_width  = standardize(petal_width)
  }
  head mlp(3, hidden=[16])
  loss cross_entropy
}
train {
  data      csv("iris.csv", target=species)
  batch     16
  epochs    8
  optimizer adam(lr=0.02)
  seed      0
}
"""


def write_iris(path: Path, rows: slice = slice(None)) -> None:
    """scikit-learn's iris as a csv whose label column holds the species' names."""
    bunch = load_iris()
    lines = [",".join([*COLUMNS, "species"])]
    lines += [",".join(f"{v:.1f}" for v in x) + f",{bunch.target_names[y]}"
              for x, y in zip(bunch.data[rows], bunch.target[rows])]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A flowers run trained briefly on a csv of named labels."""
    folder = tmp_path_factory.mktemp("flowers")
    write_iris(folder / "iris.csv")
    (folder / "flowers.dlspec").write_text(FLOWERS)
    spec = folder / "flowers.dlspec"
    fit(load(spec), spec, None, FitOptions(out=folder / "run", threads=1), Console(file=io.StringIO()))
    return folder / "run"


def _out(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_class_names_are_kept_in_the_run_and_the_models(run: Path) -> None:
    names = ["setosa", "versicolor", "virginica"]  # sorted: the labels' indices
    assert json.loads((run / "classes.json").read_text()) == {"species": names}
    meta = {p.key: p.value for p in onnx.load(run / "model.onnx").metadata_props}
    assert json.loads(meta[CLASS_NAMES]) == {"logits": names}
    exported = {p.key: p.value for p in api.export(run).metadata_props}
    assert json.loads(exported[CLASS_NAMES]) == {"logits": names}


def test_bundled_sets_name_their_classes(tmp_path: Path) -> None:
    spec = tmp_path / "iris.dlspec"
    spec.write_text(FLOWERS.replace('csv("iris.csv", target=species)', "iris"))
    prog = load(spec)
    data = load_dataset(prog.train("flowers") or pytest.fail(), prog.model(), tmp_path)
    assert data.class_names == {"species": ["setosa", "versicolor", "virginica"]}
    digits = load("examples/digits.dlspec")
    found = load_dataset(digits.train("digits") or pytest.fail(), digits.model(), Path("examples"))
    assert found.class_names == {"label": [str(i) for i in range(10)]}


def test_label_names_read_against_a_trained_models(tmp_path: Path) -> None:
    """Evaluating on a csv that lacks a class keeps the model's indices; a name the model does not
    know, and a column mixing names and numbers, are errors naming the line."""
    (tmp_path / "f.dlspec").write_text(FLOWERS)
    flowers = load(tmp_path / "f.dlspec").model()
    write_iris(tmp_path / "late.csv", slice(50, None))  # versicolor and virginica only
    named = {"species": ["setosa", "versicolor", "virginica"]}
    assert set(load_all(str(tmp_path / "late.csv"), flowers, 3, named)["species"].tolist()) == {1, 2}
    alone = load_all(str(tmp_path / "late.csv"), flowers, 3)  # no names given: its own, sorted
    assert set(alone["species"].tolist()) == {0, 1}
    with pytest.raises(RunError, match=r"late.csv: target 'species': label 'virginica' at line 52 is not a "
                                       r"class of the model \(setosa, versicolor\)"):
        load_all(str(tmp_path / "late.csv"), flowers, 3, {"species": ["setosa", "versicolor"]})
    text = (tmp_path / "late.csv").read_text().replace("versicolor\n", "1\n", 1)
    (tmp_path / "mixed.csv").write_text(text)
    with pytest.raises(RunError, match=r"the labels mix class names \('versicolor' at line 3\) and numbers "
                                       r"\('1' at line 2\)"):
        load_all(str(tmp_path / "mixed.csv"), flowers, 3)


def test_predict_prints_the_top_classes_of_csv_rows(run: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    write_iris(tmp_path / "rows.csv", slice(0, 150, 50))  # a setosa, a versicolor, a virginica
    out = _out(capsys, ["predict", run, tmp_path / "rows.csv", "--top", "2"])
    sess = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    x = load_iris().data[0:150:50].astype(np.float32).round(1)
    logits = sess.run(None, {c: x[:, i] for i, c in enumerate(COLUMNS)})[0].astype(np.float64)
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    names = ["setosa", "versicolor", "virginica"]
    lines = out.strip().splitlines()
    assert len(lines) == 3
    for line, row, p in zip(lines, (2, 3, 4), prob):
        first, second = np.argsort(-p)[:2]
        assert line == f"line {row}: {names[first]} {p[first]:.4f}, {names[second]} {p[second]:.4f}", line
    assert lines[0].startswith("line 2: setosa")  # trained: the first flower is a setosa

    doc = json.loads(_out(capsys, ["predict", run, tmp_path / "rows.csv", "--json"]))
    assert [d["input"] for d in doc] == ["line 2", "line 3", "line 4"]
    for d, p in zip(doc, prob):
        assert d["output"] == "logits" and len(d["top"]) == 3
        assert [t["index"] for t in d["top"]] == list(np.argsort(-p))
        assert [t["class"] for t in d["top"]] == [names[i] for i in np.argsort(-p)]
        np.testing.assert_allclose([t["probability"] for t in d["top"]], np.sort(p)[::-1], rtol=1e-6)


def test_predict_decodes_image_files_to_the_models_input(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    spec = tmp_path / "tiny.dlspec"
    spec.write_text("""
model tiny {
  input  image: float32[N, 1, 8, 8]
  target label: int64[N]
  features { image = image / 255 }
  head mlp(3)
  loss cross_entropy
}
""")
    names = ["circle", "square", "cross"]
    model = with_class_names(compile_model(load(spec)).onnx, {"logits": names})
    atomic_write(tmp_path / "tiny.onnx", model.SerializeToString())
    rng = np.random.default_rng(0)
    files = []
    for i, size in enumerate(((8, 8), (16, 12))):  # one to resize
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)  # RGB: made grey
        files.append(path)
    doc = json.loads(_out(capsys, ["predict", tmp_path / "tiny.onnx", *files, "--json", "--top", "1"]))
    pixels = np.stack([read_image(f, Layout(8, 8, 1, "chw")) for f in files]).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"image": pixels})[0]
    assert [d["input"] for d in doc] == [str(f) for f in files]
    assert [d["top"][0]["class"] for d in doc] == [names[i] for i in logits.argmax(1)]
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert main(["predict", str(tmp_path / "tiny.onnx"), str(tmp_path / "bad.png")]) == 2
    assert "bad.png: not a readable image" in capsys.readouterr().err
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # more pixels: a decompression bomb
    for side in (12, 16):  # beyond the limit Pillow warns, beyond twice it refuses: both one line
        Image.fromarray(np.zeros((side, side), np.uint8)).save(tmp_path / "big.png")
        assert main(["predict", str(tmp_path / "tiny.onnx"), str(tmp_path / "big.png")]) == 2
        err = capsys.readouterr().err
        assert "big.png: not a readable image" in err and len(err.strip().splitlines()) == 1, err


def test_predict_without_class_names_prints_the_outputs(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A model without class names prints its outputs, unless --top asks to rank the logits."""
    spec = tmp_path / "f.dlspec"
    spec.write_text(FLOWERS)
    atomic_write(tmp_path / "f.onnx", compile_model(load(spec)).onnx.SerializeToString())
    write_iris(tmp_path / "rows.csv", slice(0, 2))
    out = _out(capsys, ["predict", tmp_path / "f.onnx", tmp_path / "rows.csv"])
    assert out.startswith("logits [2, 3] float32:")
    out = _out(capsys, ["predict", tmp_path / "f.onnx", tmp_path / "rows.csv", "--top", "1"])
    assert out.startswith("line 2: ") and len(out.strip().splitlines()) == 2


FILLED = """
model filled {
  input  a: float32[N]
  input  b: float32[N]
  features {
    a = fill(a, 7)
  }
  head linear(2)
}
"""


def test_predict_takes_empty_cells_only_in_the_inputs_the_model_fills(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """fill(a, 7) puts 7 in an empty cell of a; b the model does not fill, so an empty or NaN cell there
    is an error naming the file, the column and the line, not a NaN prediction."""
    (tmp_path / "filled.dlspec").write_text(FILLED)
    assert main(["compile", str(tmp_path / "filled.dlspec"), "-o", str(tmp_path / "f.onnx")]) == 0
    (tmp_path / "rows.csv").write_text("a,b\n,1.5\n7,1.5\n2,1.5\n")
    _out(capsys, ["predict", tmp_path / "f.onnx", tmp_path / "rows.csv", "-o", tmp_path / "out.npz"])
    out = np.load(tmp_path / "out.npz")["output"]
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0], out[1])  # the empty cell is 7
    assert not np.array_equal(out[1], out[2])
    for cell, what in (("", "missing value"), ("nan", "NaN")):
        (tmp_path / "holes.csv").write_text(f"a,b\n1,2\n2,{cell}\n")
        code = main(["predict", str(tmp_path / "f.onnx"), str(tmp_path / "holes.csv")])
        out_text, err = capsys.readouterr()
        assert code == 2 and out_text == "" and "Traceback" not in err
        assert f"holes.csv: column 'b': {what} at line 3; the model fills no missing values of 'b'" in err
        assert "fill(b, ...)" in err
