"""The CPU thread count a run trains with, measured on its first steps.

More intra-op threads are not always faster: a small model's ops are too short to share out, and
cores that other processes use slow every thread that waits on them. So a run without --threads
trains its first steps at a few candidate counts (all cores, half, a quarter), each in a session
of its own over the same parameter buffers: the first step of each warms its session up, the next
are timed. The rest of the run keeps the fastest. Those steps are training steps, so the probe
costs only the sessions it makes; the run's numbers differ from a fixed count's by float rounding
(onnxruntime splits some sums by thread). A resumed run keeps the count its record names.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dlspec.session import StepRunner

TIMED = 3  # steps timed per candidate, after one to warm its session up


def candidates(cores: int) -> list[int]:
    """All cores, half and a quarter of them: the counts worth a measurement, largest first."""
    return sorted({n for n in (cores, cores // 2, cores // 4) if n >= 1}, reverse=True)


class ThreadChoice:
    """Runs steps through `runner`, the first (1 + TIMED) per candidate at that thread count; then
    the fastest count, which it notes once."""

    def __init__(self, runner: StepRunner, counts: list[int], note: Callable[[str], None],
                 clock: Callable[[], float]) -> None:
        self.runner, self.counts, self.note, self.clock = runner, counts, note, clock
        self.times: dict[int, list[float]] = {n: [] for n in counts}
        self.index, self.ran = 0, 0  # the candidate being measured, and its steps so far
        self.chosen: int | None = counts[0] if len(counts) == 1 else None
        if self.chosen is None:
            runner.use_threads(counts[0])

    def run(self, batch: dict[str, np.ndarray], lr: float, step: int) -> dict[str, float]:
        if self.chosen is not None:
            return self.runner.run(batch, lr, step)
        start = self.clock()
        out = self.runner.run(batch, lr, step)
        if self.ran > 0:  # the first step of a session allocates and plans: not timed
            self.times[self.counts[self.index]].append(self.clock() - start)
        self.ran += 1
        if self.ran == 1 + TIMED:
            self.index, self.ran = self.index + 1, 0
            if self.index < len(self.counts):
                self.runner.use_threads(self.counts[self.index])
            else:
                self._choose()
        return out

    def _choose(self) -> None:
        # the fastest median step; on a tie, fewer threads
        chosen = min(self.counts, key=lambda n: (float(np.median(self.times[n])), n))
        self.runner.use_threads(chosen, keep=False)
        self.chosen = chosen
        shown = ", ".join(f"{n}: {np.median(self.times[n]) * 1e3:.1f} ms" for n in self.counts)
        self.note(f"training on {chosen} thread(s), the fastest step of {shown} (--threads N to choose)")
