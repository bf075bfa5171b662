"""Paired timing for the benchmarks: two workloads in two worker processes, run in alternating
rounds. Alternating gives both the same machine load (on a shared machine it drifts within
seconds); separate processes keep one side's idle worker threads (onnxruntime's and OpenMP's
spin-wait after each call) from stealing cores while the other side runs."""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

Make = Callable[[], Callable[[int], object]]  # picklable: builds the workload in the worker
SETTLE_S = 0.2  # idle threads of the side that just ran stop spinning


def _serve(make: Make, conn: Connection) -> None:
    call = make()
    while (job := conn.recv()) is not None:
        start, count = job
        times = []
        for i in range(count):
            t = time.perf_counter()
            call(start + i)
            times.append(time.perf_counter() - t)
        conn.send(times)


def paired(a: Make, b: Make, calls: int, warmup: int = 3, rounds: int = 5) -> tuple[float, float]:
    """Median seconds per call of `a` and of `b`, `calls` each, in `rounds` alternating rounds."""
    ctx = mp.get_context("spawn")
    workers = []
    for make in (a, b):
        here, there = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(make, there), daemon=True)
        proc.start()
        workers.append((proc, here))
    times: list[list[float]] = [[], []]
    try:
        for _, conn in workers:
            conn.send((0, warmup))
            conn.recv()
        per_round = max(calls // rounds, 1)
        for r in range(rounds):
            for side, (_, conn) in enumerate(workers):
                time.sleep(SETTLE_S)
                conn.send((warmup + r * per_round, per_round))
                times[side] += conn.recv()
    finally:
        for proc, conn in workers:
            conn.send(None)
            proc.join(timeout=30)
    return statistics.median(times[0]), statistics.median(times[1])
