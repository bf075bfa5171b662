"""A model's heads in the graph: each head's output named, each loss term on its head's output
and its target (as the loader bound them, dlspec.spec.heads), the per-term loss names and each
head's metric, on the term the loader chose for it.

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
from dlspec.spec.errors import CompileError, SpecError
from dlspec.spec.heads import CLASS_LOSSES, resolved


@dataclass(frozen=True)
class HeadInfo:
    """What the runtime needs of a head: its output, the target of its metric and its kind, as the
    loader resolved them (m.ResolvedHead)."""

    name: str | None  # None: the model's one unnamed head
    output: str  # its output in model.onnx: logits, prediction or output; a named head's name
    target: str | None  # the target its metric reads: that of its first classifying term, else first
    kind: str  # classify, segment, binary, regress, or "" (no loss): m.HeadKind

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
    metric_terms: dict[str | None, Term]  # by head: the term its metric reads


def head_infos(model: m.Model) -> list[HeadInfo]:
    """The heads of a model, from the spec alone (an exported model and its spec are enough to
    evaluate it): what the loader resolved."""
    return [HeadInfo(h.name, h.output, h.target, h.kind) for h in resolved(model).resolved_heads]


def bind(g: Graph, model: m.Model, outs: dict[str | None, list[Value]], last: m.Section | None,
         declare: Callable[[Graph, m.TensorDecl], Value], moved: Mapping[str, Value] | None = None) -> Bound:
    """Name each head's output and put each loss term on its head's output and its target, as the
    loader bound them, where their shapes fit the loss. `outs`: each head's tensors, by head name
    (None: the unnamed head, the output of section `last`); `declare` makes a target's graph input;
    `moved`: targets that augmentation moved with the image, by name, which the loss reads instead."""
    model = resolved(model)
    targets = {t.name: t for t in model.targets}
    heads = {h.name: h for h in model.heads}
    ys = {name: _one(name, xs, heads, last) for name, xs in outs.items()}
    bound: list[tuple[m.LossTerm, str | None, bool, Value]] = []  # term, head, squeezed, target
    moved = moved or {}
    for term in model.loss.terms if model.loss is not None else []:
        head = term.bound_head
        assert term.bound_target is not None  # the loader binds each term to a declared target
        t = declare(g, targets[term.bound_target])
        what = f"the {last.role}" if head is None and last is not None else f"head '{head}'"
        bound.append((term, head, _check_loss(term, ys[head], t, what), t))
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
    chosen = {h.name: terms[h.metric_term] for h in model.resolved_heads if h.metric_term is not None}
    return Bound(outputs, infos, terms, classes, chosen)


def _squeeze(y: Value) -> Value:
    """[N, ..., 1] -> [N, ...]: a head's one output per sample against a target without that axis."""
    with y.graph.at("output"):
        return op.Squeeze(y, [-1]).with_shape(y.dims[:-1])


def term_names(model: m.Model) -> list[str]:
    """The outputs `loss:<label>` of a model whose loss has several terms (none for one term):
    reserved before the graph is built, so no value made on the way takes one of these names."""
    model = resolved(model)
    terms = model.loss.terms if model.loss is not None else []
    if len(terms) < 2:
        return []
    return [f"loss:{label}" for label in _labels([(t, t.bound_head) for t in terms])]


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
    """Each head's metric on the term the loader chose for it (its first classifying term, else its
    first), as the runtime scores the head: accuracy for a classifier, MAE otherwise; `accuracy:cls`
    for a named head."""
    out: dict[str, Value] = {}
    for info in bound.heads:
        term = bound.metric_terms.get(info.name)
        if term is not None:
            found = metrics(term.prediction, [(term.spec, term.target)])
            out.update({info.key(k): v for k, v in found.items()})
    return out
