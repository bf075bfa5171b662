"""The bundled digits' derived targets: `ink` and `mask` beside the class, matched by name."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from dlspec.data import load_all, load_dataset
from dlspec.spec import load
from dlspec.spec.errors import RunError


def _model(tmp_path: Path, targets: str, data: str = "digits(test=0.2)"):  # type: ignore[no-untyped-def]
    """A model with these targets (the loss reads the first) and this data; the data is what counts."""
    first = targets.split()[1].rstrip(":")
    path = tmp_path / "m.dlspec"
    path.write_text(textwrap.dedent(f"""\
        model m {{
          input image: float32[N, 1, 8, 8]
        {textwrap.indent(targets, "  ")}
          backbone {{ flatten }}
          head linear(10)
          loss mse(target={first})
        }}
        train {{ data {data} }}
        """))
    prog = load(path)
    return prog.model(), prog.train("m")


def test_mask_and_ink_follow_the_pixels_and_the_label(tmp_path: Path) -> None:
    model, _ = _model(tmp_path, "target label: int64[N]\ntarget ink: float32[N]\ntarget mask: int64[N, 8, 8]")
    got = load_all("digits", model)
    d = load_digits()
    np.testing.assert_array_equal(got["label"], d.target)
    np.testing.assert_allclose(got["ink"], d.data.mean(1) / 16, rtol=1e-6)
    i = 7  # one sample by hand: inked pixels take 1 + its digit, the rest 0
    want = np.where(d.images[i] > 4, d.target[i] + 1, 0)
    np.testing.assert_array_equal(got["mask"][i], want)
    assert got["mask"].dtype == np.int64 and set(np.unique(got["mask"])) <= set(range(11))


def test_a_mask_declared_with_a_channel_axis(tmp_path: Path) -> None:
    model, _ = _model(tmp_path, "target mask: int64[N, 1, 8, 8]")
    assert load_all("digits", model)["mask"].shape == (1797, 1, 8, 8)


def test_splits_stay_stratified_by_the_class_and_keep_the_derived_targets_aligned(tmp_path: Path) -> None:
    model, train = _model(tmp_path, "target mask: int64[N, 8, 8]\ntarget label: int64[N]",
                          "digits(test=0.2, classes=[3, 5])")
    ds = load_dataset(train, model, tmp_path)
    assert ds.stratified
    for split in (ds.train, ds.test):
        inked = split["mask"].reshape(len(split["mask"]), -1).max(1)
        np.testing.assert_array_equal(inked, split["label"] + 1)  # every digit inks some pixel


def test_two_plain_targets_are_refused(tmp_path: Path) -> None:
    model, _ = _model(tmp_path, "target label: int64[N]\ntarget other: int64[N]")
    with pytest.raises(RunError, match="has one target, or also ink and mask"):
        load_all("digits", model)
