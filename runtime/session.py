"""onnxruntime sessions for training: parameters and optimizer state live in onnxruntime-owned
buffers bound with IOBinding and swapped between steps (no host copies, no re-allocation)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from dlspec.compiler.graph.proto import BATCH_DIM
from dlspec.cuda_graph import capture_blockers
from dlspec.spec.errors import RunError


def providers(device: str) -> list[str]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RunError("--device cuda needs onnxruntime with the CUDA provider: "
                           "pip install 'dlspec[gpu]' (onnxruntime-gpu) in place of onnxruntime")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise RunError(f"unknown device '{device}': use cpu or cuda")


MAX_THREADS = 256  # as many cores as the largest machines have; onnxruntime takes seconds to start more


def threads_in_use(threads: int | None) -> int:
    """How many threads a step gets: `threads`, else the cores this process may run on (what
    onnxruntime's default pool spreads over, up to one thread per physical core)."""
    if threads:
        return threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def options(threads: int | None, device: str | None = None) -> ort.SessionOptions:
    """`device` "cpu": without onnxruntime's memory pattern (see below); other callers keep it."""
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise RunError(f"threads={threads}: give 1 to {MAX_THREADS}")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 4  # failures come back as exceptions, reported in one line
    if device == "cpu":
        # the pattern is planned on a session's first run (per input shape) and then allocated
        # beside the arena blocks that run took, which the arena keeps: 26 to 36 MB more at the
        # peak of a digits run (of about 200), and its steps measured no faster with it
        so.enable_mem_pattern = False
    return so


class StepRunner:
    """Runs train_step.onnx with two buffer sets A and B: one binding reads A and writes every
    `<name>.next` into B, the other reads B and writes A. Both are bound once, so a step only
    copies in the batch, `lr` and `step`.

    With `fixed_batch` (the default on CUDA) each batch size gets its own session with the batch
    dimension fixed: onnxruntime then folds every Shape, and the arithmetic on it, to constants
    before placing nodes. A dynamic batch leaves that arithmetic behind, and the CUDA provider
    sends it to the CPU on purpose, so each step would wait on host round trips. With every node
    on the GPU, each binding of the usual batch size's session is captured once as a CUDA graph
    and replayed: one launch per step instead of one per node. That needs every bound value at a
    fixed address, so the batch, `lr` and `step` go into buffers of their own, updated in place.
    A short last batch, once an epoch, runs node by node in its own session. The CPU keeps one
    session for all sizes: a fixed batch measured no faster there."""

    def __init__(self, model: onnx.ModelProto, init: dict[str, np.ndarray], device: str = "cpu",
                 threads: int | None = None, batch: int | None = None, fixed_batch: bool | None = None,
                 cuda_graph: bool = True):
        """`batch`: the usual batch size, whose session is made now (others as they come)."""
        self.device = "cuda" if device == "cuda" else "cpu"
        self.fixed_batch = self.device == "cuda" if fixed_batch is None else fixed_batch
        graph = cuda_graph and self.device == "cuda" and self.fixed_batch and batch is not None
        self.graph_blockers = capture_blockers(model) if graph else []
        # the one batch size replayed as a CUDA graph, if any
        self.graph_batch = batch if graph and not self.graph_blockers else None
        self.model, self.threads = model.SerializeToString(), threads
        self.sessions = {self._key(batch): self._session(self._key(batch))}
        outputs = [o.name for o in model.graph.output]
        inputs = [i.name for i in model.graph.input]
        self.carried = [n for n in inputs if f"{n}.next" in outputs]
        self.fixed = [n for n in inputs if n in init and n not in self.carried]  # frozen weights, stats
        self.batch_inputs = [n for n in inputs if n not in init and n not in ("lr", "step")]
        self.init = init
        # loss and metrics: read back after each step (on the device when a CUDA graph writes them)
        self.scalars = {o: self._value(np.zeros((), np.float32)) for o in outputs if not o.endswith(".next")}
        self.hyper = {"lr": self._value(np.zeros((), np.float32)),
                      "step": self._value(np.zeros((), np.int64))}
        self.buffers = [{n: self._value(init[n]) for n in self.carried},
                        {n: self._value(np.empty_like(init[n])) for n in self.carried}]
        self._fixed = {n: self._value(init[n]) for n in self.fixed}
        self.feeds: dict[int | None, dict[str, Any]] = {}  # per fixed batch size: its batch buffers
        self.bindings: dict[int | None, list[tuple[Any, ort.RunOptions]]] = {}
        self.current = 0  # the buffer set holding the latest values
        self._pools: dict[int | None, tuple[dict, dict]] = {}  # other thread counts' sessions and bindings

    def use_threads(self, threads: int, keep: bool = True) -> None:
        """Run the next steps on `threads` intra-op threads (the CPU): sessions of their own over
        the same buffers. `keep`: hold on to the current thread count's sessions, to come back to."""
        assert self.device == "cpu", "thread counts are the CPU's"
        if threads != self.threads:
            if keep:
                self._pools[self.threads] = (self.sessions, self.bindings)
            self.threads = threads
            self.sessions, self.bindings = self._pools.pop(threads, ({}, {}))
        if not keep:
            self._pools.clear()

    def _key(self, batch: int | None) -> int | None:
        return batch if self.fixed_batch else None

    def _session(self, batch: int | None) -> ort.InferenceSession:
        so = options(self.threads, self.device)
        chosen: list[Any] = list(providers(self.device))
        if batch is not None:
            so.add_free_dimension_override_by_name(BATCH_DIM, batch)
            if batch == self.graph_batch:  # batch is not None here
                chosen[0] = (chosen[0], {"enable_cuda_graph": "1"})
        return ort.InferenceSession(self.model, so, providers=chosen)

    def _value(self, array: np.ndarray) -> Any:
        # a copy: on the CPU an OrtValue wraps the array's own memory, and the steps write into
        # these buffers, which would overwrite the caller's arrays (the initial values, a checkpoint)
        return ort.OrtValue.ortvalue_from_numpy(np.array(array, order="C"), self.device, 0)

    def load(self, values: dict[str, np.ndarray]) -> None:
        """Copy parameters and state (missing names: the initial values) into the buffers, in
        place: their addresses stay, so do the bindings and any captured CUDA graph."""
        for name, value in [*self.buffers[0].items(), *self._fixed.items()]:
            new = np.asarray(values.get(name, self.init[name]), order="C")  # a scalar stays 0-d
            if new.shape != tuple(value.shape()) or new.dtype != self.init[name].dtype:
                raise RunError(f"'{name}' is {new.dtype}{list(new.shape)} in the values to load, "
                               f"the model needs {self.init[name].dtype}{list(value.shape())}")
            value.update_inplace(new)
        self.current = 0

    def _bound(self, batch: int | None) -> list[tuple[Any, ort.RunOptions]]:
        """The two IOBindings (A to B, B to A) of the session for this batch size, each with the
        run options that name its CUDA graph."""
        if batch not in self.bindings:
            if batch not in self.sessions:
                self.sessions[batch] = self._session(batch)
            pair = []
            for graph_id, (src, dst) in enumerate(((0, 1), (1, 0)), 1):
                io = self.sessions[batch].io_binding()
                for name in self.carried:
                    io.bind_ortvalue_input(name, self.buffers[src][name])
                    io.bind_ortvalue_output(f"{name}.next", self.buffers[dst][name])
                for values in (self._fixed, self.hyper, self.feeds.get(batch, {})):
                    for name, value in values.items():
                        io.bind_ortvalue_input(name, value)
                for name, value in self.scalars.items():
                    io.bind_ortvalue_output(name, value)
                run = ort.RunOptions()
                if self.graph_batch is not None and batch == self.graph_batch:
                    run.add_run_config_entry("gpu_graph_id", str(graph_id))
                pair.append((io, run))
            self.bindings[batch] = pair
        return self.bindings[batch]

    def run(self, batch: dict[str, np.ndarray], lr: float, step: int) -> dict[str, float]:
        size = self._key(len(batch[self.batch_inputs[0]]) if self.batch_inputs else None)
        if size is not None and size not in self.feeds:
            self.feeds[size] = {n: self._value(batch[n]) for n in self.batch_inputs}
        io, run = self._bound(size)[self.current]
        if size is None:
            for name in self.batch_inputs:
                io.bind_cpu_input(name, batch[name])
        else:
            for name, value in self.feeds[size].items():
                value.update_inplace(np.ascontiguousarray(batch[name]))
        self.hyper["lr"].update_inplace(np.array(lr, np.float32))
        self.hyper["step"].update_inplace(np.array(step, np.int64))
        self.sessions[size].run_with_iobinding(io, run)
        self.current ^= 1
        return {n: float(v.numpy()) for n, v in self.scalars.items()}

    def weights(self) -> dict[str, np.ndarray]:
        """A host copy of every parameter (frozen ones too) and state: for checkpoints, evaluation."""
        values = {**self._fixed, **self.buffers[self.current]}
        return {n: v.numpy().copy() for n, v in values.items()}
