"""An .npz member is judged by its .npy header before it is inflated: a few KB can declare
gigabytes. Sample counts that disagree, or an array larger than the machine's memory, are refused
at once (they were inflated first: gigabytes of memory, then a shape or 'truncated' error)."""

from __future__ import annotations

import io
import resource
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dlspec import RunError
from dlspec.data import load_dataset
from dlspec.files import Npz
from dlspec.spec import load

SPEC = """
model mlp {
  input  x: float32[N, 4]
  target y: int64[N]
  head mlp(3, hidden=[8])
  loss cross_entropy
}
train { data npz("data.npz") }
"""


def _member(shape: tuple[int, ...], dtype: str) -> bytes:
    """A .npy header declaring `shape`, and a few bytes of data: what a zip bomb's member inflates to
    before it runs out."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                                "shape": shape})
    return out.getvalue() + bytes(64)


def _npz(path: Path, members: dict[str, tuple[tuple[int, ...], str]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, (shape, dtype) in members.items():
            z.writestr(f"{name}.npy", _member(shape, dtype))
    return path


def _load(tmp_path: Path) -> None:
    spec = tmp_path / "m.dlspec"
    spec.write_text(SPEC)
    prog = load(spec)
    train = prog.train("mlp")
    assert train is not None
    load_dataset(train, prog.model(None), tmp_path, 3)


def test_sample_counts_are_compared_from_the_headers(tmp_path: Path) -> None:
    _npz(tmp_path / "data.npz", {"x": ((2**30, 4), "<f4"), "y": ((40,), "<i8")})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(RunError, match=r"different sample counts: 'x' has 1,073,741,824, 'y' has 40"):
        _load(tmp_path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KB: nothing inflated


def test_a_shape_that_does_not_fit_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    _npz(tmp_path / "data.npz", {"x": ((2**26, 16), "<f4"), "y": ((2**26,), "<i8")})
    with pytest.raises(RunError, match=r"input 'x': shape \(67108864, 16\) does not match the declared "
                                       r"float32\[N, 4\]"):
        _load(tmp_path)


def test_an_array_larger_than_the_memory_is_refused(tmp_path: Path) -> None:
    path = _npz(tmp_path / "big.npz", {"x": ((2**40, 4), "<f4")})
    with Npz(path, "data file") as data:
        assert data.declared("x") == ((2**40, 4), np.dtype("<f4"))
        with pytest.raises(RunError, match=r"array 'x' declares float32\[1099511627776, 4\], 16,384.0 GiB, "
                                           "more than this machine's memory"):
            data["x"]
