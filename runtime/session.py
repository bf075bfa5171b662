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
    """Runs train_step.onnx: each `<name>.next` output is written into a spare buffer that becomes
    the next step's `<name>` input (double buffering)."""

    def __init__(self, model: onnx.ModelProto, init: dict[str, np.ndarray], device: str = "cpu",
                 threads: int | None = None):
        self.device = "cuda" if device == "cuda" else "cpu"
        self.sess = ort.InferenceSession(model.SerializeToString(), options(threads),
                                         providers=providers(device))
        outputs = [o.name for o in self.sess.get_outputs()]
        inputs = [i.name for i in self.sess.get_inputs()]
        self.carried = [n for n in inputs if f"{n}.next" in outputs]
        self.reported = [o for o in outputs if not o.endswith(".next")]  # loss and metrics
        self.batch_inputs = [n for n in inputs if n not in init and n not in ("lr", "step")]
        self.io = self.sess.io_binding()
        self.state = {n: self._value(init[n]) for n in self.carried}
        self.spare = {n: self._value(np.empty_like(init[n])) for n in self.carried}
        self._keep = [self._value(init[n]) for n in inputs if n in init and n not in self.carried]
        for name, value in zip([n for n in inputs if n in init and n not in self.carried], self._keep):
            self.io.bind_ortvalue_input(name, value)  # frozen weights and statistics: bound once
        self.scalars = {n: ort.OrtValue.ortvalue_from_numpy(np.zeros((), np.float32)) for n in self.reported}
        for name, value in self.scalars.items():
            self.io.bind_ortvalue_output(name, value)  # host scalars: read without a search

    def _value(self, array: np.ndarray) -> Any:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def run(self, batch: dict[str, np.ndarray], lr: float, step: int) -> dict[str, float]:
        io = self.io
        for name in self.batch_inputs:
            io.bind_cpu_input(name, batch[name])
        io.bind_cpu_input("lr", np.array(lr, np.float32))
        io.bind_cpu_input("step", np.array(step, np.int64))
        for name in self.carried:
            io.bind_ortvalue_input(name, self.state[name])
            io.bind_ortvalue_output(f"{name}.next", self.spare[name])
        self.sess.run_with_iobinding(io)
        self.state, self.spare = self.spare, self.state
        return {n: float(v.numpy()) for n, v in self.scalars.items()}

    def weights(self) -> dict[str, np.ndarray]:
        """A host copy of the carried state (for checkpoints and evaluation)."""
        return {n: v.numpy().copy() for n, v in self.state.items()}

    def load(self, values: dict[str, np.ndarray]) -> None:
        for n in self.carried:
            if n in values:
                self.state[n] = self._value(values[n])
