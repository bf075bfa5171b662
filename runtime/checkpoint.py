"""Checkpoints: one .npz with parameters, optimizer state, step and epoch, written atomically
(temporary file, fsync, rename): a kill at any moment leaves the previous checkpoint intact."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from dlspec.files import atomic_write
from dlspec.spec.errors import RunError

META = ("__step__", "__epoch__", "__best__")


def save(path: Path, state: dict[str, np.ndarray], step: int, epoch: int, best: float) -> None:
    buf = io.BytesIO()
    savez: Any = np.savez  # names are keyword arguments: the stubs reserve 'allow_pickle'
    savez(buf, **state, __step__=np.array(step), __epoch__=np.array(epoch), __best__=np.array(best))
    atomic_write(path, buf.getvalue())


def load(path: Path) -> tuple[dict[str, np.ndarray], int, int, float]:
    """State, the last finished step and epoch, and the best validation loss so far."""
    try:
        with np.load(path) as data:
            state = {k: data[k] for k in data.files if k not in META}
            return state, int(data["__step__"]), int(data["__epoch__"]), float(data["__best__"])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise RunError(f"cannot read checkpoint {path}: {err}") from None
