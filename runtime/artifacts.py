"""Write the training artifacts of a spec into one folder, each file atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from dlspec.compiler import TrainingGraphs
from dlspec.files import atomic_write
from dlspec.spec.errors import RunError

FILES = ("model.onnx", "train_step.onnx", "gradients.onnx", "init.npz")


def check_destination(dest: Path) -> None:
    """Fail before compiling when the folder cannot be written."""
    if dest.exists() and not dest.is_dir():
        raise RunError(f"cannot write the training graphs into {dest}: it is a file, not a folder")
    if not dest.parent.exists():
        raise RunError(f"cannot write {dest}: folder {dest.parent} does not exist")


def write_training(tg: TrainingGraphs, dest: Path) -> list[Path]:
    """`model.onnx` (inference), `train_step.onnx`, `gradients.onnx`, `init.npz` in `dest`."""
    check_destination(dest)
    dest.mkdir(exist_ok=True)
    buf = io.BytesIO()
    savez: Any = np.savez  # names are keyword arguments: the stubs reserve 'allow_pickle'
    savez(buf, **tg.init)
    blobs = {"model.onnx": tg.inference.onnx.SerializeToString(),
             "train_step.onnx": tg.train_step.SerializeToString(),
             "gradients.onnx": tg.gradients.SerializeToString(), "init.npz": buf.getvalue()}
    written = []
    for name in FILES:
        atomic_write(dest / name, blobs[name])
        written.append(dest / name)
    return written
