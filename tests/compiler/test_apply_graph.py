"""apply.onnx, the optimizer step alone: fed the gradients that gradients.onnx computes, it gives
the parameters and optimizer state that train_step.onnx gives, clipping included; so processes
that average their gradients and apply them stay identical."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train_helpers import compile_training_text, feeds_for, run, scalars, session  # noqa: E402

SPEC = """
model m {
  input  x: float32[N, 2, 6, 6]
  target y: int64[N]
  backbone { a: conv(4, k=3) -> bn -> relu -> conv(6, k=3) -> bn -> relu }
  head { gap -> flatten -> linear(3) }
  loss cross_entropy
}
train { OPTIMIZER  clip grad_norm(0.01)  lr_mult head: 0.5  freeze backbone.a.conv1 }
"""


@pytest.mark.parametrize("optimizer", ["optimizer adamw(lr=0.01, weight_decay=0.1)",
                                       "optimizer sgd(lr=0.1, momentum=0.9, nesterov=true)"])
def test_apply_after_gradients_is_the_train_step(tmp_path: Path, optimizer: str) -> None:
    tg = compile_training_text(tmp_path, SPEC.replace("OPTIMIZER", optimizer))
    rng = np.random.default_rng(0)
    batch = {"x": rng.standard_normal((5, 2, 6, 6)).astype(np.float32), "y": rng.integers(0, 3, 5)}
    hyper = scalars(0.01, step=3)
    want = run(session(tg.train_step), feeds_for(tg.train_step, tg.init, batch, hyper))
    grads = run(session(tg.gradients), feeds_for(tg.gradients, tg.init, batch, hyper))
    assert grads["loss"] == want["loss"] and grads["accuracy"] == want["accuracy"]
    got = run(session(tg.apply), feeds_for(tg.apply, tg.init, grads, hyper))
    assert set(got) == {k for k in want if k.endswith(".next") and "running_" not in k}
    assert "backbone.a.conv1.weight.next" not in got  # frozen: not the optimizer's
    for name, value in got.items():
        np.testing.assert_allclose(value, want[name], rtol=1e-6, atol=1e-7, err_msg=name)
