"""A training run killed (SIGKILL) in the middle of writing a checkpoint resumes from the one
before and ends bit-identical to a run that was never interrupted.

Each run is a child process: this file run as a script, which wraps `checkpoint.save` and then
calls the CLI. During the K-th save of last.npz the first write to a file (io.open, os.fdopen,
Path.open or os.write) stores half its bytes, fsyncs them, and the process kills itself. With
atomic_write the torn file is the temporary one beside last.npz; were last.npz written in place,
it would be last.npz, and the test fails.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

REPO = Path(__file__).resolve().parents[2]
EPOCHS, KILL_AT = 4, 3  # killed while writing epoch 3's last.npz; epoch 2's must survive

SPEC = f"""
model tiny {{
  input  image: float32[N, 1, 8, 8]
  target label: int64[N]
  features {{ image = image / 16 }}
  backbone {{ stem: conv(8, k=3) -> bn -> relu -> maxpool(2) }}
  head classify(classes=10, dropout=0.1)
  loss cross_entropy
}}

train {{
  data      digits(test=0.2, val=0.1)
  batch     32
  epochs    {EPOCHS}
  optimizer adam(lr=3e-3)
  schedule  cosine(warmup=1)
  seed      3
}}
"""

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and POSIX rename semantics")


def _tear(write: Callable[[Any], object], data: Any, fd: int) -> NoReturn:
    """Store half of `data`, make it durable, then die as a power cut or the OOM killer would."""
    write(data[: len(data) // 2])
    os.fsync(fd)
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("SIGKILL did not stop the process")


class _Torn:
    """A file whose first write is torn."""

    def __init__(self, f: Any) -> None:
        self.f = f

    def __enter__(self) -> _Torn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()

    def write(self, data: Any) -> NoReturn:
        _tear(lambda part: (self.f.write(part), self.f.flush()), data, self.f.fileno())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def _child(argv: list[str]) -> int:
    """KILL_AT SNAPSHOTS CLI-ARGS...: run the CLI, copying each finished last.npz to SNAPSHOTS/last.N.npz
    and dying inside the KILL_AT-th write of last.npz (0: never)."""
    from dlspec import checkpoint, cli

    kill_at, snapshots, count = int(argv[0]), Path(argv[1]), 0
    real_save = checkpoint.save

    def save(path: Path, *args: Any, **kwargs: Any) -> None:
        nonlocal count
        if path.name == "last.npz":
            count += 1
        if path.name != "last.npz" or count != kill_at:
            real_save(path, *args, **kwargs)
            if path.name == "last.npz":
                shutil.copyfile(path, snapshots / f"last.{count}.npz")
            return
        opener, write = io.open, os.write  # os.fdopen and Path.open go through io.open too
        io.open = builtins.open = lambda *a, **k: _Torn(opener(*a, **k))  # type: ignore[assignment]
        os.write = lambda fd, data: _tear(lambda part: write(fd, part), data, fd)
        try:
            real_save(path, *args, **kwargs)
        finally:  # not killed: the write went by some other way; the parent sees exit code 0
            io.open, builtins.open, os.write = opener, opener, write

    checkpoint.save = save  # type: ignore[assignment]
    return cli.main(argv[2:])


def _train(tmp: Path, name: str, kill_at: int = 0, resume: bool = False) -> subprocess.CompletedProcess[str]:
    snapshots = tmp / f"{name}-snapshots{'-resume' if resume else ''}"
    snapshots.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, __file__, str(kill_at), str(snapshots), "train", str(tmp / "tiny.dlspec"),
           "--out", str(tmp / name), "--threads", "1", *(["--resume"] if resume else [])]
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=120)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], what: str) -> None:
    assert sorted(a) == sorted(b), what
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), f"{what}: {key} differs"


def test_a_kill_inside_a_checkpoint_write_resumes_bit_identical(tmp_path: Path) -> None:
    from dlspec import checkpoint
    from dlspec.spec.errors import RunError

    (tmp_path / "tiny.dlspec").write_text(SPEC)
    straight = _train(tmp_path, "straight")
    assert straight.returncode == 0, straight.stderr

    killed = _train(tmp_path, "run", kill_at=KILL_AT)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr)
    run = tmp_path / "run"
    # last.npz is, byte for byte, what epoch KILL_AT - 1 wrote, and the same as the straight run's
    before = tmp_path / "run-snapshots" / f"last.{KILL_AT - 1}.npz"
    assert (run / "last.npz").read_bytes() == before.read_bytes()
    _, _, epoch, _ = checkpoint.load(run / "last.npz")  # loadable, and of that epoch
    assert epoch + 1 == KILL_AT - 1
    _assert_same(_arrays(run / "last.npz"), _arrays(tmp_path / "straight-snapshots" / before.name),
                 f"epoch {KILL_AT - 1}'s checkpoint")
    # the torn write is a temporary file beside it, not named like a checkpoint and not loadable
    torn = [p for p in run.iterdir() if not (tmp_path / "straight" / p.name).exists()]
    assert len(torn) == 1, sorted(p.name for p in run.iterdir())
    assert not torn[0].name.endswith(".npz") and 0 < torn[0].stat().st_size < before.stat().st_size
    with pytest.raises(RunError, match="cannot read checkpoint"):
        checkpoint.load(torn[0])

    resumed = _train(tmp_path, "run", resume=True)
    assert resumed.returncode == 0, resumed.stderr
    # it went on from epoch KILL_AT: its first checkpoint is the straight run's of that epoch
    redone = sorted(p.name for p in (tmp_path / "run-snapshots-resume").iterdir())
    assert redone == [f"last.{i}.npz" for i in range(1, EPOCHS - KILL_AT + 2)], redone
    _assert_same(_arrays(tmp_path / "run-snapshots-resume" / "last.1.npz"),
                 _arrays(tmp_path / "straight-snapshots" / f"last.{KILL_AT}.npz"), f"epoch {KILL_AT}")
    assert sorted(p.name for p in run.glob("*.npz")) == ["best.npz", "last.npz"]
    assert not list(run.glob(".*.tmp")), "the torn temporary file outlived the resume"
    # the epoch whose record was written before the kill is trained again and recorded once
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, EPOCHS + 1)), epochs
    for name in ("last.npz", "best.npz"):
        _assert_same(_arrays(run / name), _arrays(tmp_path / "straight" / name), name)
    _assert_same(_initializers(run / "model.onnx"), _initializers(tmp_path / "straight" / "model.onnx"),
                 "model.onnx")


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
