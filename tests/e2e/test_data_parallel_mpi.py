"""Data-parallel training on MPI as users run it: `dlspec train --workers 2`, two ranks on this
machine through mpiexec, against one process; resume across rank counts; a rank that dies or
stops fails the job, never hangs it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mpi4py", reason="the mpi extra (mpi4py and an MPI runtime) is not installed")

REPO = Path(__file__).resolve().parents[2]
PLAIN = """
model plain {
  input  image: float32[N, 1, 8, 8]
  target label: int64[N]
  features { image = image / 16 }
  backbone { flatten -> linear(64) -> gelu -> linear(32) -> tanh }
  head { linear(10) }
  loss cross_entropy(label_smoothing=0.1)
}
train {
  data digits(test=0.2, val=0.1)
  batch 64
  epochs EPOCHS
  optimizer adamw(lr=3e-3, weight_decay=1e-4)
  clip grad_norm(1.0)
  seed 0
}
"""


def _train(spec: Path, out: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DLSPEC_MPI_TIMEOUT": "60"}
    return subprocess.run([sys.executable, "-m", "dlspec", "train", str(spec), "--out", str(out), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def _spec(tmp_path: Path, epochs: int, text: str = PLAIN) -> Path:
    path = tmp_path / f"plain{epochs}.dlspec"
    path.write_text(text.replace("EPOCHS", str(epochs)))
    return path


def _weights(run: Path) -> dict[str, np.ndarray]:
    with np.load(run / "last.npz") as data:
        return {k: data[k] for k in data.files if not k.startswith("__")}


def test_two_ranks_train_as_one_process_at_the_same_global_batch(tmp_path: Path) -> None:
    spec = _spec(tmp_path, 2)
    one = _train(spec, tmp_path / "one", "--threads", "1")
    two = _train(spec, tmp_path / "two", "--workers", "2")
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stdout + two.stderr
    assert "data-parallel on 2 ranks" in two.stdout
    assert two.stdout.count("trained ") == 1  # rank 0 alone reports
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert a.keys() == b.keys()
    for name in a:
        err = np.linalg.norm(a[name] - b[name]) / max(float(np.linalg.norm(a[name])), 1e-12)
        assert err < 1e-5, (name, err)


def test_resume_is_bit_exact_with_the_same_ranks_and_continues_with_others(tmp_path: Path) -> None:
    straight = _train(_spec(tmp_path, 2), tmp_path / "straight", "--workers", "2")
    first = _train(_spec(tmp_path, 1), tmp_path / "split", "--workers", "2")
    assert straight.returncode == 0 and first.returncode == 0, straight.stderr + first.stderr
    (tmp_path / "plain1.dlspec").write_text(PLAIN.replace("EPOCHS", "1"))
    resumed = _train(_spec(tmp_path, 1), tmp_path / "split", "--workers", "2", "--resume", "--epochs", "2")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    solo = _train(_spec(tmp_path, 1), tmp_path / "split", "--resume", "--epochs", "3")
    assert solo.returncode == 0, solo.stderr
    assert "resuming with 1 rank(s) a run trained on 2" in solo.stdout


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "stopped"])
def test_a_rank_that_dies_or_stops_fails_the_job(tmp_path: Path, how: signal.Signals) -> None:
    spec = _spec(tmp_path, 200)
    env = {**os.environ, "DLSPEC_MPI_TIMEOUT": "5"}
    command = [sys.executable, "-m", "dlspec", "train", str(spec), "--out", str(tmp_path / "run"),
               "--workers", "2"]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                           start_new_session=True)
    try:
        victim = _rank_pid(1, deadline=time.monotonic() + 60)
        while not (tmp_path / "run" / "metrics.jsonl").exists():  # training is under way
            assert job.poll() is None, job.stdout.read() if job.stdout else ""
            time.sleep(0.1)
        os.kill(victim, how)
        out, _ = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        for pid in _rank_pids():
            os.kill(pid, signal.SIGKILL)
    assert job.returncode != 0
    if how == signal.SIGSTOP:  # rank 0 times out at its next collective: a step's, or an epoch's end
        waited = r"waited 5 s for (the sum of the gradients|the parameter check): another rank"
        assert re.search(waited, out), out


def _rank_pids(rank: int | None = None) -> list[int]:
    """dlspec ranks running now (of any job of this user), found by the rank mpiexec gave them."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        ranks = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"OMPI_COMM_WORLD_RANK=")]
        if ranks and b"dlspec" in cmdline and (rank is None or ranks[0] == str(rank).encode()):
            found.append(int(proc.name))
    return found


def _rank_pid(rank: int, deadline: float) -> int:
    while time.monotonic() < deadline:
        pids = _rank_pids(rank)
        if pids:
            return pids[0]
        time.sleep(0.1)
    raise AssertionError(f"rank {rank} never started")


def test_batch_norm_ranks_stay_identical_and_reach_one_process_accuracy(tmp_path: Path) -> None:
    """examples/digits.dlspec (batch norm, dropout, augmentation) on two ranks: the run checks the
    ranks' parameters every epoch and stops if they differ; one process reaches 99.4% here."""
    done = _train(REPO / "examples" / "digits.dlspec", tmp_path / "run", "--workers", "2", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    measured = subprocess.run([sys.executable, "-m", "dlspec", "eval", str(tmp_path / "run")],
                              capture_output=True, text=True, timeout=120)
    found = re.search(r"accuracy (\d\.\d+)", measured.stdout)
    assert found is not None, measured.stdout + measured.stderr
    assert float(found.group(1)) >= 0.99, done.stdout


def test_workers_without_the_mpi_extra_names_it(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['mpi4py'] = None; from dlspec.cli import main; "
            f"sys.exit(main(['train', {str(_spec(tmp_path, 1))!r}, '--workers', '2']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert 'needs the mpi extra: pip install -e ".[mpi]"' in done.stderr
    assert "Traceback" not in done.stderr
