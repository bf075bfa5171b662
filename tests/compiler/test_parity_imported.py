"""Fine-tuning a network dlspec did not write: a torchvision-layout ResNet-18 built in PyTorch,
exported with torch.onnx.export (in training and in eval mode, no constant folding), imported
as a backbone under a new head; the first training step (loss, every gradient, the running
statistics, the parameters after an sgd step) is compared with the same fine-tuning in PyTorch.
Norm-relative errors, as in test_train_parity: ||dlspec - torch|| / ||torch|| <= 1e-4."""

from __future__ import annotations

import io
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")

import dlspec  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from parity_torch import BasicBlock, ResNet  # noqa: E402
from train_helpers import feeds_for, run, scalars, session  # noqa: E402

SPEC = """
model finetune {
  input  image: float32[N, 3, 16, 16]
  target label: int64[N]
  backbone onnx("resnet.onnx")
  head { gap -> flatten -> linear(5) }
  loss cross_entropy
}
train { optimizer sgd(lr=0.05)  seed 2 }
"""


def _close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    err = np.linalg.norm(got.astype(np.float64) - want) / max(np.linalg.norm(want), 1e-12)
    assert err <= 1e-4, f"{what}: relative error {err:.2e}"


def _exported(net: torch.nn.Module, training: bool) -> bytes:
    buf = io.BytesIO()
    mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL
    torch.onnx.export(net, (torch.zeros(2, 3, 16, 16),), buf, dynamo=False, opset_version=17, training=mode,
                      do_constant_folding=False, input_names=["image"], output_names=["features"],
                      dynamic_axes={"image": {0: "N"}, "features": {0: "N"}})
    return buf.getvalue()


@pytest.mark.parametrize("training", [True, False], ids=["exported-training", "exported-eval"])
def test_an_imported_torch_resnet18_fine_tunes_as_in_torch(tmp_path: Path, training: bool) -> None:
    torch.manual_seed(0)
    net = ResNet(BasicBlock, [2, 2, 2, 2], stem="imagenet", width=8, classes=None)
    with torch.no_grad():  # running statistics away from their start, so that blending them shows
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    (tmp_path / "resnet.onnx").write_bytes(_exported(net, training))
    spec = tmp_path / "finetune.dlspec"
    spec.write_text(textwrap.dedent(SPEC))
    tg = dlspec.compile_training(spec)
    conv = next(p for p in tg.trainable if p.endswith("layer1.0.conv1.weight"))
    prefix = conv[: -len("layer1.0.conv1.weight")]
    torch_names = {p: p[len(prefix):] for p in tg.init
                   if p.startswith(prefix) and not p.endswith((".m", ".v"))}
    state = net.state_dict()
    assert set(torch_names.values()) == {k for k in state if not k.endswith("num_batches_tracked")}
    # the file's values (exporting in training mode runs a forward pass that moves the statistics)
    net.load_state_dict({**state, **{t: torch.from_numpy(tg.init[n]) for n, t in torch_names.items()}})

    rng = np.random.default_rng(1)
    batch = {"image": rng.standard_normal((6, 3, 16, 16)).astype(np.float32),
             "label": rng.integers(0, 5, 6).astype(np.int64)}
    grads = run(session(tg.gradients), feeds_for(tg.gradients, tg.init, batch, scalars()))
    step = run(session(tg.train_step), feeds_for(tg.train_step, tg.init, batch, scalars(0.05)))

    net.train()
    head = torch.nn.Linear(8 * 8, 5)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(tg.init["head.linear1.weight"]))
        head.bias.copy_(torch.from_numpy(tg.init["head.linear1.bias"]))
    features = net(torch.from_numpy(batch["image"]))
    logits = head(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(features, 1), 1))
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(batch["label"]))
    loss.backward()
    _close(grads["loss"], loss.detach().numpy(), "loss")
    params = dict(net.named_parameters())
    buffers = dict(net.named_buffers())
    for name, torch_name in torch_names.items():
        if torch_name in params:
            p = params[torch_name]
            _close(grads[f"grad.{name}"], p.grad.numpy(), f"grad of {torch_name}")
            _close(step[f"{name}.next"], (p - 0.05 * p.grad).detach().numpy(), f"{torch_name} after a step")
        else:  # a running statistic, blended toward the batch's by the forward pass above
            _close(step[f"{name}.next"], buffers[torch_name].numpy(), f"{torch_name} after a step")
    _close(grads["grad.head.linear1.weight"], head.weight.grad.numpy(), "grad of the head")



ENCODER_SPEC = """
model tokens {
  input  x: float32[N, 5, 16]
  target y: int64[N]
  backbone onnx("encoder.onnx")
  head { flatten -> linear(3) }
  loss cross_entropy
}
train { optimizer sgd(lr=0.05)  seed 2 }
"""


@pytest.mark.parametrize("training", [True, False], ids=["exported-training", "exported-eval"])
def test_an_imported_torch_transformer_encoder_fine_tunes_as_in_torch(tmp_path: Path, training: bool) -> None:
    """Two post-norm encoder layers (attention, layer norm, feed-forward), dropout 0 so that
    both sides compute the same function."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, dropout=0.0,
                                             batch_first=True)
    net = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    buf = io.BytesIO()
    mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL
    torch.onnx.export(net, (torch.zeros(2, 5, 16),), buf, dynamo=False, opset_version=17, training=mode,
                      do_constant_folding=False, input_names=["x"], dynamic_axes={"x": {0: "N"}})
    (tmp_path / "encoder.onnx").write_bytes(buf.getvalue())
    spec = tmp_path / "tokens.dlspec"
    spec.write_text(textwrap.dedent(ENCODER_SPEC))
    tg = dlspec.compile_training(spec)
    params = dict(net.named_parameters())
    names = {n: next(t for t in params if n.endswith("." + t))
             for n in tg.trainable if n.startswith("backbone.")}
    assert sorted(names.values()) == sorted(params)

    rng = np.random.default_rng(1)
    batch = {"x": rng.standard_normal((4, 5, 16)).astype(np.float32),
             "y": rng.integers(0, 3, 4).astype(np.int64)}
    grads = run(session(tg.gradients), feeds_for(tg.gradients, tg.init, batch, scalars()))
    step = run(session(tg.train_step), feeds_for(tg.train_step, tg.init, batch, scalars(0.05)))
    net.train()
    head = torch.nn.Linear(80, 3)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(tg.init["head.linear1.weight"]))
        head.bias.copy_(torch.from_numpy(tg.init["head.linear1.bias"]))
    logits = head(torch.flatten(net(torch.from_numpy(batch["x"])), 1))
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(batch["y"]))
    loss.backward()
    _close(grads["loss"], loss.detach().numpy(), "loss")
    for name, torch_name in names.items():
        p = params[torch_name]
        _close(grads[f"grad.{name}"], p.grad.numpy(), f"grad of {torch_name}")
        _close(step[f"{name}.next"], (p - 0.05 * p.grad).detach().numpy(), f"{torch_name} after a step")


def test_dlspec_grad_of_a_torch_transformer_encoder_matches_torch() -> None:
    """`dlspec grad` with its default parameters on an eval-mode export whose axes and shapes are
    computed from unfolded constants (Mod(-1, 3), Slice of Shape): the gradient rules need the
    ranks that folding them gives shape inference."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, dropout=0.0,
                                             batch_first=True)
    net = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    with torch.no_grad():  # distinct values: the exporter would share equal weights through Identity
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(2, 5, 16),), buf, dynamo=False, opset_version=17,
                      training=torch.onnx.TrainingMode.EVAL, do_constant_folding=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "N"}})
    model = onnx.load_from_string(buf.getvalue())
    model.graph.node.append(onnx.helper.make_node("ReduceSumSquare", ["y"], ["loss"], keepdims=0))
    model.graph.output.append(onnx.helper.make_tensor_value_info("loss", onnx.TensorProto.FLOAT, []))
    grads_model = dlspec.grad(model, "loss")
    x = np.random.default_rng(1).standard_normal((3, 5, 16)).astype(np.float32)
    sess = session(grads_model)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    got = run(sess, {"x": x, **{i.name: weights[i.name] for i in sess.get_inputs() if i.name != "x"}})
    net.eval()
    loss = (net(torch.from_numpy(x)) ** 2).sum()
    loss.backward()
    _close(got["loss"], loss.detach().numpy(), "loss")
    params = dict(net.named_parameters())
    checked = [n.removeprefix("grad.") for n in got if n.startswith("grad.")]
    assert sorted(checked) == sorted(params)
    for name in checked:
        _close(got[f"grad.{name}"], params[name].grad.numpy(), f"grad of {name}")
