"""Every example in examples/ against a hand-written PyTorch model of the same network.

The examples are compiled as shipped; their parameters are then randomised (running statistics
included) and loaded into the torch model through an explicit name map.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
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
    assert EXAMPLE_FILES == ["digits", "digits_transfer", "land_price", "resnet18_cifar", "vgg11"]


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
    inputs in order (distance replaced by its clipped value, in its place), then the derived
    features in the order they are defined. log_dist is defined before distance is replaced, so
    it uses the raw distance."""
    length, width, distance = (raw[k].astype(np.float64) for k in ("length", "width", "distance"))
    area = length * width
    ratio = length / width
    log_dist = np.log(1 + distance)
    clipped = np.clip(distance, 0, 50)
    return np.stack([length, width, clipped, area, ratio, log_dist], axis=1)


def test_land_price() -> None:
    c = compile_file(EXAMPLES / "land_price.dlspec")
    assert c.output.name == "prediction"
    params = randomize(c, seed=27)
    ref = pt.MLP(6, [32, 32], 1, act="gelu")
    pt.load_state(ref, params, pt.mlp_map(2, "head"))
    raw = example_inputs("land_price", 5, seed=28)
    got = run_ort(c.onnx, raw)
    assert got.shape == (5,)  # the regress head's [N, 1] is squeezed to the target's [N]
    ref.double()  # the features are large (areas ~1e3): compare with a float64 reference
    want = pt.run(ref, land_price_features(raw))[:, 0]
    assert_parity(got, want, "land_price")
