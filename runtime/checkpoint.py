"""Checkpoints: one .npz with parameters, optimizer state, step and epoch, written atomically
(temporary file, fsync, rename): a kill at any moment leaves the previous checkpoint intact."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from dlspec.files import Npz, atomic_write
from dlspec.spec.errors import RunError

META = ("__step__", "__epoch__", "__best__")


def save(path: Path, state: dict[str, np.ndarray], step: int, epoch: int, best: float) -> None:
    buf = io.BytesIO()
    savez: Any = np.savez  # names are keyword arguments: the stubs reserve 'allow_pickle'
    savez(buf, **state, __step__=np.array(step), __epoch__=np.array(epoch), __best__=np.array(best))
    atomic_write(path, buf.getvalue())


def load(path: Path) -> tuple[dict[str, np.ndarray], int, int, float]:
    """State, the last finished step and epoch, and the best validation loss so far."""
    with Npz(path, "checkpoint") as data:
        missing = [k for k in META if k not in data]
        if missing:
            raise RunError(f"cannot read checkpoint {path}: it has no {missing[0]} (not a dlspec checkpoint)")
        state = {k: data[k] for k in data.files if k not in META}
        step, epoch, best = (data[k] for k in META)
        if any(v.shape != () or v.dtype.kind not in "iuf" for v in (step, epoch, best)):
            raise RunError(f"cannot read checkpoint {path}: its step, epoch or best score is not a number")
        # a checkpoint is written after an epoch (0-based) of at least one step: a damaged or edited
        # one trained on from a negative step (a negative learning rate)
        if not (step >= 1 and epoch >= 0 and step == int(step) and epoch == int(epoch)) or np.isnan(best):
            raise RunError(f"cannot read checkpoint {path}: step {step.item()}, epoch {epoch.item()} and "
                           f"best score {best.item()} are not those of a finished epoch")
        return state, int(step), int(epoch), float(best)
