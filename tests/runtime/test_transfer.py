"""Transfer learning: `from` loads weights by name, reports mismatches, respects `except`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from dlspec.spec import load
from dlspec.spec.errors import RunError, SpecError
from dlspec.training import FitOptions, fit

NET = """
model MODEL {
  input  image: float32[N, 1, 8, 8]
  target label: int64[N]
  features { image = image / 16 }
  backbone { stem: conv(8, k=3) -> bn -> relu -> maxpool(2) }
  head classify(classes=CLASSES)
  loss cross_entropy
}
"""


def _write(tmp_path: Path, name: str, classes: int, train: str) -> Path:
    path = tmp_path / f"{name}.dlspec"
    path.write_text(NET.replace("MODEL", name).replace("CLASSES", str(classes)) + train)
    return path


def _fit(spec: Path, out: Path) -> None:
    fit(load(spec), spec, None, FitOptions(out=out), Console(quiet=True))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("source")
    spec = _write(root, "source", 10, "train {\n  data digits(classes=[0, 1, 2])\n  epochs 1\n}\n")
    _fit(spec, root / "run")
    return root / "run"


def test_frozen_backbone_keeps_the_source_weights_and_the_head_starts_fresh(source: Path,
                                                                           tmp_path: Path) -> None:
    spec = _write(tmp_path, "target", 10, f'train {{\n  data digits(classes=[5, 6])\n  epochs 2\n'
                  f'  from "{source}" except head\n  freeze backbone\n}}\n')
    _fit(spec, tmp_path / "run")
    before = np.load(source / "last.npz")
    after = np.load(tmp_path / "run" / "last.npz")
    for name in ("backbone.stem.conv1.weight", "backbone.stem.bn1.running_mean"):
        assert np.array_equal(before[name], after[name]), name
    assert not np.array_equal(before["head.linear1.weight"], after["head.linear1.weight"])


def test_compile_train_writes_the_from_weights_into_init_npz(source: Path, tmp_path: Path) -> None:
    """init.npz held fresh draws: the graphs would fine-tune a frozen random backbone."""
    import contextlib
    import io

    from dlspec.cli import main

    spec = _write(tmp_path, "target", 10, f'train {{\n  data digits\n  from "{source}" except head\n'
                  "  freeze backbone\n}\n")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["compile", str(spec), "--train", "-o", str(tmp_path / "graphs")]) == 0
    assert f"initialised 5 of 7 parameter tensors from {source}" in out.getvalue()
    before, init = np.load(source / "last.npz"), np.load(tmp_path / "graphs" / "init.npz")
    for name in ("backbone.stem.conv1.weight", "backbone.stem.bn1.running_var"):
        assert np.array_equal(before[name], init[name]), name
    assert not np.array_equal(before["head.linear1.weight"], init["head.linear1.weight"])


def test_a_new_head_shape_is_an_error_unless_excepted(source: Path, tmp_path: Path) -> None:
    spec = _write(tmp_path, "five", 5, f'train {{\n  data digits(classes=[0, 1, 2, 3, 4])\n'
                  f'  epochs 1\n  from "{source}"\n}}\n')
    with pytest.raises(RunError, match=r"wrong shape: head\.linear1\.weight \[10, 8\] \(want \[5, 8\]\)"):
        _fit(spec, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # a refused source leaves no half-made run folder
    spec.write_text(spec.read_text().replace(f'from "{source}"', f'from "{source}" except head'))
    _fit(spec, tmp_path / "run")


def test_missing_and_unexpected_parameters_are_named(source: Path, tmp_path: Path) -> None:
    text = NET.replace("MODEL", "other").replace("CLASSES", "10").replace(
        "conv(8, k=3) -> bn", "conv(8, k=3) -> conv(8, k=3) -> bn")
    spec = tmp_path / "other.dlspec"
    spec.write_text(text + f'train {{\n  data digits\n  epochs 1\n  from "{source / "model.onnx"}"\n}}\n')
    with pytest.raises(RunError) as err:
        _fit(spec, tmp_path / "run")
    message = str(err.value)
    assert "missing: backbone.stem.conv1.bias, backbone.stem.conv2.weight" in message
    assert "model.onnx" in message


@pytest.mark.parametrize("bad,message", [
    (np.full((10, 8), "abc"), r"is <U3, not real numbers"),  # an internal error
    (np.full((10, 8), 1 + 2j, np.complex64), r"is complex64, not real numbers"),  # imaginary part dropped
    (np.full((10, 8), np.nan, np.float32), r"holds nan at \[0, 0\], which is not a finite float32"),
    (np.full((10, 8), 1e300), r"holds 1e\+300 at \[0, 0\], which is not a finite float32"),
])
def test_weights_that_are_not_finite_real_numbers_are_named(source: Path, tmp_path: Path, bad: np.ndarray,
                                                            message: str) -> None:
    """A NaN or a float64 past float32 stopped training at step 1, blamed on the learning rate."""
    with np.load(source / "last.npz") as last:
        weights = {k: last[k] for k in last.files if not k.startswith("__") and "." in k}
    weights["head.linear1.weight"] = bad
    np.savez(tmp_path / "w.npz", **weights)
    train = f'train {{\n  data digits\n  epochs 1\n  from "{tmp_path / "w.npz"}"\n}}\n'
    spec = _write(tmp_path, "t", 10, train)
    with pytest.raises(RunError, match=f"from {tmp_path / 'w.npz'}: 'head.linear1.weight' {message}"):
        _fit(spec, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    spec = _write(tmp_path, "t", 10, 'train {\n  data digits\n  epochs 1\n  from "no/such/run"\n}\n')
    with pytest.raises(RunError, match="no such file or run folder"):
        _fit(spec, tmp_path / "run")


def _foreign(source: Path, tmp_path: Path) -> Path:
    """The source run's weights under another tool's names: `features.*` and `fc.*`."""
    weights = dict(np.load(source / "last.npz"))
    out = {name.replace("backbone.stem.", "features.").replace("head.linear1.", "fc."): value
           for name, value in weights.items() if not name.startswith("__")}
    np.savez(tmp_path / "foreign.npz", **out)  # type: ignore[arg-type]
    return tmp_path / "foreign.npz"


def test_a_name_map_renames_prefixes_and_single_names(source: Path, tmp_path: Path) -> None:
    foreign = _foreign(source, tmp_path)
    spec = _write(tmp_path, "mapped", 10, f'train {{\n  data digits(classes=[5, 6])\n  epochs 1\n'
                  f'  from "{foreign}" map {{\n    "features." -> "backbone.stem."\n'
                  f'    "fc.weight" -> "head.linear1.weight", "fc.bias" -> "head.linear1.bias"\n  }}\n'
                  f'  freeze backbone, head\n}}\n')
    _fit(spec, tmp_path / "run")
    before, after = np.load(source / "last.npz"), np.load(tmp_path / "run" / "last.npz")
    for name in ("backbone.stem.conv1.weight", "backbone.stem.bn1.running_var", "head.linear1.weight"):
        assert np.array_equal(before[name], after[name]), name


def test_without_the_map_the_foreign_names_are_listed(source: Path, tmp_path: Path) -> None:
    foreign = _foreign(source, tmp_path)
    spec = _write(tmp_path, "unmapped", 10, f'train {{\n  data digits\n  epochs 1\n  from "{foreign}"\n}}\n')
    with pytest.raises(RunError, match=r"missing: backbone\.stem\.conv1\.weight.*unexpected: features\."):
        _fit(spec, tmp_path / "run")


@pytest.mark.parametrize(("rules", "message"), [
    ('"feature." -> "backbone.stem."', r"no weight starts with 'feature\.'"),
    ('"fc.weigth" -> "head.linear1.weight"', r"no weight is called 'fc\.weigth' \(did you mean 'fc\.weight'"),
    ('"fc.weight" -> "x.w", "fc.bias" -> "x.w"', r"'fc.weight' and 'fc.bias' both map to 'x.w'"),
])
def test_a_map_rule_that_matches_nothing_or_collides_is_an_error_at_the_rule(
        source: Path, tmp_path: Path, rules: str, message: str) -> None:
    foreign = _foreign(source, tmp_path)
    spec = _write(tmp_path, "bad", 10, f'train {{\n  data digits\n  epochs 1\n'
                  f'  from "{foreign}" map {{ {rules} }}\n}}\n')
    with pytest.raises(SpecError, match=message) as err:
        _fit(spec, tmp_path / "run")
    assert f"bad.dlspec:{NET.count(chr(10)) + 4}:" in str(err.value)


@pytest.mark.parametrize(("rule", "message"), [
    ('"fc." -> "head.linear1"', "a prefix rule maps to a prefix"),
    ('"fc.weight" -> "head."', "names one weight"),
])
def test_a_map_rule_of_mixed_kinds_is_refused_when_the_spec_loads(tmp_path: Path, rule: str,
                                                                  message: str) -> None:
    spec = _write(tmp_path, "mixed", 10, f'train {{\n  data digits\n  from "w.npz" map {{ {rule} }}\n}}\n')
    with pytest.raises(SpecError, match=message) as err:
        load(spec)
    assert f"mixed.dlspec:{NET.count(chr(10)) + 3}:" in str(err.value)
