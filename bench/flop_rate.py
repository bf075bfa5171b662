"""How close a train step runs to the machine's arithmetic rate, for bench/train_step_vs_torch.py.

A step's work is estimated from `dlspec check`'s count of the model's matrix-product FLOPs per
sample: forward, plus two backward passes of the same size (dX and dW each cost one forward), times
the batch. Each runtime's attainable rate is its own 1024^3 float32 matrix product at the same
threads (onnxruntime's MatMul through MLAS, PyTorch's through oneDNN/MKL), timed in alternating
rounds. From these follows a ceiling on the step ratio dlspec / PyTorch: PyTorch's measured step
time over the time dlspec's FLOPs would take at onnxruntime's best matrix-product rate. A ratio
target above the ceiling needs more arithmetic per second than onnxruntime's kernels give.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from paired import paired

GEMM = 1024  # the side of the square matrix product that measures a runtime's rate
GEMM_FLOPS = 2 * GEMM ** 3


def step_flops(spec_text: str, batch: int) -> float:
    """FLOPs of one training step: 3x the forward's matrix products, per sample times batch."""
    from dlspec.compiler import compile_model
    from dlspec.spec.loader import load

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.dlspec"
        path.write_text(spec_text)
        compiled = compile_model(load(path))
    return 3.0 * batch * sum(r.flops for r in compiled.records)


def ort_gemm(threads: int) -> Callable[[int], object]:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    square = [GEMM, GEMM]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "gemm",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, square) for n in "ab"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, square)])
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {n: rng.random((GEMM, GEMM), dtype=np.float32) for n in "ab"}
    return lambda _: session.run(None, feeds)


def torch_gemm(threads: int) -> Callable[[int], object]:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.rand(GEMM, GEMM), torch.rand(GEMM, GEMM)
    return lambda _: a @ b


@dataclass
class Rates:
    """Each runtime's matrix-product rate in FLOP/s."""

    ort: float
    torch: float


def gemm_rates(threads: int) -> Rates:
    pair = paired(partial(ort_gemm, threads), partial(torch_gemm, threads), calls=30, rounds=6)
    return Rates(GEMM_FLOPS / pair.a, GEMM_FLOPS / pair.b)


def report(flops: float, dlspec_s: float, torch_s: float, rates: Rates) -> str:
    """Each side's FLOP rate as a share of its runtime's matrix-product rate, and the ratio ceiling."""
    d, t = flops / dlspec_s, flops / torch_s
    ceiling = torch_s / (flops / rates.ort)
    return (f"    {flops / 1e9:.2f} GFLOP a step: dlspec {d / 1e9:.0f} GFLOP/s ({d / rates.ort:.0%} of "
            f"onnxruntime's MatMul {rates.ort / 1e9:.0f}), PyTorch {t / 1e9:.0f} GFLOP/s "
            f"({t / rates.torch:.0%} of its {rates.torch / 1e9:.0f}); ratio ceiling at onnxruntime's "
            f"MatMul rate {ceiling:.2f}")
