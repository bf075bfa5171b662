"""A model's heads resolved once, as its spec is loaded: the head and the target each loss term
binds to, and of each head its output in model.onnx, the term that says what it is (the first
that classifies, else the first), that term's loss and target, and so its kind. The compiler and
the runtime read these (Model.resolved_heads, LossTerm.bound_head and bound_target).

A head can take several terms, e.g. cross_entropy + dice, or cross_entropy on labels + mse on a
teacher's logits: it classifies, and its metric is accuracy on the classifying term's target,
whatever the order of the terms. A head read both as class scores (cross_entropy, dice: a softmax
over them) and as independent logits (bce_with_logits: a sigmoid of each) is refused: no one
metric, and no one set of probabilities, fits it.
"""

from __future__ import annotations

from dlspec.spec import model as m
from dlspec.spec.errors import SpecError, did_you_mean

CLASS_LOSSES = ("cross_entropy", "dice")  # read class scores [N, C, ...] against integer labels
CLASSIFYING = (*CLASS_LOSSES, "bce_with_logits")  # a head read by one of these classifies


def resolve_heads(model: m.Model) -> m.Model:
    """The model with each loss term bound to its head and target and each head resolved; a
    located SpecError where a term names a head or target the model does not have, a named head
    reaches no loss, or one head is read both as class scores and as independent logits."""
    terms = model.loss.terms if model.loss is not None else []
    bound = [t.model_copy(update={"bound_head": _head_of(t, model), "bound_target": _target_of(t, model)})
             for t in terms]
    names: list[str | None] = [h.name for h in model.heads] or [None]
    heads = [_resolve(name, model, bound) for name in names]
    loss = model.loss.model_copy(update={"terms": bound}) if model.loss is not None else None
    return model.model_copy(update={"loss": loss, "resolved_heads": heads})


def resolved(model: m.Model) -> m.Model:
    """The model as the loader gives it; one built in code, not loaded, resolved now."""
    return model if model.resolved_heads else resolve_heads(model)


def _resolve(name: str | None, model: m.Model, terms: list[m.LossTerm]) -> m.ResolvedHead:
    mine = [i for i, t in enumerate(terms) if t.bound_head == name]
    if model.loss is not None and name is not None and not mine:
        h = next(h for h in model.heads if h.name == name)
        raise SpecError(f"head '{name}' reaches no loss: bind it to a target in the loss "
                        f"(`loss ... + mse({name}, TARGET)`), or remove it", h.name_span or h.span)
    _check_one_reading(name, [terms[i] for i in mine])
    first = next((i for i in mine if terms[i].loss.kind in CLASSIFYING), mine[0] if mine else None)
    if first is None:
        return m.ResolvedHead(name=name, output=name or "output")
    term = terms[first]
    kind = _kind(term, model)
    output = name or ("prediction" if kind == "regress" else "logits")
    return m.ResolvedHead(name=name, output=output, terms=mine, metric_term=first, loss=term.loss.kind,
                          target=term.bound_target, kind=kind)


def _kind(term: m.LossTerm, model: m.Model) -> m.HeadKind:
    if term.loss.kind in CLASS_LOSSES:
        decl = next(t for t in model.targets if t.name == term.bound_target)
        return "segment" if len(decl.shape) > 1 else "classify"  # segment: a label per position
    return "binary" if term.loss.kind == "bce_with_logits" else "regress"


def _check_one_reading(name: str | None, terms: list[m.LossTerm]) -> None:
    """One head's output is class scores or independent logits, not both."""
    scores = next((t for t in terms if t.loss.kind in CLASS_LOSSES), None)
    logits = next((t for t in terms if t.loss.kind == "bce_with_logits"), None)
    if scores is None or logits is None:
        return
    first, later = (scores, logits) if terms.index(scores) < terms.index(logits) else (logits, scores)
    what = "the head" if name is None else f"head '{name}'"
    line = f" (line {first.span.line})" if first.span is not None else ""
    raise SpecError(f"{later.loss.kind} reads {what} as {_reading(later)}, but {first.loss.kind}{line} "
                    f"reads it as {_reading(first)}: one output cannot be both; give each loss a head of "
                    f"its own (`head a: ...` and `head b: ...`, then {later.loss.kind}(b, TARGET))",
                    later.span)


def _reading(term: m.LossTerm) -> str:
    if term.loss.kind in CLASS_LOSSES:
        return "class scores (a softmax over them)"
    return "independent logits (a sigmoid of each)"


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


def _target_of(term: m.LossTerm, model: m.Model) -> str:
    """The declared target a loss term compares against: the one it names, or the model's only one."""
    targets = [t.name for t in model.targets]
    name = term.target or (targets[0] if len(targets) == 1 else None)
    if name is None:
        raise SpecError(f"loss {term.loss.kind} needs target=NAME: the model has "
                        f"{len(targets)} targets ({', '.join(targets) or 'none'})", term.span)
    if name not in targets:
        raise SpecError(f"loss target '{name}' is not a declared target"
                        f"{did_you_mean(name, targets)}; targets: {', '.join(targets) or 'none'}",
                        term.arg_spans.get("target", term.span))
    return name
