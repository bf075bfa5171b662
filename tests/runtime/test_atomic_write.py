"""runtime.files.atomic_write: all or nothing, never a half-written file or a stray temp file."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from dlspec import files
from dlspec.files import atomic_file, atomic_write
from dlspec.spec.errors import RunError


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_writes_a_new_file(tmp_path: Path) -> None:
    atomic_write(tmp_path / "a.bin", b"hello")
    assert (tmp_path / "a.bin").read_bytes() == b"hello"
    assert listing(tmp_path) == ["a.bin"]


def test_replaces_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"old contents, longer than the new")
    atomic_write(str(tmp_path / "a.bin"), b"new")
    assert (tmp_path / "a.bin").read_bytes() == b"new"
    assert listing(tmp_path) == ["a.bin"]


def test_a_relative_path_writes_into_the_current_folder(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    atomic_write("plain.bin", b"x")
    assert listing(tmp_path) == ["plain.bin"]


class _FailingFile:
    """Wraps the temp file: the first write stores half the data, then the disk is 'full'."""

    def __init__(self, f: Any):
        self.f = f

    def __enter__(self) -> _FailingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()

    def write(self, data: bytes) -> int:
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def test_a_failure_mid_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous model")
    real_fdopen = os.fdopen
    monkeypatch.setattr(files.os, "fdopen", lambda fd, *a, **k: _FailingFile(real_fdopen(fd, *a, **k)))
    with pytest.raises(RunError, match="cannot write .*model.onnx: No space left on device"):
        atomic_write(target, b"x" * 100_000)
    assert target.read_bytes() == b"previous model"
    assert listing(tmp_path) == ["model.onnx"]


def test_a_failure_before_the_rename_keeps_the_old_file(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous model")

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(files.os, "fsync", broken_fsync)
    with pytest.raises(RunError, match="Input/output error"):
        atomic_write(target, b"new model")
    assert target.read_bytes() == b"previous model"
    assert listing(tmp_path) == ["model.onnx"]


def test_an_interrupt_mid_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous model")

    def interrupted(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, b"new model")
    assert target.read_bytes() == b"previous model"
    assert listing(tmp_path) == ["model.onnx"]


def test_a_missing_folder_is_a_clear_error_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="folder .*missing does not exist"):
        atomic_write(tmp_path / "missing" / "a.bin", b"x")
    assert listing(tmp_path) == []


def test_a_file_in_place_of_the_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(RunError, match="is not a folder"):
        atomic_write(tmp_path / "file" / "a.bin", b"x")
    assert listing(tmp_path) == ["file"]


def test_a_folder_in_place_of_the_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(RunError, match="it is a folder"):
        atomic_write(tmp_path / "out", b"x")
    assert listing(tmp_path) == ["out"] and (tmp_path / "out").is_dir()


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_a_new_file_gets_the_usual_permissions(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"")  # what open() gives: 0666 & ~umask
    atomic_write(tmp_path / "atomic", b"x")
    mode = stat.S_IMODE((tmp_path / "atomic").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_a_replaced_file_keeps_its_permissions(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    target.chmod(0o640)
    atomic_write(target, b"new")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_a_block_that_fails_through_atomic_file_keeps_the_old_file(tmp_path: Path) -> None:
    """What a writer streams through atomic_file (the image cache, row by row) lands whole or not
    at all: an error raised in the block leaves the old file and no temporary file."""
    target = tmp_path / "cache.npy"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(target) as f:
            f.write(b"new rows")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["cache.npy"]
    with atomic_file(target) as f:
        f.write(b"header")
        f.seek(0)  # a header rewritten once the count is known
        f.write(b"HEAD")
    assert target.read_bytes() == b"HEADer"


def test_a_symlink_is_followed_and_stays_a_link(tmp_path: Path) -> None:
    """The link was replaced by a regular file, and the file it named never written."""
    (tmp_path / "real.bin").write_bytes(b"old")
    (tmp_path / "link.bin").symlink_to("real.bin")
    atomic_write(tmp_path / "link.bin", b"new")
    assert (tmp_path / "link.bin").is_symlink() and (tmp_path / "real.bin").read_bytes() == b"new"
    assert listing(tmp_path) == ["link.bin", "real.bin"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_pipe_is_written_into_not_replaced(tmp_path: Path) -> None:
    """-o /dev/null or a pipe became a regular file (as root, the machine's /dev/null)."""
    import threading

    fifo = tmp_path / "out.pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    atomic_write(fifo, b"through the pipe")
    reader.join(timeout=10)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(fifo.stat().st_mode)
    assert listing(tmp_path) == ["out.pipe"]
    atomic_write("/dev/null", b"gone")  # a character device: written into, still a device
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
