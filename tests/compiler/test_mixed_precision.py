"""Mixed-precision training steps (`precision fp16` / `bf16`), checked on the CPU.

onnxruntime's CPU provider is no reference for half precision: it runs float16 ops that lack a
CPU kernel in float32 and drops the casts around them (a float16 MatMul gives float32's exact
result), and has no bfloat16 arithmetic at all. So the numerics run an emulation of the mixed
graph: every value it computes in half precision is rounded to it (a Cast there and back) and the
ops run in float32 on the rounded values, as tensor cores accumulate. The real float16 graph is
run too, to show that its types are consistent. The GPU script (tests/e2e/gpu_check.sh) runs them
on CUDA.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from rich.console import Console
from sklearn.datasets import load_digits

from dlspec.compiler import Target, TrainingGraphs, compile_training
from dlspec.compiler.graph.infer import value_types
from dlspec.compiler.target import Precision
from dlspec.compiler.train import loss_scale
from dlspec.session import StepRunner
from dlspec.spec import load
from dlspec.training import FitOptions, fit

MLP = """
model mlp {
  input  image: float32[N, 1, 8, 8]
  target label: int64[N]
  features { image = image / 16 }
  backbone { body: flatten -> linear(64) -> relu -> linear(64) -> relu -> linear(10) }
  loss cross_entropy
}
train { data digits(test=0.2)  optimizer adam(lr=3e-3)  PRECISION }
"""
CONV = MLP.replace("body: flatten -> linear(64) -> relu -> linear(64) -> relu -> linear(10) }",
                   "stem: conv(16, k=3) -> bn -> relu -> maxpool(2) }  head classify(classes=10)")
CODES = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
BATCH = 64


def _graphs(tmp_path: Path, spec: str, precision: Precision, target: Target | None = None) -> TrainingGraphs:
    """The spec with `precision`, compiled for `target` (default: the CPU, computing in `precision`)."""
    path = tmp_path / f"{precision}.dlspec"
    path.write_text(spec.replace("PRECISION", f"precision {precision}"))
    return compile_training(load(path), target=target or Target("cpu", precision=precision))


def emulated(model: onnx.ModelProto, code: int) -> onnx.ModelProto:
    """`model` in float32, each value it computes in the half type `code` rounded to it (a Cast to
    `code` then one back after the node that makes it; a Cast to half is itself such a node)."""
    types = value_types(model)
    half = {n for n, t in types.items() if t.dtype in ("float16", "bfloat16")}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for node in out.graph.node:
        rounding = []
        for k, name in enumerate(node.output):
            if name in half:
                node.output[k] = f"{name}.wide"
                rounding += [helper.make_node("Cast", [f"{name}.wide"], [f"{name}.narrow"], to=code),
                             helper.make_node("Cast", [f"{name}.narrow"], [name], to=TensorProto.FLOAT)]
        nodes += [node, *rounding]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    for vi in out.graph.value_info:
        if vi.name in half:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    return out


def _data() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return x.reshape(-1, 1, 8, 8).astype(np.float32), y.astype(np.int64)


def _train(model: onnx.ModelProto, init: dict[str, np.ndarray], steps: int,
           init_over: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, StepRunner]:
    x, y = _data()
    runner = StepRunner(model, {**init, **(init_over or {})}, "cpu", 1, BATCH)
    losses = []
    for s in range(steps):
        i = (s * BATCH) % (len(x) - BATCH)
        losses.append(runner.run({"image": x[i:i + BATCH], "label": y[i:i + BATCH]}, 3e-3, s + 1)["loss"])
    return np.array(losses), runner


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_products_compute_in_half_and_the_rest_in_float32(tmp_path: Path, precision: str) -> None:
    tg = _graphs(tmp_path, CONV, precision)
    onnx.checker.check_model(tg.train_step, full_check=True)
    types = value_types(tg.train_step)
    half = "float16" if precision == "fp16" else "bfloat16"
    by_op: dict[str, set[str | None]] = {}
    for node in tg.train_step.graph.node:
        by_op.setdefault(node.op_type, set()).update(types[o].dtype for o in node.output if o in types)
    assert by_op["Gemm"] == {half}  # forward and backward products
    # ONNX has bfloat16 convolutions from opset 22 only; dlspec writes opset 20
    assert by_op["Conv"] == {half if precision == "fp16" else "float32"}
    assert by_op["ReduceSum"] == {"float32"} and by_op["LogSoftmax"] == {"float32"}  # statistics, loss
    optim = [n for n in tg.train_step.graph.node if n.name.startswith("optim/")]
    assert optim and all(types[o].dtype != half for n in optim for o in n.output if o in types)
    for vi in [*tg.train_step.graph.input, *tg.train_step.graph.output]:  # master weights, state: float32
        assert vi.type.tensor_type.elem_type != CODES[precision], vi.name
    assert ("loss_scale" in tg.init) == (precision == "fp16")


def test_the_cpu_trains_a_half_precision_spec_in_float32_and_cuda_in_half(tmp_path: Path) -> None:
    cpu = _graphs(tmp_path, MLP, "fp16", Target("cpu"))
    cuda = _graphs(tmp_path, MLP, "fp16", Target("cuda"))
    assert cpu.precision == "fp32" and "loss_scale" not in cpu.init
    assert cuda.precision == "fp16" and "loss_scale" in cuda.init


@pytest.mark.parametrize(("spec", "precision", "tolerance"), [
    (MLP, "fp16", 0.02), (MLP, "bf16", 0.05), (CONV, "fp16", 0.02), (CONV, "bf16", 0.05)],
    ids=["mlp-fp16", "mlp-bf16", "conv-fp16", "conv-bf16"])
def test_half_precision_losses_track_float32(tmp_path: Path, spec: str, precision: str,
                                             tolerance: float) -> None:
    """Over 60 Adam steps the mean loss of every 10 is within AMP's usual 2% (bfloat16, with 8
    bits of mantissa: 5%) of float32's, and the half-precision graph learns as much."""
    f32 = _graphs(tmp_path, spec, "fp32")
    mixed = _graphs(tmp_path, spec, precision)
    reference, _ = _train(f32.train_step, f32.init, 60)
    losses, runner = _train(emulated(mixed.train_step, CODES[precision]), mixed.init, 60)
    windows, ref_windows = losses.reshape(6, 10).mean(1), reference.reshape(6, 10).mean(1)
    assert np.all(np.abs(windows - ref_windows) <= tolerance * ref_windows), windows / ref_windows
    assert losses[-10:].mean() < 0.9 * losses[:10].mean()
    assert not np.array_equal(losses, reference)  # the rounding is there
    if precision == "fp16":
        assert runner.weights()["loss_scale.skipped"] == 0
        real, _ = _train(mixed.train_step, mixed.init, 5)  # onnxruntime's own float16 kernels
        assert np.allclose(real, losses[:5], rtol=tolerance)


def test_an_overflow_skips_the_step_and_halves_the_scale(tmp_path: Path) -> None:
    """A loss scale of 2^40 overflows float16's gradients: parameters and Adam's state stay as
    they were, the step is counted as skipped, and the scale halves on each such step."""
    tg = _graphs(tmp_path, MLP, "fp16")
    model = emulated(tg.train_step, TensorProto.FLOAT16)
    big = {loss_scale.SCALE: np.float32(2.0 ** 40)}
    _, runner = _train(model, tg.init, 3, big)
    after = runner.weights()
    assert after[loss_scale.SCALE] == 2.0 ** 37 and after[loss_scale.SKIPPED] == 3
    for name in tg.trainable:
        assert np.array_equal(after[name], tg.init[name]), name
        assert not after[f"{name}.m"].any() and not after[f"{name}.v"].any()


def test_skipped_steps_do_not_count_as_optimizer_steps(tmp_path: Path) -> None:
    """After skipped steps, the first applied update is Adam's first (its bias correction),
    bit for bit as a run that starts at the scale the skips left."""
    tg = _graphs(tmp_path, MLP, "fp16")
    model = emulated(tg.train_step, TensorProto.FLOAT16)
    x, y = _data()
    batch = {"image": x[:BATCH], "label": y[:BATCH]}
    overflowing = StepRunner(model, {**tg.init, loss_scale.SCALE: np.float32(2.0 ** 40)}, "cpu", 1, BATCH)
    scale = 2.0 ** 40
    for step in range(1, 40):  # the scale halves until the gradients fit
        before = overflowing.weights()
        overflowing.run(batch, 3e-3, step)
        if overflowing.weights()[loss_scale.SKIPPED] == before[loss_scale.SKIPPED]:
            scale = float(before[loss_scale.SCALE])
            break
    fresh = StepRunner(model, {**tg.init, loss_scale.SCALE: np.float32(scale)}, "cpu", 1, BATCH)
    fresh.run(batch, 3e-3, 1)
    a, b = overflowing.weights(), fresh.weights()
    assert a[loss_scale.SKIPPED] == step - 1 >= 2 and scale == 2.0 ** (41 - step)
    for name in tg.trainable:
        assert np.array_equal(a[name], b[name]), name


def test_good_steps_double_the_scale_after_the_growth_interval(tmp_path: Path) -> None:
    spec = MLP.replace("PRECISION", "precision fp16(growth_interval=4)")
    path = tmp_path / "grow.dlspec"
    path.write_text(spec)
    tg = compile_training(load(path), target=Target("cpu", precision="fp16"))
    model = emulated(tg.train_step, TensorProto.FLOAT16)
    scales = []
    x, y = _data()
    runner = StepRunner(model, tg.init, "cpu", 1, BATCH)
    for step in range(1, 10):
        runner.run({"image": x[:BATCH], "label": y[:BATCH]}, 1e-3, step)
        scales.append(float(runner.weights()[loss_scale.SCALE]))
    assert scales == [65536.0] * 3 + [131072.0] * 4 + [262144.0] * 2
    assert runner.weights()[loss_scale.GOOD] == 1 and runner.weights()[loss_scale.SKIPPED] == 0


def test_dlspec_train_on_the_cpu_says_it_trains_in_float32(tmp_path: Path) -> None:
    path = tmp_path / "fp16.dlspec"
    path.write_text(MLP.replace("PRECISION", "precision fp16  epochs 2  batch 64"))
    console = Console(record=True, width=200)
    fit(load(path), path, None, FitOptions(out=tmp_path / "run", threads=1), console)
    text = console.export_text()
    assert text.count("precision fp16 is lowered for CUDA only: on the CPU this run trains in float32") == 1


def test_gradients_graph_of_a_float16_step_is_float32_with_a_unit_scale(tmp_path: Path) -> None:
    """gradients.onnx (data-parallel steps) computes in float32: the same gradients, bit for bit,
    as a float32 spec's."""
    import onnxruntime as ort

    f32, mixed = _graphs(tmp_path, MLP, "fp32"), _graphs(tmp_path, MLP, "fp16")
    x, y = _data()
    outs = []
    for tg in (f32, mixed):
        sess = ort.InferenceSession(tg.gradients.SerializeToString(), providers=["CPUExecutionProvider"])
        feeds = {"image": x[:BATCH], "label": y[:BATCH], "step": np.array(1, np.int64)}
        names = [i.name for i in sess.get_inputs()]
        assert "loss_scale" not in names
        outs.append(dict(zip([o.name for o in sess.get_outputs()],
                             sess.run(None, {n: feeds.get(n, tg.init.get(n)) for n in names}))))
    assert outs[0].keys() == outs[1].keys()
    for name in outs[0]:
        assert np.array_equal(outs[0][name], outs[1][name]), name


def test_a_float16_run_resumes_bit_for_bit_with_its_loss_scale(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss scale's states are checkpointed and loaded like the weights (scalars included)."""
    import dlspec.training as fit_module

    real = fit_module.compile_training

    def in_float16(*args: object, **kwargs: object) -> object:
        *rest, target = args
        return real(*rest, Target(target.device, target.threads, precision="fp16"), **kwargs)  # type: ignore

    monkeypatch.setattr(fit_module, "compile_training", in_float16)
    path = tmp_path / "fp16.dlspec"
    path.write_text(MLP.replace("PRECISION", "precision fp16(growth_interval=5)  epochs 3  batch 64"))
    for opts in (FitOptions(out=tmp_path / "straight", threads=1),
                 FitOptions(epochs=1, out=tmp_path / "resumed", threads=1),
                 FitOptions(epochs=3, out=tmp_path / "resumed", threads=1, resume=True)):  # the spec's 3
        fit(load(path), path, None, opts, Console(quiet=True))
    a, b = np.load(tmp_path / "straight" / "last.npz"), np.load(tmp_path / "resumed" / "last.npz")
    assert sorted(a.files) == sorted(b.files) and "loss_scale" in a.files
    assert a["loss_scale"] > 65536  # it grew: the states moved, and were carried across the resume
    for key in a.files:
        assert np.array_equal(a[key], b[key]), key
