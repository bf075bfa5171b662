"""The two-head loss against PyTorch: one backbone, a classifying head and a regressing head,
`loss cross_entropy(cls, label) + w * huber(box, size)`. The loss, each term, each head's metric,
every parameter's gradient and one adamw step from train_step.onnx, against the same model in
float64 torch (torch.autograd, torch.optim.AdamW), each within 1e-4 (norm-relative)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch.nn.functional as F  # noqa: E402
from parity_helpers import randomize  # noqa: E402
from parity_torch import check_gradients_and_adamw_step  # noqa: E402
from train_helpers import feeds_for, load_text, rel_err, run, scalars, session  # noqa: E402

from dlspec.compiler import compile_training  # noqa: E402

TOL = 1e-4
LR, DECAY, WEIGHT = 0.01, 0.05, 0.3

TWO_HEADS = f"""
model two {{
  input  image: float32[N, 2, 6, 6]
  target label: int64[N]
  target size:  float32[N]
  backbone {{ conv(4, k=3) -> relu }}
  head cls: gap -> flatten -> linear(5)
  head box: flatten -> linear(8) -> tanh -> linear(1)
  loss cross_entropy(cls, label, label_smoothing=0.1) + {WEIGHT} * huber(box, size, delta=0.5)
}}
train {{ optimizer adamw(lr={LR}, weight_decay={DECAY}) }}
"""


def torch_twin(p: dict[str, torch.Tensor], x: torch.Tensor, label: torch.Tensor,
               size: torch.Tensor) -> tuple[torch.Tensor, ...]:
    h = F.relu(F.conv2d(x, p["backbone.conv1.weight"], p["backbone.conv1.bias"], padding=1))
    cls = h.mean((2, 3)) @ p["head.cls.linear1.weight"].T + p["head.cls.linear1.bias"]
    hidden = torch.tanh(h.flatten(1) @ p["head.box.linear1.weight"].T + p["head.box.linear1.bias"])
    box = (hidden @ p["head.box.linear2.weight"].T + p["head.box.linear2.bias"]).squeeze(1)
    ce = F.cross_entropy(cls, label, label_smoothing=0.1)
    hub = F.huber_loss(box, size, delta=0.5)
    return ce + WEIGHT * hub, ce, hub, cls, box


def check(what: str, got: np.ndarray, want: torch.Tensor | np.ndarray) -> None:
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else want
    err = rel_err(got, want)
    assert err <= TOL, f"{what}: ||onnx - torch|| / ||torch|| = {err:.3g}"


def test_two_head_loss_gradients_and_an_adamw_step_match_torch(tmp_path: Path) -> None:
    tg = compile_training(load_text(tmp_path, TWO_HEADS))
    values = randomize(tg.inference, seed=11)
    rng = np.random.default_rng(12)
    n = 10
    batch = {"image": rng.normal(0, 1, (n, 2, 6, 6)).astype(np.float32),
             "label": rng.integers(0, 5, n).astype(np.int64),
             "size": rng.normal(0, 1, n).astype(np.float32)}  # |box - size| on both sides of delta
    grads = run(session(tg.gradients), feeds_for(tg.gradients, batch, scalars(), values))
    step = run(session(tg.train_step), feeds_for(tg.train_step, batch, scalars(LR, 1), values, tg.init))

    params = {k: torch.from_numpy(values[k]).double().requires_grad_() for k in tg.trainable}
    x = torch.from_numpy(batch["image"]).double()
    label, size = torch.from_numpy(batch["label"]), torch.from_numpy(batch["size"]).double()
    loss, ce, hub, cls, box = torch_twin(params, x, label, size)
    loss.backward()
    for out in (grads, step):
        check("loss", out["loss"], loss)
        check("loss:cls", out["loss:cls"], ce)
        check("loss:box", out["loss:box"], hub)
        check("accuracy:cls", out["accuracy:cls"], (cls.argmax(1) == label).double().mean())
        check("mae:box", out["mae:box"], (box - size).abs().mean())
    check_gradients_and_adamw_step(check, tg.trainable, params, grads, step, values, LR, DECAY)
