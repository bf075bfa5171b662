"""runtime/images.py: images(...) data sets from class folders and manifests, the decoded-pixel
cache (reuse, invalidation, nothing half-written), bad files, and the exported model fed files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from dlspec import data as d
from dlspec import images
from dlspec.shards import Rows
from dlspec.spec import model as m
from dlspec.spec.errors import RunError

COLOURS = {"cat": (200, 30, 40), "dog": (20, 180, 60), "owl": (10, 40, 220)}


def decl(role: str, name: str, dtype: str, *dims: int) -> m.TensorDecl:
    return m.TensorDecl(role=role, name=name, dtype=dtype, shape=["N", *dims])  # type: ignore[arg-type]


def net(*dims: int, dtype: str = "float32") -> m.Model:
    return m.Model(name="net", inputs=[decl("input", "image", dtype, *dims)],
                   targets=[decl("target", "label", "int64")])


RGB = net(3, 8, 8)


def source(path: Path, cache: Path, **kw: object) -> m.Train:
    settings: dict[str, object] = {"kind": "images", "path": str(path), "cache": str(cache), "test": 0.25}
    return m.Train(data=m.ImagesData(**{**settings, **kw}))  # type: ignore[arg-type]


def solid(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (8, 8),
          mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {"lossless": True} if path.suffix == ".webp" else {}  # WebP is lossy by default
    Image.new("RGB", size, colour).convert(mode).save(path, **extra)


def folder(root: Path, per_class: int = 4) -> Path:
    """Three classes of solid images in their class's colour, in the lossless formats and in mixed
    sizes (a solid colour stays itself when resized)."""
    for name, colour in COLOURS.items():
        for i in range(per_class):
            ext = [".png", ".bmp", ".webp", ".PNG"][i % 4]
            size = [(8, 8), (16, 16), (5, 7), (8, 8)][i % 4]
            solid(root / name / f"{i}{ext}", colour, size)
    return root


def everything(ds: d.Dataset) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([np.asarray(s["image"]) for s in (ds.train, ds.val, ds.test) if d.size(s)])
    y = np.concatenate([s["label"] for s in (ds.train, ds.val, ds.test) if d.size(s)])
    return x, y


def test_class_folders_give_labels_names_and_pixels(tmp_path: Path) -> None:
    root = folder(tmp_path / "set")
    solid(root / "owl" / "sub" / "deep.jpg", COLOURS["owl"])  # images below a class folder count
    (root / "notes.txt").write_text("not an image")
    (root / "dog" / ".hidden.png").write_bytes(b"")
    notes: list[str] = []
    ds = d.load_dataset(source(root, tmp_path / "cache"), RGB, tmp_path, 3, notes.append)
    assert ds.class_names == {"label": ["cat", "dog", "owl"]}
    assert isinstance(ds.train["image"], Rows)  # read from the mapped cache, a batch at a time
    x, y = everything(ds)
    assert x.shape == (13, 3, 8, 8) and x.dtype == np.float32
    assert np.bincount(y).tolist() == [4, 4, 5]
    for label, name in enumerate(ds.class_names["label"]):
        want = np.asarray(COLOURS[name], np.float32).reshape(3, 1, 1)
        got = x[y == label]
        assert np.abs(got - want).max() <= (6 if name == "owl" else 0), name  # owl has one JPEG
    assert any("ignored 1 file(s)" in n and "notes.txt" in n for n in notes)
    assert any(n.startswith("decoded 13 images") for n in notes)


@pytest.mark.parametrize("dims,shape", [((1, 8, 8), (1, 8, 8)), ((8, 8, 3), (8, 8, 3)), ((8, 8), (8, 8)),
                                        ((8, 8, 1), (8, 8, 1))])
def test_the_input_declares_grayscale_or_rgb_and_the_layout(tmp_path: Path, dims: tuple[int, ...],
                                                             shape: tuple[int, ...]) -> None:
    root = tmp_path / "set"
    solid(root / "a" / "x.png", (200, 30, 40))
    solid(root / "b" / "y.png", (20, 180, 60), mode="L")  # a grayscale file for an RGB model, too
    ds = d.load_dataset(source(root, tmp_path / "cache", test=0.0), net(*dims), tmp_path)
    x, y = everything(ds)
    assert x.shape == (2, *shape)
    for label, (colour, mode) in enumerate([((200, 30, 40), "RGB"), ((20, 180, 60), "L")]):
        file = Image.new("RGB", (1, 1), colour).convert(mode)
        channels = 1 if 1 in dims or len(dims) == 2 else 3
        want = np.asarray(file.convert("L" if channels == 1 else "RGB"), np.float32).reshape(-1)
        pixels = x[y == label][0]
        axis = 0 if dims[0] in (1, 3) else -1
        per_channel = pixels.reshape(channels, -1) if axis == 0 else pixels.reshape(-1, channels).T
        assert (per_channel == want[:, None]).all()


def test_resize_policies(tmp_path: Path) -> None:
    """An image twice as wide as high: red left quarter, green middle half, blue right quarter."""
    wide = np.zeros((8, 16, 3), np.uint8)
    wide[:, :4] = (255, 0, 0)
    wide[:, 4:12] = (0, 255, 0)
    wide[:, 12:] = (0, 0, 255)
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    shape = images.Layout(8, 8, 3, "hwc")
    stretched = images.read_image(path, shape, "resize")
    assert tuple(stretched[4, 0]) == (255, 0, 0) and tuple(stretched[4, -1]) == (0, 0, 255)
    cropped = images.read_image(path, shape, "center_crop")  # the middle 8 of 16 columns: all green
    assert (cropped == (0, 255, 0)).all()
    padded = images.read_image(path, shape, "pad")  # 4 rows of image, 2 black rows above and below
    assert (padded[:2] == 0).all() and (padded[-2:] == 0).all()
    assert tuple(padded[4, 0]) == (255, 0, 0) and tuple(padded[4, 4]) == (0, 255, 0)


def _bad_folder(root: Path) -> tuple[Path, Path]:
    folder(root, per_class=2)
    corrupt = root / "cat" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    whole = root / "dog" / "0.png"
    solid(whole, COLOURS["dog"], (64, 64))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(whole)
    truncated = root / "dog" / "truncated.png"
    truncated.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    return corrupt, truncated


def test_corrupt_and_truncated_files_are_an_error_that_lists_them(tmp_path: Path) -> None:
    corrupt, truncated = _bad_folder(tmp_path / "set")
    with pytest.raises(RunError) as err:
        d.load_dataset(source(tmp_path / "set", tmp_path / "cache"), RGB, tmp_path)
    text = str(err.value)
    assert "2 file(s) cannot be read as images (skip_bad=true" in text
    assert str(corrupt) in text and str(truncated) in text and "truncated" in text


def test_skip_bad_leaves_them_out_and_says_which(tmp_path: Path) -> None:
    corrupt, truncated = _bad_folder(tmp_path / "set")
    notes: list[str] = []
    ds = d.load_dataset(source(tmp_path / "set", tmp_path / "cache", skip_bad=True), RGB, tmp_path,
                        note=notes.append)
    assert sum(d.size(s) for s in (ds.train, ds.val, ds.test)) == 6
    skipped = next(n for n in notes if "skipped 2 file(s)" in n)
    assert str(corrupt) in skipped and str(truncated) in skipped
    # the cache remembers them: without skip_bad the same folder is still an error, decoding nothing
    with pytest.raises(RunError, match="2 file"):
        d.load_dataset(source(tmp_path / "set", tmp_path / "cache"), RGB, tmp_path)


def test_an_empty_class_folder_is_an_error(tmp_path: Path) -> None:
    root = folder(tmp_path / "set")
    (root / "zebra").mkdir()
    (root / "zebra" / "readme.txt").write_text("no images yet")
    with pytest.raises(RunError, match="class folder 'zebra' holds no PNG/JPEG/BMP/WebP files"):
        d.load_dataset(source(root, tmp_path / "cache"), RGB, tmp_path)


def test_no_class_folders_and_no_folder_are_errors(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    solid(tmp_path / "flat" / "a.png", (1, 2, 3))
    with pytest.raises(RunError, match="no class folders"):
        d.load_dataset(source(tmp_path / "flat", tmp_path / "cache"), RGB, tmp_path)
    with pytest.raises(RunError, match="no such folder"):
        d.load_dataset(source(tmp_path / "nowhere", tmp_path / "cache"), RGB, tmp_path)


def test_a_size_the_model_does_not_take_is_an_error(tmp_path: Path) -> None:
    root = folder(tmp_path / "set")
    with pytest.raises(RunError, match=r"size=\[16, 8\] gives height 16, but input 'image' is"):
        d.load_dataset(source(root, tmp_path / "cache", size=[16, 8]), RGB, tmp_path)
    with pytest.raises(RunError, match="C 1 \\(grayscale\\) or 3 \\(RGB\\)"):
        d.load_dataset(source(root, tmp_path / "cache"), net(4, 8, 8), tmp_path)


def test_more_classes_than_the_model_has_outputs_is_an_error(tmp_path: Path) -> None:
    root = folder(tmp_path / "set")
    # named by class, not as 'label 2 at sample 8 is not a class of the model'
    with pytest.raises(RunError, match=r"has 3 classes \(cat, dog, owl\); the model's head has 2"):
        loss = m.Loss(terms=[m.LossTerm(loss=m.CrossEntropy(kind="cross_entropy"))])
        d.load_dataset(source(root, tmp_path / "cache"), RGB.model_copy(update={"loss": loss}), tmp_path,
                       classes=2)


def test_csv_manifest_with_class_names(tmp_path: Path) -> None:
    for i, name in enumerate(["owl", "cat", "owl", "dog"]):
        solid(tmp_path / "pics" / f"{i}.png", COLOURS[name])
    (tmp_path / "labels.csv").write_text("file,label\n" + "".join(
        f"pics/{i}.png,{n}\n" for i, n in enumerate(["owl", "cat", "owl", "dog"])))
    ds = d.load_dataset(source(tmp_path / "labels.csv", tmp_path / "cache", test=0.0), RGB, tmp_path)
    assert ds.class_names == {"label": ["cat", "dog", "owl"]}
    x, y = everything(ds)
    assert sorted(y.tolist()) == [0, 1, 2, 2]
    for label, name in enumerate(["cat", "dog", "owl"]):
        assert (x[y == label] == np.asarray(COLOURS[name], np.float32).reshape(3, 1, 1)).all()


def test_json_manifest_with_class_indices_and_a_missing_file(tmp_path: Path) -> None:
    solid(tmp_path / "a.png", COLOURS["cat"])
    solid(tmp_path / "b.bmp", COLOURS["dog"])
    (tmp_path / "set.json").write_text(json.dumps(
        [{"file": "a.png", "label": 1}, {"file": "b.bmp", "label": 0}, {"file": "gone.png", "label": 0}]))
    with pytest.raises(RunError, match="gone.png: no such file"):
        d.load_dataset(source(tmp_path / "set.json", tmp_path / "cache"), RGB, tmp_path)
    ds = d.load_dataset(source(tmp_path / "set.json", tmp_path / "cache", skip_bad=True, test=0.0), RGB,
                        tmp_path)
    assert ds.class_names == {}
    x, y = everything(ds)
    assert (x[y == 1] == np.asarray(COLOURS["cat"], np.float32).reshape(3, 1, 1)).all()


@pytest.mark.parametrize("text,message", [
    ("name,label\na.png,1\n", "no column 'file'"),
    ("file,label\na.png,\n", "line 2 has an empty label"),
    ("file,label\na.png,-1\n", "line 2 has a negative label"),
    ("file,label\n", "lists no files"),
    ("file,label\na.png,99999999999999999999999\n", "line 2 has a label of 1,048,576 or more"),  # overflowed
])
def test_bad_manifests(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(RunError, match=message):
        d.load_dataset(source(tmp_path / "m.csv", tmp_path / "cache"), RGB, tmp_path)


class _Opens:
    """Counts Pillow's Image.open calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.count = 0
        real = Image.open

        def counted(*args: object, **kw: object) -> Image.Image:
            self.count += 1
            return real(*args, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(Image, "open", counted)


def test_a_second_load_decodes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = folder(tmp_path / "set")
    opens = _Opens(monkeypatch)
    first = d.load_dataset(source(root, tmp_path / "cache"), RGB, tmp_path)
    assert opens.count == 12
    notes: list[str] = []
    again = d.load_dataset(source(root, tmp_path / "cache"), RGB, tmp_path, note=notes.append)
    assert opens.count == 12  # not one more
    assert any("from the cache" in n and "nothing decoded" in n for n in notes)
    for a, b in zip(everything(first), everything(again)):
        assert np.array_equal(a, b)
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".json", ".npy"]
    (npy,) = (tmp_path / "cache").glob("*.npy")
    mask = os.umask(0)
    os.umask(mask)
    assert npy.stat().st_mode & 0o777 == 0o666 & ~mask  # a shared cache: not private to its writer


def test_a_changed_file_invalidates_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = folder(tmp_path / "set")
    d.load_dataset(source(root, tmp_path / "cache"), RGB, tmp_path)
    changed = root / "cat" / "0.png"
    solid(changed, (1, 2, 3))
    os.utime(changed, ns=(1, 1))  # a new mtime even on a coarse clock
    opens = _Opens(monkeypatch)
    ds = d.load_dataset(source(root, tmp_path / "cache"), RGB, tmp_path)
    assert opens.count == 12  # decoded again
    x, _ = everything(ds)
    assert (x == np.asarray((1, 2, 3), np.float32).reshape(3, 1, 1)).all(axis=(1, 2, 3)).sum() == 1
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1  # the stale entry is gone
    # another size or policy is another entry, the first kept
    d.load_dataset(source(root, tmp_path / "cache", policy="pad"), RGB, tmp_path)
    assert opens.count == 24 and len(list((tmp_path / "cache").glob("*.npy"))) == 2
    d.load_dataset(source(root, tmp_path / "cache"), RGB, tmp_path)
    assert opens.count == 24


def test_an_interrupted_decode_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = folder(tmp_path / "set")
    calls = 0
    real = images.read_image

    def stop_at_fifth(*args: object) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise KeyboardInterrupt
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(images, "read_image", stop_at_fifth)
    with pytest.raises(KeyboardInterrupt):
        d.load_dataset(source(root, tmp_path / "cache"), RGB, tmp_path)
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setattr(images, "read_image", real)
    x, _ = everything(d.load_dataset(source(root, tmp_path / "cache"), RGB, tmp_path))
    assert len(x) == 12


def test_a_deeply_nested_json_manifest_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text("[" * 100_000 + "]" * 100_000)  # a RecursionError before
    with pytest.raises(RunError, match="not valid JSON for a manifest"):
        d.load_dataset(source(tmp_path / "m.json", tmp_path / "cache"), RGB, tmp_path)


@pytest.mark.parametrize("damage", ["pixels", "record a list", "record labels", "record names"])
def test_a_damaged_cache_is_decoded_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          damage: str) -> None:
    """A record of another JSON shape was an internal error (AttributeError)."""
    root = folder(tmp_path / "set")
    d.load_dataset(source(root, tmp_path / "cache"), RGB, tmp_path)
    (npy,) = (tmp_path / "cache").glob("*.npy")
    (record,) = (tmp_path / "cache").glob("*.json")
    if damage == "pixels":
        npy.write_bytes(npy.read_bytes()[:200])
    else:
        record.write_text({"record a list": "[]", "record labels": '{"labels": [[1], "x"]}',
                           "record names": '{"labels": [0], "class_names": 7}'}[damage])
    opens = _Opens(monkeypatch)
    x, _ = everything(d.load_dataset(source(root, tmp_path / "cache"), RGB, tmp_path))
    assert opens.count == 12 and len(x) == 12


SPEC = """
model tiny {
  input  image: float32[N, 3, 12, 12]
  target label: int64[N]
  features { image = image / 255 }
  backbone { conv(8, k=3, stride=2) -> relu }
  head classify(classes=3)
  loss cross_entropy
}
train {
  data images("set", size=[12, 12], policy=center_crop, cache="cache", test=0.25)
  batch 8
  epochs 4
  optimizer adam(lr=1e-2)
}
"""


def test_trained_model_fed_files_decoded_the_same_way(tmp_path: Path) -> None:
    from rich.console import Console

    from dlspec.spec.loader import load
    from dlspec.training import FitOptions, fit

    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        for i in range(12):
            noisy = np.clip(np.asarray(colour) + rng.normal(0, 30, (15, 20, 3)), 0, 255).astype(np.uint8)
            (tmp_path / "set" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(noisy).save(tmp_path / "set" / name / f"{i}.png")
    spec = tmp_path / "tiny.dlspec"
    spec.write_text(SPEC)
    result = fit(load(spec), spec, None, FitOptions(out=tmp_path / "run"), Console(quiet=True))
    assert result.metrics["accuracy"] >= 0.9  # three colours are easy
    prog = load(spec)
    model = prog.model(None)
    ds = d.load_dataset(prog.train(model.name) or m.Train(), model, tmp_path, 3)
    sess = ort.InferenceSession(str(tmp_path / "run" / "model.onnx"), providers=["CPUExecutionProvider"])
    layout = images.layout_of(model.inputs[0], [12, 12], "test")
    files = sorted((tmp_path / "set").rglob("*.png"))
    decoded = np.stack([images.read_image(f, layout, "center_crop") for f in files]).astype(np.float32)
    cached = np.asarray(images.load(tmp_path / "set", images.list_folder(tmp_path / "set", print), layout,
                                    "center_crop", tmp_path / "cache").pixels.array, np.float32)
    assert np.array_equal(decoded, cached)  # the cache holds exactly what a file decodes to
    (from_files,) = sess.run(None, {"image": decoded})
    (from_cache,) = sess.run(None, {"image": cached})
    assert np.array_equal(from_files, from_cache)
    labels = np.repeat([0, 1, 2], 12)
    assert (from_files.argmax(1) == labels).mean() >= 0.9
    assert ds.class_names == {"label": ["cat", "dog", "owl"]}


def test_the_digits_images_example_writes_its_folder_and_trains(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util
    import shutil

    from rich.console import Console

    from dlspec.spec.loader import load
    from dlspec.training import FitOptions, fit

    examples = Path(__file__).resolve().parents[2] / "examples"
    spec_loader = importlib.util.spec_from_file_location("make_image_folder",
                                                         examples / "make_image_folder.py")
    assert spec_loader is not None and spec_loader.loader is not None
    maker = importlib.util.module_from_spec(spec_loader)
    spec_loader.loader.exec_module(maker)
    assert maker.make(tmp_path / "digits_images") == 1797
    files = sorted((tmp_path / "digits_images").rglob("*.png"))
    assert len(files) == 1797 and sorted(p.name for p in (tmp_path / "digits_images").iterdir()) == \
        [str(i) for i in range(10)]
    with Image.open(files[0]) as img:
        assert img.size == (32, 32) and img.mode == "RGB"
    spec = tmp_path / "digits_images.dlspec"
    shutil.copy(examples / "digits_images.dlspec", spec)
    monkeypatch.setenv("DLSPEC_CACHE", str(tmp_path / "cache"))  # not the user's cache
    result = fit(load(spec), spec, None, FitOptions(epochs=4, out=tmp_path / "run"), Console(quiet=True))
    assert result.metrics["accuracy"] >= 0.8


def test_a_16_bit_grayscale_image_is_scaled_to_8_bits(tmp_path: Path) -> None:
    """Converted as it was, every value past 255 became white: a ramp of 0 to 65535 read as 255."""
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    assert Image.open(tmp_path / "ramp16.png").mode.startswith("I")
    gray = images.layout_of(decl("input", "image", "float32", 1, 8, 8), None, "test")
    got = images.read_image(tmp_path / "ramp16.png", gray).reshape(8, 8)
    np.testing.assert_array_equal(got, np.rint(ramp / 257.0).astype(np.uint8))
    rgb = images.read_image(tmp_path / "ramp16.png", images.layout_of(RGB.inputs[0], None, "test"))
    assert rgb.shape == (3, 8, 8) and (rgb == got).all()  # the same gray in each channel


def test_decompression_bombs_are_refused_in_every_decoding_thread(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The limit was a warnings filter toggled per call, which threads undo for each other: with
    eight threads one bomb in a few hundred got through."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(tmp_path / "bomb.png")  # past the limit, under 2x
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "small.png")
    layout = images.layout_of(RGB.inputs[0], None, "test")

    def read(name: str) -> bool:
        try:
            images.read_image(tmp_path / name, layout)
        except ValueError:
            return False
        return True

    names = ["bomb.png", "small.png"] * 200
    with ThreadPoolExecutor(8) as pool:
        read_ok = list(pool.map(read, names))
    assert read_ok == [name == "small.png" for name in names]


def test_an_unreadable_folder_is_an_error_and_a_link_loop_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A subfolder that could not be read was skipped (its images silently left out of the
    class), and an unreadable root was an internal error."""
    root = folder(tmp_path / "set")
    (root / "cat" / "more").mkdir()
    solid(root / "cat" / "more" / "x.png", COLOURS["cat"])
    (root / "cat" / "loop").symlink_to("..", target_is_directory=True)  # linked folders are not entered
    listing = images.list_folder(root, print)
    counts = {name: listing.labels.count(i) for i, name in enumerate(listing.class_names or [])}
    assert counts == {"cat": 5, "dog": 4, "owl": 4}
    real = os.scandir

    def denied(path: Any) -> Any:
        if Path(path).name == "more":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", denied)
    with pytest.raises(RunError, match=rf"cannot read folder {root / 'cat' / 'more'}: Permission denied"):
        images.list_folder(root, print)

