"""The run folder of `dlspec train` and the folder of `dlspec compile --train`: checked writable
before any work, every file written atomically, and nothing left behind by a run that stops
before its first checkpoint (a full disk, a NaN at step 1, Ctrl-C). `--resume` refuses a spec
that changed since the run began, unless `--force`."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from dlspec import checkpoint, files
from dlspec.cli import main
from dlspec.spec.errors import RunError

SPEC = """
model flowers {
  input  x: float32[N, 4]
  target y: int64[N]
  head mlp(3, hidden=[HIDDEN])
  loss cross_entropy
}

train {
  data      iris(test=0.2, val=0.2)
  batch     16
  epochs    EPOCHS
  optimizer OPTIMIZER
  seed      0
}
"""


def _spec(tmp_path: Path, epochs: int = 2, optimizer: str = "adam(lr=1e-2)", hidden: int = 8) -> Path:
    path = tmp_path / "flowers.dlspec"
    path.write_text(SPEC.replace("EPOCHS", str(epochs)).replace("OPTIMIZER", optimizer)
                    .replace("HIDDEN", str(hidden)))
    return path


def _run(*argv: str | Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---- writable before any work ----
def test_an_unwritable_place_is_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    spec = _spec(tmp_path)
    for out, message in ((tmp_path / "file" / "run", "Not a directory"), (tmp_path / "file", "it is a file")):
        code, _, err = _run("train", spec, "--out", out)
        assert code == 2 and f"cannot write the run into {out}" in err and message in err, err
    if Path("/proc/self").is_dir():  # a FileNotFoundError traceback before
        code, _, err = _run("train", spec, "--out", "/proc/x")
        assert code == 2 and "cannot write the run into /proc/x" in err and "Traceback" not in err, err
    assert _listing(tmp_path) == ["file", "flowers.dlspec"]


def test_a_read_only_file_system_is_refused_and_the_folders_made_are_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)  # the probe, and every atomic write
    spec = _spec(tmp_path)
    for argv in (("train", spec, "--out", tmp_path / "a" / "run"),
                 ("compile", spec, "--train", "-o", tmp_path / "b" / "graphs")):
        code, _, err = _run(*argv)
        assert code == 2 and "Read-only file system" in err and "Traceback" not in err, err
    assert _listing(tmp_path) == ["flowers.dlspec"]


def test_the_folder_is_made_only_at_the_first_write(tmp_path: Path) -> None:
    """A run killed before its first checkpoint (SIGKILL, no cleanup) leaves no empty folder."""
    folder = files.OutputFolder(tmp_path / "runs" / "x", "the run")
    assert _listing(tmp_path) == []
    folder.write("a.txt", b"1")
    assert (tmp_path / "runs" / "x" / "a.txt").read_bytes() == b"1"
    folder.discard()
    assert _listing(tmp_path) == []


# ---- nothing half-written ----
def _disk_full_at(monkeypatch: pytest.MonkeyPatch, name: str, count: int = 1) -> None:
    """Writing `name` for the count-th time fails as a full disk would."""
    real = files.atomic_write
    seen = {"n": 0}

    def write(path: str | Path, data: bytes) -> None:
        if Path(path).name == name:
            seen["n"] += 1
            if seen["n"] == count:
                raise RunError(f"cannot write {path}: No space left on device")
        real(path, data)

    monkeypatch.setattr(files, "atomic_write", write)
    monkeypatch.setattr(checkpoint, "atomic_write", write)


@pytest.mark.parametrize("name", ["run.json", "metrics.jsonl", "best.npz", "last.npz"])
def test_a_full_disk_before_the_first_checkpoint_leaves_nothing(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                name: str) -> None:
    """It left metrics.jsonl, run.json and spec.dlspec behind."""
    _disk_full_at(monkeypatch, name)
    code, _, err = _run("train", _spec(tmp_path), "--out", tmp_path / "runs" / "flowers")
    assert code == 2 and "No space left on device" in err, err
    assert _listing(tmp_path) == ["flowers.dlspec"]


def test_a_full_disk_later_keeps_the_checkpoints_already_written(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _disk_full_at(monkeypatch, "last.npz", count=2)
    run = tmp_path / "run"
    code, _, err = _run("train", _spec(tmp_path), "--out", run)
    assert code == 2 and "No space left on device" in err
    assert _listing(run) == ["best.npz", "classes.json", "last.npz", "metrics.jsonl", "run.json",
                             "spec.dlspec"]
    assert checkpoint.load(run / "last.npz")[2] == 0  # epoch 1's
    monkeypatch.undo()
    code, _, err = _run("train", _spec(tmp_path), "--out", run, "--resume")
    assert code == 0, err


def test_a_failed_run_leaves_a_folder_it_did_not_make_and_its_other_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    _disk_full_at(monkeypatch, "last.npz")
    assert _run("train", _spec(tmp_path), "--out", run)[0] == 2
    assert _listing(run) == ["notes.txt"]


def test_compile_train_leaves_no_empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _disk_full_at(monkeypatch, "gradients.onnx")
    code, _, err = _run("compile", _spec(tmp_path), "--train", "-o", tmp_path / "graphs")
    assert code == 2 and "No space left on device" in err
    assert _listing(tmp_path) == ["flowers.dlspec"]


def test_a_nan_at_step_one_says_that_no_checkpoint_exists(tmp_path: Path) -> None:
    """It named last.npz as 'the last good checkpoint' when none existed."""
    code, _, err = _run("train", _spec(tmp_path, optimizer="sgd(lr=1e30)"), "--out", tmp_path / "run")
    assert code == 2 and "the loss became" in err, err
    assert "before the first checkpoint, so nothing was written" in err and "last.npz" not in err
    assert not (tmp_path / "run").exists()


def test_an_interrupted_first_epoch_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dlspec.training as training

    def interrupt(*args: object, **kwargs: object) -> dict[str, float]:
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "evaluate", interrupt)
    code, _, err = _run("train", _spec(tmp_path), "--out", tmp_path / "run")
    assert code == 130 and not (tmp_path / "run").exists()


def test_sigterm_during_a_checkpoint_write_stops_as_ctrl_c_does_and_the_run_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM ended the process where it was (exit -15, no message), leaving `.last.npz.*.tmp`."""
    real, saves = checkpoint.save, []

    def terminated_in_the_second_save(path: Path, *args: object) -> None:
        saves.append(path.name)
        if saves.count("last.npz") < 2:
            return real(path, *args)  # type: ignore[arg-type]
        with files.atomic_file(path) as f:
            f.write(b"half a checkpoint")
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("the SIGTERM handler did not stop the write")

    monkeypatch.setattr(checkpoint, "save", terminated_in_the_second_save)
    run = tmp_path / "run"
    code, _, err = _run("train", _spec(tmp_path, epochs=3), "--out", run)
    assert code == 143 and err.splitlines()[-1] == "terminated", err
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")], _listing(run)
    assert checkpoint.load(run / "last.npz")[2] == 0  # epoch 1's, whole
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # main() put the handler back
    monkeypatch.setattr(checkpoint, "save", real)
    code, _, err = _run("train", _spec(tmp_path, epochs=3), "--out", run, "--resume")
    assert code == 0 and checkpoint.load(run / "last.npz")[2] == 2, err


def test_a_folder_that_another_process_writes_is_refused_and_left_alone(tmp_path: Path) -> None:
    """Two runs into one folder mixed their files, and the one that lost ended in an internal error."""
    import fcntl

    run = tmp_path / "run"
    assert _run("train", _spec(tmp_path, epochs=1), "--out", run)[0] == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; "
                               "fcntl.flock(os.open(sys.argv[1], os.O_RDONLY), fcntl.LOCK_EX); "
                               "print(flush=True); time.sleep(60)", str(run)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"\n"  # it holds the lock
        for extra in ((), ("--resume", "--epochs", "2")):
            code, _, err = _run("train", _spec(tmp_path, epochs=1), "--out", run, *extra)
            assert code == 2 and "another dlspec process is writing" in err, err
            assert err.startswith(f"cannot write the run into {run}"), err
    finally:
        holder.kill()
        holder.wait()
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    fd = os.open(run, os.O_RDONLY)  # the runs above let go of the folder
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    assert _run("train", _spec(tmp_path, epochs=1), "--out", run, "--resume", "--epochs", "2")[0] == 0


def test_a_fresh_run_into_an_earlier_runs_folder_replaces_its_files_and_says_so(tmp_path: Path) -> None:
    """The earlier run's files that the new one does not write (another model's classes.json,
    vocab.json) stayed beside the new model, silently."""
    run = tmp_path / "run"
    assert _run("train", _spec(tmp_path, epochs=1), "--out", run)[0] == 0
    (run / "vocab.json").write_text("{}")  # as a run with categories leaves it
    (run / "notes.txt").write_text("mine")
    code, out, err = _run("train", _spec(tmp_path, epochs=1, hidden=6), "--out", run)
    assert code == 0, err
    assert f"{run} holds an earlier run: this one replaces its files (" in out and "vocab.json" in out
    assert _listing(run) == ["best.npz", "classes.json", "last.npz", "metrics.jsonl", "model.onnx",
                             "notes.txt", "run.json", "spec.dlspec"]
    assert checkpoint.load(run / "best.npz")[0]["head.linear1.weight"].shape == (6, 4)


def test_a_damaged_checkpoint_is_named_on_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _run("train", _spec(tmp_path, epochs=1), "--out", run)[0] == 0
    data = (run / "last.npz").read_bytes()
    (run / "last.npz").write_bytes(data[: len(data) // 2])
    code, _, err = _run("train", _spec(tmp_path, epochs=1), "--out", run, "--resume")
    assert code == 2 and f"cannot read checkpoint {run / 'last.npz'}: not an .npz file" in err, err


def test_a_checkpoint_of_no_finished_epoch_is_refused_on_resume(tmp_path: Path) -> None:
    """An edited __epoch__ of -5 resumed and trained with negative learning rates, exit 0."""
    import numpy as np

    run = tmp_path / "run"
    assert _run("train", _spec(tmp_path, epochs=1), "--out", run)[0] == 0
    with np.load(run / "last.npz") as last:
        edited = {k: last[k] for k in last.files}
    edited["__epoch__"] = np.array(-5)
    np.savez(run / "last.npz", **edited)
    code, _, err = _run("train", _spec(tmp_path, epochs=1), "--out", run, "--resume", "--epochs", "3")
    assert code == 2 and "epoch -5 and best score" in err and "not those of a finished epoch" in err, err


# ---- --resume after the spec changed ----
def test_resume_refuses_a_changed_spec_and_says_what_changed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _run("train", _spec(tmp_path, epochs=1), "--out", run)[0] == 0
    assert len(json.loads((run / "run.json").read_text())["spec_hash"]) == 16
    before = (run / "last.npz").read_bytes()
    code, _, err = _run("train", _spec(tmp_path, epochs=1, hidden=6), "--out", run, "--resume")
    assert code == 2 and "--resume: the spec changed since" in err, err
    assert "the spec's hash was" in err
    assert "line 5 of flowers.dlspec: `head mlp(3, hidden=[8])` is now `head mlp(3, hidden=[6])`" in err
    assert "tensors of another shape: head.linear1.weight float32[8, 4] -> float32[6, 4]" in err
    assert "--force" in err and (run / "last.npz").read_bytes() == before


def test_resume_with_force_goes_on_and_says_so(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _run("train", _spec(tmp_path, epochs=1), "--out", run)[0] == 0
    old = json.loads((run / "run.json").read_text())["spec_hash"]
    code, out, err = _run("train", _spec(tmp_path, epochs=2), "--out", run, "--resume", "--force")
    assert code == 0, err
    assert "--force: resuming" in out and "`epochs    1` is now `epochs    2`" in out
    assert json.loads((run / "run.json").read_text())["spec_hash"] != old  # the run is the new spec's now
    assert [json.loads(r)["epoch"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    code, _, err = _run("train", _spec(tmp_path), "--out", tmp_path / "other", "--force")
    assert code == 2 and "--force goes with --resume" in err


def test_resume_with_force_over_new_shapes_writes_the_new_models_weights(tmp_path: Path) -> None:
    """model.onnx was built from best.npz, which held the old shapes: an internal error, after
    the resumed epochs or (a finished run) at once."""
    run = tmp_path / "run"
    assert _run("train", _spec(tmp_path, epochs=2), "--out", run)[0] == 0
    finished = tmp_path / "finished"
    shutil.copytree(run, finished)
    code, _, err = _run("train", _spec(tmp_path, epochs=3, hidden=6), "--out", run, "--resume", "--force")
    assert code == 0, err
    best = checkpoint.load(run / "best.npz")
    assert best[0]["head.linear1.weight"].shape == (6, 4) and best[2] == 2  # the new model's epoch
    weights = {t.name: t for t in onnx.load(run / "model.onnx").graph.initializer}
    assert list(weights["head.linear1.weight"].dims) == [6, 4]
    code, _, err = _run("train", _spec(tmp_path, epochs=2, hidden=6), "--out", finished,
                        "--resume", "--force")
    assert code == 2 and "no checkpoint in" in err and "train at least one more epoch" in err, err


def test_resume_keeps_the_batch_and_epochs_the_command_line_gave_the_run(tmp_path: Path) -> None:
    """run.json did not record --batch and --epochs: a resume took the spec's, silently (another
    batch size: other steps, not the run's)."""
    spec = _spec(tmp_path, epochs=4)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert _run("train", spec, "--out", whole, "--batch", "8", "--epochs", "3")[0] == 0
    assert _run("train", spec, "--out", cut, "--batch", "8", "--epochs", "2")[0] == 0
    code, out, err = _run("train", spec, "--out", cut, "--resume", "--epochs", "3")
    assert code == 0 and "resuming with --batch 8, as the run began" in out, out + err
    steps = [[json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()]
             for run in (whole, cut)]
    assert steps[0] == steps[1] and len(steps[0]) == 3
    code, out, _ = _run("train", spec, "--out", cut, "--resume")  # the 3 epochs of the resume above
    assert code == 0 and "--epochs 3" in out and len((cut / "metrics.jsonl").read_text().splitlines()) == 3
    code, _, err = _run("train", spec, "--out", cut, "--resume", "--batch", "16", "--epochs", "4")
    assert code == 2 and "was trained with --batch 8; --batch 16 would change its steps" in err, err


def test_resume_with_another_seed_is_a_changed_spec_too(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _run("train", _spec(tmp_path, epochs=2), "--out", run, "--epochs", "1", "--seed", "5")[0] == 0
    code, _, err = _run("train", _spec(tmp_path, epochs=2), "--out", run, "--resume")
    assert code == 2 and "the text of flowers.dlspec is as it was: an imported file or --seed changed" in err


def test_resume_of_an_unchanged_spec_needs_no_force(tmp_path: Path) -> None:
    run = tmp_path / "run"
    spec = _spec(tmp_path, epochs=2)
    assert _run("train", spec, "--out", run, "--epochs", "1")[0] == 0
    code, out, err = _run("train", spec, "--out", run, "--resume")
    assert code == 0 and "--force" not in out + err, err


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_every_file_of_a_run_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No file of the run folder is opened for writing in place: each goes through atomic_write."""
    written: list[str] = []
    real = files.atomic_write

    def record(path: str | Path, data: bytes) -> None:
        written.append(Path(path).name)
        real(path, data)

    monkeypatch.setattr(files, "atomic_write", record)
    monkeypatch.setattr(checkpoint, "atomic_write", record)
    import dlspec.training as training

    monkeypatch.setattr(training, "atomic_write", record)
    run = tmp_path / "run"
    assert _run("train", _spec(tmp_path), "--out", run)[0] == 0
    assert set(_listing(run)) <= set(written), (_listing(run), written)
