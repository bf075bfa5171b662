"""A model's heads: each head's output named in the graph, each loss term bound to a head and a
target (checked where the spec writes them), the per-term loss names and each head's metric.

A model has one unnamed head (`head classify(10)`, output `logits`, `prediction` or `output`, as
before heads had names), or named heads (`head cls: classify(10)`), each an output of model.onnx
under its name and bound to at least one loss term (`cross_entropy(cls, label)`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from dlspec.compiler.graph import Graph, Value, show
from dlspec.compiler.graph import ops as op
from dlspec.compiler.lower.losses import metrics
from dlspec.spec import model as m
from dlspec.spec.errors import CompileError, SpecError, did_you_mean

CLASSIFICATION_LOSSES = ("cross_entropy", "bce_with_logits", "dice")
CLASS_LOSSES = ("cross_entropy", "dice")  # read class scores [N, C, ...] against integer labels
KINDS = {"cross_entropy": "classify", "bce_with_logits": "binary", "dice": "classify"}  # else regress


@dataclass(frozen=True)
class HeadInfo:
    """What the runtime needs of a head: its output, the target of its metric and its kind."""

    name: str | None  # None: the model's one unnamed head
    output: str  # its output in model.onnx: logits, prediction or output; a named head's name
    target: str | None  # the target its metric reads: that of its first loss term
    # classify (cross_entropy, dice), segment (the same per pixel: a target [N, H, W]), binary
    # (bce_with_logits), regress, or "" (no loss)
    kind: str

    def key(self, metric: str) -> str:
        """A metric's name: `accuracy` for the unnamed head, `accuracy:cls` for head cls."""
        return metric if self.name is None else f"{metric}:{self.name}"

    @property
    def classifier(self) -> bool:
        return self.kind in ("classify", "binary", "segment")


@dataclass
class Term:
    """One loss term, bound to its head's output and to its target."""

    spec: m.LossTerm
    head: str | None
    prediction: Value  # the head's output, squeezed where the target has one axis less
    target: Value  # what the loss reads: the target input, moved as the image was by augmentation
    label: str  # the term's own loss is logged as `loss:<label>` when the loss has several terms
    source: Value  # the target's graph input


@dataclass
class Bound:
    """A forward graph's named outputs, heads and loss terms."""

    outputs: dict[str, Value]  # output name -> value, one per head
    heads: list[HeadInfo]
    terms: list[Term]
    classes: dict[str, int | None]  # cross_entropy's targets -> their head's width (classes)


def output_name(model: m.Model) -> str:
    """The unnamed head's output: logits for a classifier, prediction for a regressor."""
    if model.loss is None:
        return "output"
    kinds = {t.loss.kind for t in model.loss.terms}
    return "logits" if kinds & set(CLASSIFICATION_LOSSES) else "prediction"


def head_infos(model: m.Model) -> list[HeadInfo]:
    """The heads of a (checked) model, from the spec alone: an exported model and its spec are
    enough to evaluate it."""
    terms = model.loss.terms if model.loss is not None else []
    only = model.targets[0].name if len(model.targets) == 1 else None
    if not model.heads:  # a classifier if any term classifies (its output is then `logits`)
        first = next((t for t in terms if t.loss.kind in CLASSIFICATION_LOSSES), terms[0] if terms else None)
        return [HeadInfo(None, output_name(model), (first.target or only) if first else None,
                         _kind(first, model))]
    out = []
    for h in model.heads:
        mine = [t for t in terms if t.head == h.name or (t.head is None and len(model.heads) == 1)]
        first = mine[0] if mine else None
        out.append(HeadInfo(h.name, h.name, (first.target or only) if first else None, _kind(first, model)))
    return out


def _kind(term: m.LossTerm | None, model: m.Model) -> str:
    if term is None:
        return ""
    name = term.target or (model.targets[0].name if len(model.targets) == 1 else None)
    decl = next((t for t in model.targets if t.name == name), None)
    if term.loss.kind in CLASS_LOSSES and decl is not None and len(decl.shape) > 1:
        return "segment"  # a label per position
    return KINDS.get(term.loss.kind, "regress")


def bind(g: Graph, model: m.Model, outs: dict[str | None, list[Value]], last: m.Section | None,
         declare: Callable[[Graph, m.TensorDecl], Value], moved: Mapping[str, Value] | None = None) -> Bound:
    """Name each head's output and bind the loss terms to heads and targets. `outs`: each head's
    tensors, by head name (None: the unnamed head, the output of section `last`); `declare`
    makes a target's graph input; `moved`: targets that augmentation moved with the image, by
    name, which the loss reads instead."""
    targets = {t.name: t for t in model.targets}
    heads = {h.name: h for h in model.heads}
    ys = {name: _one(name, xs, heads, last) for name, xs in outs.items()}
    bound: list[tuple[m.LossTerm, str | None, bool, Value]] = []  # term, head, squeezed, target
    moved = moved or {}
    for term in model.loss.terms if model.loss is not None else []:
        head = _head_of(term, model)
        t = declare(g, _target(targets, term, model))
        what = f"the {last.role}" if head is None and last is not None else f"head '{head}'"
        bound.append((term, head, _check_loss(term, ys[head], t, what), t))
    if model.loss is not None:
        for h in model.heads:
            if not any(b[1] == h.name for b in bound):
                raise SpecError(f"head '{h.name}' reaches no loss: bind it to a target in the loss "
                                f"(`loss ... + mse({h.name}, TARGET)`), or remove it", h.name_span or h.span)
    infos = head_infos(model)
    outputs: dict[str, Value] = {}
    views: dict[tuple[str | None, bool], Value] = {}  # (head, squeezed) -> that view of its output
    for info in infos:
        y = ys[info.name]
        squeezed = {b[2] for b in bound if b[1] == info.name} == {True}  # every term reads it squeezed
        if squeezed:
            y = _squeeze(y)
        g.node("Identity", [y], outputs=[info.output],
               name="output/Identity" if info.name is None else f"output.{info.name}/Identity")
        outputs[info.output] = views[(info.name, squeezed)] = g.value(info.output, y.dtype, y.shape)
    terms = []
    for (term, head, squeezed, t), label in zip(bound, _labels([(b[0], b[1]) for b in bound]), strict=True):
        if (head, squeezed) not in views:  # terms that read one head whole and squeezed
            views[(head, squeezed)] = _squeeze(views[(head, False)])
        terms.append(Term(term, head, views[(head, squeezed)], moved.get(t.name, t), label, t))
    classes = {tm.source.name: _width(outputs[_output_of(infos, tm.head)]) for tm in terms
               if tm.spec.loss.kind in CLASS_LOSSES}
    return Bound(outputs, infos, terms, classes)


def _squeeze(y: Value) -> Value:
    """[N, ..., 1] -> [N, ...]: a head's one output per sample against a target without that axis."""
    with y.graph.at("output"):
        return op.Squeeze(y, [-1]).with_shape(y.dims[:-1])


def term_names(model: m.Model) -> list[str]:
    """The outputs `loss:<label>` of a model whose loss has several terms (none for one term):
    reserved before the graph is built, so no value made on the way takes one of these names."""
    terms = model.loss.terms if model.loss is not None else []
    if len(terms) < 2:
        return []
    return [f"loss:{label}" for label in _labels([(t, _head_of(t, model)) for t in terms])]


def _output_of(infos: Sequence[HeadInfo], head: str | None) -> str:
    return next(i.output for i in infos if i.name == head)


def _width(y: Value) -> int | None:
    """The classes of scores [N, C] or [N, C, H, W]."""
    return y.dims[1] if len(y.dims) >= 2 and isinstance(y.dims[1], int) else None


def _one(name: str | None, xs: list[Value], heads: dict[str, m.NamedHead], last: m.Section | None) -> Value:
    """A head's single output tensor."""
    if len(xs) == 1:
        return xs[0]
    shapes = ", ".join(show(x.dims) for x in xs)
    if name is not None:
        raise CompileError(f"head '{name}' gives {len(xs)} tensors ({shapes}); a head gives one: end it "
                           "with concat, add or a layer that joins them", heads[name].span)
    assert last is not None
    raise CompileError(f"the {last.role} gives {len(xs)} tensors ({shapes}); the model needs one output: "
                       "end it with concat, add or a head", last.span)


def _head_of(term: m.LossTerm, model: m.Model) -> str | None:
    """The head a loss term reads: the one it names, or the model's only head."""
    kind = term.loss.kind
    span = term.arg_spans.get("head", term.span)
    names = [h.name for h in model.heads]
    if term.head is None:
        if len(names) > 1:
            raise SpecError(f"loss {kind} names no head, and model '{model.name}' has {len(names)} "
                            f"({', '.join(names)}): write {kind}({names[0]}, TARGET)", term.span)
        return names[0] if names else None
    if not names:
        stages = [s.name for s in model.head.body.stages] if model.head and model.head.body else []
        if term.head in stages:
            raise SpecError(f"loss {kind} names '{term.head}', a stage of the head: the stages of a head "
                            "section run one after another, into one output; for several heads, declare "
                            f"each on its own line (`head {term.head}: ...`)", span)
        raise SpecError(f"loss {kind} names head '{term.head}', but model '{model.name}' has one head, "
                        f"unnamed: leave the head out ({kind}(target=...)), or name the heads "
                        f"(`head {term.head}: ...`)", span)
    if term.head not in names:
        raise SpecError(f"loss {kind} names head '{term.head}', which model '{model.name}' does not "
                        f"have{did_you_mean(term.head, names)}; its heads: {', '.join(names)}", span)
    return term.head


def _target(targets: dict[str, m.TensorDecl], term: m.LossTerm, model: m.Model) -> m.TensorDecl:
    """The declared target a loss term compares against."""
    tname = term.target or (model.targets[0].name if len(model.targets) == 1 else None)
    if tname is None:
        raise SpecError(f"loss {term.loss.kind} needs target=NAME: the model has "
                        f"{len(model.targets)} targets ({', '.join(targets) or 'none'})", term.span)
    if tname not in targets:
        raise SpecError(f"loss target '{tname}' is not a declared target"
                        f"{did_you_mean(tname, targets)}; targets: {', '.join(targets) or 'none'}",
                        term.arg_spans.get("target", term.span))
    return targets[tname]


def _check_loss(term: m.LossTerm, y: Value, t: Value, what: str) -> bool:
    """Whether the term reads the head's output `y` squeezed (one output per sample against a target
    without that axis); a CompileError where the shapes or types cannot fit the loss."""
    kind = term.loss.kind
    if kind in CLASS_LOSSES:
        integer = (t.dtype or "").startswith("int")
        if y.rank > 2:  # per position: [N, C, H, W] against [N, H, W] or [N, 1, H, W]
            if not integer or t.dims[1:] not in (y.dims[2:], (1, *y.dims[2:])):
                raise CompileError(f"{kind} needs per-position scores [N, classes, H, W] and an integer "
                                   f"[N, H, W] (or [N, 1, H, W]) target of the same H and W; {what} gives "
                                   f"{show(y.dims)} and target '{t.name}' is {t.dtype}{show(t.dims)}",
                                   term.span)
        elif y.rank != 2 or t.rank != 1 or not integer:
            raise CompileError(f"{kind} needs [N, classes] scores and an integer [N] target; "
                               f"{what} gives {show(y.dims)} and target '{t.name}' is "
                               f"{t.dtype}{show(t.dims)}", term.span)
        if y.dims[1] == 1:
            raise CompileError(f"{kind} over one class is 0 whatever the weights, and {what} gives "
                               f"{show(y.dims)}: give it a score per class, or use bce_with_logits for "
                               "one logit", term.span)
        weights = getattr(term.loss, "weight", None)
        if weights is not None and len(weights) != y.dims[1]:
            raise SpecError(f"cross_entropy has {len(weights)} class weights for {y.dims[1]} "
                            "classes", term.span)
        return False
    if y.shape == t.shape:
        return False
    if y.rank == t.rank + 1 and y.dims[-1] == 1 and y.dims[:-1] == t.shape:
        return True
    raise CompileError(f"{kind} compares {what}'s output {show(y.dims)} with target "
                       f"'{t.name}' {show(t.dims)}: the shapes must match", term.span)


def _labels(terms: Sequence[tuple[m.LossTerm, str | None]]) -> list[str]:
    """Each term's name in the logs: its head's, else its loss kind; where two terms share one,
    the loss kind, then the target, then a count is added."""
    labels = [head or term.loss.kind for term, head in terms]
    for part in ("kind", "target", "count"):
        dup = {x for x in labels if labels.count(x) > 1}
        for i, (term, head) in enumerate(terms):
            if labels[i] in dup and not (part == "kind" and head is None):  # the kind is the label
                extra = {"kind": term.loss.kind, "target": term.target or ""}.get(part, str(i + 1))
                labels[i] = f"{labels[i]}.{extra}"
    return labels


def term_outputs(terms: Sequence[Term], values: Sequence[Value]) -> dict[str, Value]:
    """`loss:<label>`: each term's own loss (before its weight), where the loss has several (the
    names term_names reserved)."""
    if len(terms) < 2:
        return {}
    return {f"loss:{t.label}": v for t, v in zip(terms, values, strict=True)}


def head_metrics(bound: Bound) -> dict[str, Value]:
    """Each head's metric on its first term's target: accuracy for a classifier, MAE otherwise;
    `accuracy:cls` for a named head."""
    out: dict[str, Value] = {}
    for info in bound.heads:
        mine = [t for t in bound.terms if t.head == info.name]
        if mine:
            found = metrics(mine[0].prediction, [(mine[0].spec, mine[0].target)])
            out.update({info.key(k): v for k, v in found.items()})
    return out
