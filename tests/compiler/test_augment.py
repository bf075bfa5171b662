"""Augmentations in the training graph: each one run alone on a tiny graph in onnxruntime and
checked exactly (flips, shifts, cutout) or statistically (noise, brightness, contrast, p), then
the digits example: augmentation in train_step.onnx, none in the inference graph.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train_helpers import (  # noqa: E402
    EXAMPLES,
    STANDARD_DOMAINS,
    compile_training_text,
    feeds_for,
    param_inputs,
    run,
    scalars,
    session,
)

from dlspec.compiler import compile_model, compile_training  # noqa: E402
from dlspec.compiler.graph import Graph  # noqa: E402
from dlspec.compiler.graph.proto import model_proto, value_info  # noqa: E402
from dlspec.compiler.lower.augment import augment  # noqa: E402
from dlspec.spec import load  # noqa: E402
from dlspec.spec.errors import SpecError  # noqa: E402
from dlspec.spec.model import Augment  # noqa: E402


def aug(kind: str, amount: float = 1.0, p: float = 0.5) -> Augment:
    return Augment.model_validate({"kind": kind, "amount": amount, "p": p})


SHAPE = (1, 6, 7)  # C, H, W: H != W so a transposed index would show


def graph(augs: list[Augment], shape: tuple[int, ...] = SHAPE, seed: int = 3) -> onnx.ModelProto:
    g = Graph()
    x = g.value("x", "float32", (None, *shape))
    y = augment(x, augs, seed, g.value("step", "int64", ()))
    g.nodes.append(helper.make_node("Identity", [y.name], ["y"], name="out"))
    step = helper.make_tensor_value_info("step", TensorProto.INT64, [])
    proto = model_proto("aug", g.nodes, [value_info(x), step], [value_info(y.with_shape(x.shape))], {}, "")
    proto.graph.output[0].name = "y"
    onnx.checker.check_model(proto, full_check=True)
    return proto


def apply(augs: list[Augment], x: np.ndarray, step: int = 1, seed: int = 3) -> np.ndarray:
    proto = graph(augs, x.shape[1:], seed)
    return run(session(proto), {"x": x, "step": np.array(step, np.int64)})["y"]


def images(n: int = 64, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """Distinct positive pixels: any shift, flip or zeroed pixel is visible."""
    return np.random.default_rng(0).uniform(1.0, 2.0, (n, *shape)).astype(np.float32)


def shifted(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """out[..., i, j] = x[..., i + dy, j + dx], zero outside."""
    h, w = x.shape[-2:]
    out = np.zeros_like(x)
    out[..., max(0, -dy):min(h, h - dy), max(0, -dx):min(w, w - dx)] = \
        x[..., max(0, dy):min(h, h + dy), max(0, dx):min(w, w + dx)]
    return out


ALL = [aug("hflip"), aug("vflip"), aug("translate", amount=2),
       aug("crop", amount=1), aug("noise", amount=0.1),
       aug("brightness", amount=0.3), aug("contrast", amount=0.3),
       aug("cutout", amount=3)]


@pytest.mark.parametrize("one", ALL, ids=lambda a: a.kind)
def test_shape_kept_deterministic_and_fresh_each_step(one: Augment) -> None:
    x = images(32)
    a, b, c = apply([one], x, step=4), apply([one], x, step=4), apply([one], x, step=5)
    assert a.shape == x.shape and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, apply([one], x, step=4, seed=4))
    proto = graph([one])
    assert all(n.domain in STANDARD_DOMAINS for n in proto.graph.node)
    assert not {"RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike"} & \
        {n.op_type for n in proto.graph.node}
    # every node but the constants uniform_like makes (hint "const") is named after the setting
    named = [n.name for n in proto.graph.node if n.op_type != "Constant" and n.name != "out"]
    assert all("augment.0." in n for n in named)


@pytest.mark.parametrize("kind,axis", [("hflip", -1), ("vflip", -2)])
def test_flip_exact_with_probability_p(kind: str, axis: int) -> None:
    x = images(2000)
    y = apply([aug(kind, p=0.3)], x)
    same = np.all(y == x, axis=(1, 2, 3))
    flipped = np.all(y == np.flip(x, axis), axis=(1, 2, 3))
    assert np.all(same ^ flipped)
    assert abs(flipped.mean() - 0.3) < 0.04
    assert np.array_equal(apply([aug(kind, p=1.0)], x[:8]), np.flip(x[:8], axis))
    assert np.array_equal(apply([aug(kind, p=0.0)], x[:8]), x[:8])


@pytest.mark.parametrize("kind,k", [("translate", 1), ("translate", 2), ("crop", 3)])
def test_shift_exact_copy_with_zero_fill(kind: str, k: int) -> None:
    x = images(400)
    y = apply([aug(kind, amount=k)], x)
    seen = set()
    for xi, yi in zip(x, y):
        hits = [(dy, dx) for dy in range(-k, k + 1) for dx in range(-k, k + 1)
                if np.array_equal(yi, shifted(xi, dy, dx))]
        assert len(hits) == 1, "not an exact shifted copy"
        seen.add(hits[0])
    assert len(seen) == (2 * k + 1) ** 2  # every offset in [-k, k]^2 occurs, nothing beyond


def test_translate_zero_is_identity() -> None:
    x = images(4)
    np.testing.assert_array_equal(apply([aug("translate", amount=0)], x), x)


def test_noise_is_gaussian_with_std_amount() -> None:
    x = np.zeros((128, 4, 16, 16), np.float32)
    z = apply([aug("noise", amount=0.5)], x).ravel() / 0.5
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1.0) < 0.02
    assert abs(np.mean(np.abs(z) < 1.0) - 0.6827) < 0.01  # the normal's shape, not just its moments
    assert abs(np.mean(z.astype(np.float64) ** 4) - 3.0) < 0.12  # ~4 standard errors


def test_noise_works_on_tabular_inputs() -> None:
    x = np.ones((500, 5), np.float32)
    y = apply([aug("noise", amount=0.1)], x)
    assert abs((y - 1).std() - 0.1) < 0.01


def test_brightness_adds_one_offset_per_sample_in_range() -> None:
    x = images(1000)
    d = apply([aug("brightness", amount=0.25)], x) - x
    per = d[:, 0, 0, 0]
    np.testing.assert_allclose(d, np.broadcast_to(per[:, None, None, None], d.shape), atol=1e-6)
    assert per.min() >= -0.25 - 1e-6 and per.max() <= 0.25 + 1e-6
    assert per.min() < -0.2 and per.max() > 0.2 and abs(per.mean()) < 0.02


def test_contrast_scales_around_the_sample_mean() -> None:
    x = images(1000)
    y = apply([aug("contrast", amount=0.4)], x)
    m = x.mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(y.mean(axis=(1, 2, 3), keepdims=True), m, atol=1e-5)
    factor = ((y - m) * (x - m)).sum(axis=(1, 2, 3)) / ((x - m) ** 2).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(y, m + factor[:, None, None, None] * (x - m), atol=1e-5)
    assert factor.min() >= 0.6 - 1e-5 and factor.max() <= 1.4 + 1e-5
    assert factor.min() < 0.65 and factor.max() > 1.35


def test_cutout_zeroes_one_square_inside_the_image() -> None:
    x = images(2000, (2, 6, 7))
    s = 3
    y = apply([aug("cutout", amount=s, p=0.7)], x)
    corners = set()
    cut = 0
    for xi, yi in zip(x, y):
        zero = yi == 0
        if not zero.any():
            assert np.array_equal(yi, xi)
            continue
        cut += 1
        rows, cols = np.nonzero(zero[0])
        r0, c0 = int(rows.min()), int(cols.min())
        want = xi.copy()
        want[:, r0:r0 + s, c0:c0 + s] = 0
        assert np.array_equal(yi, want) and zero.sum() == 2 * s * s  # whole square, all channels
        corners.add((r0, c0))
    assert corners == {(r, c) for r in range(6 - s + 1) for c in range(7 - s + 1)}
    assert abs(cut / len(x) - 0.7) < 0.04


def test_chain_applies_in_order() -> None:
    x = images(16)
    hf, br = aug("hflip", p=1.0), aug("brightness", amount=0.5)
    y = apply([hf, br], x)
    d = y - np.flip(x, -1)
    np.testing.assert_allclose(d, np.broadcast_to(d[:, :1, :1, :1], d.shape), atol=1e-6)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.dlspec"
    path.write_text(text)
    return path


TABULAR = """model t {
  input x: float32[N, 4]
  target y: float32[N]
  head regress(hidden=[8])
  loss mse
}
train {
  augment noise(0.1) -> %s
}
"""


def test_image_augmentation_on_tabular_input_points_at_the_setting(tmp_path: Path) -> None:
    path = write(tmp_path, TABULAR % "hflip")
    with pytest.raises(SpecError, match=r"hflip needs an image input \[N, C, H, W\]") as err:
        compile_training(load(path))
    assert err.value.span is not None and err.value.span.line == 8
    assert err.value.span.col == len("  augment noise(0.1) -> ") + 1
    compile_training(load(write(tmp_path, TABULAR % "noise(0.05)")))  # noise is fine on a table


@pytest.mark.parametrize("setting,message", [
    ("translate(1.5)", "whole number"), ("cutout(9)", "larger than"), ("noise(0.1, p=0.3)", "no p="),
    # a shift past the 8x8 image asked onnxruntime for a padded copy of 1 PB at train time
    ("translate(1000000)", r"translate\(1000000\): the shift must be smaller than the 8x8 image"),
    ("crop(8)", "smaller than the 8x8 image"),
])
def test_bad_settings_are_spec_errors_at_check_too(tmp_path: Path, setting: str, message: str) -> None:
    """compile_training and compile_model (what `dlspec check` and `compile` run) both refuse them."""
    text = (EXAMPLES / "digits.dlspec").read_text().replace("translate(1) -> noise(0.02)", setting)
    path = write(tmp_path, text)
    for build in (compile_training, compile_model):
        with pytest.raises(SpecError, match=message) as err:
            build(load(path))
        span = err.value.span
        assert span is not None
        assert path.read_text().splitlines()[span.line - 1].lstrip().startswith("augment")


def test_digits_train_step_augments_and_inference_does_not(tmp_path: Path) -> None:
    tg = compile_training(load(EXAMPLES / "digits.dlspec"))
    assert not [n.name for n in tg.inference.onnx.graph.node if "augment" in n.name]
    names = [n.name for n in tg.train_step.graph.node if "augment" in n.name]
    assert any(n.startswith("augment.0.translate/") for n in names)
    assert any(n.startswith("augment.1.noise/") for n in names)
    assert all(n.domain in STANDARD_DOMAINS for n in tg.train_step.graph.node)
    assert all(n.domain in STANDARD_DOMAINS for n in tg.gradients.graph.node)
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(0, 16, (8, 1, 8, 8)).astype(np.float32),
             "label": rng.integers(0, 10, 8).astype(np.int64)}
    sess = session(tg.train_step)
    losses = [run(sess, feeds_for(tg.train_step, batch, scalars(1e-3, step), tg.init), ["loss"])["loss"]
              for step in (1, 1, 2)]
    assert all(np.isfinite(v) for v in losses)
    assert losses[0] == losses[1] and losses[0] != losses[2]  # same step, same draws
    assert param_inputs(tg)


def test_no_augment_block_adds_nothing(tmp_path: Path) -> None:
    text = TABULAR.replace("  augment noise(0.1) -> %s\n", "")
    tg = compile_training_text(tmp_path, text)
    assert not [n.name for n in tg.train_step.graph.node if "augment" in n.name]


@pytest.mark.parametrize("one", [aug("hflip", p=1.0), aug("vflip", p=1.0), aug("translate", amount=2),
                                 aug("crop", amount=1), aug("cutout", amount=3, p=1.0),
                                 aug("brightness", amount=0.3)], ids=lambda a: a.kind)
def test_a_channels_last_image_is_augmented_over_its_height_and_width(one: Augment) -> None:
    """[N, H, W, C] was augmented as [N, C, H, W]: hflip swapped red and blue, vflip flipped the width."""
    x = images(16, (3, 6, 7))
    last = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(apply([one], last), apply([one], x).transpose(0, 2, 3, 1))


def test_augmenting_integer_ids_is_refused(tmp_path: Path) -> None:
    """noise on token ids turned about half of them into their neighbours' ids, silently."""
    path = write(tmp_path, """
model tok {
  input  tok: int64[N, 6]
  target label: int64[N]
  backbone { embedding(20, 8) -> pool(mean) }
  head linear(2)
  loss cross_entropy
}
train {
  augment noise(0.1)
}
""")
    with pytest.raises(SpecError, match=r"input 'tok' is int64 \(ids or counts\)") as err:
        compile_model(load(path))
    assert err.value.span is not None and err.value.span.line == 10
