"""Dense prediction: `segment(classes)` over an fpn, per-pixel cross entropy and dice, pixel
accuracy and mean IoU, and masks moved by augmentation.

- The loss of a two-level fpn with a segment head (`cross_entropy(weight, label_smoothing,
  ignore_index) + w * dice`), each term, every gradient and one adamw step from train_step.onnx
  against the same model in float64 torch (F.cross_entropy on [N, C, H, W], a dice written in
  torch), each within 1e-4; the metrics against sklearn.metrics.jaccard_score.
- Central differences through the new losses and the segment layer (dlspec gradcheck, float64).
- Geometric augmentations move a mask pixel for pixel as they move the image, photometric ones
  leave it, and an augmentation that cannot move a spatial target is refused at its text.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper
from sklearn.metrics import jaccard_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from parity_helpers import randomize  # noqa: E402
from train_helpers import feeds_for, load_text, rel_err, run, scalars, session  # noqa: E402

from dlspec import api  # noqa: E402
from dlspec.compiler import compile_model, compile_training  # noqa: E402
from dlspec.compiler.graph import Graph  # noqa: E402
from dlspec.compiler.graph.proto import model_proto, value_info  # noqa: E402
from dlspec.compiler.lower.augment import augment_with  # noqa: E402
from dlspec.compiler.lower.compile import build_forward  # noqa: E402
from dlspec.metrics import head_metrics  # noqa: E402
from dlspec.spec.errors import CompileError, SpecError  # noqa: E402
from dlspec.spec.model import Augment  # noqa: E402

TOL = 1e-4
LR, DECAY, WEIGHT, SMOOTH = 0.01, 0.05, 0.5, 0.5
CLASS_WEIGHTS = [1.0, 2.0, 0.5, 1.5]

SEGMENT = f"""
model seg {{
  input  image: float32[N, 2, 6, 6]
  target mask:  int64[N, 6, 6]
  backbone {{
    stem: conv(4, k=3) -> relu
    down: conv(6, k=3, stride=2) -> tanh
  }}
  neck fpn(from=[stem, down], channels=5)
  head segment(4)
  loss cross_entropy(weight={CLASS_WEIGHTS}, label_smoothing=0.1, ignore_index=-1)
       + {WEIGHT} * dice(smooth={SMOOTH}, ignore_index=-1)
}}
train {{ optimizer adamw(lr={LR}, weight_decay={DECAY}) }}
"""


def torch_dice(logits: Any, mask: Any, smooth: float, ignore: int) -> Any:
    """1 - mean_c (2 sum p t + s) / (sum p + sum t + s), sums over the batch and the pixels."""
    import torch
    import torch.nn.functional as F

    valid = (mask != ignore).unsqueeze(1).double()
    p = logits.softmax(1) * valid
    t = F.one_hot(torch.where(mask != ignore, mask, 0), logits.shape[1]).permute(0, 3, 1, 2) * valid
    dims = (0, 2, 3)
    score = (2 * (p * t).sum(dims) + smooth) / (p.sum(dims) + t.sum(dims) + smooth)
    return 1 - score.mean()


def torch_segment(p: dict[str, Any], x: Any) -> Any:
    """The spec above in torch: convs, fpn (nearest top-down), segment (1x1 convs, bilinear)."""
    import torch.nn.functional as F

    stem = F.relu(F.conv2d(x, p["backbone.stem.conv1.weight"], p["backbone.stem.conv1.bias"], padding=1))
    down = F.conv2d(stem, p["backbone.down.conv1.weight"], p["backbone.down.conv1.bias"], stride=2,
                    padding=1).tanh()
    lat1 = F.conv2d(stem, p["neck.lateral1.weight"], p["neck.lateral1.bias"])
    lat2 = F.conv2d(down, p["neck.lateral2.weight"], p["neck.lateral2.bias"])
    top1 = lat1 + F.interpolate(lat2, scale_factor=2, mode="nearest")
    out1 = F.conv2d(top1, p["neck.output1.weight"], p["neck.output1.bias"], padding=1)
    out2 = F.conv2d(lat2, p["neck.output2.weight"], p["neck.output2.bias"], padding=1)
    s1 = F.conv2d(out1, p["head.segment1.level1.weight"], p["head.segment1.level1.bias"])
    s2 = F.conv2d(out2, p["head.segment1.level2.weight"], p["head.segment1.level2.bias"])
    return s1 + F.interpolate(s2, size=(6, 6), mode="bilinear", align_corners=False)


def check(what: str, got: np.ndarray, want: Any) -> None:
    want = want.detach().numpy() if hasattr(want, "detach") else want
    err = rel_err(got, np.asarray(want))
    assert err <= TOL, f"{what}: ||onnx - torch|| / ||torch|| = {err:.3g}"


def sklearn_metrics(scores: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Pixel accuracy and macro jaccard over the labelled pixels (ignore_index left out)."""
    pred, truth = scores.argmax(1).ravel(), mask.ravel()
    keep = (truth >= 0) & (truth < scores.shape[1])
    jaccard = jaccard_score(truth[keep], pred[keep], average="macro")
    return float((pred[keep] == truth[keep]).mean()), float(jaccard)


def test_segment_losses_gradients_and_an_adamw_step_match_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    from parity_torch import check_gradients_and_adamw_step

    tg = compile_training(load_text(tmp_path, SEGMENT))
    assert tg.metrics == ["accuracy", "mean_iou"]
    values = randomize(tg.inference, seed=21)
    rng = np.random.default_rng(22)
    n = 5
    mask = rng.integers(0, 4, (n, 6, 6)).astype(np.int64)
    mask[rng.random(mask.shape) < 0.15] = -1  # ignored pixels
    batch = {"image": rng.normal(0, 1, (n, 2, 6, 6)).astype(np.float32), "mask": mask}
    grads = run(session(tg.gradients), feeds_for(tg.gradients, batch, scalars(), values))
    step = run(session(tg.train_step), feeds_for(tg.train_step, batch, scalars(LR, 1), values, tg.init))

    params = {k: torch.from_numpy(values[k]).double().requires_grad_() for k in tg.trainable}
    logits = torch_segment(params, torch.from_numpy(batch["image"]).double())
    target = torch.from_numpy(mask)
    ce = F.cross_entropy(logits, target, weight=torch.tensor(CLASS_WEIGHTS, dtype=torch.float64),
                         label_smoothing=0.1, ignore_index=-1)
    dice = torch_dice(logits, target, SMOOTH, -1)
    loss = ce + WEIGHT * dice
    loss.backward()
    accuracy, mean_iou = sklearn_metrics(logits.detach().numpy(), mask)
    for out in (grads, step):
        check("loss", out["loss"], loss)
        check("loss:cross_entropy", out["loss:cross_entropy"], ce)
        check("loss:dice", out["loss:dice"], dice)
        check("accuracy", out["accuracy"], accuracy)
        check("mean_iou", out["mean_iou"], mean_iou)
    check_gradients_and_adamw_step(check, tg.trainable, params, grads, step, values, LR, DECAY)


def test_segment_resizes_a_level_of_another_shape_as_torch_bilinear(tmp_path: Path) -> None:
    """7x7 from 4x4 is no whole-number factor: the half-pixel bilinear resize of torch."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    c = compile_model(load_text(tmp_path, """
        model m {
          input  image: float32[N, 2, 7, 7]
          backbone { a: conv(3, k=3); b: conv(4, k=3, stride=2) }
          head segment(5, from=[a, b])
        }"""))
    values = randomize(c, seed=3)
    x = np.random.default_rng(4).normal(0, 1, (3, 2, 7, 7)).astype(np.float32)
    (got,) = session(c.onnx).run(None, {"image": x})
    p = {k: torch.from_numpy(v).double() for k, v in values.items()}
    a = F.conv2d(torch.from_numpy(x).double(), p["backbone.a.conv1.weight"], p["backbone.a.conv1.bias"],
                 padding=1)
    b = F.conv2d(a, p["backbone.b.conv1.weight"], p["backbone.b.conv1.bias"], stride=2, padding=1)
    coarse = F.conv2d(b, p["head.segment1.level2.weight"], p["head.segment1.level2.bias"])
    want = (F.conv2d(a, p["head.segment1.level1.weight"], p["head.segment1.level1.bias"])
            + F.interpolate(coarse, size=(7, 7), mode="bilinear", align_corners=False))
    assert got.shape == (3, 5, 7, 7)
    check("segment at 7x7", got, want)


# ---------------------------------------------------------------- central differences

GRADCHECK = """
model m {{
  input  image: float32[N, 1, 6, 6]
  target mask:  {mask}
  backbone {{ stem: conv(3, k=3) -> tanh; down: conv(4, k=3, stride=2) -> tanh }}
  neck fpn(from=[stem, down], channels=3)
  head segment(3)
  loss {loss}
}}
"""


@pytest.mark.parametrize(("mask", "loss"), [
    ("int64[N, 6, 6]", "cross_entropy"),
    ("int64[N, 6, 6]", "dice"),
    ("int64[N, 1, 6, 6]", "cross_entropy(weight=[1, 2, 0.5], label_smoothing=0.2) + 0.7 * dice(smooth=0.3)"),
])
def test_dense_losses_pass_central_differences(tmp_path: Path, mask: str, loss: str) -> None:
    spec = tmp_path / "m.dlspec"
    spec.write_text(GRADCHECK.format(mask=mask, loss=loss))
    report = api.gradcheck_spec(spec, batch=3)
    failed = {r.name: r.worst for r in report if not r.worst <= TOL}
    assert report and not failed, failed


# ---------------------------------------------------------------- metrics

def test_mean_iou_and_pixel_accuracy_match_sklearn() -> None:
    rng = np.random.default_rng(5)
    scores = rng.normal(0, 1, (6, 5, 4, 3)).astype(np.float32)
    scores[:, 4] -= 10  # class 4 is never predicted
    truth = rng.integers(0, 4, (6, 4, 3))  # nor labelled: it is not present, so not averaged
    truth[0, 0] = 7  # an ignore_index: left out
    found = head_metrics(scores, truth, "segment")
    accuracy, mean_iou = sklearn_metrics(scores, truth)
    assert found == pytest.approx({"accuracy": accuracy, "mean_iou": mean_iou}, rel=1e-12)
    # a [N, 1, H, W] target reads the same
    assert head_metrics(scores, truth[:, None], "segment") == found
    perfect = np.eye(5, dtype=np.float32)[truth.clip(0, 4)].transpose(0, 3, 1, 2)
    assert head_metrics(perfect, truth, "segment") == {"accuracy": 1.0, "mean_iou": 1.0}


# ---------------------------------------------------------------- checks at the text

def _image_spec(target: str, augment: str, loss: str = "cross_entropy", head: str = "segment(3)") -> str:
    return f"""
model m {{
  input  image: float32[N, 1, 8, 8]
  target mask:  {target}
  backbone {{ s: conv(4, k=3) }}
  head {head}
  loss {loss}
}}
train {{
  augment {augment}
}}
"""


def test_a_target_that_cannot_move_with_the_image_is_refused_at_the_augmentation(tmp_path: Path) -> None:
    """A 4x4 map of an 8x8 image: flipping the image alone would leave them mismatched."""
    text = _image_spec("float32[N, 3, 4, 4]", "noise(0.1) -> hflip", "mse", "segment(3, size=[4, 4])")
    with pytest.raises(SpecError) as err:
        compile_model(load_text(tmp_path, text))
    span = err.value.span
    line = text.splitlines()[9]
    assert span is not None and (span.line, span.col) == (10, line.index("hflip") + 1)
    assert err.value.message.startswith(
        "hflip moves the pixels of the image, but target 'mask' float32[N, 3, 4, 4] (declared at line 4) "
        "is not laid out like it (image height x width: 8x8)")
    with pytest.raises(SpecError, match="translate moves the pixels"):  # from check, as from train
        api.compile(load_text(tmp_path, text.replace("hflip", "translate(1) -> vflip")))
    # photometric augmentations leave it alone, so they pass; so do labels beside a flip
    compile_model(load_text(tmp_path, text.replace("-> hflip", "-> brightness(0.1) -> cutout(2)")))
    labels = _image_spec("int64[N]", "hflip", "cross_entropy", "{ o: gap -> flatten -> linear(3) }")
    compile_model(load_text(tmp_path, labels))


def test_per_pixel_losses_check_the_target_shape(tmp_path: Path) -> None:
    with pytest.raises(CompileError) as err:
        compile_model(load_text(tmp_path, _image_spec("int64[N, 4, 8]", "noise(0.1)")))
    assert "cross_entropy needs per-position scores [N, classes, H, W] and an integer [N, H, W] (or " \
           "[N, 1, H, W]) target of the same H and W; the head gives [N, 3, 8, 8] and target 'mask' is " \
           "int64[N, 4, 8]" in err.value.message
    with pytest.raises(CompileError, match="dice needs per-position"):
        compile_model(load_text(tmp_path, _image_spec("float32[N, 8, 8]", "noise(0.1)", "dice")))


# ---------------------------------------------------------------- masks move with the image

def aug(kind: str, amount: float = 1.0) -> Augment:
    return Augment.model_validate({"kind": kind, "amount": amount})


GEOMETRIC = [aug("translate", 2), aug("hflip"), aug("crop", 1), aug("vflip")]
PHOTOMETRIC = [aug("noise", 0.3), aug("brightness", 0.5), aug("contrast", 0.5), aug("cutout", 3)]


def moved(augs: list[Augment], image: np.ndarray, masks: list[np.ndarray], step: int = 3) -> list[np.ndarray]:
    """The augmented image and masks, from one graph."""
    g = Graph()
    x = g.value("x", "float32", (None, *image.shape[1:]))
    ts = [g.value(f"t{i}", str(m.dtype), (None, *m.shape[1:])) for i, m in enumerate(masks)]
    y, ys = augment_with(x, ts, augs, 5, g.value("step", "int64", ()))
    outs = [y, *ys]
    names = [f"out{i}" for i in range(len(outs))]
    g.nodes.extend(helper.make_node("Identity", [v.name], [n], name=n) for v, n in zip(outs, names))
    step_info = helper.make_tensor_value_info("step", TensorProto.INT64, [])
    inputs = [value_info(x), *(value_info(t) for t in ts), step_info]
    proto = model_proto("aug", g.nodes, inputs, [value_info(v.with_shape(v.shape)) for v in outs], {}, "")
    for o, n in zip(proto.graph.output, names):
        o.name = n
    feeds = {"x": image, "step": np.array(step, np.int64), **{f"t{i}": m for i, m in enumerate(masks)}}
    return list(session(proto).run(names, feeds))


def test_geometric_augmentations_move_masks_pixel_for_pixel_photometric_ones_leave_them() -> None:
    n, h, w = 64, 6, 7
    labels = np.arange(1, h * w + 1).reshape(1, h, w).repeat(n, 0)  # every pixel its own label
    labels = labels + 100 * np.arange(n)[:, None, None]  # and every sample its own
    image = labels[:, None].astype(np.float32)
    mask3 = labels.astype(np.int64)  # [N, H, W]
    mask4 = (labels[:, None] * 2).astype(np.float32)  # [N, 1, H, W], float: any dtype moves
    x, m3, m4 = moved(GEOMETRIC, image, [mask3, mask4])
    assert m3.dtype == np.int64 and m3.shape == mask3.shape and m4.shape == mask4.shape
    np.testing.assert_array_equal(m3, x[:, 0].astype(np.int64))  # padding is 0 on both
    np.testing.assert_array_equal(m4, 2 * x)
    assert (m3 != mask3).any(axis=(1, 2)).mean() > 0.5  # the draws moved most samples
    assert (m3 == 0).any() and (m3[:, 0, :] != mask3[:, 0, :]).any()  # shifted in and flipped

    # with photometric ones between and after: the mask moves exactly as by the geometric ones alone
    mixed = [GEOMETRIC[0], PHOTOMETRIC[0], GEOMETRIC[1], PHOTOMETRIC[3], GEOMETRIC[2], PHOTOMETRIC[1],
             GEOMETRIC[3], PHOTOMETRIC[2]]
    geometric_only = [a if a.kind in ("translate", "hflip", "crop", "vflip") else aug("noise", 0.0)
                      for a in mixed]
    xm, m3m = moved(mixed, image, [mask3])
    xg, _ = moved(geometric_only, image, [mask3])
    np.testing.assert_array_equal(m3m, xg[:, 0].astype(np.int64))
    assert not np.allclose(xm, xg)  # the image did change by the photometric ones


def test_the_training_graph_reads_the_moved_target(tmp_path: Path) -> None:
    """Through build_forward: the loss's target is the mask moved as the network's input was."""
    prog = load_text(tmp_path, """
        model m {
          input  image: float32[N, 1, 6, 7]
          target mask:  float32[N, 1, 6, 7]
          features { image = image / 2 }
          backbone { s: identity }
          loss mse
        }
        train {
          augment translate(2) -> hflip -> vflip -> brightness(0.5)
          seed    4
        }""")
    f = build_forward(prog, training=True)
    (term,) = f.bound.terms
    assert term.source.name == "mask" and term.target.name != "mask"
    g = f.comp.g
    outs = {"x": term.prediction, "t": term.target}
    nodes = list(g.nodes) + [helper.make_node("Identity", [v.name], [k], name=k) for k, v in outs.items()]
    inputs = [value_info(f.inputs[0]), value_info(term.source),
              helper.make_tensor_value_info("step", TensorProto.INT64, [])]
    outputs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, None) for k in outs]
    sess = session(model_proto("m", nodes, inputs, outputs, {}, ""))
    rng = np.random.default_rng(1)
    image = rng.uniform(1, 2, (32, 1, 6, 7)).astype(np.float32)
    for step in (1, 2):
        x, t = sess.run(["x", "t"], {"image": image, "mask": image, "step": np.array(step, np.int64)})
        assert (t == 0).any() and (t != image).any(axis=(1, 2, 3)).mean() > 0.5  # moved, zeros shifted in
        # the input is image / 2 moved, then brightened by one shift per sample; the mask only moved
        shift = (x - t / 2).reshape(len(x), -1)
        np.testing.assert_allclose(shift, shift[:, :1].repeat(shift.shape[1], 1), atol=1e-6)
        assert np.abs(shift).max() > 0.01
