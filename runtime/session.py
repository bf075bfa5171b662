"""onnxruntime sessions for training: parameters and optimizer state live in onnxruntime-owned
buffers bound with IOBinding and swapped between steps (no host copies, no re-allocation)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from spec.errors import RunError


def providers(device: str) -> list[str]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RunError("--device cuda needs onnxruntime with the CUDA provider: "
                           "pip install 'dlspec[gpu]' (onnxruntime-gpu) in place of onnxruntime")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise RunError(f"unknown device '{device}': use cpu or cuda")


def options(threads: int | None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


class StepRunner:
    """Runs train_step.onnx with two buffer sets A and B: one binding reads A and writes every
    `<name>.next` into B, the other reads B and writes A. Both are bound once, so a step binds
    only the batch, `lr` and `step`."""

    def __init__(self, model: onnx.ModelProto, init: dict[str, np.ndarray], device: str = "cpu",
                 threads: int | None = None):
        self.device = "cuda" if device == "cuda" else "cpu"
        self.sess = ort.InferenceSession(model.SerializeToString(), options(threads),
                                         providers=providers(device))
        outputs = [o.name for o in self.sess.get_outputs()]
        inputs = [i.name for i in self.sess.get_inputs()]
        self.carried = [n for n in inputs if f"{n}.next" in outputs]
        self.fixed = [n for n in inputs if n in init and n not in self.carried]  # frozen weights, stats
        self.batch_inputs = [n for n in inputs if n not in init and n not in ("lr", "step")]
        self.init = init
        self.scalars = {o: ort.OrtValue.ortvalue_from_numpy(np.zeros((), np.float32))
                        for o in outputs if not o.endswith(".next")}  # loss and metrics, on the host
        self.load(init)

    def _value(self, array: np.ndarray) -> Any:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def load(self, values: dict[str, np.ndarray]) -> None:
        """Put parameters and state (missing names: the initial values) into fresh buffers."""
        self.buffers = [{n: self._value(values.get(n, self.init[n])) for n in self.carried},
                        {n: self._value(np.empty_like(self.init[n])) for n in self.carried}]
        self._fixed = {n: self._value(values.get(n, self.init[n])) for n in self.fixed}
        self.bindings = []
        for src, dst in ((0, 1), (1, 0)):
            io = self.sess.io_binding()
            for name in self.carried:
                io.bind_ortvalue_input(name, self.buffers[src][name])
                io.bind_ortvalue_output(f"{name}.next", self.buffers[dst][name])
            for name, value in self._fixed.items():
                io.bind_ortvalue_input(name, value)
            for name, value in self.scalars.items():
                io.bind_ortvalue_output(name, value)
            self.bindings.append(io)
        self.current = 0  # the buffer set holding the latest values

    def run(self, batch: dict[str, np.ndarray], lr: float, step: int) -> dict[str, float]:
        io = self.bindings[self.current]
        for name in self.batch_inputs:
            io.bind_cpu_input(name, batch[name])
        io.bind_cpu_input("lr", np.array(lr, np.float32))
        io.bind_cpu_input("step", np.array(step, np.int64))
        self.sess.run_with_iobinding(io)
        self.current ^= 1
        return {n: float(v.numpy()) for n, v in self.scalars.items()}

    def weights(self) -> dict[str, np.ndarray]:
        """A host copy of every parameter (frozen ones too) and state: for checkpoints, evaluation."""
        values = {**self._fixed, **self.buffers[self.current]}
        return {n: v.numpy().copy() for n, v in values.items()}
