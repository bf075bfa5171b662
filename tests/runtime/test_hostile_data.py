"""Bad data files and bad labels: each is a RunError naming the file (and the line or sample and
the value) before anything trains; nothing trains silently on data it should have refused."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

from dlspec.cli import main
from dlspec.data import load_all, load_dataset
from dlspec.inference import predict
from dlspec.spec import load
from dlspec.spec.errors import RunError

CLASSIFIER = """
model lab {
  input  a: float32[N]
  input  b: float32[N]
  target y: LABEL_TYPE[N]
  head mlp(OUT, hidden=[8])
  loss LOSS
}
train {
  data   DATA
  epochs 1
}
"""


def _spec(tmp_path: Path, data: str, loss: str = "cross_entropy", out: int = 10,
          label_type: str = "int64") -> Path:
    text = (CLASSIFIER.replace("DATA", data).replace("LOSS", loss).replace("OUT", str(out))
            .replace("LABEL_TYPE", label_type))
    path = tmp_path / "lab.dlspec"
    path.write_text(text)
    return path


def _csv(tmp_path: Path, labels: list[object], name: str = "lab.csv", encoding: str = "utf-8",
         header: str = "a,b,y") -> Path:
    rows = [header] + [f"{i / 10},{i % 3},{label}" for i, label in enumerate(labels)]
    path = tmp_path / name
    path.write_text("\n".join(rows) + "\n", encoding=encoding)
    return path


def _load(spec: Path, classes: int | None = 10) -> None:
    prog = load(spec)
    model = prog.model()
    train = prog.train(model.name)
    assert train is not None
    load_dataset(train, model, spec.parent, classes)


def _train(spec: Path, out: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", str(spec), "--out", str(out)])
    return code, err.getvalue()


GOOD = [i % 10 for i in range(40)]


@pytest.mark.parametrize("label", [12, 10, -1, -100])
def test_a_label_outside_the_models_classes_is_refused_with_its_line(tmp_path: Path, label: int) -> None:
    """OneHot made -1 the last class and 12 an all-zero target: both trained without a word."""
    _csv(tmp_path, GOOD[:30] + [label] + GOOD[31:])
    spec = _spec(tmp_path, 'csv("lab.csv", target=y)')
    code, err = _train(spec, tmp_path / "run")
    assert code == 2 and "Traceback" not in err, err
    assert f"lab.csv: target 'y': label {label} at line 32 is not a class of the model (0 to 9)" in err
    assert not (tmp_path / "run").exists()


def test_ignore_index_labels_are_allowed_and_named_in_the_hint(tmp_path: Path) -> None:
    _csv(tmp_path, GOOD[:5] + [-100] + GOOD[6:])
    with pytest.raises(RunError, match=r"cross_entropy\(ignore_index=-100\) would skip such rows"):
        _load(_spec(tmp_path, 'csv("lab.csv", target=y)'))
    _load(_spec(tmp_path, 'csv("lab.csv", target=y)', loss="cross_entropy(ignore_index=-100)"))


def test_npz_labels_name_the_sample_and_the_value(tmp_path: Path) -> None:
    y = np.array(GOOD)
    y[17] = 11
    np.savez(tmp_path / "lab.npz", a=np.zeros(40), b=np.zeros(40), y=y)
    with pytest.raises(RunError, match=r"lab.npz: target 'y': label 11 at sample 17 is not a class"):
        _load(_spec(tmp_path, 'npz("lab.npz")'))


def test_probability_targets_stay_in_zero_to_one(tmp_path: Path) -> None:
    _csv(tmp_path, [0, 1, 0.25, 1.5] * 10)
    spec = _spec(tmp_path, 'csv("lab.csv", target=y)', loss="bce_with_logits", out=1, label_type="float32")
    with pytest.raises(RunError, match=r"label 1.5 at line 5 is outside \[0, 1\]"):
        _load(spec)


def test_bundled_classes_beyond_the_head_are_refused(tmp_path: Path) -> None:
    spec = tmp_path / "d.dlspec"
    spec.write_text("""
model d {
  input  image: float32[N, 1, 8, 8]
  target label: int64[N]
  head mlp(5)
  loss cross_entropy
}
train { data digits(classes=[5, 6, 7, 8, 9]) }
""")
    with pytest.raises(RunError, match="bundled data set digits: target 'label': label 5 at sample 0"):
        _load(spec, 5)


@pytest.mark.parametrize("cell, message", [
    ("nan", "NaN at line 9"), ("inf", "infinite value 'inf' at line 9"), ("-Infinity", "infinite value"),
])
def test_missing_and_infinite_inputs_are_refused(tmp_path: Path, cell: str, message: str) -> None:
    _edit_line(_csv(tmp_path, GOOD), 9, f"{cell},1,3")
    with pytest.raises(RunError, match=message):
        _load(_spec(tmp_path, 'csv("lab.csv", target=y)'))


def test_a_csv_value_that_does_not_fit_the_declared_type_names_its_line(tmp_path: Path) -> None:
    """It said 'sample 7' for the value on line 9 (the header and a blank line before it)."""
    path = _csv(tmp_path, GOOD)
    _edit_line(path, 3, "")
    _edit_line(path, 9, "1,1,3.5")
    with pytest.raises(RunError, match=r"target 'y': cannot cast float64 to int64 safely: non-integer value "
                                       r"3.5 at line 9$"):
        _load(_spec(tmp_path, 'csv("lab.csv", target=y)'))


def _edit_line(path: Path, number: int, text: str, encoding: str = "utf-8") -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))


def test_a_latin1_csv_names_the_line_and_the_byte(tmp_path: Path) -> None:
    _edit_line(_csv(tmp_path, GOOD), 5, "caf\u00e9,1,3", encoding="latin-1")
    code, err = _train(_spec(tmp_path, 'csv("lab.csv", target=y)'), tmp_path / "run")
    assert code == 2 and "lab.csv: line 5 is not UTF-8 text (byte 0xe9 at column 4)" in err, err
    assert not (tmp_path / "run").exists()


def test_a_csv_of_many_columns_without_the_models_is_one_short_line(tmp_path: Path) -> None:
    """The duplicate-column check was quadratic (30,000 columns: 8 s; 100,000: 108 s), and the
    message listed every column."""
    n = 30_000
    (tmp_path / "lab.csv").write_text(",".join(f"c{i}" for i in range(n)) + ",y\n" + "1," * n + "0\n")
    code, err = _train(_spec(tmp_path, 'csv("lab.csv", target=y)'), tmp_path / "run")
    assert code == 2 and "input 'a': no column 'a' (the header has: c0, c1," in err, err
    assert "c19 and 29,981 more)" in err and len(err) < 400


def test_a_csv_that_the_reader_refuses_or_a_bom(tmp_path: Path) -> None:
    path = _csv(tmp_path, GOOD)
    _edit_line(path, 7, "1," + "9" * 200_000 + ",3")
    with pytest.raises(RunError, match=r"lab.csv: line 7 is not valid csv: field larger than field limit"):
        _load(_spec(tmp_path, 'csv("lab.csv", target=y)'))
    path = _csv(tmp_path, GOOD)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # what spreadsheets write: not part of 'a'
    _load(_spec(tmp_path, 'csv("lab.csv", target=y)'))


def _npz_bytes(compressed: bool = False) -> bytes:
    buf = io.BytesIO()
    save = np.savez_compressed if compressed else np.savez
    save(buf, a=np.arange(40.0), b=np.zeros(40), y=np.array(GOOD))
    return buf.getvalue()


def _flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x10
    return bytes(b)


NPZ = {
    "truncated": (lambda: _npz_bytes()[: len(_npz_bytes()) // 2], "not an .npz file, or a truncated one"),
    "empty": (lambda: b"", "not an .npz file, or a truncated one"),
    "random bytes": (lambda: bytes(range(256)) * 8, "not an .npz file"),
    "a flipped bit": (lambda: _flip(_npz_bytes(), 200), "array 'a' is corrupt or truncated"),
    "a flipped bit, compressed": (lambda: _flip(_npz_bytes(True), 100), "is corrupt or truncated"),
}


@pytest.mark.parametrize("case", list(NPZ))
def test_a_damaged_npz_is_named_for_training_eval_and_predict(tmp_path: Path, case: str) -> None:
    make, message = NPZ[case]
    (tmp_path / "lab.npz").write_bytes(make())
    spec = _spec(tmp_path, 'npz("lab.npz")')
    code, err = _train(spec, tmp_path / "run")
    assert code == 2 and str(tmp_path / "lab.npz") in err and message in err, err
    assert not (tmp_path / "run").exists()
    with pytest.raises(RunError, match=message):
        load_all(str(tmp_path / "lab.npz"), load(spec).model())
    assert main(["compile", str(spec), "-o", str(tmp_path / "m.onnx")]) == 0
    with pytest.raises(RunError, match=f"cannot read inputs {tmp_path / 'lab.npz'}: .*{message}"):
        predict(tmp_path / "m.onnx", tmp_path / "lab.npz")
