"""Hand-written PyTorch reference models for the parity tests, and a strict name-mapped loader.

Written from the papers and torchvision's layouts (torch.nn / torch.nn.functional only), not
from the compiler: a mismatch is a lowering bug, or a wrong name map, which the strict loader
reports as such. Import this module only after `pytest.importorskip("torch")`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

torch.set_num_threads(2)


# ---------------------------------------------------------------- loading and running

def load_state(module: nn.Module, params: dict[str, np.ndarray], mapping: dict[str, str]) -> None:
    """Copy dlspec parameters into a torch module by an explicit map (torch key -> dlspec name).

    Strict both ways: every torch parameter and buffer (bar num_batches_tracked) is set, and
    every dlspec parameter is used, with the same shape.
    """
    state = {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(mapping) == set(state), (
        f"torch keys not mapped: {sorted(set(state) - set(mapping))}; "
        f"mapped but not in torch: {sorted(set(mapping) - set(state))}")
    used = set(mapping.values())
    assert used == set(params), (
        f"dlspec parameters not used: {sorted(set(params) - used)}; "
        f"mapped but not in dlspec: {sorted(used - set(params))}")
    new = {}
    for key, name in mapping.items():
        value = params[name]
        assert tuple(state[key].shape) == value.shape, (
            f"{key} {tuple(state[key].shape)} vs {name} {value.shape}")
        new[key] = torch.from_numpy(value.copy())
    missing, unexpected = module.load_state_dict(new, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    module.eval()


def run(module: nn.Module, *xs: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return module(*(torch.from_numpy(x) for x in xs))


def t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def bn_keys(torch_prefix: str, dl_prefix: str) -> dict[str, str]:
    return {f"{torch_prefix}.{s}": f"{dl_prefix}.{s}"
            for s in ("weight", "bias", "running_mean", "running_var")}


def lin_keys(torch_prefix: str, dl_prefix: str, bias: bool = True) -> dict[str, str]:
    keys = ("weight", "bias") if bias else ("weight",)
    return {f"{torch_prefix}.{s}": f"{dl_prefix}.{s}" for s in keys}


# ---------------------------------------------------------------- ResNet (He et al. 2016)

def _downsample(cin: int, cout: int, stride: int) -> nn.Module | None:
    """torchvision's projection shortcut: 1x1 conv (strided) + bn, where shapes change."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: two 3x3 convs, a 1x1 conv + bn projection when needed."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = _downsample(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + idt)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (ResNet v1.5: the stride sits on the 3x3 conv)."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = _downsample(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + idt)


class ResNet(nn.Module):
    """torchvision's ResNet; stem 'imagenet' is conv 7x7/2 + bn + relu + maxpool 3/2,
    'cifar' is conv 3x3/1 + bn + relu. With `classes`, ends in avgpool -> flatten -> fc."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int],
                 stem: str = "imagenet", width: int = 64, classes: int | None = 10) -> None:
        super().__init__()
        self.stem = stem
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = width
        stages = []
        for i, n in enumerate(layers):
            w = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(cin, classes) if classes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        if self.stem == "imagenet":
            x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if self.fc is None:
            return x
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet_map(model: ResNet, head: str | None = "head.linear1") -> dict[str, str]:
    """torchvision names -> dlspec spec paths: conv1/bn1 = stem.conv1/bn1, layerI.J.* kept,
    downsample.0 / downsample.1 = shortcut.conv / shortcut.bn, fc = the head's linear."""
    out: dict[str, str] = {"conv1.weight": "backbone.stem.conv1.weight",
                           **bn_keys("bn1", "backbone.stem.bn1")}
    for key in model.state_dict():
        if key.startswith("layer") and not key.endswith("num_batches_tracked"):
            dl = key.replace("downsample.0.", "shortcut.conv.").replace("downsample.1.", "shortcut.bn.")
            out[key] = "backbone." + dl
    if head is not None:
        out.update(lin_keys("fc", head))
    return out


# ---------------------------------------------------------------- VGG (Simonyan & Zisserman 2015)

VGG_CFGS = {
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
}


class VGG(nn.Module):
    """torchvision's VGG `features`: conv 3x3 pad 1 [-> bn] -> relu, maxpool 2 after each stage."""

    def __init__(self, cfg: list[list[int]], bn: bool, cin: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for stage in cfg:
            for c in stage:
                layers.append(nn.Conv2d(cin, c, 3, padding=1, bias=not bn))
                if bn:
                    layers.append(nn.BatchNorm2d(c))
                layers.append(nn.ReLU())
                cin = c
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def vgg_map(cfg: list[list[int]], bn: bool) -> dict[str, str]:
    """features.{i} -> backbone.stage{s}.{j}.conv1 / .bn1 (one vgg_conv block per conv)."""
    out: dict[str, str] = {}
    i = 0
    for s, stage in enumerate(cfg, start=1):
        for j in range(len(stage)):
            dl = f"backbone.stage{s}.{j}"
            out.update(lin_keys(f"features.{i}", f"{dl}.conv1", bias=not bn))
            i += 1
            if bn:
                out.update(bn_keys(f"features.{i}", f"{dl}.bn1"))
                i += 1
            i += 1  # relu
        i += 1  # maxpool
    return out


# ---------------------------------------------------------------- MLP

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh,
                                            "silu": nn.SiLU, "sigmoid": nn.Sigmoid}


class MLP(nn.Module):
    """flatten -> (linear -> activation -> dropout) per hidden size -> linear."""

    def __init__(self, fin: int, hidden: list[int], out: int, act: str = "relu",
                 p: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for h in hidden:
            layers += [nn.Linear(fin, h), ACTIVATIONS[act](), nn.Dropout(p)]
            fin = h
        layers.append(nn.Linear(fin, out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def mlp_map(n_hidden: int, prefix: str, torch_prefix: str = "net") -> dict[str, str]:
    """net.{1 + 3i} (the i-th nn.Linear) -> {prefix}.linear{i + 1}."""
    out: dict[str, str] = {}
    for i in range(n_hidden + 1):
        out.update(lin_keys(f"{torch_prefix}.{1 + 3 * i}", f"{prefix}.linear{i + 1}"))
    return out


# ---------------------------------------------------------------- FPN (Lin et al. 2017)

class FPN(nn.Module):
    """Feature pyramid: a 1x1 lateral conv per level; from the coarsest level down, the merged
    map is nearest-upsampled to the next finer level and added to its lateral; a 3x3 conv on
    every merged map. Levels are given and returned finest first."""

    def __init__(self, in_channels: list[int], channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1)
                                    for _ in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        merged = [lat[-1]]
        for f in reversed(lat[:-1]):
            merged.insert(0, f + F.interpolate(merged[0], size=f.shape[-2:], mode="nearest"))
        return [conv(p) for conv, p in zip(self.output, merged)]


class ClassifyHead(nn.Module):
    """Global-average-pool every level, concatenate, dropout, linear."""

    def __init__(self, fin: int, classes: int, p: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(p)
        self.fc = nn.Linear(fin, classes)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        pooled = torch.cat([torch.flatten(F.adaptive_avg_pool2d(f, 1), 1) for f in feats], 1)
        return self.fc(self.drop(pooled))


class DigitsNet(nn.Module):
    """examples/digits.dlspec by hand: /16 scaling, conv-bn-relu stem, two bottleneck stages,
    an FPN over both, the classify head."""

    def __init__(self, width: int = 16) -> None:
        """`width`: stage 1's bottleneck width; the stem has 2x, stage 2 twice stage 1, the FPN 4x."""
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(1, 2 * w, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(2 * w), nn.ReLU())
        self.stage1 = nn.Sequential(Bottleneck(2 * w, w), Bottleneck(4 * w, w))
        self.stage2 = nn.Sequential(Bottleneck(4 * w, 2 * w, stride=2), Bottleneck(8 * w, 2 * w))
        self.fpn = FPN([4 * w, 8 * w], 4 * w)
        self.head = ClassifyHead(8 * w, 10, 0.2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.stem(image / 16)
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return self.head(self.fpn([c1, c2]))


def digits_map(model: DigitsNet) -> dict[str, str]:
    out = {"stem.0.weight": "backbone.stem.conv1.weight", **bn_keys("stem.1", "backbone.stem.bn1")}
    for key in model.state_dict():
        if key.startswith("stage") and not key.endswith("num_batches_tracked"):
            dl = key.replace("downsample.0.", "shortcut.conv.").replace("downsample.1.", "shortcut.bn.")
            out[key] = "backbone." + dl
    for i in range(2):
        out.update(lin_keys(f"fpn.lateral.{i}", f"neck.lateral{i + 1}"))
        out.update(lin_keys(f"fpn.output.{i}", f"neck.output{i + 1}"))
    out.update(lin_keys("head.fc", "head.linear1"))
    return out


# ---------------------------------------------------------------- transformers, sequences, two heads

def encoder_layer(d: int, heads: int, mlp: int, activation: str = "gelu") -> nn.TransformerEncoderLayer:
    """The standard library's transformer_block(d, heads, mlp=mlp, activation=...), dropout off."""
    return nn.TransformerEncoderLayer(d, heads, dim_feedforward=d * mlp, dropout=0.0, activation=activation,
                                      batch_first=True, norm_first=True)


def encoder_keys(torch_prefix: str, dl_prefix: str) -> dict[str, str]:
    """nn.TransformerEncoderLayer's names -> transformer_block's (stages attend and mix)."""
    attend, mix = f"{dl_prefix}.attend", f"{dl_prefix}.mix"
    keys = {"norm1": f"{attend}.layernorm1", "norm2": f"{mix}.layernorm1", "linear1": f"{mix}.linear1",
            "linear2": f"{mix}.linear2", "self_attn.out_proj": f"{attend}.attention1.out_proj"}
    out = {f"{torch_prefix}{k}.{s}": f"{v}.{s}" for k, v in keys.items() for s in ("weight", "bias")}
    out.update({f"{torch_prefix}self_attn.in_proj_{s}": f"{attend}.attention1.in_proj_{s}"
                for s in ("weight", "bias")})
    return out


class ViT(nn.Module):
    """Dosovitskiy et al.: patches (F.unfold's order: channels, then the patch's rows and columns)
    -> linear -> class token first -> learned positions -> pre-norm encoder -> layer norm -> token 0."""

    def __init__(self, channels: int, patch: int, tokens: int, dim: int, depth: int, heads: int,
                 mlp: int) -> None:
        super().__init__()
        self.patch = patch
        self.embed = nn.Linear(channels * patch * patch, dim)
        self.token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(tokens + 1, dim))
        self.encoder = nn.TransformerEncoder(encoder_layer(dim, heads, mlp), depth,
                                             enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(F.unfold(x, self.patch, stride=self.patch).transpose(1, 2))
        t = torch.cat([self.token.expand(x.shape[0], -1, -1), t], dim=1) + self.pos
        return self.norm(self.encoder(t))[:, 0]


def vit_map(depth: int, prefix: str = "", dl_prefix: str = "backbone") -> dict[str, str]:
    """ViT's names -> the standard library's vit (stages embed, blocks, norm) as a whole section."""
    out = {f"{prefix}embed.{s}": f"{dl_prefix}.embed.linear1.{s}" for s in ("weight", "bias")}
    out.update({f"{prefix}token": f"{dl_prefix}.embed.cls_token1.token",
                f"{prefix}pos": f"{dl_prefix}.embed.pos_embedding1.weight",
                **lin_keys(f"{prefix}norm", f"{dl_prefix}.norm.layernorm1")})
    for i in range(depth):
        out.update(encoder_keys(f"{prefix}encoder.layers.{i}.", f"{dl_prefix}.blocks.{i}"))
    return out


def rnn_keys(dl_prefix: str, layers: int, bidirectional: bool, prefix: str = "") -> dict[str, str]:
    """nn.LSTM's and nn.GRU's parameter names, which dlspec's recurrent layers share."""
    keys = [f"{w}_{kind}_l{k}{s}" for k in range(layers) for s in ["", "_reverse"][: 1 + bidirectional]
            for w in ("weight", "bias") for kind in ("ih", "hh")]
    return {prefix + k: f"{dl_prefix}.{k}" for k in keys}


class TwoHeads(nn.Module):
    """examples/two_heads.dlspec by hand: /16 scaling, a conv stem, two BasicBlock stages, global
    average pooling; a linear classifier and a two-layer regressor of one value per sample."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.stage1 = nn.Sequential(BasicBlock(32, 32), BasicBlock(32, 32))
        self.stage2 = nn.Sequential(BasicBlock(32, 64, stride=2), BasicBlock(64, 64))
        self.cls = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, 10))
        self.mass = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stage2(self.stage1(self.stem(image / 16))).mean((2, 3))
        return self.cls(x), self.mass(x)[:, 0]


def two_heads_map(model: TwoHeads) -> dict[str, str]:
    out = {"stem.0.weight": "backbone.stem.conv1.weight", **bn_keys("stem.1", "backbone.stem.bn1")}
    for key in model.state_dict():
        if key.startswith("stage") and not key.endswith("num_batches_tracked"):
            dl = key.replace("downsample.0.", "shortcut.conv.").replace("downsample.1.", "shortcut.bn.")
            out[key] = "backbone." + dl
    out.update({**lin_keys("cls.1", "head.cls.linear1"), **lin_keys("mass.0", "head.mass.linear1"),
                **lin_keys("mass.2", "head.mass.linear2")})
    return out


def check_gradients_and_adamw_step(check: Any, trainable: list[str], params: dict[str, torch.Tensor],
                                   grads: dict[str, np.ndarray], step: dict[str, np.ndarray],
                                   values: dict[str, np.ndarray], lr: float, decay: float) -> None:
    """Every trainable tensor's gradient against torch autograd's (already run on `params`), then
    one torch AdamW step against the step graph's update and moments: the update itself, not the
    parameter it is small beside. `check(what, got, want)` compares."""
    assert sorted(trainable) == sorted(params)
    for k, p in params.items():
        assert p.grad is not None
        check(f"grad.{k}", grads[f"grad.{k}"], p.grad)
    opt = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=decay)
    opt.step()
    for k, p in params.items():
        update = step[f"{k}.next"].astype(np.float64) - values[k]
        check(f"{k} after one adamw step", update, p.detach().numpy() - values[k].astype(np.float64))
        check(f"{k}.m", step[f"{k}.m.next"], opt.state[p]["exp_avg"])
        check(f"{k}.v", step[f"{k}.v.next"], opt.state[p]["exp_avg_sq"])
