"""Write the training artifacts of a spec into one folder, each file atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from dlspec.compiler import TrainingGraphs
from dlspec.files import OutputFolder

FILES = ("model.onnx", "train_step.onnx", "gradients.onnx", "apply.onnx", "init.npz")


def write_training(tg: TrainingGraphs, dest: OutputFolder) -> list[Path]:
    """`model.onnx` (inference), `train_step.onnx`, `gradients.onnx`, `apply.onnx` and `init.npz` in
    `dest`; all of them or, when one fails, none."""
    buf = io.BytesIO()
    savez: Any = np.savez  # names are keyword arguments: the stubs reserve 'allow_pickle'
    savez(buf, **tg.init)
    blobs = {"model.onnx": tg.inference.onnx.SerializeToString(),
             "train_step.onnx": tg.train_step.SerializeToString(),
             "gradients.onnx": tg.gradients.SerializeToString(), "apply.onnx": tg.apply.SerializeToString(),
             "init.npz": buf.getvalue()}
    with dest:
        written = [dest.write(name, blobs[name]) for name in FILES]
        dest.keep()
    return written
