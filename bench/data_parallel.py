"""Data-parallel steps on MPI against one process: steps/s of examples/digits.dlspec's training
step for 1 rank x T threads against R ranks x (T / R) threads each, the all-reduce's share of the
step, and its bandwidth against a raw Allreduce of the same buffer.

    python bench/data_parallel.py [--ranks 2] [--threads 2] [--steps 60] [--batch 64]

It starts the ranks itself with mpiexec (the mpi extra). Alternate rounds of the two setups
(--rounds) share the machine's load between them; the ratio is R ranks / 1 process in steps/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _graphs(batch: int) -> tuple[object, dict[str, np.ndarray]]:
    from dlspec import compile_training, load

    prog = load(REPO / "examples" / "digits.dlspec")
    tg = compile_training(prog)
    rng = np.random.default_rng(0)
    data = {"image": (rng.random((batch, 1, 8, 8)) * 16).astype(np.float32),
            "label": rng.integers(0, 10, batch).astype(np.int64)}
    return tg, data


def one_process(steps: int, threads: int, batch: int) -> dict[str, float]:
    from dlspec.session import StepRunner

    tg, data = _graphs(batch)
    runner = StepRunner(tg.train_step, tg.init, threads=threads)  # type: ignore[attr-defined]
    runner.run(data, 1e-3, 1)
    start = time.perf_counter()
    for step in range(2, steps + 2):
        runner.run(data, 1e-3, step)
    return {"steps_per_s": steps / (time.perf_counter() - start)}


def rank_worker(steps: int, threads: int, batch: int) -> None:
    """One rank of the data-parallel side: prints rank 0's measurements as JSON."""
    from mpi4py import MPI

    from dlspec.data_parallel import DataParallelRunner
    from dlspec.distributed import world

    tg, data = _graphs(batch)
    w = world()
    waited = [0.0]
    plain_sum = w.sum

    def timed_sum(buffer: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        out = plain_sum(buffer)
        waited[0] += time.perf_counter() - t
        return out

    w.sum = timed_sum  # type: ignore[method-assign]
    runner = DataParallelRunner(tg, w, threads=threads)  # type: ignore[arg-type]
    runner.run(data, 1e-3, 1)
    MPI.COMM_WORLD.Barrier()
    waited[0] = 0.0
    start = time.perf_counter()
    for step in range(2, steps + 2):
        runner.run(data, 1e-3, step)
    elapsed = time.perf_counter() - start
    init, trainable = tg.init, tg.trainable  # type: ignore[attr-defined]
    size = sum(int(np.prod(v.shape)) for k, v in init.items() if k in trainable) + 64  # + loss, metrics
    buf, out = np.ones(size, np.float32), np.empty(size, np.float32)
    MPI.COMM_WORLD.Barrier()
    t = time.perf_counter()
    for _ in range(steps):
        MPI.COMM_WORLD.Allreduce(buf, out)
    raw = (time.perf_counter() - t) / steps
    if w.rank == 0:
        print(json.dumps({"steps_per_s": steps / elapsed, "allreduce_share": waited[0] / elapsed,
                          "allreduce_s": waited[0] / steps, "raw_allreduce_s": raw, "bytes": size * 4}))


def data_parallel(ranks: int, steps: int, threads: int, batch: int) -> dict[str, float]:
    from dlspec.distributed import launch_command

    command, env = launch_command(ranks, [])
    command = command[: command.index(sys.executable)] + [
        sys.executable, __file__, "--worker", "--steps", str(steps), "--threads", str(threads),
        "--batch", str(batch)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="cores in all: each rank gets threads / ranks")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        rank_worker(a.steps, a.threads, a.batch)
        return
    per_rank = max(1, a.threads // a.ranks)
    print(f"digits train step, global batch {a.batch}: 1 process x {a.threads} threads against "
          f"{a.ranks} ranks x {per_rank} thread(s); {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    ratios, shares, bandwidth = [], [], []
    for r in range(a.rounds):
        solo = one_process(a.steps, a.threads, a.batch)
        many = data_parallel(a.ranks, a.steps, per_rank, a.batch)
        ratios.append(many["steps_per_s"] / solo["steps_per_s"])
        shares.append(many["allreduce_share"])
        bandwidth.append(many["raw_allreduce_s"] / many["allreduce_s"])
        print(f"round {r + 1}: 1 process {solo['steps_per_s']:.1f} steps/s, {a.ranks} ranks "
              f"{many['steps_per_s']:.1f} steps/s (ratio {ratios[-1]:.2f}); all-reduce "
              f"{1e3 * many['allreduce_s']:.2f} ms a step, waiting for the slower rank included "
              f"({100 * shares[-1]:.0f}% of the step), against "
              f"{1e3 * many['raw_allreduce_s']:.2f} ms for a raw Allreduce of the same "
              f"{many['bytes'] / 1e6:.2f} MB ({100 * bandwidth[-1]:.0f}% of its bandwidth)")
    print(f"median: ranks / 1 process {statistics.median(ratios):.2f}, all-reduce share "
          f"{100 * statistics.median(shares):.0f}%, bandwidth "
          f"{100 * statistics.median(bandwidth):.0f}% of a raw Allreduce")


if __name__ == "__main__":
    main()
