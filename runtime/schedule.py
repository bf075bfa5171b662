"""Learning-rate schedules, evaluated in the runtime: the graph takes `lr` as an input."""

from __future__ import annotations

import math

from dlspec.spec import model as m


def learning_rate(schedule: m.Schedule | None, base: float, epoch: float, epochs: int) -> float:
    """The rate at a fractional epoch: linear warmup from 0, then constant, step, cosine or linear
    decay to `min_lr` by the last epoch."""
    if schedule is None:
        return base
    if schedule.warmup > 0 and epoch < schedule.warmup:
        return base * epoch / schedule.warmup
    span = max(epochs - schedule.warmup, 1e-9)
    t = min(max((epoch - schedule.warmup) / span, 0.0), 1.0)
    low = schedule.min_lr
    if schedule.kind == "cosine":
        return low + (base - low) * 0.5 * (1 + math.cos(math.pi * t))
    if schedule.kind == "linear":
        return base + (low - base) * t
    if schedule.kind == "step":
        every = schedule.every or max(epochs // 3, 1)
        return max(base * schedule.gamma ** math.floor(epoch / every), low)  # down to min_lr, no further
    return base


def base_rate(optimizer_lr: float, schedule: m.Schedule | None, batch: int) -> float:
    """The spec's rate, scaled linearly with the batch size when the schedule asks
    (`scale_with_batch=256`: lr * batch / 256, Goyal et al. 2017)."""
    if schedule is not None and schedule.scale_with_batch:
        return optimizer_lr * batch / schedule.scale_with_batch
    return optimizer_lr
