"""`dlspec train` without --threads: the thread count measured on the first steps, kept on resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import dlspec.training as fit_module
from dlspec.compiler import Target, compile_training
from dlspec.session import StepRunner, threads_in_use
from dlspec.spec import load
from dlspec.thread_choice import TIMED, ThreadChoice, candidates
from dlspec.training import FitOptions, fit

SPEC = """
model small {
  input  image: float32[N, 1, 8, 8]
  target label: int64[N]
  features { image = image / 16 }
  backbone { stem: conv(8, k=3) -> bn -> relu -> maxpool(2) }
  head classify(classes=10)
  loss cross_entropy
}
train { data digits(test=0.2, val=0.1)  batch 32  epochs 2  optimizer adam(lr=3e-3)  seed 3 }
"""


def test_candidates_are_all_cores_half_and_a_quarter() -> None:
    assert candidates(16) == [16, 8, 4]
    assert candidates(2) == [2, 1]
    assert candidates(1) == [1]


@pytest.mark.parametrize("slow", [1, 2])
def test_the_fastest_count_is_kept_and_the_steps_all_train(tmp_path: Path, slow: int) -> None:
    """A clock on which `slow` threads take 5x as long: the other count is chosen, and every probe
    step trained the same parameters."""
    path = tmp_path / "s.dlspec"
    path.write_text(SPEC)
    tg = compile_training(load(path), target=Target("cpu", 2))
    runner = StepRunner(tg.train_step, tg.init, "cpu", 2, 32)
    now = [0.0]

    def clock() -> float:  # a step's time: the tick at its end
        now[0] += 0.05 if runner.threads == slow else 0.01
        return now[0]

    notes: list[str] = []
    chooser = ThreadChoice(runner, [2, 1], notes.append, clock)
    rng = np.random.default_rng(0)
    batch = {"image": rng.random((32, 1, 8, 8), dtype=np.float32) * 16, "label": rng.integers(0, 10, 32)}
    losses = [chooser.run(batch, 1e-3, s)["loss"] for s in range(1, 2 * (1 + TIMED) + 3)]
    fast = 3 - slow
    assert chooser.chosen == fast and runner.threads == fast and not runner._pools
    assert len(notes) == 1 and f"training on {fast} thread(s)" in notes[0]
    assert losses[-1] < losses[0]  # the same parameters trained on through the switches


def test_a_run_records_its_count_and_a_resume_keeps_it(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.dlspec"
    path.write_text(SPEC)
    console = Console(record=True, width=200)
    fit(load(path), path, None, FitOptions(epochs=1, out=tmp_path / "run", pick_threads=True), console)
    cores = threads_in_use(None)
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert first["threads"] in candidates(cores)
    assert console.export_text().count("training on") == (len(candidates(cores)) > 1)

    def no_probe(*args: object) -> None:
        raise AssertionError("a resumed run measured again")

    monkeypatch.setattr(fit_module, "ThreadChoice", no_probe)
    fit(load(path), path, None, FitOptions(epochs=2, out=tmp_path / "run", resume=True, pick_threads=True),
        Console(quiet=True))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["threads"] for r in records] == [first["threads"]] * 2


def test_without_pick_threads_nothing_is_measured_or_recorded(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.dlspec"
    path.write_text(SPEC)
    monkeypatch.setattr(fit_module, "ThreadChoice", None)
    fit(load(path), path, None, FitOptions(epochs=1, out=tmp_path / "run"), Console(quiet=True))
    assert "threads" not in json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
