"""Run an exported ONNX model on inputs from an .npz file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from spec.errors import RunError

_NP = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
       "tensor(int32)": np.int32, "tensor(float16)": np.float16, "tensor(bool)": np.bool_,
       "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def session(model_path: str | Path, device: str = "cpu") -> ort.InferenceSession:
    if not Path(model_path).is_file():
        raise RunError(f"no model file {model_path}")
    try:
        onnx.checker.check_model(str(model_path))
    except onnx.checker.ValidationError as err:
        raise RunError(f"{model_path} is not a valid ONNX model: {str(err).splitlines()[0]}") from None
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])


def load_inputs(sess: ort.InferenceSession, npz_path: str | Path) -> dict[str, np.ndarray]:
    """The model's inputs from an .npz, checked by name, dtype and shape."""
    try:
        data = np.load(npz_path)
    except (OSError, ValueError) as err:
        raise RunError(f"cannot read inputs {npz_path}: {err}") from None
    feeds: dict[str, np.ndarray] = {}
    batch: int | None = None
    for inp in sess.get_inputs():
        if inp.name not in data:
            raise RunError(f"{npz_path}: missing input '{inp.name}' (the file has: "
                           f"{', '.join(data.files) or 'nothing'})")
        arr = data[inp.name]
        want = _NP.get(inp.type)
        if want is not None and arr.dtype != want:
            if np.can_cast(arr.dtype, want, casting="same_kind"):
                arr = arr.astype(want)
            else:
                raise RunError(f"{npz_path}: input '{inp.name}' is {arr.dtype}, the model takes "
                               f"{np.dtype(want).name}")
        dims = inp.shape
        if arr.ndim != len(dims) or any(isinstance(d, int) and d != a for d, a in zip(dims, arr.shape)):
            shown = ", ".join(str(d) for d in dims)
            raise RunError(f"{npz_path}: input '{inp.name}' has shape {list(arr.shape)}, the model "
                           f"takes [{shown}]")
        if batch is not None and arr.shape[0] != batch:
            raise RunError(f"{npz_path}: input '{inp.name}' has {arr.shape[0]} rows, the others {batch}")
        batch = arr.shape[0]
        feeds[inp.name] = arr
    return feeds


def predict(model_path: str | Path, npz_path: str | Path) -> dict[str, np.ndarray]:
    sess = session(model_path)
    feeds = load_inputs(sess, npz_path)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))
