"""`dlspec predict` and `dlspec.predict` on hostile inputs and image files: NaN or infinity in an
input the model does not fill is an error naming the file, the input and the sample, not a NaN
prediction; image files are fitted to the input size by the policy the model was trained with
(its metadata image_policy), unless --fit says otherwise."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from rich.console import Console
from test_predict import FILLED

from dlspec import api, images
from dlspec.cli import main
from dlspec.files import atomic_write
from dlspec.spec import load
from dlspec.spec.errors import RunError
from dlspec.training import FitOptions, fit

WIDE = """
model wide {
  input  x: float32[N, 3]
  head linear(2)
}
"""


def _compiled(tmp_path: Path, text: str, name: str) -> Path:
    (tmp_path / f"{name}.dlspec").write_text(text)
    assert main(["compile", str(tmp_path / f"{name}.dlspec"), "-o", str(tmp_path / f"{name}.onnx")]) == 0
    return tmp_path / f"{name}.onnx"


def _refused(capsys: pytest.CaptureFixture[str], argv: list[object], out_file: Path | None = None) -> str:
    """The one-line error of a predict that must fail as bad input, having written nothing."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    if out_file is not None:
        assert not out_file.exists() and not list(out_file.parent.glob(f".{out_file.name}*"))
    return err


def test_npz_nan_only_in_the_inputs_the_model_fills(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """fill(a, 7): NaN in a is 7 (the same prediction as a 7); NaN in b, which the model does not
    fill, and infinity in either, are errors naming the file, the input and the sample."""
    model = _compiled(tmp_path, FILLED, "filled")
    np.savez(tmp_path / "ok.npz", a=np.array([np.nan, 7, 2], np.float32), b=np.full(3, 1.5, np.float32))
    assert main(["predict", str(model), str(tmp_path / "ok.npz"), "-o", str(tmp_path / "out.npz")]) == 0
    out = np.load(tmp_path / "out.npz")["output"]
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0], out[1])  # the NaN is filled with 7
    assert not np.array_equal(out[1], out[2])

    dest = tmp_path / "bad_out.npz"
    np.savez(tmp_path / "nan_b.npz", a=np.ones(3, np.float32), b=np.array([1, np.nan, np.nan], np.float32))
    err = _refused(capsys, ["predict", model, tmp_path / "nan_b.npz", "-o", dest], dest)
    assert f"{tmp_path / 'nan_b.npz'}: input 'b': NaN in sample 1; the model fills no missing values of " \
           "'b' (its spec has no fill(b, ...))" in err
    np.savez(tmp_path / "inf_a.npz", a=np.array([1, 2, -np.inf], np.float32), b=np.ones(3, np.float32))
    err = _refused(capsys, ["predict", model, tmp_path / "inf_a.npz", "-o", dest], dest)
    assert "inf_a.npz: input 'a': infinite value -inf (or a number beyond float32's range) in sample 2" in err
    # finite float64, but beyond float32: the model would see inf
    np.savez(tmp_path / "huge.npz", a=np.ones(2), b=np.array([1.0, 1e300]))
    err = _refused(capsys, ["predict", model, tmp_path / "huge.npz"])
    assert "huge.npz: input 'b': infinite value inf (or a number beyond float32's range) in sample 1" in err


def test_the_python_api_refuses_the_same_inputs(tmp_path: Path) -> None:
    model = _compiled(tmp_path, FILLED, "filled")
    got = api.predict(model, {"a": np.array([np.nan, 7], np.float32), "b": np.ones(2, np.float32)})
    np.testing.assert_array_equal(got["output"][0], got["output"][1])
    with pytest.raises(RunError, match=r"^inputs: input 'b': NaN in sample 0; the model fills no missing "):
        api.predict(model, {"a": np.ones(2, np.float32), "b": np.array([np.nan, 1], np.float32)})
    with pytest.raises(RunError, match=r"^inputs: input 'a': infinite value inf \(or a number beyond "
                                 r"float32's range\) in sample 1$"):
        api.predict(model, {"a": np.array([1, np.inf], np.float32), "b": np.ones(2, np.float32)})


def test_the_first_bad_value_of_a_wide_input_is_located(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    model = _compiled(tmp_path, WIDE, "wide")
    x = np.ones((4, 3), np.float32)
    x[2, 1] = x[3, 0] = np.nan  # the first in row order is [2, 1]
    np.savez(tmp_path / "x.npz", x=x)
    err = _refused(capsys, ["predict", model, tmp_path / "x.npz"])
    assert "x.npz: input 'x': NaN in sample 2 (at [2, 1]); the model fills no missing values of 'x'" in err
    ints = {"x": np.ones((2, 3), np.int64)}  # whole numbers are always finite
    assert api.predict(model, ints)["output"].shape == (2, 2)


def test_a_csv_number_beyond_float32_is_refused_by_line(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    model = _compiled(tmp_path, FILLED, "filled")
    (tmp_path / "rows.csv").write_text("a,b\n1,2\n,1e300\n")
    err = _refused(capsys, ["predict", model, tmp_path / "rows.csv"])
    assert "rows.csv: input 'b': infinite value inf (or a number beyond float32's range) in line 3" in err


def test_a_csv_column_named_twice_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """predict read the first of the two silently, where train and eval refuse the file."""
    model = _compiled(tmp_path, FILLED, "filled")
    (tmp_path / "rows.csv").write_text("a,b,a\n1,2,3\n")
    err = _refused(capsys, ["predict", model, tmp_path / "rows.csv"])
    assert "rows.csv: the header names column 'a' more than once" in err


# ---- image files fitted as in training ----
SPEC = """
model tiny {
  input  image: float32[N, 3, 12, 12]
  target label: int64[N]
  features { image = image / 255 }
  backbone { conv(4, k=3, stride=2) -> relu }
  head classify(classes=2)
  loss cross_entropy
}
train {
  data images("set", policy=POLICY, cache="cache", test=0.25)
  batch 8
  epochs 1
  optimizer adam(lr=1e-2)
}
"""


@pytest.fixture(scope="module")
def padded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained on wide noisy images fitted with policy=pad: resize, center_crop and pad give
    each of them different pixels."""
    root = tmp_path_factory.mktemp("padded")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / "set" / name).mkdir(parents=True)
        for i in range(6):
            noise = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)  # 20 wide, 12 high
            Image.fromarray(noise).save(root / "set" / name / f"{i}.png")
    (root / "tiny.dlspec").write_text(SPEC.replace("POLICY", "pad"))
    spec = root / "tiny.dlspec"
    fit(load(spec), spec, None, FitOptions(out=root / "run", threads=1), Console(file=io.StringIO()))
    return root


def _pixels(files: list[Path], policy: str) -> np.ndarray:
    layout = images.Layout(12, 12, 3, "chw")
    return np.stack([images.read_image(f, layout, policy) for f in files]).astype(np.float32)


def _predicted(model: Path, files: list[Path], dest: Path, *fit_args: str) -> dict[str, np.ndarray]:
    assert main(["predict", str(model), *map(str, files), "-o", str(dest), *fit_args]) == 0
    with np.load(dest) as saved:
        return dict(saved)


def test_predict_fits_image_files_as_the_model_was_trained(padded: Path) -> None:
    run = padded / "run"
    meta = {p.key: p.value for p in onnx.load(run / "model.onnx").metadata_props}
    assert meta[images.POLICY] == "pad"
    files = sorted((padded / "set").rglob("*.png"))
    as_trained = api.predict(run / "model.onnx", {"image": _pixels(files, "pad")})["logits"]
    resized = api.predict(run / "model.onnx", {"image": _pixels(files, "resize")})["logits"]
    assert np.abs(as_trained - resized).max() > 1e-3  # the policies differ here: the test can fail

    got = _predicted(run, files, padded / "p.npz")["logits"]
    np.testing.assert_allclose(got, as_trained, rtol=1e-6, atol=1e-6)
    overridden = _predicted(run, files, padded / "r.npz", "--fit", "resize")["logits"]
    np.testing.assert_allclose(overridden, resized, rtol=1e-6, atol=1e-6)

    # `dlspec export` keeps the record, and its model predicts the same way
    assert main(["export", str(run), "-o", str(padded / "exported.onnx")]) == 0
    exported = {p.key: p.value for p in onnx.load(padded / "exported.onnx").metadata_props}
    assert exported[images.POLICY] == "pad"
    from_export = _predicted(padded / "exported.onnx", files, padded / "e.npz")
    np.testing.assert_allclose(from_export["logits"], as_trained, rtol=1e-5, atol=1e-5)
    cropped = api.predict(padded / "exported.onnx", {"image": _pixels(files, "center_crop")})["logits"]
    from_crop = _predicted(padded / "exported.onnx", files, padded / "c.npz", "--fit", "center_crop")
    np.testing.assert_allclose(from_crop["logits"], cropped, rtol=1e-6, atol=1e-6)


def test_a_model_without_the_record_fits_by_resize(padded: Path, tmp_path: Path) -> None:
    """Models trained before the record (or compiled, not trained) keep predict's old default."""
    model = onnx.load(padded / "run" / "model.onnx")
    kept = [p for p in model.metadata_props if p.key != images.POLICY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    atomic_write(tmp_path / "old.onnx", model.SerializeToString())
    files = sorted((padded / "set").rglob("*.png"))[:3]
    resized = api.predict(tmp_path / "old.onnx", {"image": _pixels(files, "resize")})["logits"]
    got = _predicted(tmp_path / "old.onnx", files, tmp_path / "o.npz")["logits"]
    np.testing.assert_allclose(got, resized, rtol=1e-6, atol=1e-6)


def test_a_damaged_record_is_a_clean_error(padded: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    model = onnx.load(padded / "run" / "model.onnx")
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                        images.POLICY: "squash"})
    atomic_write(tmp_path / "odd.onnx", model.SerializeToString())
    files = sorted((padded / "set").rglob("*.png"))[:1]
    err = _refused(capsys, ["predict", tmp_path / "odd.onnx", *files, "-o", tmp_path / "x.npz"],
                   tmp_path / "x.npz")
    assert "the model's metadata image_policy is 'squash', not one of resize, center_crop, pad" in err
    overridden = _predicted(tmp_path / "odd.onnx", files, tmp_path / "y.npz", "--fit", "pad")
    assert overridden["logits"].shape == (1, 2)  # --fit reads no record
