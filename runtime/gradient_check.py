"""`dlspec gradcheck`: compiled gradients against central finite differences, in float64.

Slow on purpose and for debugging: every parameter tensor costs two extra forward passes per
direction. Runs in onnx's reference evaluator, which has float64 kernels for every op (with the
few that round through float32 replaced: dlspec.reference).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx.utils import Extractor

from dlspec.compiler import TrainingGraphs
from dlspec.compiler.graph.precision import to_float64
from dlspec.reference import evaluator

_NP: dict[int, Any] = {onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.INT64: np.int64,
       onnx.TensorProto.INT32: np.int32, onnx.TensorProto.BOOL: np.bool_}


@dataclass
class TensorCheck:
    name: str
    size: int
    directions: int
    worst: float  # largest relative error over the directions tried


def synthetic_batch(model: onnx.ModelProto, tg: TrainingGraphs, batch: int,
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs in [0, 1), integer targets in range of the classes, real targets ~ N(0, 1)."""
    params = set(tg.init) | {"lr", "step"}
    widths = tg.inference.classes()  # a one-head model's output width; else by target name
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name in params:
            continue
        t = vi.type.tensor_type
        shape = [batch] + [d.dim_value for d in t.shape.dim][1:]
        dtype = _NP.get(t.elem_type, np.float64)
        if np.issubdtype(dtype, np.integer):
            if isinstance(widths, dict):
                classes = widths.get(vi.name) or 2
            else:
                classes = int(tg.inference.output.dims[-1] or 1)
            feeds[vi.name] = rng.integers(0, classes, shape).astype(dtype)
        elif vi.name in {d.name for d in tg.inference.model.targets}:
            feeds[vi.name] = rng.standard_normal(shape)
        else:
            feeds[vi.name] = rng.random(shape)
    return feeds


# Directional derivatives smaller than this are compared absolutely: central differences of a
# loss of order 1 in float64 resolve no finer (rounding / step), as in a 20-layer sigmoid network's
# first layers, whose gradients are 1e-13.
RESOLUTION = 1e-7


def gradcheck(tg: TrainingGraphs, eps: float = 1e-4, batch: int = 4, directions: int = 2,
              full_below: int = 4, seed: int = 0, retry_above: float = 1e-6,
              only: Collection[str] | None = None) -> list[TensorCheck]:
    """Worst relative error of <grad, v> against (L(p + eps v) - L(p - eps v)) / 2 eps per tensor.

    Tensors with at most `full_below` elements are checked along every coordinate; larger ones
    along `directions` random unit directions. `only`: check just these tensors (the first
    parameter's gradient alone already passes through every op after it).
    """
    rng = np.random.default_rng(seed)
    model = to_float64(tg.gradients)
    names = [i.name for i in model.graph.input]
    feeds = synthetic_batch(model, tg, batch, rng)
    feeds["step"] = np.array(1, np.int64)
    feeds.update({k: v.astype(np.float64) for k, v in tg.init.items() if k in names})
    outputs = evaluator(model).run(None, feeds)
    grads = dict(zip([o.name for o in model.graph.output], outputs))
    forward = Extractor(model).extract_model(names, ["loss"])
    loss_inputs = {i.name for i in forward.graph.input}
    forward_pass = evaluator(forward)

    def loss(name: str, value: np.ndarray) -> float:
        f = {k: v for k, v in feeds.items() if k in loss_inputs}
        f[name] = value
        (out,) = forward_pass.run(None, f)
        return float(out)

    report = []
    for name in [n for n in tg.trainable if only is None or n in only]:
        p, grad = feeds[name], grads[f"grad.{name}"]
        if p.size <= full_below:
            dirs = [np.eye(p.size)[i].reshape(p.shape) for i in range(p.size)]
        else:
            dirs = [v / np.linalg.norm(v) for v in (rng.standard_normal(p.shape) for _ in range(directions))]
        worst = 0.0
        for v in dirs:
            analytic = float(np.sum(grad * v))
            error = np.inf
            # A ReLU kink within +-eps of p spoils central differences; that error shrinks with
            # the step, a wrong rule's does not: retry with smaller steps before judging.
            for step in (eps, eps / 10, eps / 100, eps / 1000):
                numeric = (loss(name, p + step * v) - loss(name, p - step * v)) / (2 * step)
                error = min(error, abs(numeric - analytic) / max(abs(numeric), abs(analytic), RESOLUTION))
                if error <= retry_above:
                    break
            worst = max(worst, error)
        report.append(TensorCheck(name, int(p.size), len(dirs), worst))
    return report
