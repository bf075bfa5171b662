"""`onnx("file.onnx", output=...)`: an ONNX graph from elsewhere as a layer. Exported from a dlspec
spec and imported back, it must infer and train exactly as the spec itself: the same outputs, the
same loss, gradients, batch-norm statistics and next parameters, name for name."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import dlspec
from dlspec import CompileError
from dlspec.compiler.graph import IR_VERSION, OPSET

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train_helpers import feeds_for, run, scalars, session  # noqa: E402

NATIVE = """
model native {
  input  x: float32[N, 2, 6, 6]
  target y: int64[N]
  backbone { a: conv(4, k=3) -> bn -> relu -> conv(6, k=3, stride=2) -> bn -> relu }
  head { gap -> flatten -> linear(3) }
  loss cross_entropy
}
train { optimizer sgd(lr=0.1, momentum=0.9)  seed 4 }
"""

IMPORTED = """
model imported {
  input  x: float32[N, 2, 6, 6]
  target y: int64[N]
  backbone onnx("native.onnx", output="OUT")
  head { gap -> flatten -> linear(3) }
  loss cross_entropy
}
train { optimizer sgd(lr=0.1, momentum=0.9)  seed 4  EXTRA }
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _pair(tmp_path: Path, extra: str = "") -> tuple[dlspec.Program, dlspec.Program, str]:
    """The native spec, the spec that imports its exported graph, and the prefix of imported names."""
    native = dlspec.load(_write(tmp_path, "native.dlspec", NATIVE))
    model = dlspec.compile(native).onnx
    onnx.save(model, str(tmp_path / "native.onnx"))
    out = next(n.output[0] for n in reversed(model.graph.node) if n.op_type == "Relu")
    imported = dlspec.load(_write(tmp_path, "imported.dlspec",
                                  IMPORTED.replace("OUT", out).replace("EXTRA", extra)))
    first = next(p.name for p in dlspec.compile(imported).params)
    return native, imported, first[: first.index("backbone.a.")]


def _batch(n: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {"x": rng.standard_normal((n, 2, 6, 6)).astype(np.float32),
            "y": rng.integers(0, 3, n).astype(np.int64)}


def test_the_imported_graph_infers_as_the_spec_it_came_from(tmp_path: Path) -> None:
    native, imported, prefix = _pair(tmp_path)
    assert prefix == "backbone."  # a whole section: backbone.<onnx name>, no layer name between
    x = {"x": _batch()["x"]}
    want = run(session(dlspec.compile(native).onnx), x)["logits"]
    got = run(session(dlspec.compile(imported).onnx), x)["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_imported_graph_trains_as_the_spec_it_came_from(tmp_path: Path) -> None:
    """Batch statistics in place of the file's inference-mode batch norm, running statistics
    updated, the file's weights as the initial values: one step equals the native one."""
    native, imported, prefix = _pair(tmp_path)
    a, b = dlspec.compile_training(native), dlspec.compile_training(imported)

    def native_name(name: str) -> str:
        return name[len(prefix):] if name.startswith(prefix) else name

    assert sorted(native_name(p) for p in b.trainable) == sorted(a.trainable)
    assert {native_name(n): v.shape for n, v in b.init.items()} == {n: v.shape for n, v in a.init.items()}
    for name, value in b.init.items():  # the file's weights are the initial values
        np.testing.assert_array_equal(value, a.init[native_name(name)], err_msg=name)
    batch = _batch()
    want = run(session(a.train_step), feeds_for(a.train_step, a.init, batch, scalars(0.1)))
    got = run(session(b.train_step), feeds_for(b.train_step, b.init, batch, scalars(0.1)))
    # the stages' gradient norms are named after the layers: one stage here, two there
    want = {k: v for k, v in want.items() if not k.startswith("grad_norm:")}
    got = {k: v for k, v in got.items() if not k.startswith("grad_norm:")}
    assert {native_name(k) for k in got} == set(want)
    for name, value in got.items():
        np.testing.assert_allclose(value, want[native_name(name)], rtol=2e-5, atol=1e-6, err_msg=name)
    assert any(k.endswith("bn1.running_var.next") for k in got)  # running statistics move


def test_freeze_lr_mult_and_init_rules_reach_imported_weights(tmp_path: Path) -> None:
    _, imported, prefix = _pair(tmp_path)
    conv = f"{prefix}backbone.a.conv1.weight"
    extra = f"freeze {prefix}backbone.a.conv1  init {prefix}backbone.a.conv2: zeros"
    _, frozen, _ = _pair(tmp_path, extra)
    tg = dlspec.compile_training(frozen)
    assert conv not in tg.trainable and conv in tg.frozen
    assert not tg.init[f"{prefix}backbone.a.conv2.weight"].any()
    assert dlspec.compile_training(imported).init[f"{prefix}backbone.a.conv2.weight"].any()


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], out: str,
           shape: list[int | str]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("in", TP.FLOAT, ["batch", 2, 5, 5])],
                              [helper.make_tensor_value_info(out, TP.FLOAT, shape)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def _spec(tmp_path: Path, model: onnx.ModelProto, call: str) -> dlspec.Program:
    onnx.save(model, str(tmp_path / "m.onnx"))
    return dlspec.load(_write(tmp_path, "s.dlspec", f"""
        model s {{
          input x: float32[N, 2, 5, 5]
          target y: float32[N]
          backbone {call}
          head {{ flatten -> linear(1) }}
          loss mse
        }}
        """))


def test_float_constants_on_weight_inputs_are_parameters(tmp_path: Path) -> None:
    """Weights stored as Constant nodes (as some exporters write them) train; other constants,
    and integer ones, stay constants."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 2, 3, 3)).astype(np.float32))
    nodes = [helper.make_node("Constant", [], ["w"], value=w),
             helper.make_node("Conv", ["in", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Constant", [], ["half"], value=helper.make_tensor("h", TP.FLOAT, [], [0.5])),
             helper.make_node("Mul", ["c", "half"], ["out"])]
    prog = _spec(tmp_path, _model(nodes, [], "out", ["batch", 3, 5, 5]), 'onnx("m.onnx")')
    tg = dlspec.compile_training(prog)
    weights = [p for p in tg.trainable if p.startswith("backbone.")]
    assert len(weights) == 1 and weights[0].endswith(".w"), tg.trainable
    np.testing.assert_array_equal(tg.init[weights[0]], numpy_helper.to_array(w))
    step = run(session(tg.train_step), feeds_for(tg.train_step, tg.init, {
        "x": np.ones((2, 2, 5, 5), np.float32), "y": np.zeros(2, np.float32)}, scalars(0.01)))
    assert not np.array_equal(step[f"{weights[0]}.next"], tg.init[weights[0]])


def test_newer_ops_in_an_imported_graph_train_as_the_ops_they_compute(tmp_path: Path) -> None:
    """Swish and RMSNormalization (ONNX opsets 24 and 23) in a graph that imports OPSET: the
    layer computes them (against numpy) and their gradients pass central differences."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), "w")
    scale = numpy_helper.from_array((1 + 0.1 * rng.standard_normal(5)).astype(np.float32), "scale")
    nodes = [helper.make_node("Conv", ["in", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Swish", ["c"], ["s"], alpha=0.7),
             helper.make_node("RMSNormalization", ["s", "scale"], ["out"], axis=-1, epsilon=1e-5)]
    model = _model(nodes, [w, scale], "out", ["batch", 3, 5, 5])
    prog = _spec(tmp_path, model, 'onnx("m.onnx", output="out")')
    compiled = dlspec.compile(prog)
    assert not {"Swish", "RMSNormalization"} & {n.op_type for n in compiled.onnx.graph.node}
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    torch = pytest.importorskip("torch")
    weight = torch.from_numpy(numpy_helper.to_array(w).copy())
    c = torch.nn.functional.conv2d(torch.from_numpy(x), weight, padding=1)
    swish = (c * torch.sigmoid(0.7 * c)).numpy()
    want = swish / np.sqrt((swish ** 2).mean(-1, keepdims=True) + 1e-5) * numpy_helper.to_array(scale)
    name = next(o for n in compiled.onnx.graph.node for o in n.output if o.endswith("out"))
    compiled.onnx.graph.output.append(helper.make_tensor_value_info(name, TP.FLOAT, None))
    got = session(compiled.onnx).run([name], {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    report = dlspec.api.gradcheck_spec(prog, batch=2)
    failed = {r.name: r.worst for r in report if not r.worst <= 1e-5}
    assert report and not failed, failed


def test_dropout_follows_the_train_mode(tmp_path: Path) -> None:
    ratio = numpy_helper.from_array(np.array(0.5, np.float32), "ratio")
    nodes = [helper.make_node("Dropout", ["in", "ratio"], ["out"])]
    prog = _spec(tmp_path, _model(nodes, [ratio], "out", ["batch", 2, 5, 5]), 'onnx("m.onnx")')
    x = np.ones((4, 2, 5, 5), np.float32)
    np.testing.assert_array_equal(run(session(dlspec.compile(prog).onnx), {"x": x})["prediction"].shape, (4,))
    tg = dlspec.compile_training(prog)
    assert not [n for n in tg.train_step.graph.node if n.op_type == "Dropout"]  # dlspec's own dropout
    assert any(n.op_type == "GreaterOrEqual" for n in tg.train_step.graph.node)


@pytest.mark.parametrize("call,message", [
    ('onnx("missing.onnx")', "no ONNX file"),
    ('onnx("m.onnx", output="nope")', "has no value named 'nope'"),
    ('onnx("bad.onnx")', "is not an ONNX model"),
])
def test_a_bad_import_is_a_located_error(tmp_path: Path, call: str, message: str) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage" * 5)
    nodes = [helper.make_node("Relu", ["in"], ["out"])]
    prog = _spec(tmp_path, _model(nodes, [], "out", ["batch", 2, 5, 5]), call)
    with pytest.raises(CompileError, match=message) as err:
        dlspec.compile(prog)
    assert err.value.span is not None and err.value.span.line == 5


def test_control_flow_and_other_domains_are_refused_by_name(tmp_path: Path) -> None:
    odd = helper.make_node("Inverse", ["in"], ["out"], domain="com.microsoft", name="inv")
    model = _model([odd], [], "out", ["batch", 2, 5, 5])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    prog = _spec(tmp_path, model, 'onnx("m.onnx")')
    with pytest.raises(CompileError, match="node inv .* com.microsoft.Inverse, outside the standard ONNX"):
        dlspec.compile(prog)
    branch = helper.make_graph([helper.make_node("Identity", ["in"], ["b"])], "branch", [],
                               [helper.make_tensor_value_info("b", TP.FLOAT, ["batch", 2, 5, 5])])
    cond = numpy_helper.from_array(np.array(True), "cond")
    branchy = helper.make_node("If", ["cond"], ["out"], name="choose", then_branch=branch, else_branch=branch)
    prog = _spec(tmp_path, _model([branchy], [cond], "out", ["batch", 2, 5, 5]), 'onnx("m.onnx")')
    with pytest.raises(CompileError, match="node choose of the ONNX graph is an If: control flow"):
        dlspec.compile(prog)


def _shape_of(name: str, out: str) -> onnx.NodeProto:
    return helper.make_node("Shape", ["in"], [out], name=name)


BAD_OUTPUTS = {  # what each graph's output is, and the located error it gets (internal errors before)
    "a constant": ([], [numpy_helper.from_array(np.ones((1, 2), np.float32), "out")],
                   "'out' of m.onnx is a constant, not computed from the graph's input"),
    "a cycle": ([helper.make_node("Add", ["in", "z"], ["out"]), helper.make_node("Relu", ["out"], ["z"])],
                [], "reads 'z' before any node computes it"),
    "int64": ([helper.make_node("Cast", ["in"], ["out"], to=TP.INT64)], [],
              "'out' of m.onnx is int64: the layers after it take float tensors"),
    "the batch moved": ([helper.make_node("Transpose", ["in"], ["out"], perm=[1, 0, 2, 3])], [],
                        r"is \[2, N, 5, 5\]: the layers after it need the batch as its first axis"),
    "sizes unknown": ([_shape_of("s", "s"), helper.make_node("Slice", ["s", "zero", "one"], ["n"]),
                       helper.make_node("Concat", ["n", "one", "minus1"], ["to"], axis=0),
                       helper.make_node("Reshape", ["in", "to"], ["out"])],
                      [numpy_helper.from_array(np.array(v, np.int64), n)
                       for n, v in (("zero", [0]), ("one", [1]), ("minus1", [-1]))],
                      "ONNX shape inference cannot tell its sizes after the batch"),
    "zero size": ([helper.make_node("Slice", ["in", "five", "five", "two"], ["out"])],
                  [numpy_helper.from_array(np.array(v, np.int64), n)
                   for n, v in (("five", [5]), ("two", [2]))],
                  r"is \[N, 2, 0, 5\]: a size of 0 leaves nothing to compute"),
}


@pytest.mark.parametrize("case", sorted(BAD_OUTPUTS))
def test_an_output_the_layers_after_it_cannot_take_is_a_located_error(tmp_path: Path, case: str) -> None:
    nodes, inits, message = BAD_OUTPUTS[case]
    model = _model(nodes, inits, "out", ["batch", 2, 5, 5])
    model.graph.output[0].CopyFrom(helper.make_empty_tensor_value_info("out"))  # what inference tells
    prog = _spec(tmp_path, model, 'onnx("m.onnx")')
    with pytest.raises(CompileError, match=message) as err:
        dlspec.compile(prog)
    assert err.value.span is not None and err.value.span.line == 5


def test_a_float64_output_is_cast_for_the_layers_after_it(tmp_path: Path) -> None:
    graph = _model([helper.make_node("Cast", ["in"], ["out"], to=TP.DOUBLE)], [], "out", ["batch", 2, 5, 5])
    graph.graph.output[0].type.tensor_type.elem_type = TP.DOUBLE
    model = dlspec.compile(_spec(tmp_path, graph, 'onnx("m.onnx")'))
    x = np.random.default_rng(0).random((3, 2, 5, 5), np.float32)
    assert session(model.onnx).run(None, {"x": x})[0].shape == (3,)  # linear(1) with the mse target [N]


def test_an_input_of_another_shape_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["in"], ["out"])], "g",
                              [helper.make_tensor_value_info("in", TP.FLOAT, ["batch", 3, 5, 5])],
                              [helper.make_tensor_value_info("out", TP.FLOAT, ["batch", 3, 5, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    prog = _spec(tmp_path, model, 'onnx("m.onnx")')
    with pytest.raises(CompileError, match=r"input 'in' of the ONNX graph is \[batch, 3, 5, 5\]; the chain "
                                           r"gives \[N, 2, 5, 5\]"):
        dlspec.compile(prog)


def test_inside_a_chain_the_layer_has_its_own_name(tmp_path: Path) -> None:
    model = _model([helper.make_node("Conv", ["in", "w"], ["out"], name="c")],
                   [numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")], "out",
                   ["batch", 2, 5, 5])
    names = [p.name for p in dlspec.compile(_spec(tmp_path, model, '{ relu -> onnx("m.onnx") }')).params]
    assert names[0] == "backbone.onnx1.w"
    names = [p.name for p in dlspec.compile(_spec(tmp_path, model, '{ stem: onnx("m.onnx") }')).params]
    assert names[0] == "backbone.stem.w"


def test_ops_without_a_gradient_rule_are_listed_when_the_spec_is_checked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dlspec.compiler.grad import RULES

    monkeypatch.delitem(RULES, "Sigmoid")  # as if Sigmoid were an op without a rule
    nodes = [helper.make_node("Conv", ["in", "w"], ["h"], name="conv"),
             helper.make_node("Sigmoid", ["h"], ["out"], name="squash")]
    model = _model(nodes, [numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")], "out",
                   ["batch", 2, 5, 5])
    notes = dlspec.compile(_spec(tmp_path, model, 'onnx("m.onnx")')).notes
    said = "training cannot pass gradients through Sigmoid (node backbone/squash"
    assert any(said in n for n in notes), notes
    text = (tmp_path / "s.dlspec").read_text()  # frozen weights need no gradient through it
    (tmp_path / "s.dlspec").write_text(text + "train { freeze backbone }\n")
    assert not dlspec.compile(dlspec.load(tmp_path / "s.dlspec")).notes
