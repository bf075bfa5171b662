"""Run an exported ONNX model on inputs from an .npz file."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from dlspec.files import Npz, load_model
from dlspec.session import options
from dlspec.spec.errors import RunError
from dlspec.strings import as_strings

_NP = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
       "tensor(int32)": np.int32, "tensor(float16)": np.float16, "tensor(bool)": np.bool_,
       "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def session(model_path: str | Path, device: str = "cpu") -> ort.InferenceSession:
    model = load_model(model_path)
    try:
        return ort.InferenceSession(model.SerializeToString(), options(None),
                                    providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own (pybind) exception types
        raise RunError(f"{model_path}: onnxruntime cannot load the model: {_first_line(err)}") from None


def load_inputs(sess: ort.InferenceSession, npz_path: str | Path) -> dict[str, np.ndarray]:
    """The model's inputs from an .npz, checked by name, dtype, shape and finite values."""
    with Npz(npz_path, "inputs") as data, np.errstate(over="ignore"):  # beyond float32: inf, refused
        return check_finite(sess, check_inputs(sess, data, npz_path), npz_path)


def filled_inputs(sess: ort.InferenceSession) -> set[str]:
    """The inputs the model fills missing values (NaN) of: fill(x, ...) in its features."""
    meta = sess.get_modelmeta().custom_metadata_map
    # `fill` (the fitted means) also names filled inputs, in models compiled before `filled` was kept
    return _names(meta, "filled", list, "a JSON list of input names") | \
        _names(meta, "fill", dict, "a JSON object of the filled inputs' means")


def _names(meta: Mapping[str, str], key: str, kind: type[list[Any]] | type[dict[str, Any]],
           what: str) -> set[str]:
    """The input names of a metadata record (a list, or an object's keys); none without it."""
    if key not in meta:
        return set()
    try:
        found = json.loads(meta[key])
    except ValueError:
        found = None
    if not isinstance(found, kind) or not all(isinstance(n, str) for n in found):
        raise RunError(f"the model's metadata {key} is not {what}")
    return set(found)


def check_finite(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], where: str | Path,
                 names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """`feeds`, refused at the first NaN in a float input the model does not fill, or infinity in
    any (fill replaces NaN only): either would reach the outputs as NaN or an unbounded value.
    `names`: each sample's name in errors (default 'sample i')."""
    nan_ok = filled_inputs(sess)
    for name, arr in feeds.items():
        if arr.dtype.kind != "f":
            continue
        bad = ~np.isfinite(arr) if name not in nan_ok else np.isinf(arr)
        if not bad.any():
            continue
        at = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), arr.shape))  # first, row-major
        wide = "" if arr.dtype == np.float64 else f" (or a number beyond {arr.dtype.name}'s range)"
        what = "NaN" if np.isnan(arr[at]) else f"infinite value {float(arr[at])}{wide}"
        sample = f" in {names[at[0]] if names else f'sample {at[0]}'}" if at else ""
        position = f" (at [{', '.join(str(i) for i in at)}])" if len(at) > 1 else ""
        hint = (f"; the model fills no missing values of '{name}' (its spec has no fill({name}, ...)), "
                "so every value needs a number" if what == "NaN" else "")
        raise RunError(f"{where}: input '{name}': {what}{sample}{position}{hint}")
    return feeds


def check_inputs(sess: ort.InferenceSession, data: Mapping[str, Any],
                 where: str | Path) -> dict[str, np.ndarray]:
    """The model's inputs from `data` (an .npz file or a dict of arrays), checked by name, dtype and
    shape; `where` names the source in errors."""
    feeds: dict[str, np.ndarray] = {}
    batch: tuple[str, int] | None = None
    for inp in sess.get_inputs():
        if inp.name not in data:
            raise RunError(f"{where}: missing input '{inp.name}' (the file has: "
                           f"{', '.join(data) or 'nothing'})")
        try:
            arr = np.asarray(data[inp.name])
        except ValueError:
            raise RunError(f"{where}: input '{inp.name}' holds Python objects; save a numeric "
                           "array") from None
        if inp.type == "tensor(string)":  # text, as training read it; bytes decoded as UTF-8
            arr = as_strings(arr, f"{where}: input '{inp.name}'")
        want = _NP.get(inp.type)
        if want is not None and arr.dtype != want:
            if np.can_cast(arr.dtype, want, casting="same_kind"):
                arr = arr.astype(want)
            else:
                raise RunError(f"{where}: input '{inp.name}' is {arr.dtype}, the model takes "
                               f"{np.dtype(want).name}")
        dims = inp.shape
        if arr.ndim != len(dims) or any(isinstance(d, int) and d != a
                                        for d, a in zip(dims, arr.shape, strict=True)):
            shown = ", ".join(str(d) for d in dims)
            raise RunError(f"{where}: input '{inp.name}' has shape {list(arr.shape)}, the model "
                           f"takes [{shown}]")
        if dims and not isinstance(dims[0], int):  # the symbolic batch dimension: one size for all
            if batch is not None and arr.shape[0] != batch[1]:
                raise RunError(f"{where}: input '{inp.name}' has {arr.shape[0]} rows, input "
                               f"'{batch[0]}' has {batch[1]}; every input needs the same batch size")
            batch = (inp.name, arr.shape[0])
        feeds[inp.name] = arr
    return feeds


def predict(model_path: str | Path, npz_path: str | Path) -> dict[str, np.ndarray]:
    sess = session(model_path)
    return run_model(sess, load_inputs(sess, npz_path), model_path, npz_path)


def run_model(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], model_path: str | Path,
              inputs: str | Path, first: int = 0) -> dict[str, np.ndarray]:
    """Every output by name; a NaN or infinity in one is an error naming its sample (the feeds
    are finite, checked before: the model made it). `first`: the index of the feeds' first sample."""
    names = [o.name for o in sess.get_outputs()]
    try:
        results = sess.run(names, feeds)
    except Exception as err:  # onnxruntime's own exception types
        raise RunError(f"running {model_path} on {inputs} failed: {_first_line(err)}") from None
    for name, out in zip(names, results, strict=True):
        if out.dtype.kind == "f" and not np.isfinite(out).all():
            at = tuple(int(i) for i in np.argwhere(~np.isfinite(out))[0])
            sample = f" for sample {first + at[0]}" if at else ""
            raise RunError(f"{model_path} gives {out[at]} in output '{name}'{sample} of {inputs}, whose "
                           "inputs are finite: its features (a log of a negative number? a division by "
                           "0?) or its weights make it")
    return dict(zip(names, results, strict=True))
