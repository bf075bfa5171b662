"""Data-parallel steps: every rank runs gradients.onnx on its slice of the global batch, one sum
across ranks carries the loss, metrics, gradients and batch-norm statistics, and every rank runs
apply.onnx on the same averaged values, so the parameters stay bit-identical on every rank.

Each rank's outputs are batch means over its slice; weighting them by the slice's size before the
sum makes the result the mean over the global batch, as one process would compute it. Batch norm
normalises with each rank's own batch statistics (as PyTorch's DistributedDataParallel does) and
the running statistics are the average of the ranks' updates.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnxruntime as ort

from dlspec.compiler import TrainingGraphs
from dlspec.compiler.train.health import GLOBAL, stage_of
from dlspec.distributed import World
from dlspec.session import options, providers


def shard(n: int, rank: int, size: int) -> slice:
    """Rank `rank`'s rows of a global batch of `n`: contiguous, sizes differing by at most one."""
    return slice(rank * n // size, (rank + 1) * n // size)


class DataParallelRunner:
    """The StepRunner interface (run, weights, load, carried, fixed) over several ranks."""

    def __init__(self, tg: TrainingGraphs, world: World, device: str = "cpu", threads: int | None = None):
        self.world = world
        chosen: list[Any] = list(providers(device))
        if device == "cuda":  # one GPU per rank on a machine
            chosen[0] = (chosen[0], {"device_id": str(world.local_rank)})
        self.grads = ort.InferenceSession(tg.gradients.SerializeToString(), options(threads),
                                          providers=chosen)
        self.apply = ort.InferenceSession(tg.apply.SerializeToString(), options(threads), providers=chosen)
        self.init = tg.init
        self.values = {k: np.array(v) for k, v in tg.init.items()}
        grad_in = [i.name for i in self.grads.get_inputs()]
        self.batch_inputs = [n for n in grad_in if n not in tg.init and n != "step"]
        self.param_inputs = [n for n in grad_in if n in tg.init]
        self.outputs = [o.name for o in self.grads.get_outputs()]
        self.scalars = [o for o in self.outputs if not o.startswith("grad.") and not o.endswith(".next")]
        apply_in = {i.name for i in self.apply.get_inputs()}
        self.carried = [n for n in tg.init if n in apply_in or f"{n}.next" in self.outputs]
        self.fixed = [n for n in tg.init if n not in self.carried]
        self.apply_out = [o.name for o in self.apply.get_outputs()]
        self.apply_values = [i.name for i in self.apply.get_inputs() if i.name in tg.init]
        self.stages = {p: stage_of(p) for p in tg.trainable}
        self.graph_blockers: list[str] = []
        # each output's place in the one buffer that is summed across ranks; the last slot: samples
        self.layout, at = [], 0
        for name in self.outputs:
            shape = self._shape(name)
            self.layout.append((name, shape, at, at + math.prod(shape)))
            at += math.prod(shape)
        self.send = np.zeros(at + 1, np.float32)

    def run(self, batch: dict[str, np.ndarray], lr: float, step: int) -> dict[str, float]:
        """One step on the global `batch`: this rank's slice, the sum across ranks, the update."""
        n = len(batch[self.batch_inputs[0]])
        rows = shard(n, self.world.rank, self.world.size)
        mine = rows.stop - rows.start
        feeds = {k: batch[k][rows] for k in self.batch_inputs}
        # dropout and augmentation draw per rank: the rank is part of their counter
        counter = np.array(step * self.world.size + self.world.rank, np.int64)
        outs = self.grads.run(self.outputs, {**feeds, **{k: self.values[k] for k in self.param_inputs},
                                             "step": counter}) if mine else None
        for (_, _, lo, hi), out in zip(self.layout, outs or []):  # summed weighted by samples
            np.multiply(np.asarray(out, np.float32).ravel(), mine, out=self.send[lo:hi])
        if outs is None:
            self.send[:-1] = 0.0
        self.send[-1] = mine
        total = self.world.sum(self.send)
        mean = total[:-1] / total[-1]
        averaged = {name: mean[lo:hi].reshape(shape) for name, shape, lo, hi in self.layout}
        nexts = self.apply.run(self.apply_out, {
            "lr": np.array(lr, np.float32), "step": np.array(step, np.int64),
            **{k: self.values[k] for k in self.apply_values},
            **{k: averaged[k] for k in averaged if k.startswith("grad.")}})
        for name, value in zip(self.apply_out, nexts):
            self.values[name.removesuffix(".next")] = value
        for name in self.outputs:  # batch norm's running statistics, averaged across ranks
            if name.endswith(".next"):
                self.values[name.removesuffix(".next")] = averaged[name].astype(self.init[name[:-5]].dtype)
        return {**{k: float(averaged[k]) for k in self.scalars}, **self._norms(averaged)}

    def _shape(self, output: str) -> tuple[int, ...]:
        if output.startswith("grad."):
            return self.init[output[5:]].shape
        if output.endswith(".next"):
            return self.init[output[:-5]].shape
        return ()

    def _norms(self, averaged: dict[str, np.ndarray]) -> dict[str, float]:
        """grad_norm and grad_norm:<stage> of the averaged gradients, as train_step reports them."""
        squares: dict[str, float] = {}
        for p, stage in self.stages.items():
            g = averaged[f"grad.{p}"].astype(np.float64)
            squares[stage] = squares.get(stage, 0.0) + float(np.sum(g * g))
        if not squares:
            return {}
        return {GLOBAL: math.sqrt(sum(squares.values())),
                **{f"{GLOBAL}:{s}": math.sqrt(v) for s, v in squares.items()}}

    def load(self, values: dict[str, np.ndarray]) -> None:
        for name in self.values:
            self.values[name] = np.array(values.get(name, self.init[name]))

    def weights(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.values.items()}
