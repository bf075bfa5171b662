"""The learning rate at a fractional epoch, against the formulas written out: warmup from 0, then
cosine or linear decay to min_lr by the last epoch, or steps of gamma that stop at min_lr."""

from __future__ import annotations

import math

import pytest

from dlspec.schedule import base_rate, learning_rate
from dlspec.spec import model as m


def _schedule(kind: str, **kw: object) -> m.Schedule:
    return m.Schedule.model_validate({"kind": kind, **kw})


def test_warmup_then_cosine_to_min_lr() -> None:
    s = _schedule("cosine", warmup=1.0, min_lr=0.01)
    assert learning_rate(s, 0.1, 0.5, 11) == pytest.approx(0.05)
    assert learning_rate(s, 0.1, 1.0, 11) == pytest.approx(0.1)
    assert learning_rate(s, 0.1, 6.0, 11) == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert learning_rate(s, 0.1, 11.0, 11) == pytest.approx(0.01)


def test_linear_decay_reaches_min_lr_at_the_last_epoch() -> None:
    s = _schedule("linear", min_lr=0.02)
    assert learning_rate(s, 0.1, 0.0, 4) == pytest.approx(0.1)
    assert learning_rate(s, 0.1, 2.0, 4) == pytest.approx(0.06)
    assert learning_rate(s, 0.1, 4.0, 4) == pytest.approx(0.02)


def test_steps_of_gamma_stop_at_min_lr() -> None:
    """step went below min_lr (0.1, then 0.001 with min_lr 0.05)."""
    s = _schedule("step", every=1, gamma=0.01, min_lr=0.05)
    rates = [learning_rate(s, 0.1, e, 3) for e in (0.0, 0.9, 1.0, 2.5)]
    assert rates == pytest.approx([0.1, 0.1, 0.05, 0.05])
    plain = _schedule("step", every=2, gamma=0.5)
    assert [learning_rate(plain, 0.1, e, 6) for e in (0.0, 2.0, 4.0)] == pytest.approx([0.1, 0.05, 0.025])


def test_the_rate_scales_with_the_batch_when_asked() -> None:
    assert base_rate(0.1, _schedule("cosine", scale_with_batch=256), 128) == pytest.approx(0.05)
    assert base_rate(0.1, _schedule("cosine"), 128) == 0.1
