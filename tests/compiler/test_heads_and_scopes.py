"""Branching blocks anywhere (block scopes, `in`), several inputs of
different kinds, named heads with losses bound to heads and targets."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train_helpers import (  # noqa: E402
    carried,
    feeds_for,
    load_text,
    output_names,
    run,
    scalars,
    session,
    with_outputs,
)

from dlspec.api import gradcheck_spec  # noqa: E402
from dlspec.compiler import compile_model, compile_training  # noqa: E402
from dlspec.spec.errors import CompileError, SpecError  # noqa: E402

# ---------------------------------------------------------------- branching blocks anywhere

SE = """
# se(c, ratio=4) is the standard library's branching block:
#   gate:  gap -> conv(c / ratio, k=1) -> relu -> conv(c, k=1) -> sigmoid
#   scale: mul(from=[in, gate])
block se_res(c) {
  body: conv(c) -> bn -> relu -> se(c)
  out:  add(from=[in, body]) -> relu
}
"""


def se_model(backbone: str, head: str = "classify(10)") -> str:
    return SE + f"""
model m {{
  input  image: float32[N, 2, 8, 8]
  target label: int64[N]
  backbone {{ {backbone} }}
  head {head}
  loss cross_entropy
}}
"""


def test_a_branching_block_inside_a_chain_repeated_and_nested(tmp_path: Path) -> None:
    text = se_model("stem: conv(8) -> se(8) * 3 -> se_res(8) -> se_res(8)")
    c = compile_model(load_text(tmp_path, text))
    paths = [r.path for r in c.records]
    # each call of se has a scope of its own: its copies' gates and scales never share names
    for i in range(3):
        assert f"backbone.stem.{i}.gate.conv1" in paths and f"backbone.stem.{i}.scale.mul1" in paths
    for i in (3, 4):  # se_res reads `in` and its own stage `body`; the se inside it has its own `in`
        assert f"backbone.stem.{i}.body.0.gate.conv2" in paths and f"backbone.stem.{i}.out.add1" in paths
    weights = [p.name for p in c.params if not p.state]
    assert len(weights) == len(set(weights))
    onnx.checker.check_model(c.onnx, full_check=True)
    # the gate really multiplies the block's input: the mul reads the conv before it
    nodes = {n.name: n for n in c.onnx.graph.node}
    mul = next(n for n in c.onnx.graph.node if n.name.startswith("backbone.stem.0.scale.mul1/"))
    producers = {o: n.name for n in nodes.values() for o in n.output}
    assert any(producers.get(i, "").startswith("backbone.stem.conv1/") for i in mul.input)


def test_a_branching_block_runs_as_its_torch_twin(tmp_path: Path) -> None:
    """se(4) in a chain computes x * sigmoid(W2 relu(W1 gap(x) + b1) + b2)."""
    text = se_model("conv(4) -> se(4, ratio=2)", "{ o: flatten -> linear(10) }")
    c = compile_model(load_text(tmp_path, text))
    w = {t.name: onnx.numpy_helper.to_array(t) for t in c.onnx.graph.initializer}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 8, 8)).astype(np.float32)
    mul = next(n for n in c.onnx.graph.node if n.name.startswith("backbone.0.scale.mul1/"))
    conv = next(n for n in c.onnx.graph.node if n.name.startswith("backbone.conv1/"))
    got = run(session(with_outputs(c.onnx, [mul.output[0], conv.output[0]])), {"image": x})
    h = got[conv.output[0]]
    s = h.mean(axis=(2, 3))
    g1 = np.maximum(s @ w["backbone.0.gate.conv1.weight"][:, :, 0, 0].T + w["backbone.0.gate.conv1.bias"], 0)
    g2 = g1 @ w["backbone.0.gate.conv2.weight"][:, :, 0, 0].T + w["backbone.0.gate.conv2.bias"]
    want = h * (1 / (1 + np.exp(-g2)))[:, :, None, None]
    np.testing.assert_allclose(got[mul.output[0]], want, rtol=1e-5, atol=1e-6)


def test_stage_names_of_a_whole_section_block_still_reach_the_neck(tmp_path: Path) -> None:
    text = """
model m {
  input  image: float32[N, 3, 32, 32]
  target label: int64[N]
  backbone resnet18(width=8, stem=cifar_stem)
  neck fpn(from=[layer2, layer3], channels=8)
  head classify(10)
  loss cross_entropy
}
"""
    c = compile_model(load_text(tmp_path, text))
    assert any(r.path == "neck.lateral1" for r in c.records)


def _error(tmp_path: Path, text: str, cls: type[SpecError] = SpecError) -> SpecError:
    with pytest.raises(cls) as info:
        compile_model(load_text(tmp_path, text))
    return info.value


def test_a_name_outside_the_block_is_not_seen_inside_it(tmp_path: Path) -> None:
    text = """
block reads_outside(c) { a: conv(c); b: add(from=[a, stem]) }
model m {
  input  image: float32[N, 2, 8, 8]
  target label: int64[N]
  backbone { stem: conv(4); s: reads_outside(4) -> reads_outside(4) }
  head classify(10)
  loss cross_entropy
}
"""
    err = _error(tmp_path, text)
    assert err.span is not None and (err.span.line, err.span.col) == (2, 54)
    assert "no stage named 'stem' in block reads_outside" in err.message
    assert "the names it reads so far: in, a" in err.message


def test_in_names_the_block_input_only_inside_a_block(tmp_path: Path) -> None:
    err = _error(tmp_path, se_model("a: conv(4); b: add(from=[in, a])"))
    assert "no stage named 'in'" in err.message and "stages defined so far: a" in err.message
    err = _error(tmp_path, "block b(c) { in: conv(c) }\n" + se_model("b(4)"))
    assert err.span is not None and err.span.line == 1
    assert "'in' names the input of the block b" in err.message


# ---------------------------------------------------------------- several inputs

MIXED = """
model mixed {
  input  image: float32[N, 1, 8, 8]
  input  table: float32[N, 3]
  input  age:   float32[N]
  target label: int64[N]
  features { image = image / 16 }
  backbone {
    img:  conv(4, from=image) -> relu -> gap -> flatten
    tab:  linear(8, from=table) -> relu
    both: concat(from=[img, tab, age])
  }
  head linear(10)
  loss cross_entropy
}
"""


def test_inputs_of_different_kinds_each_take_their_own_path(tmp_path: Path) -> None:
    c = compile_model(load_text(tmp_path, MIXED))
    assert [i.name for i in c.onnx.graph.input] == ["image", "table", "age"]
    both = next(r for r in c.records if r.path == "backbone.both.concat1")
    assert both.shapes == [(None, 4 + 8 + 1)]  # age arrives as a column [N, 1]
    onnx.checker.check_model(c.onnx, full_check=True)
    rng = np.random.default_rng(1)
    feeds = {"image": rng.uniform(0, 16, (5, 1, 8, 8)).astype(np.float32),
             "table": rng.normal(size=(5, 3)).astype(np.float32), "age": rng.random(5).astype(np.float32)}
    assert run(session(c.onnx), feeds)["logits"].shape == (5, 10)


def test_a_layer_without_from_on_inputs_of_different_kinds_is_located(tmp_path: Path) -> None:
    err = _error(tmp_path, MIXED.replace("conv(4, from=image)", "conv(4)"))
    assert err.span is not None and (err.span.line, err.span.col) == (9, 11)
    assert "conv has no input tensor: model 'mixed' has inputs of different kinds (image [N, 1, 8, 8], " \
        "table [N, 3], age [N])" in err.message


def test_tabular_inputs_are_still_stacked_and_also_named(tmp_path: Path) -> None:
    text = """
model t {
  input a: float32[N]
  input b: float32[N, 2]
  target y: float32[N]
  backbone { all: linear(4); one: linear(3, from=b); both: concat(from=[all, one]) }
  head regress(hidden=[])
  loss mse
}
"""
    c = compile_model(load_text(tmp_path, text))
    shapes = {r.path: r.shapes for r in c.records}
    assert shapes["backbone.all.linear1"] == [(None, 4)] and shapes["backbone.one.linear1"] == [(None, 3)]
    err = _error(tmp_path, text.replace("from=b", "from=bb"))
    assert "no stage named 'bb' (did you mean 'b'?); stages defined so far: all; model inputs: a, b" \
        in err.message


def test_image_and_table_augment_the_image_only(tmp_path: Path) -> None:
    text = MIXED + "train { augment hflip -> noise(0.1) }\n"
    tg = compile_training(load_text(tmp_path, text))
    names = [n.name for n in tg.train_step.graph.node]
    assert any(n.startswith("augment.0.hflip/") for n in names)
    assert not any(n.startswith("augment.") for n in (x.name for x in tg.inference.onnx.graph.node))


# ---------------------------------------------------------------- named heads

TWO = """
model two {
  input  image: float32[N, 1, 8, 8]
  target label: int64[N]
  target size:  float32[N]
  backbone { conv(4) -> relu }
  head cls: classify(10)
  head box: gap -> flatten -> linear(1)
  loss cross_entropy(cls, label) + 0.1 * huber(box, size)
}
"""


def test_named_heads_are_named_outputs_and_each_term_is_an_output(tmp_path: Path) -> None:
    tg = compile_training(load_text(tmp_path, TWO))
    assert output_names(tg.inference.onnx) == ["cls", "box"]
    # box gives one value per sample against a target [N]: its output is [N], as a one-head
    # regressor's `prediction` is
    outputs = [(o.name, o.dims) for o in tg.inference.outputs.values()]
    assert outputs == [("cls", (None, 10)), ("box", (None,))]
    assert tg.terms == ["loss:cls", "loss:box"] and tg.metrics == ["accuracy:cls", "mae:box"]
    assert output_names(tg.train_step)[:5] == ["loss", "loss:cls", "loss:box", "accuracy:cls", "mae:box"]
    assert output_names(tg.evaluate)[:2] == ["cls", "box"] and output_names(tg.evaluate)[-2:] == [
        "loss:cls", "loss:box"]
    assert {p.name.split(".")[1] for p in tg.inference.params if p.name.startswith("head.")} == {"cls", "box"}
    # the loss is the weighted sum of the terms it reports
    rng = np.random.default_rng(2)
    batch = {"image": rng.normal(size=(6, 1, 8, 8)).astype(np.float32),
             "label": rng.integers(0, 10, 6), "size": rng.normal(size=6).astype(np.float32)}
    out = run(session(tg.gradients), feeds_for(tg.gradients, batch, scalars(), tg.init))
    assert np.isclose(out["loss"], out["loss:cls"] + 0.1 * out["loss:box"], rtol=1e-6)


def test_the_summed_loss_of_one_head_that_crashed_training_is_an_error_at_check(tmp_path: Path) -> None:
    """One head [N, 1] read by cross_entropy and mse; mse's squeeze reached
    cross_entropy, which then indexed a missing axis (IndexError in losses.py)."""
    text = """
model one {
  input  image: float32[N, 1, 8, 8]
  target label: int64[N]
  target size:  float32[N]
  backbone { conv(8) -> relu -> gap -> flatten }
  head regress(1)
  loss cross_entropy(target=label) + 0.1 * mse(target=size)
}
"""
    err = _error(tmp_path, text, CompileError)
    assert err.span is not None and (err.span.line, err.span.col) == (8, 8)
    assert "cross_entropy over one class is 0" in err.message


def test_terms_on_one_head_read_it_whole_or_squeezed_each(tmp_path: Path) -> None:
    """A head [N, 1] read by bce_with_logits against [N, 1] and by mse against [N]: the output
    stays [N, 1], and mse reads it squeezed (each term its own view, not the one before's)."""
    text = """
model one {
  input  x:   float32[N, 3]
  target hit: float32[N, 1]
  target v:   float32[N]
  head linear(1)
  loss bce_with_logits(target=hit) + mse(target=v)
}
"""
    tg = compile_training(load_text(tmp_path, text))
    assert [(k, v.dims) for k, v in tg.inference.outputs.items()] == [("logits", (None, 1))]
    assert tg.terms == ["loss:bce_with_logits", "loss:mse"]
    rng = np.random.default_rng(3)
    batch = {"x": rng.normal(size=(4, 3)).astype(np.float32),
             "hit": (rng.random((4, 1)) > 0.5).astype(np.float32), "v": rng.normal(size=4).astype(np.float32)}
    out = run(session(tg.gradients), feeds_for(tg.gradients, batch, scalars(), tg.init))
    w, b = tg.init["head.linear1.weight"], tg.init["head.linear1.bias"]
    y = batch["x"] @ w.T + b
    assert np.isclose(out["loss:mse"], np.mean((y[:, 0] - batch["v"]) ** 2), rtol=1e-5)


def test_per_term_names_and_a_multi_term_one_head_model(tmp_path: Path) -> None:
    text = """
model t {
  input  x: float32[N, 3]
  target y: float32[N]
  head regress(hidden=[])
  loss mse + 0.5 * l1
}
"""
    tg = compile_training(load_text(tmp_path, text))
    assert tg.terms == ["loss:mse", "loss:l1"] and tg.metrics == ["mae"]
    assert output_names(tg.inference.onnx) == ["prediction"]


def test_two_heads_pass_gradcheck(tmp_path: Path) -> None:
    report = gradcheck_spec(load_text(tmp_path, TWO.replace("conv(4)", "conv(2)")), batch=3)
    assert report and max(r.worst for r in report) < 1e-4, report


def test_a_train_step_of_two_heads_lowers_both_losses(tmp_path: Path) -> None:
    tg = compile_training(load_text(tmp_path, TWO + "train { optimizer sgd(lr=0.1) }\n"))
    rng = np.random.default_rng(4)
    batch = {"image": rng.normal(size=(16, 1, 8, 8)).astype(np.float32),
             "label": rng.integers(0, 10, 16), "size": rng.normal(size=16).astype(np.float32)}
    state = dict(tg.init)
    sess = session(tg.train_step)
    first = None
    for step in range(1, 6):
        out = run(sess, feeds_for(tg.train_step, batch, scalars(0.1, step), state))
        state.update(carried(out))
        first = first or (float(out["loss:cls"]), float(out["loss:box"]))
    assert out["loss:cls"] < first[0] and out["loss:box"] < first[1]


def test_export_adds_probabilities_for_each_classifying_head(tmp_path: Path) -> None:
    from dlspec.compiler.lower.export import export

    text = """
model three {
  input  x: float32[N, 6]
  target label: int64[N]
  target hit:   float32[N, 2]
  target size:  float32[N]
  backbone { linear(8) -> relu }
  head cls: linear(4)
  head flags: linear(2)
  head box: linear(1)
  loss cross_entropy(cls, label) + bce_with_logits(flags, hit) + mse(box, size)
}
"""
    c = compile_model(load_text(tmp_path, text))
    out, _ = export(c.onnx, {})
    assert [o.name for o in out.graph.output] == ["cls", "flags", "box", "probabilities:cls",
                                                  "probabilities:flags"]
    x = np.random.default_rng(5).normal(size=(3, 6)).astype(np.float32)
    got = run(session(out), {"x": x})
    e = np.exp(got["cls"])
    np.testing.assert_allclose(got["probabilities:cls"], e / e.sum(1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(got["probabilities:flags"], 1 / (1 + np.exp(-got["flags"])), rtol=1e-5)
