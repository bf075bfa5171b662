"""What the loader resolves of each head, once, for the compiler and the runtime: the head and
target each loss term binds to, and each head's output, kind, loss and metric target; and the
heads it refuses, each at its file, line and column."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dlspec.compiler import compile_model
from dlspec.spec import load
from dlspec.spec import model as m
from dlspec.spec.errors import SpecError
from dlspec.spec.heads import resolve_heads

TARGETS = """\
model m {
  input  x:     float32[N, 1, 8, 8]
  target label: int64[N]
  target mask:  int64[N, 8, 8]
  target v:     float32[N, 3]
  target hit:   float32[N, 3]
"""


def model(tmp_path: Path, body: str) -> m.Model:
    path = tmp_path / "main.dlspec"
    path.write_text(textwrap.dedent(TARGETS + body + "}\n"))
    return load(path).model()


def summary(mod: m.Model) -> list[tuple[str | None, str, str, str | None, str | None, int | None, list[int]]]:
    return [(h.name, h.output, h.kind, h.loss, h.target, h.metric_term, h.terms) for h in mod.resolved_heads]


CASES = {
    # body: [(name, output, kind, loss, target, metric_term, terms)] for each head
    "classify": ("  head linear(10)\n  loss cross_entropy(label)\n",
                 [(None, "logits", "classify", "cross_entropy", "label", 0, [0])]),
    "segment: a label per position": (
        "  head conv(11, k=1)\n  loss cross_entropy(mask) + 0.5 * dice(mask)\n",
        [(None, "logits", "segment", "cross_entropy", "mask", 0, [0, 1])]),
    "binary": ("  head { flatten -> linear(3) }\n  loss bce_with_logits(hit)\n",
               [(None, "logits", "binary", "bce_with_logits", "hit", 0, [0])]),
    "regress: the first term's target": (
        "  head { flatten -> linear(3) }\n  loss mse(v) + 0.5 * l1(hit)\n",
        [(None, "prediction", "regress", "mse", "v", 0, [0, 1])]),
    "no loss": ("  head { flatten -> linear(3) }\n", [(None, "output", "", None, None, None, [])]),
    # a classifier with a regression term beside (logit matching): it classifies, whatever the order
    "mse then cross_entropy": (
        "  head { flatten -> linear(3) }\n  loss mse(v) + cross_entropy(label)\n",
        [(None, "logits", "classify", "cross_entropy", "label", 1, [0, 1])]),
    "cross_entropy then mse": (
        "  head { flatten -> linear(3) }\n  loss cross_entropy(label) + mse(v)\n",
        [(None, "logits", "classify", "cross_entropy", "label", 0, [0, 1])]),
    "huber then bce_with_logits": (
        "  head { flatten -> linear(3) }\n  loss huber(v) + bce_with_logits(hit)\n",
        [(None, "logits", "binary", "bce_with_logits", "hit", 1, [0, 1])]),
    "named heads, a mixed one": (
        "  head a: flatten -> linear(3)\n  head b: flatten -> linear(3)\n"
        "  loss mse(b, v) + mse(a, v) + cross_entropy(a, label) + l1(b, hit)\n",
        [("a", "a", "classify", "cross_entropy", "label", 2, [1, 2]),
         ("b", "b", "regress", "mse", "v", 0, [0, 3])]),
    "one named head: terms without a head read it": (
        "  head only: conv(11, k=1)\n  loss dice(target=mask)\n",
        [("only", "only", "segment", "dice", "mask", 0, [0])]),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_each_head_is_resolved(tmp_path: Path, case: tuple[str, list[tuple[object, ...]]]) -> None:
    body, want = case
    assert summary(model(tmp_path, body)) == want


def test_each_term_is_bound_to_its_head_and_target(tmp_path: Path) -> None:
    mod = model(tmp_path, "  head a: flatten -> linear(3)\n"
                          "  loss mse(target=v) + cross_entropy(target=label)\n")
    assert mod.loss is not None
    assert [(t.head, t.target, t.bound_head, t.bound_target) for t in mod.loss.terms] == [
        (None, "v", "a", "v"), (None, "label", "a", "label")]


def test_the_only_target_is_bound_where_none_is_named(tmp_path: Path) -> None:
    path = tmp_path / "main.dlspec"
    path.write_text("model m {\n  input x: float32[N, 4]\n  target y: float32[N]\n  head linear(1)\n"
                    "  loss mse + l1\n}\n")
    mod = load(path).model()
    assert mod.loss is not None and [t.bound_target for t in mod.loss.terms] == ["y", "y"]
    assert summary(mod) == [(None, "prediction", "regress", "mse", "y", 0, [0, 1])]


def test_what_is_resolved_is_not_dumped(tmp_path: Path) -> None:
    """The resolved fields stay out of the dump, and so out of the spec hash in model.onnx."""
    mod = model(tmp_path, "  head { flatten -> linear(3) }\n  loss mse(v) + cross_entropy(label)\n")
    dumped = mod.model_dump_json()
    assert "resolved" not in dumped and "bound_" not in dumped and "metric_term" not in dumped
    plain = m.Model.model_validate_json(dumped)  # as a model built in code: resolved on demand
    assert plain.resolved_heads == [] and summary(resolve_heads(plain)) == summary(mod)


def test_a_child_model_resolves_its_own_heads(tmp_path: Path) -> None:
    path = tmp_path / "main.dlspec"
    path.write_text(textwrap.dedent(TARGETS + """\
  head a: flatten -> linear(3)
  head b: flatten -> linear(10)
  loss mse(a, v) + cross_entropy(b, label)
}
model child extends m {
  head { flatten -> linear(3) }
  loss bce_with_logits(target=hit)
}
"""))
    prog = load(path)
    assert [(h.name, h.kind) for h in prog.models["m"].resolved_heads] == [
        ("a", "regress"), ("b", "classify")]
    assert summary(prog.models["child"]) == [(None, "logits", "binary", "bce_with_logits", "hit", 0, [0])]



def test_a_base_model_may_leave_its_target_to_the_models_that_extend_it(tmp_path: Path) -> None:
    """A base whose loss names none of its targets loads: its children name theirs. Used itself,
    it is refused at the loss, as any model would be."""
    path = tmp_path / "main.dlspec"
    path.write_text(TARGETS + "  head { flatten -> linear(3) }\n  loss mse\n}\n"
                    "model child extends m {\n  loss mse(target=v)\n}\n")
    prog = load(path)
    assert summary(prog.models["child"])[0][4] == "v"
    with pytest.raises(SpecError, match=r"main\.dlspec:\d+:\d+: error: loss mse needs target=NAME"):
        compile_model(prog, "m")
    path.write_text(TARGETS + "  head { flatten -> linear(3) }\n  loss mse\n}\n")
    with pytest.raises(SpecError, match="loss mse needs target=NAME"):  # no child: refused on load
        load(path)

ERRORS = {
    # one output read as class scores (softmax) and as independent logits (sigmoid): refused
    "bce-then-cross-entropy": (
        "  head { flatten -> linear(3) }\n  loss bce_with_logits(hit) + cross_entropy(label)\n",
        "main.dlspec:8:31",
        "cross_entropy reads the head as class scores (a softmax over them), but bce_with_logits (line 8) "
        "reads it as independent logits (a sigmoid of each): one output cannot be both"),
    "dice-then-bce-on-a-named-head": (
        "  head a: conv(3, k=1)\n  head b: flatten -> linear(3)\n"
        "  loss mse(b, v) + dice(a, mask) + 0.1 * bce_with_logits(a, hit)\n", "main.dlspec:9:36",
        "bce_with_logits reads head 'a' as independent logits (a sigmoid of each), but dice (line 9) "
        "reads it as class scores"),
    "a-head-without-a-loss": (
        "  head a: flatten -> linear(3)\n  head b: flatten -> linear(3)\n  loss mse(a, v)\n",
        "main.dlspec:8:8",
        "head 'b' reaches no loss: bind it to a target in the loss"),
    "no-head-named-among-two": (
        "  head a: flatten -> linear(3)\n  head b: flatten -> linear(3)\n  loss mse(target=v)\n",
        "main.dlspec:9:8", "loss mse names no head, and model 'm' has 2 (a, b): write mse(a, TARGET)"),
    "an-unknown-head": (
        "  head a: flatten -> linear(3)\n  loss mse(b, v)\n", "main.dlspec:8:12",
        "loss mse names head 'b', which model 'm' does not have"),
    "a-stage-of-the-head": (
        "  head { a: flatten; b: linear(3) }\n  loss mse(a, v)\n", "main.dlspec:8:12",
        "loss mse names 'a', a stage of the head"),
    "no-target-named-among-four": (
        "  head { flatten -> linear(3) }\n  loss mse\n", "main.dlspec:8:8",
        "loss mse needs target=NAME: the model has 4 targets (label, mask, v, hit)"),
}


@pytest.mark.parametrize("case", ERRORS.values(), ids=ERRORS.keys())
def test_the_loader_refuses_at_file_line_col(tmp_path: Path, case: tuple[str, str, str]) -> None:
    body, where, message = case
    with pytest.raises(SpecError) as info:
        model(tmp_path, body)
    err = info.value
    assert err.span is not None
    assert f"{Path(err.span.file).name}:{err.span.line}:{err.span.col}" == where, err
    assert message in err.message, err.message
