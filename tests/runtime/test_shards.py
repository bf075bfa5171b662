"""runtime/shards.py: folders of .npy files and uncompressed .npz members read through memory maps,
checked like in-memory arrays, and a data set larger than a process's memory budget trained on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dlspec import data as d
from dlspec import shards
from dlspec.spec import model as m
from dlspec.spec.errors import RunError

NET = m.Model(name="net", inputs=[m.TensorDecl(role="input", name="x", dtype="float32", shape=["N", 6])],
              targets=[m.TensorDecl(role="target", name="y", dtype="int64", shape=["N"])])


def _arrays(n: int = 100) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(n, 6)), "y": rng.integers(0, 3, n)}  # float64: cast when read


def _train(path: str) -> m.Train:
    return m.Train(data=m.NpzData(kind="npz", path=path, test=0.2, val=0.1))


@pytest.mark.parametrize("layout", ["folder", "npz", "compressed"])
def test_mapped_sources_equal_the_in_memory_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 layout: str) -> None:
    arrays = _arrays()
    np.savez(tmp_path / "plain.npz", **arrays)
    if layout == "folder":
        (tmp_path / "set").mkdir()
        for k, v in arrays.items():
            np.save(tmp_path / "set" / f"{k}.npy", v)
        name = "set"
    elif layout == "npz":
        name = "plain.npz"
    else:
        np.savez_compressed(tmp_path / "packed.npz", **arrays)
        name = "packed.npz"
    expected = d.load_dataset(_train("plain.npz"), NET, tmp_path)
    monkeypatch.setattr(shards, "MAP_BYTES", 0)
    got = d.load_dataset(_train(name), NET, tmp_path)
    assert isinstance(got.train["x"], shards.Rows) == (layout != "compressed")  # a deflated member is read
    for part in ("train", "val", "test"):
        a, b = getattr(expected, part), getattr(got, part)
        assert d.size(a) == d.size(b)
        for k in a:
            assert np.array_equal(a[k], np.asarray(b[k])) and np.asarray(b[k]).dtype == a[k].dtype
    assert got.train["x"][np.array([2, 0])].dtype == np.float32


def test_a_bad_value_in_a_mapped_array_names_its_sample(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = _arrays(1000)
    arrays["x"][700, 2] = np.nan
    (tmp_path / "set").mkdir()
    for k, v in arrays.items():
        np.save(tmp_path / "set" / f"{k}.npy", v)
    monkeypatch.setattr(shards, "MAP_BYTES", 0)
    monkeypatch.setattr(shards, "CHUNK_BYTES", 48 * 100)  # chunks of 100 samples
    with pytest.raises(RunError, match=r"input 'x': has NaN \(a missing value\) at sample 0 \(counting from "
                                       r"sample 700, where the chunk starts\)"):
        d.load_dataset(_train("set"), NET, tmp_path)


def test_wrong_shapes_and_object_arrays_are_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shards, "MAP_BYTES", 0)
    (tmp_path / "set").mkdir()
    np.save(tmp_path / "set" / "x.npy", np.zeros((10, 5)))
    np.save(tmp_path / "set" / "y.npy", np.zeros(10, np.int64))
    with pytest.raises(RunError, match=r"shape \(10, 5\) does not match the declared float32\[N, 6\]"):
        d.load_dataset(_train("set"), NET, tmp_path)
    np.save(tmp_path / "set" / "x.npy", np.array([[object()]] * 10), allow_pickle=True)
    with pytest.raises(RunError, match="Python objects"):
        d.load_dataset(_train("set"), NET, tmp_path)


def test_a_truncated_mapped_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shards, "MAP_BYTES", 0)
    (tmp_path / "set").mkdir()
    np.save(tmp_path / "set" / "x.npy", np.zeros((100, 6)))
    np.save(tmp_path / "set" / "y.npy", np.zeros(100, np.int64))
    raw = (tmp_path / "set" / "x.npy").read_bytes()
    (tmp_path / "set" / "x.npy").write_bytes(raw[:1000])
    with pytest.raises(RunError, match="x.npy: it is truncated"):
        d.load_dataset(_train("set"), NET, tmp_path)


def test_npz_members_are_mapped_at_their_offsets(tmp_path: Path) -> None:
    arrays = {"a": np.arange(12.0).reshape(3, 4), "b": np.arange(5, dtype=np.int16)}
    np.savez(tmp_path / "s.npz", **arrays)
    with zipfile.ZipFile(tmp_path / "s.npz", "a") as zf:  # a member after a compressed one, too
        zf.writestr("c.npy", b"", compress_type=zipfile.ZIP_DEFLATED)
    mapped = shards.mappable_members(tmp_path / "s.npz", 0)
    assert sorted(mapped) == ["a", "b"]
    for k, v in arrays.items():
        assert np.array_equal(mapped[k].array, v) and mapped[k].array.dtype == v.dtype


def test_the_padded_header_reads_back(tmp_path: Path) -> None:
    for shape in [(0, 3), (7, 2, 2), (123456789, 3, 224, 224)]:
        with open(tmp_path / "h.npy", "wb") as f:
            shards.write_npy_header(f, shape, np.dtype(np.uint8))
            f.write(bytes(int(np.prod(shape[1:])) * min(shape[0], 7)))
        with open(tmp_path / "h.npy", "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else None
            assert read is not None and read(f)[0] == shape
            assert f.tell() == 128


# A data set several times the memory its reader may hold: one epoch of batches, then its peak
# resident size (file pages it mapped count) against where it started.
_READER = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    import numpy as np
    from dlspec import data as d, shards
    from dlspec.prefetch import Prefetch
    from dlspec.spec import model as m
    net = m.Model(name="net", inputs=[m.TensorDecl(role="input", name="x", dtype="float32",
                                                   shape=["N", 3, 64, 64])],
                  targets=[m.TensorDecl(role="target", name="y", dtype="int64", shape=["N"])])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ds = d.load_dataset(m.Train(data=m.NpzData(kind="npz", path="big", test=0.1)), net, Path(sys.argv[1]))
    seen = 0
    with Prefetch(d.batches(ds.train, 64, 0, 0)) as feed:
        for b in feed:
            seen += len(b["x"])
    total = float(sum(np.asarray(ds.test["x"][i:i + 64], np.float64).sum()
                      for i in range(0, d.size(ds.test), 64)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"grew_kib": peak - before, "seen": seen,
                      "mapped": isinstance(ds.train["x"], shards.Rows),
                      "test_sum": total}))
""")


def test_a_set_larger_than_the_memory_budget_is_read_in_bounded_memory(tmp_path: Path) -> None:
    n, row = 12000, 3 * 64 * 64  # 12000 float32 images of 48 KiB: 563 MiB on disk
    (tmp_path / "big").mkdir()
    with open(tmp_path / "big" / "x.npy", "wb") as f:  # written a chunk at a time: this process stays small
        shards.write_npy_header(f, (n, 3, 64, 64), np.dtype(np.float32))
        for lo in range(0, n, 1000):
            values = np.arange(lo, min(lo + 1000, n), dtype=np.float32) % 7
            f.write(np.repeat(values, row).tobytes())
    np.save(tmp_path / "big" / "y.npy", np.arange(n) % 3)
    out = subprocess.run([sys.executable, "-c", _READER, str(tmp_path)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["mapped"] and got["seen"] == 10800  # every training sample was read
    file_kib = n * row * 4 // 1024
    assert got["grew_kib"] < file_kib // 5, got  # 563 MiB read; the process grew by far less
    test_idx = d.split_indices(n, 0.1, 0.0, 0, np.arange(n) % 3)[0][2]
    assert got["test_sum"] == pytest.approx(float((test_idx % 7).sum()) * row)


@pytest.mark.parametrize("odd", ["folder", "pipe", "link loop", "dangling link"])
def test_an_npy_entry_that_is_not_a_file_is_named_and_one_the_model_leaves_is_ignored(
        tmp_path: Path, odd: str) -> None:
    """A folder or a link loop named x.npy was an internal error and a pipe hung the run; such an
    entry beside the arrays the model reads was opened (and refused, or hung) too."""
    folder = tmp_path / "set"
    folder.mkdir()
    arrays = _arrays()
    np.save(folder / "y.npy", arrays["y"])
    for name in ("x.npy", "unused.npy"):
        entry = folder / name
        if odd == "folder":
            entry.mkdir()
        elif odd == "pipe":
            os.mkfifo(entry)
        elif odd == "link loop":
            entry.symlink_to(name)
        else:
            entry.symlink_to("nowhere.npy")
    with pytest.raises(RunError, match=rf"cannot read data file {folder / 'x.npy'}: not a regular file"):
        d.load_dataset(_train("set"), NET, tmp_path)
    (folder / "x.npy").unlink() if odd != "folder" else (folder / "x.npy").rmdir()
    np.save(folder / "x.npy", arrays["x"])
    got = d.load_dataset(_train("set"), NET, tmp_path)  # unused.npy is not read
    assert d.size(got.train) + d.size(got.val) + d.size(got.test) == 100
