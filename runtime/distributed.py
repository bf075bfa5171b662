"""Several processes on MPI (mpi4py, the `mpi` extra): the world a run trains in, a sum across
ranks of one flat float32 buffer with a timeout, and `--workers N` starting the local ranks.

Only the buffer (upper-case) methods are used: the pickling ones fail on large arrays and can
deadlock holding the GIL. Every collective waits through a non-blocking request polled against a
deadline, so a rank that dies or hangs fails the job with one message instead of hanging it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dlspec.spec.errors import RunError

TIMEOUT_S = 600.0  # per collective: a first step compiles its sessions; DLSPEC_MPI_TIMEOUT overrides
POLL_S = 1e-4
# set by mpiexec in every rank: Open MPI, and the PMI of MPICH and Intel MPI
SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE")
RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK")
LOCAL_SIZE_VARS = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE")
NEEDS_EXTRA = "needs the mpi extra: pip install -e \".[mpi]\" (mpi4py and an MPI runtime)"


class World:
    """One process: the sum is the buffer itself, and it writes the run's files."""

    rank, size, local_rank = 0, 1, 0

    @property
    def writes(self) -> bool:
        """Rank 0 alone writes metrics, checkpoints and models."""
        return self.rank == 0

    def sum(self, buffer: np.ndarray) -> np.ndarray:
        return buffer

    def same(self, values: Mapping[str, np.ndarray]) -> bool:
        """Whether every rank holds the same `values` (compared through a digest)."""
        return True


class MpiWorld(World):
    def __init__(self, comm: Any, timeout: float):
        from mpi4py import MPI

        self.mpi, self.comm, self.timeout = MPI, comm, timeout
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.local_rank = next((int(os.environ[v]) for v in LOCAL_RANK_VARS if v in os.environ), 0)

    def sum(self, buffer: np.ndarray) -> np.ndarray:
        out = np.empty_like(buffer)
        self._wait(self.comm.Iallreduce(buffer, out, op=self.mpi.SUM), "the sum of the gradients")
        return out

    def same(self, values: Mapping[str, np.ndarray]) -> bool:
        digest = np.array([digest_of(values)], np.uint32)
        every = np.empty(self.size, np.uint32)
        self._wait(self.comm.Iallgather(digest, every), "the parameter check")
        return bool((every == every[0]).all())

    def _wait(self, request: Any, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not request.Test():
            if time.monotonic() > deadline:
                print(f"error: rank {self.rank} waited {self.timeout:.0f} s for {what}: another rank has "
                      "died or hangs; stopping the job", file=sys.stderr, flush=True)
                self.comm.Abort(2)
            time.sleep(POLL_S)


def abort_job(code: int) -> None:
    """End every rank of a data-parallel job now (this one has failed). A rank that merely exits
    would leave the others waiting: MPI counts a finalized exit as normal, whatever its code."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized() and mpi.COMM_WORLD.Get_size() > 1:
        sys.stderr.flush()
        mpi.COMM_WORLD.Abort(code)


def digest_of(values: Mapping[str, np.ndarray]) -> int:
    """A checksum of named arrays, in name order: equal on two ranks only if every bit is."""
    crc = 0
    for name in sorted(values):
        crc = zlib.crc32(name.encode(), crc)
        crc = zlib.crc32(np.ascontiguousarray(values[name]).tobytes(), crc)
    return crc


def threads_per_rank() -> int:
    """The cores this process may use shared among the ranks on this machine (at least one)."""
    local = next((int(os.environ[v]) for v in LOCAL_SIZE_VARS if v in os.environ), 1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(local, 1))


def env_rank() -> int:
    """This process's rank as mpiexec set it (0 outside mpiexec), without starting MPI."""
    return next((int(os.environ[v]) for v in RANK_VARS if v in os.environ), 0)


def under_mpiexec() -> bool:
    return any(int(os.environ.get(v, "1")) > 1 for v in SIZE_VARS)


def world() -> World:
    """The MPI world when mpiexec started this process with other ranks, else one process."""
    if not under_mpiexec():
        return World()
    try:
        from mpi4py import MPI
    except ImportError:
        raise RunError("this process runs under mpiexec with other ranks, and training on several "
                       f"{NEEDS_EXTRA}") from None
    timeout = float(os.environ.get("DLSPEC_MPI_TIMEOUT", TIMEOUT_S))
    return MpiWorld(MPI.COMM_WORLD, timeout)


def launch(workers: int, argv: Sequence[str]) -> int:
    """Run `dlspec ARGV` as `workers` ranks on this machine through mpiexec; its exit code."""
    command, env = launch_command(workers, argv)
    return subprocess.call(command, env=env)


def launch_command(workers: int, argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The mpiexec command line and environment that run `dlspec ARGV` as `workers` local ranks."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise RunError(f"--workers {NEEDS_EXTRA}") from None
    mpiexec = _mpiexec()
    env = dict(os.environ)
    command = [mpiexec, "-n", str(workers)]
    if "Open MPI" in _version(mpiexec):
        # Open MPI refuses root without these; --oversubscribe lets ranks outnumber the cores it counts
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        command += ["--oversubscribe", "--bind-to", "none"]
    if not sys.stdout.isatty():  # mpiexec gives the ranks a terminal of their own: say what this is
        env.update(TTY_COMPATIBLE="0", TTY_INTERACTIVE="0")
    return [*command, sys.executable, "-m", "dlspec", *argv], env


def _mpiexec() -> str:
    """The mpiexec beside this Python (the MPI wheel's) first, else the one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = here if os.access(here, os.X_OK) else shutil.which("mpiexec")
    if found is None:
        raise RunError(f"--workers found no mpiexec: it {NEEDS_EXTRA}")
    return found


def _version(mpiexec: str) -> str:
    try:
        return subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
