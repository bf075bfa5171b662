"""Paired timing for the benchmarks: two workloads in two worker processes, run in alternating
rounds. Alternating gives both the same machine load (on a shared machine it drifts within
seconds); separate processes keep one side's idle worker threads (onnxruntime's and OpenMP's
spin-wait after each call) from stealing cores while the other side runs."""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass
class Pair:
    """Median seconds per call of each side, and the per-round ratio b / a: its median and
    quartiles. Rounds are short, so a slow spell of the machine hits both sides of a ratio."""

    a: float
    b: float
    ratio: float
    ratio_lo: float
    ratio_hi: float
    rounds: int

    def spread(self) -> str:
        return f"IQR {self.ratio_lo:.2f}-{self.ratio_hi:.2f} over {self.rounds} rounds"


def paired(a: Make, b: Make, calls: int, warmup: int = 3, rounds: int = 15) -> Pair:
    """`calls` calls of `a` and of `b` in `rounds` alternating rounds (each round's first side
    alternates too), after `warmup` calls each."""
    ctx = mp.get_context("spawn")
    workers = []
    for make in (a, b):
        here, there = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(make, there), daemon=True)
        proc.start()
        workers.append((proc, here))
    times: list[list[float]] = [[], []]
    ratios = []
    try:
        for _, conn in workers:
            conn.send((0, warmup))
            conn.recv()
        rounds = min(rounds, calls)
        per_round = max(calls // rounds, 1)
        for r in range(rounds):
            medians = [0.0, 0.0]
            for side in (0, 1) if r % 2 == 0 else (1, 0):
                conn = workers[side][1]
                time.sleep(SETTLE_S)
                conn.send((warmup + r * per_round, per_round))
                got = conn.recv()
                times[side] += got
                medians[side] = statistics.median(got)
            ratios.append(medians[1] / medians[0])
    finally:
        for proc, conn in workers:
            conn.send(None)
            proc.join(timeout=30)
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return Pair(statistics.median(times[0]), statistics.median(times[1]), statistics.median(ratios),
                q[0], q[2], rounds)
