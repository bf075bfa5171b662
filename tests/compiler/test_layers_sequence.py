"""The sequence, attention, normalisation and shape layers without PyTorch: shapes, parameter
counts and FLOPs in the check records, located errors for wrong ranks and sizes, masks and
clamping, initialisation, and graphs of standard ONNX ops that onnxruntime runs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from parity_helpers import compile_text, run_ort  # noqa: E402

from dlspec.compiler import Compiled  # noqa: E402
from dlspec.compiler.grad import RULES  # noqa: E402
from dlspec.compiler.graph import OPSET  # noqa: E402
from dlspec.compiler.lower.layers_sequence import sinusoid_table  # noqa: E402
from dlspec.spec.errors import CompileError, SpecError  # noqa: E402


def spec(body: str, shape: str = "N, 5, 8", dtype: str = "float32", train: str = "") -> str:
    """A model whose backbone is `body` (a chain on line 4, or stages)."""
    body = body if ":" in body else f"s: {body}"
    return (f"model m {{\n  input x: {dtype}[{shape}]\n  backbone {{\n    {body}\n  }}\n}}\n"
            + (f"train {{\n  {train}\n}}\n" if train else ""))


def records(c: Compiled) -> dict[str, tuple[list[object], int, int]]:
    """Layer path -> (output shape, parameters, FLOPs per sample)."""
    return {r.path: (list(r.shapes[0]), r.params, r.flops) for r in c.records}


# ---------------------------------------------------------------- shapes, parameters, FLOPs

@pytest.mark.parametrize("body,shape,out,params,flops", [
    ("layernorm", "N, 5, 8", [None, 5, 8], 16, 0),
    ("groupnorm(2)", "N, 4, 3, 3", [None, 4, 3, 3], 8, 0),
    ("rmsnorm", "N, 2, 5, 8", [None, 2, 5, 8], 8, 0),
    ("linear(3)", "N, 5, 8", [None, 5, 3], 27, 2 * 5 * 8 * 3),
    ("linear(3)", "N, 2, 5, 8", [None, 2, 5, 3], 27, 2 * 10 * 8 * 3),
    ("attention(2)", "N, 5, 8", [None, 5, 8], 4 * 8 * 8 + 4 * 8,
     2 * 5 * 8 * 24 + 4 * 5 * 5 * 8 + 2 * 5 * 8 * 8),
    ("attention(2, dim=4, bias=false)", "N, 5, 8", [None, 5, 8], 3 * 4 * 8 + 8 * 4,
     2 * 5 * 8 * 12 + 4 * 5 * 5 * 4 + 2 * 5 * 4 * 8),
    ("lstm(4)", "N, 5, 8", [None, 5, 4], 4 * 4 * (8 + 4 + 2), 2 * 5 * 16 * 12),
    ("lstm(4, bidirectional=true, layers=2)", "N, 5, 8", [None, 5, 8],
     2 * 16 * (8 + 4 + 2) + 2 * 16 * (8 + 4 + 2), 2 * 5 * 2 * 16 * 12 + 2 * 5 * 2 * 16 * 12),
    ("gru(4)", "N, 5, 8", [None, 5, 4], 3 * 4 * (8 + 4 + 2), 2 * 5 * 12 * 12),
    ("pos_embedding(7)", "N, 5, 8", [None, 5, 8], 56, 0),
    ("pos_embedding", "N, 5, 8", [None, 5, 8], 40, 0),  # one row per position: max_len = T
    ("sinusoidal", "N, 5, 8", [None, 5, 8], 0, 0),
    ("cls_token", "N, 5, 8", [None, 6, 8], 8, 0),
    ("pool(mean)", "N, 5, 8", [None, 8], 0, 0),
    ("pool(cls)", "N, 5, 8", [None, 8], 0, 0),
    ("patches(2)", "N, 3, 4, 6", [None, 6, 12], 0, 0),
    ("patches([4, 3])", "N, 3, 4, 6", [None, 2, 36], 0, 0),
    ("reshape(shape=[8, 8])", "N, 1, 8, 8", [None, 8, 8], 0, 0),
    ("reshape([2, -1, 4])", "N, 1, 8, 8", [None, 2, 8, 4], 0, 0),
    ("permute([0, 2, 1])", "N, 5, 8", [None, 8, 5], 0, 0),
])
def test_shapes_parameters_and_flops(tmp_path: Path, body: str, shape: str, out: list[object], params: int,
                                     flops: int) -> None:
    c = compile_text(tmp_path, spec(body, shape))
    (got_out, got_params, got_flops), = records(c).values()
    assert (got_out, got_params, got_flops) == (out, params, flops)


def test_embedding_takes_token_ids(tmp_path: Path) -> None:
    c = compile_text(tmp_path, spec("embedding(50, 6)", "N, 7", "int64"))
    assert records(c)["backbone.s.embedding1"] == ([None, 7, 6], 300, 0)


LENGTHS = """
model m {
  input  x: float32[N, 5, 4]
  input  lens: int64[N]
  target y: int64[N]
  backbone { a: LAYER }
  head { linear(3) }
  loss cross_entropy
}
"""


@pytest.mark.parametrize("layer", ["pool(mean, from=[x, lens])", "gru(6, from=[x, lens]) -> pool(mean)",
                                   "lstm(6, from=[x, lens]) -> pool(max)"])
def test_a_declared_lengths_input_masks_the_steps_past_each_length(tmp_path: Path, layer: str) -> None:
    """An int64[N] input reaches the layers as a column [N, 1], which from=[seq, lengths] refused:
    the documented lengths input could not be written in a spec."""
    c = compile_text(tmp_path, LENGTHS.replace("LAYER", layer))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 4)).astype(np.float32)
    lens = np.array([2, 5], np.int64)
    base = run_ort(c.onnx, {"x": x, "lens": lens})
    past = x.copy()
    past[0, 2:] += 10.0  # steps past sample 0's length
    np.testing.assert_array_equal(run_ort(c.onnx, {"x": past, "lens": lens}), base)
    within = x.copy()
    within[0, 1] += 10.0
    assert not np.allclose(run_ort(c.onnx, {"x": within, "lens": lens})[0], base[0])


# ---------------------------------------------------------------- located errors

@pytest.mark.parametrize("body,shape,message", [
    ("layernorm", "N", "layernorm expects [N, ..., features], got [N]"),
    ("groupnorm(3)", "N, 4, 5", "groupnorm: groups=3 must divide the 4 channels of [N, 4, 5]"),
    ("rmsnorm", "N", "rmsnorm expects [N, ..., features], got [N]"),
    ("attention(3)", "N, 5, 8", "heads=3 must divide the width dim=8"),
    ("attention(2)", "N, 8", "attention expects a sequence [N, T, features], got [N, 8]"),
    ("attention(16)", "N, 5000, 16", "holds 400,000,000 scores per sample; the limit on the values"),
    ("lstm(4)", "N, 2, 5, 8", "lstm expects a sequence [N, T, features], got [N, 2, 5, 8]"),
    ("gru(4)", "N, 8", "gru expects a sequence [N, T, features], got [N, 8]"),
    ("pos_embedding(4)", "N, 5, 8", "pos_embedding(max_len=4) is shorter than the sequence [N, 5, 8]"),
    ("pos_embedding(9)", "N, 8", "pos_embedding expects a sequence [N, T, features]"),
    ("sinusoidal", "N, 3, 5, 8", "sinusoidal expects a sequence"),
    ("cls_token", "N, 8", "cls_token expects a sequence"),
    ("pool(mean)", "N, 8", "pool(mean) expects a sequence [N, T, features], got [N, 8]"),
    ("embedding(10, 4)", "N", "embedding expects token ids [N, T], got [N]"),
    ("patches(3)", "N, 3, 4, 6", "patches of 3x3 do not tile the 4x6 image"),
    ("patches(2)", "N, 5, 8", "patches expects an image-like tensor [N, C, H, W]"),
    ("patches([2, 2, 2])", "N, 3, 4, 6", "patches size takes one number or two"),
    ("reshape(shape=[7, 9])", "N, 1, 8, 8", "reshape cannot make [7, 9] of [N, 1, 8, 8]: that holds 63"),
    ("reshape(shape=[-1, 5])", "N, 1, 8, 8", "not a whole multiple of 5"),
    ("reshape(shape=[-1, -1])", "N, 1, 8, 8", "reshape allows one -1"),
    ("reshape(shape=[0, 64])", "N, 1, 8, 8", "reshape sizes must be whole numbers >= 1 or one -1"),
    ("reshape(shape=[])", "N, 1, 8, 8", "reshape needs at least one size"),
    ("permute([0, 1])", "N, 5, 8", "permute dims [0, 1] must order every axis of [N, 5, 8] once"),
    ("permute([1, 0, 2])", "N, 5, 8", "permute keeps the batch axis first"),
    ("linear(3)", "N", "linear expects [N, features] or [N, ..., features], got [N]"),
])
def test_wrong_ranks_and_sizes_are_located_errors(tmp_path: Path, body: str, shape: str,
                                                  message: str) -> None:
    with pytest.raises(CompileError) as err:
        compile_text(tmp_path, spec(body, shape))
    assert message in err.value.message, err.value.message
    assert err.value.span is not None and (err.value.span.line, err.value.span.col) == (4, 8)
    assert err.value.message.startswith("backbone.s.")  # names the layer


@pytest.mark.parametrize("body,message", [
    ("attention(2, dropout=1)", "invalid value 1 for 'dropout' of attention"),
    ("lstm(0)", "invalid value 0 for 'hidden' of lstm"),
    ("gru(4, layers=0)", "invalid value 0 for 'layers' of gru"),
    ("pool(median)", "invalid value \"median\" for 'mode' of pool"),
    ("embedding(10)", "embedding needs argument 'dim'"),
    ("layernorm(eps=0)", "invalid value 0 for 'eps' of layernorm"),
])
def test_bad_arguments_are_spec_errors(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compile_text(tmp_path, spec(body))


# ---------------------------------------------------------------- broadcasting joins

JOIN_STAGES = "a: linear(6)\n    b: pool(mean) -> reshape(shape=[1, 6])\n    c: {join}(from=[{args}])"


@pytest.mark.parametrize("join,args,out", [
    ("add", "a, b", [None, 5, 6]), ("mul", "a, b", [None, 5, 6]), ("sub", "b, a", [None, 5, 6]),
    ("mul", "b, b, b", [None, 1, 6]), ("add", "a", [None, 5, 6]),
])
def test_joins_broadcast_axes_of_size_one(tmp_path: Path, join: str, args: str, out: list[object]) -> None:
    c = compile_text(tmp_path, spec(JOIN_STAGES.format(join=join, args=args)))
    assert records(c)[f"backbone.c.{join}1"][0] == out


def test_broadcast_join_runs(tmp_path: Path) -> None:
    c = compile_text(tmp_path, spec("a: identity\n    b: pool(max) -> reshape([1, 8])\n"
                                    "    c: sub(from=[a, b])"))
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    np.testing.assert_allclose(run_ort(c.onnx, {"x": x}), x - x.max(1, keepdims=True), rtol=1e-6)


@pytest.mark.parametrize("stages,message", [
    ("a: linear(6)\n    b: linear(4)\n    c: add(from=[a, b])",
     "add: shape mismatch between [N, 5, 6] and [N, 5, 4] (axis 2: sizes broadcast only where"),
    ("a: linear(6)\n    b: pool(mean)\n    c: mul(from=[a, b])",
     "mul: cannot broadcast [N, 5, 6] and [N, 6]: the ranks differ"),
    ("a: linear(6)\n    b: linear(6)\n    c: sub(from=[a, b, a])", "sub takes two tensors (a - b), got 3"),
])
def test_joins_that_cannot_broadcast_are_located_errors(tmp_path: Path, stages: str, message: str) -> None:
    with pytest.raises(CompileError) as err:
        compile_text(tmp_path, spec(stages))
    assert message in err.value.message, err.value.message
    assert err.value.span is not None and err.value.span.line == 6


def test_add_of_equal_shapes_keeps_its_channel_message(tmp_path: Path) -> None:
    text = spec("a: conv(8)\n    b: conv(16)\n    c: add(from=[a, b])", "N, 3, 4, 4")
    with pytest.raises(CompileError, match=r"channel mismatch between \[N, 8, 4, 4\] and \[N, 16, 4, 4\]"):
        compile_text(tmp_path, text)


# ---------------------------------------------------------------- embedding ids, positions

def test_embedding_clamps_ids_outside_the_table(tmp_path: Path) -> None:
    c = compile_text(tmp_path, spec("embedding(4, 3)", "N, 5", "int64"))
    table = next(onnx.numpy_helper.to_array(t) for t in c.onnx.graph.initializer)
    ids = np.array([[0, 3, -2, 4, 1000]], np.int64)
    got = run_ort(c.onnx, {"x": ids})
    np.testing.assert_array_equal(got[0], table[[0, 3, 0, 3, 3]])


def test_embedding_takes_float_ids(tmp_path: Path) -> None:
    """The network input arrives as float32 when ids are declared float: whole floats are ids."""
    c = compile_text(tmp_path, spec("embedding(4, 3)", "N, 3"))
    table = next(onnx.numpy_helper.to_array(t) for t in c.onnx.graph.initializer)
    got = run_ort(c.onnx, {"x": np.array([[2.0, 1.0, 7.0]], np.float32)})
    np.testing.assert_array_equal(got[0], table[[2, 1, 3]])


def test_sinusoid_table_follows_the_paper() -> None:
    table = sinusoid_table(6, 5, 10000.0)
    for pos in range(6):
        for i in range(5):
            angle = pos / 10000.0 ** (2 * (i // 2) / 5)
            assert table[pos, i] == pytest.approx(np.sin(angle) if i % 2 == 0 else np.cos(angle), abs=1e-6)


def test_causal_attention_does_not_look_ahead(tmp_path: Path) -> None:
    """Changing the last position leaves every earlier output as it was."""
    c = compile_text(tmp_path, spec("attention(2, causal=true)"))
    x = np.random.default_rng(0).standard_normal((1, 5, 8)).astype(np.float32)
    x2 = x.copy()
    x2[0, -1] += 3.0
    a, b = run_ort(c.onnx, {"x": x}), run_ort(c.onnx, {"x": x2})
    np.testing.assert_array_equal(a[0, :-1], b[0, :-1])
    assert not np.allclose(a[0, -1], b[0, -1])


def test_cls_token_is_position_zero_and_pool_cls_reads_it(tmp_path: Path) -> None:
    c = compile_text(tmp_path, spec("cls_token -> pool(cls)"))
    token = next(onnx.numpy_helper.to_array(t) for t in c.onnx.graph.initializer)
    x = np.random.default_rng(0).standard_normal((3, 5, 8)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(c.onnx, {"x": x}), np.broadcast_to(token[0], (3, 8)))


# ---------------------------------------------------------------- initialisation

def test_initialisation_defaults_and_rules(tmp_path: Path) -> None:
    body = "a: embedding(2000, 64) -> pos_embedding(16) -> cls_token -> attention(4)\n    b: lstm(64)"
    c = compile_text(tmp_path, spec(body, "N, 16", "int64"))
    w = {t.name: onnx.numpy_helper.to_array(t) for t in c.onnx.graph.initializer}
    assert abs(w["backbone.a.embedding1.weight"].std() - 1.0) < 0.02  # nn.Embedding's N(0, 1)
    assert abs(w["backbone.a.pos_embedding1.weight"].std() - 0.02) < 0.002
    assert abs(w["backbone.a.cls_token1.token"].std() - 0.02) < 0.01
    in_proj = w["backbone.a.attention1.in_proj_weight"]  # xavier_uniform: U(-a, a), a = sqrt(6 / 128)
    assert np.abs(in_proj).max() <= np.sqrt(6 / 128) and in_proj.std() > 0.8 * np.sqrt(2 / 128)
    assert not w["backbone.a.attention1.in_proj_bias"].any()
    assert not w["backbone.b.lstm1.bias_ih_l0"].any()
    rules = compile_text(tmp_path, spec(body, "N, 16", "int64", train="init normal(0.5), lstm: zeros"),
                         name="r")
    w = {t.name: onnx.numpy_helper.to_array(t) for t in rules.onnx.graph.initializer}
    assert abs(w["backbone.a.embedding1.weight"].std() - 0.5) < 0.02  # a rule beats the default
    assert not w["backbone.b.lstm1.weight_hh_l0"].any()  # a layer-kind rule reaches recurrent weights


# ---------------------------------------------------------------- the graphs

EVERY = ("a: reshape(shape=[8, 8]) -> layernorm -> lstm(6, bidirectional=true) -> gru(6, layers=2)"
         " -> rmsnorm -> pos_embedding(8) -> sinusoidal -> cls_token"
         " -> attention(2, causal=true, dropout=0.1)"
         " -> linear(6)\n    b: pool(cls)\n    c: pool(max, from=[a])\n    d: mul(from=[b, c])"
         " -> reshape([2, 3]) -> permute([0, 2, 1]) -> groupnorm(3) -> linear(4)")


def test_every_layer_is_a_standard_op_with_a_gradient_rule(tmp_path: Path) -> None:
    """The inference graph passes onnx's full check; every op is a standard ONNX op at the opset,
    and the training graph compiles (each op on the way to a weight has its rule)."""
    from dlspec.compiler import compile_training
    from dlspec.spec import load

    c = compile_text(tmp_path, spec(EVERY, "N, 1, 8, 8"))
    onnx.checker.check_model(c.onnx, full_check=True)
    ops = {n.op_type for n in c.onnx.graph.node}
    assert all(n.domain == "" for n in c.onnx.graph.node)
    assert all(onnx.defs.has(o, OPSET, "") for o in ops)
    assert {"LSTM", "GRU", "LayerNormalization", "InstanceNormalization", "Softmax", "MatMul"} <= ops
    differentiable = ops - {"Constant", "Shape", "Less", "Not", "Clip", "Range", "Mod", "Cast"}
    assert differentiable <= set(RULES), differentiable - set(RULES)
    path = tmp_path / "t.dlspec"
    path.write_text(spec(EVERY, "N, 1, 8, 8").replace("backbone", "target y: float32[N, 3, 4]\n  backbone")
                    .replace("}\n}\n", "}\n  loss mse\n}\n"))
    tg = compile_training(load(path))
    assert tg.trainable and all(n.domain == "" for n in tg.train_step.graph.node)
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    assert np.isfinite(run_ort(c.onnx, {"x": x})).all()


def test_rank2_linear_graph_is_unchanged(tmp_path: Path) -> None:
    """linear on [N, features] is still one Gemm on the input."""
    c = compile_text(tmp_path, spec("linear(3)", "N, 8"))
    assert [n.op_type for n in c.onnx.graph.node] == ["Gemm", "Identity"]
