"""StepRunner: parameters carried between steps in its two buffer sets, and the per-batch-size
sessions it keeps on CUDA, checked here on the CPU against one dynamic session. They agree to
float32 rounding, not bit for bit: onnxruntime picks some kernels and fusions by static shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dlspec.compiler import Target, compile_training
from dlspec.cuda_graph import capture_blockers
from dlspec.session import StepRunner, options
from dlspec.spec import load
from dlspec.spec.errors import RunError
from dlspec.training import _eval_session

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def digit_batches(sizes: list[int]) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"image": (rng.random((n, 1, 8, 8)) * 16).astype(np.float32),
             "label": rng.integers(0, 10, n).astype(np.int64)} for n in sizes]


def test_per_batch_sessions_share_the_buffers_and_match_one_dynamic_session() -> None:
    tg = compile_training(load(EXAMPLES / "digits.dlspec"))
    batches = digit_batches([32, 32, 20, 32, 20])  # sizes switch back and forth between sessions
    fixed = StepRunner(tg.train_step, tg.init, threads=1, batch=32, fixed_batch=True)
    dynamic = StepRunner(tg.train_step, tg.init, threads=1, batch=32)
    losses = [[r.run(b, 1e-2, step)["loss"] for step, b in enumerate(batches, 1)] for r in (fixed, dynamic)]
    assert sorted(fixed.sessions) == [20, 32] and list(dynamic.sessions) == [None]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    assert len(set(losses[0])) == len(batches)  # the steps trained: each loss is new
    after = fixed.weights(), dynamic.weights()
    changed = [k for k in after[0] if not np.array_equal(after[0][k], tg.init[k])]
    assert len(changed) > len(after[0]) // 2
    for k in after[0]:
        np.testing.assert_allclose(after[0][k], after[1][k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_load_rebinds_every_session_to_the_loaded_values() -> None:
    tg = compile_training(load(EXAMPLES / "digits.dlspec"))
    batches = digit_batches([32, 20])
    runner = StepRunner(tg.train_step, tg.init, threads=1, batch=32, fixed_batch=True)
    first = [runner.run(b, 1e-2, step)["loss"] for step, b in enumerate(batches, 1)]
    runner.load(tg.init)  # back to the start: both sessions must read the reloaded buffers
    again = [runner.run(b, 1e-2, step)["loss"] for step, b in enumerate(batches, 1)]
    assert again == first


def test_loading_a_tensor_of_the_wrong_shape_names_it() -> None:
    tg = compile_training(load(EXAMPLES / "digits.dlspec"))
    runner = StepRunner(tg.train_step, tg.init, threads=1)
    name = runner.carried[0]
    with pytest.raises(RunError, match=f"'{name}' is float32\\[3\\]"):
        runner.load({name: np.zeros(3, np.float32)})


def test_the_runner_leaves_the_callers_arrays_alone() -> None:
    tg = compile_training(load(EXAMPLES / "digits.dlspec"))
    before = {k: v.copy() for k, v in tg.init.items()}
    runner = StepRunner(tg.train_step, tg.init, threads=1)
    for step, b in enumerate(digit_batches([32, 32, 32]), 1):
        runner.run(b, 1e-2, step)
    assert all(np.array_equal(tg.init[k], v) for k, v in before.items())


def test_the_small_parameter_pack_blocks_cuda_graphs_and_the_cuda_step_has_none() -> None:
    prog = load(EXAMPLES / "digits.dlspec")
    packed = capture_blockers(compile_training(prog).train_step)
    assert packed and all(b.startswith(("Concat optim/", "Split optim/")) for b in packed)
    assert any("55 pieces" in b for b in packed)
    assert capture_blockers(compile_training(prog, target=Target("cuda")).train_step) == []


def test_the_cuda_lowering_trains_as_the_cpu_one() -> None:
    """On CUDA each small parameter is updated on its own, and the weight gradients of convs on
    small maps are one Conv over the batch: the same maths as the CPU's lowering."""
    prog = load(EXAMPLES / "digits.dlspec")
    runs = []
    for device in ("cpu", "cuda"):
        tg = compile_training(prog, target=Target(device))
        runner = StepRunner(tg.train_step, tg.init, threads=1)
        losses = [runner.run(b, 1e-2, step)["loss"] for step, b in enumerate(digit_batches([32] * 4), 1)]
        runs.append((losses, runner.weights()))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
    for k, w in runs[0][1].items():
        np.testing.assert_allclose(w, runs[1][1][k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_cpu_training_sessions_plan_no_memory_pattern() -> None:
    # a pattern is allocated beside the arena blocks of the run that planned it, which the arena
    # keeps: tens of MB more at the peak of a digits run, for steps no faster
    tg = compile_training(load(EXAMPLES / "digits.dlspec"))
    runner = StepRunner(tg.train_step, tg.init, threads=1, batch=32)
    runner.use_threads(2)
    runner.run(digit_batches([32])[0], 1e-2, 1)
    sessions = [*runner.sessions.values(), *runner._pools[1][0].values(), _eval_session(tg, "cpu", 1)]
    assert len(sessions) == 3
    assert not any(s.get_session_options().enable_mem_pattern for s in sessions)
    assert options(1).enable_mem_pattern  # other callers (standardize, data-parallel) keep the default
