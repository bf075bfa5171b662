"""PyTorch parity of the standard library's blocks written in dlspec (spec/stdlib.dlspec):
transformer_block and vit against nn.TransformerEncoderLayer(norm_first=True) and
nn.TransformerEncoder, se, inverted_bottleneck / inverted_residual and unet against twins written
from their papers with torch.nn. Each row, to 1e-4 (the measures of test_parity_sequence.py): the
forward pass in evaluation mode (batch norm on random running statistics), then in training mode
(batch statistics) the loss, every parameter's gradient and one step of sgd with momentum and
weight decay. The twin runs in float64, loaded through an explicit, strict name map
(parity_torch.load_state).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import parity_torch as pt  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from parity_helpers import assert_parity, compile_text, rand, randomize, run_ort  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from train_helpers import compile_training_text, feeds_for, rel_err, run, scalars, session  # noqa: E402

TOL = 1e-4
LR, MOMENTUM, DECAY = 0.1, 0.9, 0.01


def random_params(shapes: dict[str, tuple[int, ...]], seed: int = 3) -> dict[str, np.ndarray]:
    """Weights ~ N(0, 1 / fan-in); layer norm scales ~ 1 + N(0, 0.3); batch norm scales ~ U(0.5, 4),
    wide enough that some of relu6's inputs pass 6; biases, tokens and positions ~ N(0, 0.3)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        layer = name.rsplit(".", 2)[-2]
        if layer.startswith("bn") and name.endswith(".weight"):
            v = rng.uniform(0.5, 4.0, shape)
        elif layer.startswith("layernorm") and name.endswith(".weight"):
            v = 1.0 + 0.3 * rng.standard_normal(shape)
        elif len(shape) >= 2 and "pos_embedding" not in name and "cls_token" not in name:
            v = rng.standard_normal(shape) / math.sqrt(math.prod(shape[1:]))
        else:
            v = 0.3 * rng.standard_normal(shape)
        out[name] = v.astype(np.float32)
    return out


def running_statistics(init: dict[str, np.ndarray], seed: int = 4) -> dict[str, np.ndarray]:
    """Batch norm's running means ~ N(0, 0.3) and variances ~ U(0.5, 2): a graph that read the
    wrong statistics in evaluation mode would show."""
    rng = np.random.default_rng(seed)
    return {k: (0.3 * rng.standard_normal(v.shape) if k.endswith("mean") else rng.uniform(0.5, 2.0, v.shape))
            .astype(np.float32) for k, v in init.items() if k.endswith(("running_mean", "running_var"))}


# ---------------------------------------------------------------- torch twins

class SqueezeExcite(nn.Module):
    """Hu et al.: x * sigmoid(fc2(relu(fc1(mean over H, W of x)))), the fcs as 1x1 convs."""

    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class InvertedResidual(nn.Module):
    """Sandler et al.: 1x1 expand, 3x3 depthwise (strided), 1x1 project without activation; the
    input added back where `residual` (stride 1, equal channels)."""

    def __init__(self, cin: int, out: int, mid: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.conv = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, out, 1, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


def conv_bn_keys(torch_prefix: str, dl_prefix: str, pairs: list[tuple[int, int]]) -> dict[str, str]:
    """A Sequential's convs and batch norms (by index) -> convK / bnK of a dlspec scope."""
    out = {}
    for k, (conv, bn) in enumerate(pairs, 1):
        out[f"{torch_prefix}.{conv}.weight"] = f"{dl_prefix}.conv{k}.weight"
        out.update(pt.bn_keys(f"{torch_prefix}.{bn}", f"{dl_prefix}.bn{k}"))
    return out


def inverted_keys(torch_prefix: str, dl_prefix: str) -> dict[str, str]:
    return conv_bn_keys(f"{torch_prefix}conv", dl_prefix, [(0, 1), (3, 4), (6, 7)])


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 at width 1, written out: stem, an expansion-1 block, six stages of
    inverted residuals (t, c, n, s below), a 1x1 conv to 1280, pooled, dropout, linear."""

    STAGES = [(6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        self.layer1 = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1, groups=32, bias=False), nn.BatchNorm2d(32),
                                    nn.ReLU6(), nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        stages, cin = [], 16
        for t, c, n, s in self.STAGES:
            stages.append(nn.Sequential(InvertedResidual(cin, c, cin * t, s, False),
                                        *(InvertedResidual(c, c, c * t, 1, True) for _ in range(n - 1))))
            cin = c
        self.stages = nn.ModuleList(stages)
        self.last = nn.Sequential(nn.Conv2d(320, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6())
        self.fc = nn.Linear(1280, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer1(self.stem(x))
        for stage in self.stages:
            x = stage(x)
        return self.fc(F.dropout(self.last(x).mean((2, 3)), 0.2, self.training))


def mobilenet_keys() -> dict[str, str]:
    """A stage's first block is backbone.layerK.0 (layer7, alone in its stage, backbone.layer7), the
    inverted_residual copies after it backbone.layerK.J.0 (the block inside the call)."""
    out = {**conv_bn_keys("stem", "backbone.stem", [(0, 1)]),
           **conv_bn_keys("layer1", "backbone.layer1", [(0, 1), (3, 4)]),
           **conv_bn_keys("last", "backbone.last", [(0, 1)]), **pt.lin_keys("fc", "head.linear1")}
    for i, (_, _, n, _) in enumerate(MobileNetV2.STAGES):
        layer = f"backbone.layer{i + 2}"
        out.update(inverted_keys(f"stages.{i}.0.", layer if n == 1 else f"{layer}.0"))
        for j in range(1, n):
            out.update(inverted_keys(f"stages.{i}.{j}.", f"{layer}.{j}.0"))
    return out


def double_conv(cin: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(),
                         nn.Conv2d(out, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU())


def up_conv(cin: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         nn.Conv2d(cin, out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out), nn.ReLU())


class UNet(nn.Module):
    """Ronneberger et al., three poolings: each decoder level concatenates the encoder's map of its
    size (first) with the upsampled one (second)."""

    def __init__(self, cin: int, w: int) -> None:
        super().__init__()
        self.enc1, self.enc2 = double_conv(cin, w), double_conv(w, 2 * w)
        self.enc3, self.mid = double_conv(2 * w, 4 * w), double_conv(4 * w, 8 * w)
        self.up3, self.dec3 = up_conv(8 * w, 4 * w), double_conv(8 * w, 4 * w)
        self.up2, self.dec2 = up_conv(4 * w, 2 * w), double_conv(4 * w, 2 * w)
        self.up1, self.dec1 = up_conv(2 * w, w), double_conv(2 * w, w)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        m = self.mid(F.max_pool2d(e3, 2))
        d3 = self.dec3(torch.cat([e3, self.up3(m)], 1))
        d2 = self.dec2(torch.cat([e2, self.up2(d3)], 1))
        return self.dec1(torch.cat([e1, self.up1(d2)], 1))


def unet_keys() -> dict[str, str]:
    out = {}
    for stage, dl in [("enc1", "enc1"), ("enc2", "enc2.0"), ("enc3", "enc3.0"), ("mid", "mid.0"),
                      ("dec3", "dec3.0"), ("dec2", "dec2.0"), ("dec1", "dec1.0")]:
        out.update(conv_bn_keys(stage, f"backbone.{dl}", [(0, 1), (3, 4)]))
    for up in ("up3", "up2", "up1"):
        out.update(conv_bn_keys(up, f"backbone.{up}", [(1, 2)]))
    return out


# ---------------------------------------------------------------- the rows

@dataclass
class Row:
    id: str
    backbone: str  # a section: `{ s: chain }` or one call
    shape: tuple[int, ...]
    twin: Callable[[], nn.Module]
    names: dict[str, str]  # torch key -> dlspec parameter or batch-norm statistic

    def spec(self, out: tuple[int, ...]) -> str:
        dims = ", ".join(["N", *map(str, self.shape[1:])])
        odims = ", ".join(["N", *map(str, out[1:])])
        return (f"model m {{\n  input x: float32[{dims}]\n  target y: float32[{odims}]\n"
                f"  backbone {self.backbone}\n  loss mse\n}}\n"
                f"train {{\n  optimizer sgd(lr={LR}, momentum={MOMENTUM}, weight_decay={DECAY})\n"
                "  seed 3\n}\n")


S = "backbone.s"
ROWS = [
    Row("transformer_block", "{ s: transformer_block(8, 2) }", (2, 5, 8), lambda: pt.encoder_layer(8, 2, 4),
        pt.encoder_keys("", S)),
    Row("transformer_block-relu-mlp2", "{ s: transformer_block(12, 3, mlp=2, activation=relu) }", (3, 4, 12),
        lambda: pt.encoder_layer(12, 3, 2, "relu"), pt.encoder_keys("", S)),
    Row("transformer_block*2", "{ s: transformer_block(8, 4) * 2 }", (2, 6, 8),
        lambda: nn.TransformerEncoder(pt.encoder_layer(8, 4, 4), 2, enable_nested_tensor=False),
        {**pt.encoder_keys("layers.0.", f"{S}.0"), **pt.encoder_keys("layers.1.", f"{S}.1")}),
    Row("vit", "vit(patch=2, dim=8, depth=2, heads=2, mlp=2)", (2, 3, 4, 6),
        lambda: pt.ViT(3, 2, 6, 8, 2, 2, 2), pt.vit_map(2)),
    Row("se", "{ s: se(6, ratio=3) }", (2, 6, 4, 4), lambda: SqueezeExcite(6, 2),
        {f"fc{k}.{s}": f"{S}.gate.conv{k}.{s}" for k in (1, 2) for s in ("weight", "bias")}),
    Row("se-floor", "{ s: conv(5) -> se(5) }", (2, 3, 4, 4),  # a gate of floor(5 / 4) = 1 channel
        lambda: nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), SqueezeExcite(5, 1)),
        {"0.weight": f"{S}.conv1.weight", "0.bias": f"{S}.conv1.bias",
         **{f"1.fc{k}.{s}": f"{S}.0.gate.conv{k}.{s}" for k in (1, 2) for s in ("weight", "bias")}}),
    Row("inverted", "{ s: inverted_bottleneck(6, mid=12, stride=2) -> inverted_residual(6, expand=2) }",
        (3, 4, 6, 6),
        lambda: nn.Sequential(InvertedResidual(4, 6, 12, 2, False), InvertedResidual(6, 6, 12, 1, True)),
        {**inverted_keys("0.", f"{S}.0"), **inverted_keys("1.", f"{S}.1.0")}),
    Row("unet", "unet(width=2)", (4, 3, 16, 16), lambda: UNet(3, 2), unet_keys()),
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def check(what: str, got: np.ndarray, want: np.ndarray) -> None:
    err = rel_err(got, want)
    assert err <= TOL, f"{what}: ||onnx - torch|| / ||torch|| = {err:.3g} > {TOL:g}"


def check_step(what: str, got: np.ndarray, before: np.ndarray, want: np.ndarray) -> None:
    """The update p.next - p, beyond the float32 rounding of p.next itself (as test_parity_sequence)."""
    diff = float(np.linalg.norm((got.astype(np.float64) - before) - (want - before)))
    rounding = float(np.finfo(np.float32).eps) * float(np.linalg.norm(want))
    err = max(0.0, diff - rounding) / max(float(np.linalg.norm(want - before)), 1e-12)
    assert err <= TOL, f"step {what}: update error beyond float32 rounding = {err:.3g} > {TOL:g}"


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_forward_gradients_and_step(tmp_path: Path, row: Row) -> None:
    x = np.random.default_rng(5).standard_normal(row.shape).astype(np.float32)
    twin = row.twin().double()
    with torch.no_grad():
        out_shape = tuple(twin(torch.from_numpy(x).double()).shape)
    tg = compile_training_text(tmp_path, row.spec(out_shape))
    params = random_params({k: tuple(v.shape) for k, v in tg.init.items() if k in tg.trainable})
    state = running_statistics(tg.init)
    pt.load_state(twin, {**params, **state}, row.names)
    y = np.random.default_rng(7).standard_normal(out_shape).astype(np.float32)
    batch = {"x": x, "y": y}

    # the forward pass in evaluation mode (batch norm on its running statistics)
    with torch.no_grad():
        want = twin.eval()(torch.from_numpy(x).double()).numpy()
    got = run(session(tg.evaluate), feeds_for(tg.evaluate, batch, params, state))
    assert_parity(got[tg.evaluate.graph.output[0].name], want, f"{row.id} output")

    # the loss and gradients in training mode (batch norm on batch statistics), then one step
    out = twin.train()(torch.from_numpy(x).double())
    loss = F.mse_loss(out, torch.from_numpy(y).double())
    loss.backward()
    torch_params = dict(twin.named_parameters())
    trained = {k: v for k, v in row.names.items() if v in params}
    assert set(trained) == set(torch_params), sorted(set(torch_params) ^ set(trained))

    grads = run(session(tg.gradients), feeds_for(tg.gradients, batch, scalars(step=1), params, state))
    check(f"{row.id} loss", grads["loss"], loss.detach().numpy())
    for key, name in trained.items():
        grad = torch_params[key].grad
        assert grad is not None, f"{key} has no gradient in torch"
        check(f"{row.id} gradient {name}", grads[f"grad.{name}"], grad.numpy())

    step = run(session(tg.train_step),
               feeds_for(tg.train_step, batch, scalars(LR, 1), params, state, tg.init))
    torch.optim.SGD(twin.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=DECAY).step()
    for key, name in trained.items():
        check_step(f"{row.id} {name}", step[f"{name}.next"], params[name], torch_params[key].detach().numpy())


def test_mobilenet_v2_forward(tmp_path: Path) -> None:
    """The whole backbone, as torchvision lays it out (2,236,682 parameters with 10 classes, as
    torchvision's), in evaluation mode at 64px: the stacked blocks and relu6 at every depth."""
    text = ("model m {\n  input image: float32[N, 3, 64, 64]\n  backbone mobilenet_v2\n"
            "  head classify(10, dropout=0.2)\n}\n")
    c = compile_text(tmp_path, text)
    assert sum(int(np.prod(p.shape)) for p in c.params if not p.state) == 2_236_682
    params = randomize(c, seed=17)
    ref = MobileNetV2(10)
    pt.load_state(ref, params, mobilenet_keys())
    x = rand((2, 3, 64, 64), seed=18, scale=3.0)
    assert_parity(run_ort(c.onnx, {"image": x}), pt.run(ref, x), "mobilenet_v2")
