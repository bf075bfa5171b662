"""Fit `standardize(...)` in a spec's features: the mean and std of each argument over the
training split, measured by running the compiled features (compiler.feature_probe) in
onnxruntime, so the numbers are those of the very graph that will use them.

They are kept in the run folder as standardize.json, so --resume compiles the same graph.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from dlspec.compiler.lower.feature_probe import probe_features
from dlspec.compiler.lower.features import Fitted, Moments, standardized
from dlspec.data import Split, size
from dlspec.session import options
from dlspec.spec.errors import RunError
from dlspec.spec.loader import Program

FILE = "standardize.json"
_EPS32 = float(np.finfo(np.float32).eps)


class _Running:
    """Count, mean and sum of squared deviations per column or channel (axis 1), merged batch by
    batch in float64 (Chan et al.), so a large split never has to be held twice."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = np.zeros(())
        self.m2 = np.zeros(())

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        axes = tuple(i for i in range(x.ndim) if i != 1)
        n = x.size // (x.shape[1] if x.ndim > 1 else 1)
        if n == 0:
            return
        mean = x.mean(axis=axes)
        keep = (1, -1) + (1,) * (x.ndim - 2) if x.ndim > 1 else ()
        m2 = ((x - mean.reshape(keep)) ** 2).sum(axis=axes)
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta ** 2 * (self.n * n / total)
        self.n = total

    def moments(self) -> tuple[Moments, bool]:
        """The moments, and whether some column is constant (its std is then taken as 1)."""
        std = np.sqrt(self.m2 / self.n)
        constant = ~(std > 4 * _EPS32 * np.abs(self.mean))  # no spread above float32 rounding
        return Moments(self.mean, np.where(constant, 1.0, std)), bool(np.any(constant))


def fit(prog: Program, model_name: str | None, train: Split, threads: int | None = None,
        batch: int = 4096, note: Callable[[str], None] = lambda _: None,
        columns: Mapping[str, Fitted] | None = None) -> dict[str, Moments]:
    """The moments of every standardize argument on `train`; {} when the spec has none.
    `columns`: the categories' vocabularies and fill means (runtime.vocab), fitted first."""
    model = prog.model(model_name)
    keys = standardized(model.features)
    stats: dict[str, Moments] = {}
    n = size(train)
    while len(stats) < len(keys):
        probe = probe_features(prog, model_name, {**(columns or {}), **stats})
        assert probe.ready, "the first unfitted standardize depends only on fitted ones"
        sess = ort.InferenceSession(probe.onnx.SerializeToString(), options(threads),
                                    providers=["CPUExecutionProvider"])
        inputs = [i.name for i in sess.get_inputs()]
        running = {k: _Running() for k in probe.ready}
        for start in range(0, n, batch):
            outs = sess.run([f"standardize.{k}" for k in probe.ready],
                            {k: train[k][start:start + batch] for k in inputs})
            for k, out in zip(probe.ready, outs):
                running[k].add(out)
        for k in probe.ready:
            mo, constant = running[k].moments()
            if not (np.all(np.isfinite(mo.mean)) and np.all(np.isfinite(mo.std))):
                raise RunError(f"standardize in feature '{k}': its value is not finite on the training "
                               "split (log or sqrt of a value <= 0? a division by 0?), so it has no mean")
            if constant:
                note(f"standardize in feature '{k}': constant on the training split (value "
                     f"{_show(mo.mean)}); its std is taken as 1, so it only subtracts the mean")
            stats[k] = mo
    return stats


def _show(a: np.ndarray) -> str:
    return f"{float(a):.6g}" if a.ndim == 0 else "[" + ", ".join(f"{v:.6g}" for v in a.tolist()) + "]"


def encode(stats: Mapping[str, Moments]) -> bytes:
    """JSON floats round-trip exactly: the resumed graph gets the same constants."""
    text = json.dumps({k: {"mean": v.mean.tolist(), "std": v.std.tolist()} for k, v in stats.items()},
                      indent=1)
    return (text + "\n").encode()


def load(path: Path) -> dict[str, Moments]:
    try:
        raw = json.loads(path.read_text())
        return {k: Moments(np.asarray(v["mean"], np.float64), np.asarray(v["std"], np.float64))
                for k, v in raw.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise RunError(f"cannot read {path}: {err}") from None


@dataclass(frozen=True)
class RunStats:
    moments: dict[str, Moments]
    fitted: bool  # fitted now (to be saved in the run folder), not read back from it


def for_run(prog: Program, model_name: str | None, train: Split, run_dir: Path, resume: bool,
            threads: int | None, note: Callable[[str], None],
            columns: Mapping[str, Fitted] | None = None) -> RunStats:
    """A fresh run fits on its training split; a resumed run reads what it saved in run_dir.
    `columns`: as for fit."""
    keys = standardized(prog.model(model_name).features)
    path = run_dir / FILE
    if not keys:
        return RunStats({}, fitted=False)
    if resume and path.exists():
        stats = load(path)
        if sorted(stats) == sorted(keys):
            return RunStats(stats, fitted=False)
        note(f"{path} has statistics for {', '.join(sorted(stats)) or 'nothing'}, the spec standardizes "
             f"{', '.join(keys)}: fitting them again on the training split")
    stats = fit(prog, model_name, train, threads, note=note, columns=columns)
    shown = [f"{k} (mean {_show(v.mean)}, std {_show(v.std)})" if v.mean.ndim == 0
             else f"{k} ({v.mean.size} means and stds, one per column or channel)" for k, v in stats.items()]
    note(f"standardize: fitted on the {size(train)} training samples: {', '.join(shown)}")
    return RunStats(stats, fitted=True)
