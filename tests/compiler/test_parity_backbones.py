"""Forward parity of every built-in backbone against hand-written torchvision-style PyTorch models.

Small spatial sizes and batch 2 keep it fast; the parameters are randomised (batch-norm running
statistics included) and loaded into the torch model through an explicit, strict name map.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import parity_torch as pt  # noqa: E402
from parity_helpers import assert_parity, compile_text, rand, randomize, run_ort  # noqa: E402
from torch import Tensor, nn  # noqa: E402


def _image_model(backbone: str, size: int, head: str | None = "classify(classes=10)") -> str:
    head_line = f"  head {head}\n" if head else ""
    return (f"model m {{\n  input image: float32[N, 3, {size}, {size}]\n"
            f"  backbone {backbone}\n{head_line}}}\n")


RESNETS = [
    # (spec call, torch block, stage depths, stem, width, input size)
    ("resnet18", pt.BasicBlock, [2, 2, 2, 2], "imagenet", 64, 64),
    ("resnet18(stem=cifar_stem, width=16)", pt.BasicBlock, [2, 2, 2, 2], "cifar", 16, 32),
    ("resnet34", pt.BasicBlock, [3, 4, 6, 3], "imagenet", 64, 32),
    ("resnet50", pt.Bottleneck, [3, 4, 6, 3], "imagenet", 64, 64),
    ("resnet50(stem=cifar_stem, width=8)", pt.Bottleneck, [3, 4, 6, 3], "cifar", 8, 16),
    # odd sizes on the way down (40 -> 20 -> 10 -> 10 -> 5 -> 3 -> 2): stride-2 shortcuts of 5 -> 3
    ("resnet18(width=8)", pt.BasicBlock, [2, 2, 2, 2], "imagenet", 8, 40),
    ("resnet50(width=4)", pt.Bottleneck, [3, 4, 6, 3], "imagenet", 4, 36),
]


@pytest.mark.parametrize("call,block,layers,stem,width,size", RESNETS,
                         ids=[f"{r[0]}-{r[5]}px" for r in RESNETS])
def test_resnet(tmp_path: Path, call: str, block: type, layers: list[int], stem: str, width: int,
                size: int) -> None:
    c = compile_text(tmp_path, _image_model(call, size))
    params = randomize(c, seed=7)
    ref = pt.ResNet(block, layers, stem=stem, width=width, classes=10)
    pt.load_state(ref, params, pt.resnet_map(ref))
    x = rand((2, 3, size, size), seed=8)
    assert_parity(run_ort(c.onnx, {"image": x}), pt.run(ref, x), call)


def test_resnet18_backbone_only_gives_the_last_feature_map(tmp_path: Path) -> None:
    c = compile_text(tmp_path, _image_model("resnet18(width=8)", 64, head=None))
    params = randomize(c, seed=9)
    ref = pt.ResNet(pt.BasicBlock, [2, 2, 2, 2], width=8, classes=None)
    pt.load_state(ref, params, pt.resnet_map(ref, head=None))
    x = rand((2, 3, 64, 64), seed=10)
    got = run_ort(c.onnx, {"image": x})
    assert got.shape == (2, 64, 2, 2)
    assert_parity(got, pt.run(ref, x), "resnet18 backbone")


VGGS = [("vgg11", False), ("vgg11(norm=bn)", True), ("vgg16", False), ("vgg16(norm=bn)", True)]


@pytest.mark.parametrize("call,bn", VGGS, ids=[v[0] for v in VGGS])
def test_vgg(tmp_path: Path, call: str, bn: bool) -> None:
    c = compile_text(tmp_path, _image_model(call, 32, head=None))
    params = randomize(c, seed=11)
    cfg = pt.VGG_CFGS[call.split("(")[0]]
    ref = pt.VGG(cfg, bn)
    pt.load_state(ref, params, pt.vgg_map(cfg, bn))
    x = rand((2, 3, 32, 32), seed=12)
    got = run_ort(c.onnx, {"image": x})
    assert got.shape == (2, 512, 1, 1)
    assert_parity(got, pt.run(ref, x), call)


MLPS = [
    ("mlp(10)", [], "relu", (2, 3, 4, 4)),
    ("mlp(10, hidden=[16, 8])", [16, 8], "relu", (2, 3, 4, 4)),
    ("mlp(5, hidden=[12], activation=gelu, dropout=0.3)", [12], "gelu", (2, 7)),
    ("mlp(3, hidden=[6, 6, 4], activation=tanh)", [6, 6, 4], "tanh", (2, 2, 5)),
    ("mlp(4, hidden=[9], activation=silu)", [9], "silu", (2, 6)),
]


@pytest.mark.parametrize("call,hidden,act,shape", MLPS, ids=[m[0] for m in MLPS])
def test_mlp(tmp_path: Path, call: str, hidden: list[int], act: str, shape: tuple[int, ...]) -> None:
    dims = ", ".join(["N", *map(str, shape[1:])])
    c = compile_text(tmp_path, f"model m {{\n  input x: float32[{dims}]\n  backbone {call}\n}}\n")
    params = randomize(c, seed=13)
    fin = 1
    for d in shape[1:]:
        fin *= d
    out = int(call.split("(")[1].split(",")[0].rstrip(")"))
    ref = pt.MLP(fin, hidden, out, act, p=0.3)
    pt.load_state(ref, params, pt.mlp_map(len(hidden), "backbone"))
    x = rand(shape, seed=14)
    assert_parity(run_ort(c.onnx, {"x": x}), pt.run(ref, x), call)


def test_mlp_as_a_named_head_stage_after_a_backbone(tmp_path: Path) -> None:
    text = """model m {
  input image: float32[N, 3, 16, 16]
  backbone resnet18(stem=cifar_stem, width=4)
  head { classifier: mlp(6, hidden=[20], dropout=0.5) }
}
"""
    c = compile_text(tmp_path, text)
    params = randomize(c, seed=15)
    backbone = pt.ResNet(pt.BasicBlock, [2, 2, 2, 2], stem="cifar", width=4, classes=None)
    head = pt.MLP(32 * 2 * 2, [20], 6, p=0.5)
    ref = nn.Sequential(backbone, head)
    mapping = {f"0.{k}": v for k, v in pt.resnet_map(backbone, head=None).items()}
    mapping.update({f"1.{k}": v for k, v in pt.mlp_map(1, "head.classifier").items()})
    pt.load_state(ref, params, mapping)
    x = rand((2, 3, 16, 16), seed=16)
    assert_parity(run_ort(c.onnx, {"image": x}), pt.run(ref, x), "resnet18 + mlp head")


class _Stages(nn.Module):
    """conv 3x3 -> relu stages with the given (channels, stride); returns every stage's output."""

    def __init__(self, cin: int, stages: list[tuple[int, tuple[int, int]]]) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        for c, s in stages:
            self.convs.append(nn.Conv2d(cin, c, 3, s, 1))
            cin = c

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for conv in self.convs:
            x = torch.relu(conv(x))
            outs.append(x)
        return outs


FPNS = [
    # the stages' (channels, stride), which of them feed the fpn, its channels
    ([(4, (1, 1)), (6, (2, 2)), (8, (2, 2))], [0, 1, 2], 8),
    ([(4, (1, 1)), (6, (2, 2)), (8, (2, 2)), (5, (1, 3))], [0, 1, 2, 3], 6),  # factors 2, 2, [1, 3]
    ([(4, (1, 1)), (6, (2, 2)), (8, (2, 2))], [0, 2], 5),                      # a factor of 4
    ([(3, (2, 2))], [0], 4),                                                    # a single level
]


@pytest.mark.parametrize("stages,used,channels", FPNS, ids=["3-levels", "4-levels-1x3", "skip", "one"])
def test_fpn_neck(tmp_path: Path, stages: list[tuple[int, tuple[int, int]]], used: list[int],
                  channels: int) -> None:
    """The feature pyramid written from the paper (pt.FPN), fed by a plain conv backbone."""
    lines = [f"    s{i + 1}: conv({c}, k=3, stride=[{s[0]}, {s[1]}]) -> relu"
             for i, (c, s) in enumerate(stages)]
    refs = ", ".join(f"s{i + 1}" for i in used)
    text = ("model m {\n  input x: float32[N, 2, 16, 12]\n  backbone {\n" + "\n".join(lines)
            + f"\n  }}\n  neck fpn(from=[{refs}], channels={channels})\n"
            f"  head classify(classes=3, dropout=0.1)\n}}\n")
    c = compile_text(tmp_path, text)
    params = randomize(c, seed=17)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = _Stages(2, stages)
            self.fpn = pt.FPN([stages[i][0] for i in used], channels)
            self.head = pt.ClassifyHead(channels * len(used), 3, 0.1)

        def forward(self, x: Tensor) -> Tensor:
            feats = self.body(x)
            return self.head(self.fpn([feats[i] for i in used]))

    ref = Net()
    mapping: dict[str, str] = {}
    for i in range(len(stages)):
        mapping.update(pt.lin_keys(f"body.convs.{i}", f"backbone.s{i + 1}.conv1"))
    for j in range(len(used)):
        mapping.update(pt.lin_keys(f"fpn.lateral.{j}", f"neck.lateral{j + 1}"))
        mapping.update(pt.lin_keys(f"fpn.output.{j}", f"neck.output{j + 1}"))
    mapping.update(pt.lin_keys("head.fc", "head.linear1"))
    pt.load_state(ref, params, mapping)
    x = rand((2, 2, 16, 12), seed=18)
    assert_parity(run_ort(c.onnx, {"x": x}), pt.run(ref, x), text)
