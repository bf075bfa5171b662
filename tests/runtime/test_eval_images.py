"""`dlspec eval MODEL FOLDER`: a folder of class subfolders of images, decoded as the spec's
images(...) decodes its own, labelled by the model's class names, run once; bad folders are one
error line naming the path, exit code 2, and nothing written."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from sklearn.metrics import confusion_matrix
from test_eval_per_class import Runs

from dlspec import images
from dlspec.api import evaluation
from dlspec.cli import main
from dlspec.spec import load
from dlspec.spec.errors import RunError
from dlspec.training import FitOptions, fit

COLOURS = {"cat": (200, 30, 40), "dog": (20, 180, 60), "owl": (10, 40, 220)}

MODEL = """
model tiny {
  input  image: float32[N, 3, 8, 8]
  target label: int64[N]
  features { image = image / 255 }
  backbone { conv(4, k=3, stride=2) -> relu }
  head classify(classes=3)
  loss cross_entropy
}
"""
SPEC = MODEL + """
train {
  data images("set", size=[8, 8], policy=center_crop, cache="cache", test=0.25)
  batch 8
  epochs 10
  optimizer adam(lr=3e-2)
}
"""


def noisy(path: Path, colour: tuple[int, int, int], size: tuple[int, int], rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.clip(np.asarray(colour) + rng.normal(0, 30, (size[1], size[0], 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        for i in range(12):
            noisy(root / "set" / name / f"{i}.png", colour, (10, 8), rng)
    (root / "tiny.dlspec").write_text(SPEC)
    fit(load(root / "tiny.dlspec"), root / "tiny.dlspec", None, FitOptions(out=root / "run", threads=1),
        Console(file=io.StringIO()))
    return root


def files_under(*roots: Path) -> dict[Path, float]:
    return {p: p.stat().st_mtime_ns for r in roots if r.exists() for p in r.rglob("*")}


def test_a_folder_of_some_of_the_classes_is_labelled_by_the_models_names(
        trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    held = tmp_path / "held"
    rng = np.random.default_rng(1)
    for name, count in (("cat", 3), ("owl", 4)):  # no dog: owl is still the model's class 2
        for i in range(count):
            noisy(held / name / f"{i}.png", COLOURS[name], (16, 9), rng)  # wide: the crop policy matters
    (held / "owl" / "notes.txt").write_text("not an image")
    before = files_under(trained, held)
    decodes: list[Path] = []
    read = images.read_image
    monkeypatch.setattr(images, "read_image", lambda p, *a: decodes.append(p) or read(p, *a))
    runs = Runs(monkeypatch)
    result = evaluation(trained / "run" / "model.onnx", trained / "tiny.dlspec", held)
    assert len(runs.outputs) == 1 and len(decodes) == 7  # each file decoded once, the model run once
    # the pixels are the files as the spec's images(...) decodes them: center_crop to 8x8
    files = sorted(held.rglob("*.png"))
    layout = images.Layout(8, 8, 3, "chw")
    want = np.stack([read(f, layout, "center_crop") for f in files]).astype(np.float32)
    np.testing.assert_array_equal(runs.feeds[0]["image"], want)
    assert not np.array_equal(want, np.stack([read(f, layout, "resize") for f in files]))
    truth = np.array([0] * 3 + [2] * 4)
    pred = runs.outputs[0]["logits"].argmax(1)
    (pc,) = result.per_class
    assert pc.names == ["cat", "dog", "owl"] and pc.support.tolist() == [3, 0, 4]
    np.testing.assert_array_equal(pc.confusion, confusion_matrix(truth, pred, labels=range(3)))
    assert result.metrics == {"accuracy": float((pred == truth).mean()), "samples": 7.0}
    assert result.metrics["accuracy"] >= 6 / 7  # three colours are easy
    assert main(["eval", str(trained / "run"), str(held)]) == 0
    assert f"on {held} (7 samples): accuracy" in capsys.readouterr().out
    assert files_under(trained, held) == before  # no cache entry, nothing beside the images


def _empty(root: Path) -> Path:
    root.mkdir()
    return root


def _flat(root: Path) -> Path:
    noisy(root / "0.png", COLOURS["cat"], (8, 8), np.random.default_rng(0))
    return root


def _no_images(root: Path) -> Path:
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "readme.txt").write_text("no images here")
    return root / "cat"


def _foreign_class(root: Path) -> Path:
    noisy(root / "cat" / "0.png", COLOURS["cat"], (8, 8), np.random.default_rng(0))
    noisy(root / "cow" / "0.png", COLOURS["dog"], (8, 8), np.random.default_rng(0))
    return root / "cow"


def _unreadable(root: Path) -> Path:
    noisy(root / "cat" / "0.png", COLOURS["cat"], (8, 8), np.random.default_rng(0))
    bad = root / "owl" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    return bad


@pytest.mark.parametrize("make,message", [
    (_empty, "no class folders"), (_flat, "no class folders"), (_no_images, "holds no PNG/JPEG/BMP/WebP"),
    (_foreign_class, "cow: 'cow' is not a class of the model (did you mean 'owl'?); its classes are "
                     "cat, dog, owl"),
    (_unreadable, "not a readable image")])
def test_a_bad_folder_is_one_line_naming_the_path(trained: Path, tmp_path: Path, make: object, message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert callable(make)
    named = make(tmp_path / "held")
    before = files_under(trained, tmp_path)
    assert main(["eval", str(trained / "run"), str(tmp_path / "held")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    assert str(named) in captured.err and message in captured.err, captured.err
    assert files_under(trained, tmp_path) == before


def test_a_model_without_class_names_reads_folders_named_by_index(trained: Path, tmp_path: Path) -> None:
    import onnx

    model = onnx.load(trained / "run" / "model.onnx")
    kept = [p for p in model.metadata_props if p.key != "class_names"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, tmp_path / "nameless.onnx")
    rng = np.random.default_rng(2)
    noisy(tmp_path / "held" / "2" / "a.png", COLOURS["owl"], (8, 8), rng)
    noisy(tmp_path / "held" / "0" / "b.png", COLOURS["cat"], (8, 8), rng)
    (pc,) = evaluation(tmp_path / "nameless.onnx", trained / "tiny.dlspec", tmp_path / "held").per_class
    assert pc.support.tolist() == [1, 0, 1]
    (tmp_path / "held" / "owl").mkdir()
    (tmp_path / "held" / "owl" / "c.png").write_bytes((tmp_path / "held" / "2" / "a.png").read_bytes())
    with pytest.raises(RunError, match=r"owl: the model has no class names, so its class folders are named "
                                        r"by class index \(0 to 2\); 'owl' is not one"):
        evaluation(tmp_path / "nameless.onnx", trained / "tiny.dlspec", tmp_path / "held")


def test_the_fit_policy_the_model_records_decodes_the_folder(trained: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's recorded policy comes before the spec's: the spec may have changed since the
    model was trained (here the record says pad, the spec center_crop)."""
    import onnx

    model = onnx.load(trained / "run" / "model.onnx")
    record = next(p for p in model.metadata_props if p.key == images.POLICY)
    assert record.value == "center_crop"  # what training recorded, from the spec
    record.value = "pad"
    onnx.save(model, tmp_path / "pad.onnx")
    noisy(tmp_path / "held" / "cat" / "0.png", COLOURS["cat"], (16, 9), np.random.default_rng(3))
    runs = Runs(monkeypatch)
    evaluation(tmp_path / "pad.onnx", trained / "tiny.dlspec", tmp_path / "held")
    layout = images.Layout(8, 8, 3, "chw")
    file = tmp_path / "held" / "cat" / "0.png"
    want = images.read_image(file, layout, "pad")[None].astype(np.float32)
    np.testing.assert_array_equal(runs.feeds[0]["image"], want)
    assert not np.array_equal(want, images.read_image(file, layout, "center_crop")[None])
