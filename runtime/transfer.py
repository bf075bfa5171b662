"""Transfer learning: initialise parameters from another run or any ONNX file, by name."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from dlspec.files import Npz, load_model
from dlspec.spec.errors import RunError, SpecError, did_you_mean
from dlspec.spec.model import MapRule


def source_weights(path: Path) -> dict[str, np.ndarray]:
    """Weights of a run folder (best, else last checkpoint), an .npz, or an ONNX file's
    float initializers."""
    if path.is_dir():
        for name in ("best.npz", "last.npz", "model.onnx"):
            if (path / name).exists():
                return source_weights(path / name)
        raise RunError(f"from: {path} holds no checkpoint (best.npz, last.npz) or model.onnx")
    if not path.is_file():
        raise RunError(f"from: no such file or run folder {path}")
    try:
        if path.suffix.lower() == ".npz":
            with Npz(path, "weights") as data:
                weights = {k: data[k] for k in data.files if not k.startswith("__")}
            return {k: v for k, v in weights.items() if not _opt_state(k, weights)}
        model = load_model(path)
    except RunError as err:
        raise RunError(f"from: {err}") from None
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
            if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)}


def renamed(source: dict[str, np.ndarray], rules: Sequence[MapRule], origin: Path) -> dict[str, np.ndarray]:
    """`source` with its names mapped: a name's own rule first, else the longest prefix rule that
    matches it; names no rule matches keep theirs. A rule that matches nothing, or two names
    that land on one, is an error at the rule."""
    exact = {r.source: r for r in rules if r.source and not r.source.endswith(".")}
    prefixes = sorted((r for r in rules if r.source not in exact), key=lambda r: -len(r.source))
    used: set[int] = set()
    out: dict[str, np.ndarray] = {}
    came_from: dict[str, str] = {}
    for name, value in source.items():
        rule = exact.get(name) or next((r for r in prefixes if name.startswith(r.source)), None)
        new = name if rule is None else rule.target + name[len(rule.source):]  # exact: rest is ""
        if rule is not None:
            used.add(id(rule))
        if new in out:
            raise SpecError(f"from {origin}: '{came_from[new]}' and '{name}' both map to '{new}'",
                            rule.span if rule is not None else None)
        out[new], came_from[new] = value, name
    for rule in rules:
        if id(rule) not in used:
            what = "is called" if rule.source in exact else "starts with"
            raise SpecError(f"from {origin}: no weight {what} '{rule.source}'"
                            f"{did_you_mean(rule.source, source)}", rule.span)
    return out


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _opt_state(name: str, source: dict[str, np.ndarray]) -> bool:
    """Optimizer state saved beside a parameter (`w.m`, `w.v`, `w.momentum`) is not a weight."""
    base, _, last = name.rpartition(".")
    return last in ("m", "v", "momentum") and base in source


def load_into(init: dict[str, np.ndarray], params: list[str], source: dict[str, np.ndarray],
              origin: Path, skip: list[str]) -> list[str]:
    """Copy `source` into `init` for every name in `params` outside `skip`; a missing, unexpected
    or wrongly shaped parameter is an error naming each. Returns the names loaded."""
    wanted = [p for p in params if not _under(p, skip)]
    missing = [p for p in wanted if p not in source]
    shapes = [f"{p} {list(source[p].shape)} (want {list(init[p].shape)})" for p in wanted
              if p in source and source[p].shape != init[p].shape]
    unexpected = [k for k in source if k not in params and not _under(k, skip)]
    problems = []
    for what, names in (("missing", missing), ("wrong shape", shapes), ("unexpected", unexpected)):
        if names:
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            problems.append(f"{what}: {shown}")
    if problems:
        raise RunError(f"from {origin}: the weights do not match this model ({'; '.join(problems)}); "
                       "write `from \"...\" except head` to start those parameters fresh")
    for p in wanted:
        init[p] = _weight(source[p], init[p].dtype, p, origin)
    return wanted


def _weight(value: np.ndarray, dtype: np.dtype, name: str, origin: Path) -> np.ndarray:
    """A source tensor as the parameter's dtype: numbers only, and finite once cast (a NaN, or a
    float64 past float32's range, would stop training at its first step, blamed on the rate)."""
    if value.dtype.kind not in "fiub":
        raise RunError(f"from {origin}: '{name}' is {value.dtype}, not real numbers")
    with np.errstate(over="ignore", invalid="ignore"):
        cast = value.astype(dtype)
    if cast.dtype.kind == "f" and not np.isfinite(cast).all():
        at = tuple(int(i) for i in np.argwhere(~np.isfinite(cast))[0])
        raise RunError(f"from {origin}: '{name}' holds {value[at]} at {list(at)}, which is not a finite "
                       f"{dtype}")
    return cast
