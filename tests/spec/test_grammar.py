"""Every construct of the .dlspec language, asserted on the validated spec and the compiled model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from dlspec import spec
from dlspec.compiler import Compiled, compile_model
from dlspec.spec import model as m
from dlspec.spec.errors import SpecError

IMAGE = """
  input  image: float32[N, 3, 16, 16]
  target label: int64[N]
"""


def compiled(path: Path, name: str | None = None) -> Compiled:
    return compile_model(spec.load(path), name)


def paths(c: Compiled) -> list[str]:
    return [r.path for r in c.records]


def record(c: Compiled, path: str):  # type: ignore[no-untyped-def]
    (found,) = [r for r in c.records if r.path == path]
    return found


def param_shapes(c: Compiled) -> dict[str, tuple[int, ...]]:
    return {p.name: p.shape for p in c.params}


def initializer(c: Compiled, name: str) -> np.ndarray:
    (found,) = [t for t in c.onnx.graph.initializer if t.name == name]
    return numpy_helper.to_array(found)


def same(a: object, cls: type[m.Node], **fields: object) -> bool:
    """`a` is what cls(**fields) validates to (spans, which `==` also compares, left out)."""
    return type(a) is cls and a.model_dump() == cls.model_validate(fields).model_dump()


def run_onnx(c: Compiled, **inputs: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(c.onnx.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)[0]  # type: ignore[no-any-return]


# ---- imports ----
def test_import_relative_to_the_importing_file(write_spec) -> None:
    write_spec("""
        block double(c) { conv(c) -> conv(c) }
    """, "lib/inner/double.dlspec")
    write_spec("""
        import "inner/double.dlspec"      # relative to lib/, not to the root file
        block twice(c) { double(c) -> relu }
    """, "lib/blocks.dlspec")
    root = write_spec(f"""
        import "lib/blocks.dlspec"
        model m {{{IMAGE}
          backbone {{ s: twice(4) }}
        }}
    """)
    prog = spec.load(root)
    assert {"double", "twice"} <= set(prog.blocks)
    assert prog.blocks["double"].span is not None
    assert Path(prog.blocks["double"].span.file).name == "double.dlspec"
    assert prog.root_models == ["m"]
    c = compile_model(prog)
    assert paths(c) == ["backbone.s.0.conv1", "backbone.s.0.conv2", "backbone.s.relu1"]
    assert "backbone.s.0.conv1.weight" in param_shapes(c)


def test_diamond_import_is_loaded_once(write_spec) -> None:
    write_spec("block base(c) { conv(c) }\n", "lib/base.dlspec")
    write_spec('import "base.dlspec"\nblock left(c) { base(c) }\n', "lib/left.dlspec")
    write_spec('import "./base.dlspec"\nblock right(c) { base(c) }\n', "lib/right.dlspec")
    root = write_spec(f"""
        import "lib/left.dlspec"
        import "lib/right.dlspec"
        import "lib/../lib/base.dlspec"
        model m {{{IMAGE}
          backbone {{ s: left(4) -> right(4) -> base(4) }}
        }}
    """)
    c = compiled(root)  # a second load of base.dlspec would say "block 'base' is already defined"
    assert paths(c) == ["backbone.s.0.conv1", "backbone.s.1.conv1", "backbone.s.2.conv1"]


def test_import_cycle_is_an_error(write_spec) -> None:
    write_spec('import "b.dlspec"\n', "a.dlspec")
    write_spec('import "a.dlspec"\n', "b.dlspec")
    root = write_spec('import "a.dlspec"\n')
    with pytest.raises(SpecError, match=r"import cycle: a\.dlspec -> b\.dlspec -> a\.dlspec"):
        spec.load(root)


# ---- blocks ----
def test_block_defaults_including_one_computed_from_another_parameter(write_spec) -> None:
    root = write_spec(f"""
        block neck2(out, mid=out / 4, k=3) {{
          conv(mid, k=1) -> conv(mid, k=k) -> conv(out, k=1)
        }}
        model m {{{IMAGE}
          backbone {{
            a: neck2(64)
            b: neck2(32, mid=2, k=5)
            c: bottleneck(64)
          }}
        }}
    """)
    prog = spec.load(root)
    blk = prog.blocks["neck2"]
    assert [p.name for p in blk.params] == ["out", "mid", "k"]
    assert blk.params[0].default is None
    mid = blk.params[1].default
    assert isinstance(mid, m.Op) and mid.op == "div"
    assert isinstance(mid.args[0], m.Name) and mid.args[0].id == "out"
    assert isinstance(mid.args[1], m.Num) and mid.args[1].value == 4
    c = compile_model(prog)
    shapes = param_shapes(c)
    assert shapes["backbone.a.conv1.weight"] == (16, 3, 1, 1)      # mid = 64 / 4
    assert shapes["backbone.a.conv2.weight"] == (16, 16, 3, 3)
    assert shapes["backbone.a.conv3.weight"] == (64, 16, 1, 1)
    assert shapes["backbone.b.conv1.weight"] == (2, 64, 1, 1)      # mid given
    assert shapes["backbone.b.conv2.weight"] == (2, 2, 5, 5)       # k given
    assert shapes["backbone.c.conv1.weight"] == (16, 32, 1, 1)     # the stdlib bottleneck: mid=out / 4


def test_a_parameter_names_a_layer_or_a_block(write_spec) -> None:
    root = write_spec(f"""
        block unit(c, activation=relu) {{ conv(c) -> activation }}
        model m {{{IMAGE}
          backbone {{
            a: unit(4)
            b: unit(4, activation=gelu)
            c: unit(4, activation=cifar_stem)
          }}
          head mlp(10, hidden=[8], activation=silu)
        }}
    """)
    c = compiled(root)
    kinds = {r.path: r.kind for r in c.records}
    assert kinds["backbone.a.relu1"] == "relu"
    assert kinds["backbone.b.gelu1"] == "gelu"
    assert "backbone.b.relu1" not in kinds
    assert kinds["backbone.c.0.conv1"] == "conv"               # a block passed by name
    assert param_shapes(c)["backbone.c.0.conv1.weight"] == (64, 4, 3, 3)   # cifar_stem's width=64
    assert kinds["head.silu1"] == "silu"


def test_stages_and_chains_name_layers_by_spec_path(write_spec) -> None:
    root = write_spec(f"""
        model m {{{IMAGE}
          backbone {{
            stem:   conv(8) -> bn -> relu
            stage1: conv(8) -> relu -> conv(8) -> maxpool(2)
          }}
        }}
    """)
    c = compiled(root)
    assert paths(c) == ["backbone.stem.conv1", "backbone.stem.bn1", "backbone.stem.relu1",
                        "backbone.stage1.conv1", "backbone.stage1.relu1", "backbone.stage1.conv2",
                        "backbone.stage1.maxpool1"]
    assert record(c, "backbone.stage1.maxpool1").shapes == [(None, 8, 8, 8)]
    names = param_shapes(c)
    assert "backbone.stem.conv1.bias" not in names        # a conv followed by bn has no bias
    assert "backbone.stage1.conv1.bias" in names
    assert c.model.backbone is not None and c.model.backbone.body is not None
    stages = c.model.backbone.body.stages
    assert [s.name for s in stages] == ["stem", "stage1"]
    assert [i.name for i in stages[0].chain.items if isinstance(i, m.Call)] == ["conv", "bn", "relu"]


def test_repeat_with_a_number_and_with_a_block_parameter(write_spec) -> None:
    root = write_spec(f"""
        block rep(c, n=2) {{ conv(c) * n }}
        model m {{{IMAGE}
          backbone {{
            a: conv(4) * 3
            b: rep(4, n=4)
            c: basic(8) * 2
          }}
        }}
    """)
    c = compiled(root)
    assert [p for p in paths(c) if p.startswith("backbone.a")] == [
        "backbone.a.0.conv1", "backbone.a.1.conv1", "backbone.a.2.conv1"]
    assert [p for p in paths(c) if p.startswith("backbone.b")] == [
        f"backbone.b.{i}.conv1" for i in range(4)]
    names = param_shapes(c)
    assert names["backbone.c.0.conv1.weight"] == (8, 4, 3, 3)
    assert names["backbone.c.1.conv1.weight"] == (8, 8, 3, 3)   # each copy has its own parameters
    assert "backbone.c.0.shortcut.conv.weight" in names          # 4 -> 8 channels: projected
    assert "backbone.c.1.shortcut.conv.weight" not in names
    stage_a = c.model.backbone.body.stages[0]  # type: ignore[union-attr]
    rep = stage_a.chain.items[0]
    assert isinstance(rep, m.Repeat) and isinstance(rep.times, m.Num) and rep.times.value == 3
    stage_b_block = spec.load(root).blocks["rep"].body.stages[0].chain.items[0]
    assert isinstance(stage_b_block, m.Repeat) and isinstance(stage_b_block.times, m.Name)


def test_group_repeated(write_spec) -> None:
    root = write_spec(f"""
        model m {{{IMAGE}
          backbone {{ s: (conv(8) -> bn) * 2 -> relu }}
        }}
    """)
    c = compiled(root)
    assert paths(c) == ["backbone.s.0.conv1", "backbone.s.0.bn1", "backbone.s.1.conv1",
                        "backbone.s.1.bn1", "backbone.s.relu1"]
    rep = c.model.backbone.body.stages[0].chain.items[0]  # type: ignore[union-attr]
    assert isinstance(rep, m.Repeat) and isinstance(rep.body, m.Group)
    assert "backbone.s.1.conv1.bias" not in param_shapes(c)   # inside the group, bn follows conv


def test_residual_projects_automatically_when_channels_or_stride_change(write_spec) -> None:
    root = write_spec(f"""
        model m {{{IMAGE}
          backbone {{
            same:    conv(8) -> residual {{ conv(8) -> bn }}
            wider:   residual {{ conv(16) -> bn }}
            strided: residual {{ conv(16, stride=2) -> bn }}
            both:    residual {{ conv(32, stride=2) }} -> residual {{ conv(64) }}
          }}
        }}
    """)
    c = compiled(root)
    shapes = param_shapes(c)
    assert not [n for n in shapes if n.startswith("backbone.same.shortcut")]
    assert shapes["backbone.wider.shortcut.conv.weight"] == (16, 8, 1, 1)
    assert "backbone.wider.shortcut.conv.bias" not in shapes
    assert shapes["backbone.wider.shortcut.bn.running_var"] == (16,)
    assert shapes["backbone.strided.shortcut.conv.weight"] == (16, 16, 1, 1)
    assert record(c, "backbone.strided.shortcut.conv").shapes == [(None, 16, 8, 8)]
    (node,) = [n for n in c.onnx.graph.node if n.input[1:2] == ["backbone.strided.shortcut.conv.weight"]]
    assert [list(a.ints) for a in node.attribute if a.name == "strides"] == [[2, 2]]
    # two projected residuals in one chain: the second shortcut is numbered
    assert shapes["backbone.both.shortcut.conv.weight"] == (32, 16, 1, 1)
    assert shapes["backbone.both.shortcut2.conv.weight"] == (64, 32, 1, 1)


def test_residual_identity_shortcut_adds_the_input(write_spec) -> None:
    root = write_spec("""
        model m {
          input x: float32[N, 2, 4, 4]
          backbone { s: residual(shortcut=identity) { identity } -> residual { relu } }
        }
    """)
    c = compiled(root)
    assert c.params == []
    res = c.model.backbone.body.stages[0].chain.items[0]  # type: ignore[union-attr]
    assert isinstance(res, m.Residual)
    assert isinstance(res.kwargs["shortcut"], m.Name) and res.kwargs["shortcut"].id == "identity"
    x = np.random.default_rng(0).normal(size=(3, 2, 4, 4)).astype(np.float32)
    y = 2 * x
    np.testing.assert_allclose(run_onnx(c, x=x), np.maximum(y, 0) + y, rtol=1e-6)


def test_for_loop_unrolls_over_a_list(write_spec) -> None:
    root = write_spec("""
        block tower(hidden) { for h in hidden { linear(h) -> relu } }
        model m {
          input x: float32[N, 5]
          backbone {
            a: for h in [32, 16] { linear(h) -> relu }
            b: tower([7, 6, 5])
          }
          head mlp(2, hidden=[4])
        }
    """)
    c = compiled(root)
    shapes = param_shapes(c)
    assert shapes["backbone.a.linear1.weight"] == (32, 5)
    assert shapes["backbone.a.linear2.weight"] == (16, 32)
    assert [shapes[f"backbone.b.linear{i}.weight"] for i in (1, 2, 3)] == [(7, 16), (6, 7), (5, 6)]
    assert shapes["head.linear1.weight"] == (4, 5)
    assert shapes["head.linear2.weight"] == (2, 4)
    loop = c.model.backbone.body.stages[0].chain.items[0]  # type: ignore[union-attr]
    assert isinstance(loop, m.ForEach) and loop.var == "h"
    assert isinstance(loop.iter, m.ListExpr) and [i.value for i in loop.iter.items] == [32, 16]  # type: ignore[union-attr]


def test_from_takes_inputs_from_named_stages(write_spec) -> None:
    root = write_spec(f"""
        model m {{{IMAGE}
          backbone {{
            stage1: conv(8)
            stage2: conv(8)
            summed: add(from=[stage1, stage2])
            joined: concat(from=[stage1, stage2, summed])
          }}
          head {{
            out: gap(from=[stage2]) -> flatten -> linear(10)
          }}
          loss cross_entropy
        }}
    """)
    c = compiled(root)
    assert record(c, "backbone.summed.add1").shapes == [(None, 8, 16, 16)]
    assert record(c, "backbone.joined.concat1").shapes == [(None, 24, 16, 16)]
    assert param_shapes(c)["head.out.linear1.weight"] == (10, 8)
    add = c.model.backbone.body.stages[2].chain.items[0]  # type: ignore[union-attr]
    assert isinstance(add, m.Call) and isinstance(add.kwargs["from"], m.ListExpr)
    assert [i.id for i in add.kwargs["from"].items] == ["stage1", "stage2"]  # type: ignore[union-attr]
    assert c.output.name == "logits" and c.output.shape == (None, 10)


def test_comments_are_ignored(write_spec, tmp_path: Path) -> None:
    plain = write_spec(f"""
        model m {{{IMAGE}
          backbone {{ s: conv(8) -> relu }}
        }}
    """, "plain.dlspec")
    commented = write_spec("""
        # a file comment
        model m {   # trailing comment
          input  image: float32[N, 3, 16, 16]   # input
          # between items
          target label: int64[N]
          backbone {
            s: conv(8)   # a conv
               -> relu   # conv(16) -> in a comment is not code
          }
        }
        # end
    """, "commented.dlspec")
    a, b = spec.load(plain).models["m"], spec.load(commented).models["m"]
    assert a.model_dump() == b.model_dump()


# ---- models ----
def test_model_extends_replaces_named_sections_whole_and_keeps_the_others(write_spec) -> None:
    root = write_spec(f"""
        model base {{{IMAGE}
          features {{ image = image / 255 }}
          backbone {{
            s: conv(8)
            t: conv(8)
          }}
          head classify(classes=10)
          loss cross_entropy(label_smoothing=0.1)
        }}
        model child extends base {{
          backbone {{ u: conv(4) }}
          loss cross_entropy
        }}
        model grandchild extends child {{
          input image: float32[N, 3, 8, 8]
        }}
    """)
    prog = spec.load(root)
    base, child, grand = prog.models["base"], prog.models["child"], prog.models["grandchild"]
    assert child.extends == "base" and grand.extends == "child"
    assert child.inputs == base.inputs and child.targets == base.targets
    assert child.features == base.features and child.head == base.head
    assert child.backbone != base.backbone
    assert [s.name for s in child.backbone.body.stages] == ["u"]  # type: ignore[union-attr]
    assert child.loss is not None and child.loss.terms[0].loss.label_smoothing == 0.0  # type: ignore[union-attr]
    assert grand.backbone == child.backbone and grand.inputs[0].shape == ["N", 3, 8, 8]
    c = compile_model(prog, "child")
    assert paths(c)[:1] == ["backbone.u.conv1"]
    assert not [p for p in paths(c) if p.startswith(("backbone.s", "backbone.t"))]
    assert compile_model(prog, "grandchild").records[0].shapes == [(None, 4, 8, 8)]


def test_train_extends_overrides_settings_and_keeps_the_rest(write_spec) -> None:
    root = write_spec(f"""
        model m {{{IMAGE}
          backbone {{ s: conv(8) }}
          head classify(classes=10)
          loss cross_entropy
        }}
        train base {{
          data digits
          batch 64
          epochs 10
          optimizer sgd(lr=0.1)
        }}
        train fast extends base {{
          epochs 2
          optimizer adam(lr=1e-3)
        }}
        train extends fast {{
          seed 7
        }}
    """)
    prog = spec.load(root)
    base, fast = prog.trains["base"], prog.trains["fast"]
    assert (base.batch, base.epochs, base.optimizer.kind) == (64, 10, "sgd")  # type: ignore[union-attr]
    assert fast.extends == "base"
    assert (fast.batch, fast.epochs, fast.optimizer.kind) == (64, 2, "adam")  # type: ignore[union-attr]
    assert fast.data == base.data
    last = prog.train("m")
    assert last is not None and last.name is None and last.extends == "fast"
    assert (last.seed, last.epochs, last.batch) == (7, 2, 64)


# ---- features ----
def test_features_arithmetic_precedence_and_functions(write_spec) -> None:
    root = write_spec("""
        model f {
          input a: float32[N]
          input b: float32[N]
          features {
            p1 = a + b * 2
            p2 = (a + b) * 2
            p3 = a - b - 1
            p4 = a / b / 2
            p5 = -a ** 2
            p6 = 2 ** -1 * a
            p7 = a ** 2 ** 0.5
            p8 = -(a - b) + -b
            p9 = log(a) + exp(b) - sqrt(a) * abs(a - b)
            p10 = pow(a, 3) + min(a, b, 1) + max(a, 0.5) + clip(b, 0.2, 0.8)
            a = clip(a, 0.5, 3)                 # replaces the input in place
          }
          head { out: identity }
        }
    """)
    prog = spec.load(root)
    defs = {d.name: d.expr for d in prog.models["f"].features.defs}  # type: ignore[union-attr]
    p1 = defs["p1"]
    assert isinstance(p1, m.Op) and p1.op == "add"
    assert isinstance(p1.args[1], m.Op) and p1.args[1].op == "mul"
    p5 = defs["p5"]
    assert isinstance(p5, m.Op) and p5.op == "neg" and isinstance(p5.args[0], m.Op) and p5.args[0].op == "pow"
    p3 = defs["p3"]
    assert isinstance(p3, m.Op) and p3.op == "sub" and isinstance(p3.args[0], m.Op)  # (a - b) - 1
    assert isinstance(defs["p9"], m.Op) and isinstance(defs["p10"], m.Op)
    c = compile_model(prog)
    rng = np.random.default_rng(0)
    a = rng.uniform(0.1, 4.0, 16).astype(np.float32)
    b = rng.uniform(0.1, 1.0, 16).astype(np.float32)
    out = run_onnx(c, a=a, b=b)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    want = [
        np.clip(a64, 0.5, 3), b64,
        a64 + b64 * 2, (a64 + b64) * 2, a64 - b64 - 1, a64 / b64 / 2, -(a64**2), 0.5 * a64,
        a64 ** (2**0.5), -(a64 - b64) - b64,
        np.log(a64) + np.exp(b64) - np.sqrt(a64) * np.abs(a64 - b64),
        a64**3 + np.minimum(np.minimum(a64, b64), 1) + np.maximum(a64, 0.5) + np.clip(b64, 0.2, 0.8),
    ]
    assert out.shape == (16, 12)   # inputs then features, stacked as columns
    np.testing.assert_allclose(out, np.stack(want, axis=1), rtol=1e-5, atol=1e-5)


# ---- training ----
def test_every_train_setting(write_spec) -> None:
    root = write_spec(f"""
        model m {{{IMAGE}
          backbone {{ stem: conv(8) -> bn -> relu }}
          head classify(classes=10)
          loss cross_entropy
        }}
        train adam_csv {{
          data      csv("land.csv", target=price, test=0.3)
          optimizer adamw(lr=3e-3, betas=[0.8, 0.99], eps=1e-6)
          schedule  step(every=10, gamma=0.5)
          clip      grad_value(0.5)
        }}
        train bundled {{
          data      iris(test=0.25)
          optimizer adam
          schedule  constant
        }}
        train {{
          model     m
          data      npz("cifar.npz", image=x, label=y, test=0.1, val=0.05)
          batch     32 * 4
          epochs    3
          optimizer sgd(lr=0.1, momentum=0.9, nesterov=true, weight_decay=5e-4)
          schedule  cosine(warmup=1, min_lr=1e-5, scale_with_batch=256)
          init      kaiming_uniform, linear: zeros, backbone.stem.conv1: constant(0.5)
          clip      grad_norm(1.0)
          augment   crop(4) -> hflip(p=0.25) -> noise(0.02)
          seed      3
          from      "pretrained.onnx"
          freeze    backbone.stem, head.linear1
          lr_mult   backbone: 0.1, backbone.stem.conv1: 0
        }}
    """)
    prog = spec.load(root)
    t = prog.train("m")   # the last train block of the root file that applies to m
    assert t is not None and t.model == "m"
    assert isinstance(t.data, m.NpzData)
    assert (t.data.path, t.data.fields, t.data.test, t.data.val) == (
        "cifar.npz", {"image": "x", "label": "y"}, 0.1, 0.05)
    assert (t.batch, t.epochs, t.seed) == (128, 3, 3)
    assert same(t.optimizer, m.Sgd, kind="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    assert same(t.schedule, m.Schedule, kind="cosine", warmup=1, min_lr=1e-5, scale_with_batch=256)
    assert [(r.target, r.init.kind) for r in t.init] == [
        (None, "kaiming_uniform"), ("linear", "zeros"), ("backbone.stem.conv1", "constant")]
    assert t.init[2].init.value == 0.5
    assert same(t.clip, m.GradNorm, kind="grad_norm", max_norm=1.0)
    assert [(a.kind, a.amount, a.p) for a in t.augment] == [
        ("crop", 4.0, 0.5), ("hflip", 1.0, 0.25), ("noise", 0.02, 0.5)]
    assert t.from_ == "pretrained.onnx"
    assert t.freeze == ["backbone.stem", "head.linear1"]
    assert [(r.target, r.value) for r in t.lr_mult] == [("backbone", 0.1), ("backbone.stem.conv1", 0.0)]

    other = prog.trains["adam_csv"]
    assert same(other.data, m.CsvData, kind="csv", path="land.csv", target="price", test=0.3)
    assert same(other.optimizer, m.Adam, kind="adamw", lr=3e-3, betas=(0.8, 0.99), eps=1e-6)
    assert same(other.schedule, m.Schedule, kind="step", every=10, gamma=0.5)
    assert same(other.clip, m.GradValue, kind="grad_value", limit=0.5)
    assert (other.batch, other.epochs, other.seed) == (32, 10, 0)   # defaults
    bundled = prog.trains["bundled"]
    assert same(bundled.data, m.Bundled, kind="iris", test=0.25)
    assert same(bundled.optimizer, m.Adam, kind="adam")

    # the init rules of the root file's train block apply when compiling, the most specific winning
    c = compile_model(prog)
    assert np.all(initializer(c, "backbone.stem.conv1.weight") == 0.5)
    assert np.all(initializer(c, "head.linear1.weight") == 0.0)


def test_the_train_seed_drives_initialisation(write_spec) -> None:
    text = f"""
        model m {{{IMAGE}
          backbone {{ s: conv(8) }}
        }}
        train {{ seed %d }}
    """
    w = [initializer(compiled(write_spec(text % s, f"s{s}.dlspec")), "backbone.s.conv1.weight")
         for s in (1, 1, 2)]
    assert np.array_equal(w[0], w[1]) and not np.array_equal(w[0], w[2])


def test_loss_weighted_sums(write_spec) -> None:
    root = write_spec("""
        model two {
          input  x: float32[N, 4]
          target label: int64[N]
          target y: float32[N, 3]
          head { out: linear(3) }
          loss cross_entropy(target=label) + 0.5 * mse(target=y)
        }
        model short {
          input  x: float32[N, 4]
          target y: float32[N, 3]
          head { out: linear(3) }
          loss cross_entropy + 0.5 * mse(target=y)
        }
        model reg {
          input  x: float32[N, 4]
          target y: float32[N]
          head regress(hidden=[8])
          loss 2 * l1 + huber(delta=0.5) + 0.25 * mse
        }
    """)
    prog = spec.load(root)
    two = prog.models["two"].loss
    assert two is not None
    assert [(t.weight, t.loss.kind, t.target) for t in two.terms] == [
        (1.0, "cross_entropy", "label"), (0.5, "mse", "y")]
    short = prog.models["short"].loss
    assert short is not None
    assert [(t.weight, t.loss.kind, t.target) for t in short.terms] == [
        (1.0, "cross_entropy", None), (0.5, "mse", "y")]
    reg = prog.models["reg"].loss
    assert reg is not None
    assert [(t.weight, t.loss.kind) for t in reg.terms] == [(2.0, "l1"), (1.0, "huber"), (0.25, "mse")]
    assert same(reg.terms[1].loss, m.Huber, kind="huber", delta=0.5)
    c = compile_model(prog, "two")
    assert (c.output.name, c.output.shape) == ("logits", (None, 3))
    c = compile_model(prog, "reg")
    assert (c.output.name, c.output.shape) == ("prediction", (None,))   # [N, 1] squeezed to the target


# ---- the standard library against torchvision's numbers ----
@pytest.mark.parametrize("backbone, params", [("resnet18", 11_689_512), ("resnet50", 25_557_032)])
def test_resnet_parameter_counts_and_names_match_torchvision(write_spec, backbone: str, params: int) -> None:
    root = write_spec(f"""
        model net {{
          input  image: float32[N, 3, 224, 224]
          target label: int64[N]
          backbone {backbone}
          head classify(classes=1000)
          loss cross_entropy
        }}
    """)
    c = compiled(root)
    assert sum(r.params for r in c.records) == params
    trainable = sum(int(np.prod(p.shape)) for p in c.params if not p.state)
    assert trainable == params
    shapes = param_shapes(c)
    assert shapes["backbone.stem.conv1.weight"] == (64, 3, 7, 7)
    assert shapes["backbone.layer1.0.conv1.weight"] == ((64, 64, 3, 3) if backbone == "resnet18"
                                                        else (64, 64, 1, 1))
    assert shapes["backbone.layer2.0.shortcut.conv.weight"] == ((128, 64, 1, 1) if backbone == "resnet18"
                                                                else (512, 256, 1, 1))
    assert "backbone.layer2.0.shortcut.bn.running_mean" in shapes
    assert ("backbone.layer1.0.shortcut.conv.weight" in shapes) == (backbone == "resnet50")
    assert shapes["head.linear1.weight"] == (1000, 512 if backbone == "resnet18" else 2048)
    assert c.output.shape == (None, 1000)
    last, width = (("backbone.layer4.1.relu1", 512) if backbone == "resnet18"
                   else ("backbone.layer4.2.relu3", 2048))
    assert record(c, last).shapes == [(None, width, 7, 7)]


def test_resnet18_with_a_stem_argument(write_spec) -> None:
    root = write_spec("""
        model net {
          input  image: float32[N, 3, 32, 32]
          backbone resnet18(stem=cifar_stem, width=16)
        }
    """)
    c = compiled(root)
    assert param_shapes(c)["backbone.stem.conv1.weight"] == (16, 3, 3, 3)
    assert record(c, "backbone.layer1.1.relu2").shapes == [(None, 16, 32, 32)]
    assert c.output.shape == (None, 128, 4, 4)


EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.dlspec"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_load_and_compile(path: Path) -> None:
    c = compile_model(spec.load(path))
    assert c.params and c.records


def test_digits_example_parameter_names() -> None:
    c = compile_model(spec.load(Path(__file__).parents[2] / "examples" / "digits.dlspec"))
    shapes = param_shapes(c)
    assert shapes["backbone.stage1.0.conv1.weight"] == (16, 32, 1, 1)
    assert shapes["backbone.stage2.0.shortcut.conv.weight"] == (128, 64, 1, 1)
    assert shapes["neck.lateral1.weight"] == (64, 64, 1, 1)
    assert shapes["head.linear1.weight"] == (10, 128)
    assert sum(r.params for r in c.records) == 140_650
