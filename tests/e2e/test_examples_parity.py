"""Every example in examples/ against a hand-written PyTorch model of the same network.

The examples are compiled as shipped; their parameters are then randomised (running statistics
included) and loaded into the torch model through an explicit name map.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import parity_torch as pt  # noqa: E402
from parity_helpers import (  # noqa: E402
    EXAMPLES,
    assert_parity,
    compile_file,
    example_inputs,
    rand,
    randomize,
    run_ort,
)

EXAMPLE_FILES = sorted(p.stem for p in EXAMPLES.glob("*.dlspec"))


def test_every_example_has_a_parity_test() -> None:
    assert EXAMPLE_FILES == ["digits", "digits_images", "digits_transfer", "land_price", "lstm_digits",
                             "resnet18_cifar", "segment_digits", "two_heads", "vgg11", "vit_digits"]


@pytest.mark.parametrize("example", ["digits", "digits_transfer"])  # the same network
def test_digits(example: str, tmp_path: Path) -> None:
    c = compile_file(EXAMPLES / f"{example}.dlspec")
    assert c.output.name == "logits"
    params = randomize(c, seed=21)
    ref = pt.DigitsNet()
    pt.load_state(ref, params, pt.digits_map(ref))
    x = example_inputs(example, 2, seed=22)["image"]
    got = run_ort(c.onnx, {"image": x})
    assert got.shape == (2, 10)
    assert_parity(got, pt.run(ref, x), example)


def test_digits_at_the_benchmarks_other_widths(tmp_path: Path) -> None:
    """bench/train_step_vs_torch.py --digits-widths times the example with its channels scaled
    against DigitsNet(width): both must still be the same network."""
    sys.path.insert(0, str(EXAMPLES.parent / "bench"))
    from train_step_vs_torch import digits_at_width

    path = tmp_path / "digits.dlspec"
    path.write_text(digits_at_width((EXAMPLES / "digits.dlspec").read_text(), 8))
    c = compile_file(path)
    params = randomize(c, seed=25)
    ref = pt.DigitsNet(8)
    pt.load_state(ref, params, pt.digits_map(ref))
    x = example_inputs("digits", 2, seed=26)["image"]
    assert_parity(run_ort(c.onnx, {"image": x}), pt.run(ref, x), "digits")


def test_resnet18_cifar() -> None:
    c = compile_file(EXAMPLES / "resnet18_cifar.dlspec")
    assert c.output.name == "logits"
    params = randomize(c, seed=23)
    ref = pt.ResNet(pt.BasicBlock, [2, 2, 2, 2], stem="cifar", width=64, classes=10)
    pt.load_state(ref, params, pt.resnet_map(ref))
    x = rand((2, 3, 32, 32), seed=24)
    assert_parity(run_ort(c.onnx, {"image": x}), pt.run(ref, x), "resnet18_cifar")


def test_vgg11() -> None:
    c = compile_file(EXAMPLES / "vgg11.dlspec")
    assert c.output.name == "logits"
    params = randomize(c, seed=25)
    cfg = pt.VGG_CFGS["vgg11"]
    ref = torch.nn.Sequential(pt.VGG(cfg, bn=True), pt.MLP(512, [512, 512], 10, p=0.5))
    mapping = {f"0.{k}": v for k, v in pt.vgg_map(cfg, bn=True).items()}
    mapping.update({f"1.{k}": v for k, v in pt.mlp_map(2, "head.classifier").items()})
    pt.load_state(ref, params, mapping)
    x = rand((2, 3, 32, 32), seed=26)
    assert_parity(run_ort(c.onnx, {"image": x}), pt.run(ref, x), "vgg11")


def land_price_features(raw: dict[str, np.ndarray]) -> np.ndarray:
    """The features block by hand. The network input stacks the values as columns: the declared
    inputs in order (distance replaced by its clipped value and district by its one-hot columns,
    in their places), then the derived features in the order they are defined. Compiled without
    data, district has no vocabulary: one column, the unknown slot, all 1; no distance is missing."""
    length, width, distance = (raw[k].astype(np.float64) for k in ("length", "width", "distance"))
    area = length * width
    ratio = length / width
    log_dist = np.log(1 + distance)
    clipped = np.clip(distance, 0, 50)
    unknown, missing = np.ones_like(length), np.zeros_like(length)
    return np.stack([length, width, clipped, unknown, missing, area, ratio, log_dist], axis=1)


def test_land_price() -> None:
    c = compile_file(EXAMPLES / "land_price.dlspec")
    assert c.output.name == "prediction"
    params = randomize(c, seed=27)
    ref = pt.MLP(8, [32, 32], 1, act="gelu")
    pt.load_state(ref, params, pt.mlp_map(2, "head"))
    raw = example_inputs("land_price", 5, seed=28)
    got = run_ort(c.onnx, raw)
    assert got.shape == (5,)  # the regress head's [N, 1] is squeezed to the target's [N]
    ref.double()  # the features are large (areas ~1e3): compare with a float64 reference
    want = pt.run(ref, land_price_features(raw))[:, 0]
    assert_parity(got, want, "land_price")


def test_vit_digits() -> None:
    c = compile_file(EXAMPLES / "vit_digits.dlspec")
    assert c.output.name == "logits"
    params = randomize(c, seed=29)
    vit = pt.ViT(1, 2, 16, 64, 4, 4, 2)
    ref = torch.nn.Sequential(vit, torch.nn.Linear(64, 10))
    pt.load_state(ref, params, {**pt.vit_map(4, prefix="0."), **pt.lin_keys("1", "head.linear1")})
    x = example_inputs("vit_digits", 2, seed=30)["image"]
    assert_parity(run_ort(c.onnx, {"image": x}), pt.run(ref, x / 16), "vit_digits")


class RowsLSTM(torch.nn.Module):
    """examples/lstm_digits.dlspec by hand (standardize is the identity before training): the rows
    as 8 steps, two bidirectional LSTM layers, the mean over the steps, a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.LSTM(8, 64, 2, batch_first=True, bidirectional=True)
        self.fc = torch.nn.Linear(128, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(image.reshape(-1, 8, 8))[0].mean(1))


def test_lstm_digits() -> None:
    c = compile_file(EXAMPLES / "lstm_digits.dlspec")
    assert c.output.name == "logits"
    params = randomize(c, seed=31)
    ref = RowsLSTM()
    pt.load_state(ref, params, {**pt.rnn_keys("backbone.rows.lstm1", 2, True, prefix="rnn."),
                                **pt.lin_keys("fc", "head.classifier.linear1")})
    x = example_inputs("lstm_digits", 2, seed=32)["image"]
    assert_parity(run_ort(c.onnx, {"image": x}), pt.run(ref, x), "lstm_digits")


def test_two_heads() -> None:
    """Both outputs of model.onnx, `cls` [N, 10] and `mass` [N], against the two heads of one net."""
    c = compile_file(EXAMPLES / "two_heads.dlspec")
    assert list(c.outputs) == ["cls", "mass"]
    params = randomize(c, seed=33)
    ref = pt.TwoHeads()
    pt.load_state(ref, params, pt.two_heads_map(ref))
    x = example_inputs("two_heads", 2, seed=34)["image"]
    sess = ort.InferenceSession(c.onnx.SerializeToString(), providers=["CPUExecutionProvider"])
    cls, mass = sess.run(["cls", "mass"], {"image": x})
    want_cls, want_mass = pt.run(ref, x)
    assert mass.shape == (2,)
    assert_parity(cls, want_cls, "two_heads cls")
    assert_parity(mass, want_mass, "two_heads mass")


def test_digits_images() -> None:
    """examples/digits_images.dlspec by hand: /255, a strided conv-bn-relu stem, conv-bn-relu and
    a 2x2 max pool, two bottlenecks (the first projects 32 to 64 channels), the classify head."""
    c = compile_file(EXAMPLES / "digits_images.dlspec")
    assert c.output.name == "logits"
    params = randomize(c, seed=35)
    nn = torch.nn
    ref = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                        nn.MaxPool2d(2),
                        pt.Bottleneck(32, 16), pt.Bottleneck(64, 16),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    names = {"0.weight": "backbone.stem.conv1.weight", **pt.bn_keys("1", "backbone.stem.bn1"),
             "3.weight": "backbone.stage1.conv1.weight", **pt.bn_keys("4", "backbone.stage1.bn1"),
             **pt.lin_keys("11", "head.linear1")}
    for key in ref.state_dict():
        if key.split(".")[0] in ("7", "8") and not key.endswith("num_batches_tracked"):
            dl = key.replace("downsample.0.", "shortcut.conv.").replace("downsample.1.", "shortcut.bn.")
            names[key] = f"backbone.stage2.{int(dl[0]) - 7}{dl[1:]}"
    pt.load_state(ref, params, names)
    x = example_inputs("digits_images", 2, seed=36)["image"]
    assert_parity(run_ort(c.onnx, {"image": x}), pt.run(ref, x / 255), "digits_images")
