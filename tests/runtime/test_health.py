"""Training's health: the step reports the gradient norm of every stage (no extra pass), each
epoch records them, `dlspec plot` draws them, and training warns once when a stage's gradients
vanish or explode. A 20-layer sigmoid MLP warns; the same depth with relu, batch norm and Xavier
init does not."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import dlspec
from dlspec.compiler.train.health import stage_of
from dlspec.health import Watch
from dlspec.plot import figure, read_metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train_helpers import feeds_for, run, scalars, session  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "health"


def test_stages_are_the_first_two_parts_of_a_path_and_the_copy_after_them() -> None:
    assert stage_of("backbone.stem.conv1.weight") == "backbone.stem"
    assert stage_of("backbone.deep.12.linear1.weight") == "backbone.deep.12"
    assert stage_of("backbone.layer1.0.conv1.weight") == "backbone.layer1.0"
    assert stage_of("head.linear1.bias") == "head.linear1"


def test_the_step_reports_each_stages_gradient_norm() -> None:
    tg = dlspec.compile_training(EXAMPLES / "relu_bn_deep.dlspec")
    assert tg.health[0] == "grad_norm" and "grad_norm:backbone.deep.19" in tg.health
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(0, 16, (8, 1, 8, 8)).astype(np.float32), "label": rng.integers(0, 10, 8)}
    step = run(session(tg.train_step), feeds_for(tg.train_step, tg.init, batch, scalars(0.1)))
    grads = run(session(tg.gradients), feeds_for(tg.gradients, tg.init, batch, scalars()))
    by_stage: dict[str, float] = {}
    for p in tg.trainable:
        by_stage[stage_of(p)] = by_stage.get(stage_of(p), 0.0) + float(np.sum(grads[f"grad.{p}"] ** 2))
    for stage, squares in by_stage.items():
        assert step[f"grad_norm:{stage}"] == pytest.approx(np.sqrt(squares), rel=1e-4), stage
    assert step["grad_norm"] == pytest.approx(np.sqrt(sum(by_stage.values())), rel=1e-4)


def _train(name: str, tmp_path: Path) -> tuple[str, list[dict[str, float]]]:
    out = io.StringIO()
    dlspec.fit(EXAMPLES / f"{name}.dlspec", epochs=2, out=tmp_path / name, threads=2,
               console=Console(file=out, width=300))
    return out.getvalue(), read_metrics(tmp_path / name / "metrics.jsonl")


def test_vanishing_gradients_are_named_once_and_healthy_ones_pass_quietly(tmp_path: Path) -> None:
    said, records = _train("sigmoid_deep", tmp_path)
    assert said.count("warning: the gradients of backbone.deep.0 (") == 1  # once, not per epoch
    assert "vanish in epoch 1" in said
    assert records[0]["train_grad_norm:backbone.deep.0"] < 1e-6 * records[0]["train_grad_norm:head.linear1"]
    said, records = _train("relu_bn_deep", tmp_path)
    assert "warning" not in said
    assert {f"train_grad_norm:backbone.deep.{i}" for i in range(20)} <= set(records[-1])
    fig = figure(records, None, "relu_bn_deep")
    assert len(fig.axes) == 3 and fig.axes[2].get_yscale() == "log"


def test_exploding_gradients_are_named_against_their_first_epoch() -> None:
    said: list[str] = []
    watch = Watch(said.append)
    for epoch, norm in ((1, 0.5), (2, 40.0), (3, 600.0), (4, 900.0)):
        watch.epoch({"epoch": epoch, "train_grad_norm:head.linear1": norm, "train_grad_norm:backbone.a": 1.0})
    assert len(said) == 1 and "head.linear1 (6.0e+02) explode in epoch 3" in said[0]
    resumed: list[str] = []
    Watch(resumed.append, [{"epoch": 1, "train_grad_norm:head.linear1": 0.5}]).epoch(
        {"epoch": 5, "train_grad_norm:head.linear1": 900.0})
    assert resumed and "explode in epoch 5" in resumed[0]  # the first epoch comes from the records

