"""The language of several heads: named heads, losses bound to heads and targets by
name, `;` between stages; and their errors, each at its file, line and column."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dlspec.spec import load
from dlspec.spec.errors import SpecError
from dlspec.spec.loader import Program

BASE = """\
model m {
  input  image: float32[N, 1, 8, 8]
  target label: int64[N]
  target size:  float32[N, 4]
"""


def spec(tmp_path: Path, text: str) -> Program:
    path = tmp_path / "main.dlspec"
    path.write_text(textwrap.dedent(text))
    return load(path)


def test_named_heads_and_a_loss_bound_by_position(tmp_path: Path) -> None:
    m = spec(tmp_path, BASE + """\
  backbone { a: conv(8); b: conv(8) -> relu; }
  head cls: classify(10)
  head box: regress(4)
  loss cross_entropy(cls, label, label_smoothing=0.1) + 0.1 * huber(box, size, delta=2)
}
""").model()
    assert [h.name for h in m.heads] == ["cls", "box"] and m.head is None
    assert m.backbone is not None and m.backbone.body is not None
    assert [s.name for s in m.backbone.body.stages] == ["a", "b"]
    assert m.loss is not None
    (ce, hub) = m.loss.terms
    assert (ce.head, ce.target, ce.loss.kind, ce.weight) == ("cls", "label", "cross_entropy", 1.0)
    assert (hub.head, hub.target, hub.weight, hub.loss.delta) == ("box", "size", 0.1, 2.0)  # type: ignore[union-attr]
    assert hub.arg_spans["target"].col == 74


@pytest.mark.parametrize("loss,head,target", [
    ("mse(box)", "box", None),                # one name: the head, where heads have names
    ("mse(box, target=size)", "box", "size"),
    ("mse(head=box, target=size)", "box", "size"),
])
def test_one_name_is_the_head_where_heads_have_names(tmp_path: Path, loss: str, head: str,
                                                     target: str | None) -> None:
    one_target = BASE.replace("  target label: int64[N]\n", "")  # mse(box) binds to the only target
    m = spec(tmp_path, one_target + f"  head box: regress(4)\n  loss {loss}\n}}\n").model()
    assert m.loss is not None and (m.loss.terms[0].head, m.loss.terms[0].target) == (head, target)
    assert (m.loss.terms[0].bound_head, m.loss.terms[0].bound_target) == ("box", "size")


def test_one_name_is_the_target_of_a_one_head_model(tmp_path: Path) -> None:
    m = spec(tmp_path, BASE + "  head regress(4)\n  loss mse(size)\n}\n").model()
    assert m.loss is not None and (m.loss.terms[0].head, m.loss.terms[0].target) == (None, "size")


def test_a_spec_without_the_new_forms_dumps_and_hashes_as_before(tmp_path: Path) -> None:
    m = spec(tmp_path, BASE + "  head regress(4)\n  loss mse(target=size)\n}\n").model()
    dumped = m.model_dump_json()
    assert '"heads"' not in dumped and '"head":{"role":"head","form":"call"' in dumped
    assert '"loss":{"role":"loss","terms":[{"weight":1.0,"loss":{"kind":"mse"},"target":"size"}]}' in dumped


def test_a_child_model_replaces_the_heads_whole(tmp_path: Path) -> None:
    prog = spec(tmp_path, BASE + """\
  head cls: classify(10)
  head box: regress(4)
  loss cross_entropy(cls, label) + mse(box, size)
}
model child extends m {
  head classify(10)
  loss cross_entropy(target=label)
}
model grandchild extends child {
  head only: classify(10)
  loss cross_entropy(only, label)
}
""")
    assert prog.models["child"].heads == [] and prog.models["child"].head is not None
    assert [h.name for h in prog.models["grandchild"].heads] == ["only"]
    assert prog.models["grandchild"].head is None


ERRORS = {
    "a-named-backbone": (
        "  backbone feats: conv(8)\n", "main.dlspec:5:12",
        "only heads have names (`head feats: ...`); a backbone with named stages is written "
        "`backbone { feats: ... }`"),
    "a-head-twice": (
        "  head cls: classify(10)\n  head cls: classify(3)\n", "main.dlspec:6:8",
        "head 'cls' is defined twice in model 'm' (first on line 5)"),
    "named-and-unnamed-heads": (
        "  head cls: classify(10)\n  head classify(3)\n", "main.dlspec:6:3",
        "model 'm' has both a head section and named heads"),
    "a-head-named-like-a-target": (
        "  head size: regress(4)\n", "main.dlspec:5:8",
        "head 'size' has the name of the model's target 'size'"),
    "a-head-named-like-a-graph-input": (
        "  head step: regress(4)\n", "main.dlspec:5:8",
        "head 'step': the training graphs use that name"),
    "three-names": (
        "  head box: regress(4)\n  loss mse(box, size, label)\n", "main.dlspec:6:23",
        "loss mse takes at most two names, its head and its target (`mse(box, size)`)"),
    "a-number-for-a-name": (
        "  head box: regress(4)\n  loss huber(box, 2)\n", "main.dlspec:6:19",
        "loss huber takes names as positional arguments, its head and its target"),
    "a-target-twice": (
        "  head box: regress(4)\n  loss mse(box, size, target=size)\n", "main.dlspec:6:17",
        "the target of loss mse is given twice (here and as target=)"),
}


@pytest.mark.parametrize("case", ERRORS.values(), ids=ERRORS.keys())
def test_errors_are_located(tmp_path: Path, case: tuple[str, str, str]) -> None:
    body, where, message = case
    with pytest.raises(SpecError) as info:
        spec(tmp_path, BASE + body + "}\n")
    err = info.value
    assert err.span is not None
    assert f"{Path(err.span.file).name}:{err.span.line}:{err.span.col}" == where, err
    assert message in err.message, err.message
    assert f"{where}: error: " in str(err).replace(str(tmp_path) + "/", "")
