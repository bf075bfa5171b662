"""Shared machinery of the forward-parity tests: compile a spec, give its parameters random
non-trivial values, run the ONNX graph in onnxruntime, load the same values into a hand-written
PyTorch model by an explicit name map (tests/parity_torch.py), and compare.

Nothing here imports torch: the ONNX-only checks run without it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from dlspec.compiler import Compiled, compile_model
from dlspec.spec import load

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
RTOL = 1e-4  # |onnx - torch| <= RTOL * max(1, max |torch|)


# ---------------------------------------------------------------- compiling and running

def compile_text(tmp_path: Path, text: str, seed: int | None = None, name: str = "m") -> Compiled:
    path = tmp_path / f"{name}.dlspec"
    path.write_text(textwrap.dedent(text))
    return compile_model(load(path), seed=seed)


def compile_file(path: Path, seed: int | None = None) -> Compiled:
    return compile_model(load(path), seed=seed)


def initializers(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def randomize(c: Compiled, seed: int = 0) -> dict[str, np.ndarray]:
    """Give every parameter a random value (in place, in c.onnx) and return them all by name.

    Weights keep a fan-in scale so deep stacks stay finite; biases and batch-norm affine
    parameters are non-zero; running means are non-zero and running variances far from 1, so
    a lowering that ignored any of them would show.
    """
    rng = np.random.default_rng(seed)
    kind_of = {r.path: r.kind for r in c.records}
    layer_of = {p.name: p.layer for p in c.params}
    out: dict[str, np.ndarray] = {}
    for init in c.onnx.graph.initializer:
        old = numpy_helper.to_array(init)
        name = init.name
        suffix = name.rsplit(".", 1)[-1]
        kind = kind_of.get(layer_of.get(name, ""), "")
        shape = old.shape
        new: np.ndarray
        if kind == "bn" and suffix == "weight":
            new = rng.uniform(0.5, 1.5, shape)
        elif kind == "bn" and suffix == "running_mean":
            new = rng.normal(0.0, 0.5, shape)
        elif kind == "bn" and suffix == "running_var":
            new = rng.uniform(0.3, 3.0, shape)
        elif suffix in ("bias", "token") or suffix.startswith("bias_") or suffix.endswith("_bias"):
            new = rng.normal(0.0, 0.2, shape)  # also attention's in_proj_bias, nn.LSTM's bias_ih_l0
        elif suffix == "weight" or suffix.startswith("weight_") or suffix.endswith("_weight"):
            fan_in = int(np.prod(shape[1:])) if old.ndim > 1 else 1
            new = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        else:
            raise AssertionError(f"unexpected parameter {name}")
        arr = np.asarray(new, dtype=np.float32)
        init.CopyFrom(numpy_helper.from_array(arr, name=name))
        out[name] = arr
    return out


def run_ort(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = sess.run(None, feeds)
    assert len(outs) == 1
    return np.asarray(outs[0])


def rand(shape: tuple[int, ...], seed: int = 1, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def assert_parity(got: np.ndarray, want: Any, what: str = "") -> None:
    """`got` (onnxruntime) against `want` (torch tensor or array) within RTOL of the output scale."""
    want = want.detach().cpu().numpy() if hasattr(want, "detach") else np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != torch {want.shape}"
    assert np.isfinite(want).all(), f"{what}: the torch reference is not finite"
    scale = max(1.0, float(np.abs(want).max()))
    diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
    assert diff <= RTOL * scale, f"{what}: max |onnx - torch| = {diff:.3g} > {RTOL} * {scale:.3g}"


def example_inputs(example: str, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Plausible raw inputs for a model of examples/, batch n."""
    rng = np.random.default_rng(seed)
    if example in ("digits", "digits_transfer", "vit_digits", "lstm_digits", "two_heads",
                   "segment_digits"):  # raw pixels, 0-16
        return {"image": rng.integers(0, 17, (n, 1, 8, 8)).astype(np.float32)}
    if example == "land_price":  # district: names; compiled without data, every one is unknown
        return {"length": rng.uniform(5.0, 120.0, n).astype(np.float32),
                "width": rng.uniform(5.0, 80.0, n).astype(np.float32),
                "distance": rng.uniform(0.0, 90.0, n).astype(np.float32),  # past the clip at 50
                "district": rng.choice(["north", "south", ""], n).astype(object)}
    if example == "digits_images":  # pixels as decoded from the PNG files, 0-255
        return {"image": rng.integers(0, 256, (n, 3, 32, 32)).astype(np.float32)}
    if example in ("resnet18_cifar", "vgg11"):
        return {"image": rng.standard_normal((n, 3, 32, 32)).astype(np.float32)}
    raise KeyError(f"no inputs for example {example}; add them here")
