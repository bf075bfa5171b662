"""Compile a validated model into an ONNX inference graph."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import onnx

from dlspec.compiler.graph import Graph, Value, show
from dlspec.compiler.graph import ops as op
from dlspec.compiler.graph.memory import materialize
from dlspec.compiler.graph.proto import model_proto, value_info
from dlspec.compiler.lower.augment import augment
from dlspec.compiler.lower.context import Compilation, LayerRecord, ParamInfo
from dlspec.compiler.lower.features import Moments, lower_features
from dlspec.compiler.lower.freeze import check_targets, lr_mult
from dlspec.compiler.lower.freeze import frozen as is_frozen
from dlspec.compiler.lower.init import InitPolicy
from dlspec.compiler.lower.necks import NECKS, fpn
from dlspec.compiler.lower.walk import Walker
from dlspec.compiler.target import Target
from dlspec.spec import model as m
from dlspec.spec.errors import CompileError, Span, SpecError, did_you_mean
from dlspec.spec.loader import Program

CLASSIFICATION_LOSSES = ("cross_entropy", "bce_with_logits")
INFERENCE_COPIES = 4  # the weights, the ModelProto's copy, its serialized bytes, a session's copy


@dataclass
class Compiled:
    """A model's inference graph. `records`, `params` and `output` say what it holds; the ONNX
    model itself, with the initial weights, is made when `onnx` is first read (after checking
    that the weights fit), so `dlspec check` never allocates them."""

    model: m.Model
    records: list[LayerRecord]
    params: list[ParamInfo]
    output: Value
    spec_hash: str
    notes: list[str] = field(default_factory=list)  # e.g. a standardize compiled without statistics
    frozen: list[str] = field(default_factory=list)  # weights the train block freezes (or lr_mult 0)
    nodes: list[onnx.NodeProto] = field(default_factory=list, repr=False)
    build: Callable[[], onnx.ModelProto] | None = field(default=None, repr=False)
    _onnx: onnx.ModelProto | None = field(default=None, repr=False)

    @property
    def onnx(self) -> onnx.ModelProto:
        if self._onnx is None:
            assert self.build is not None
            self._onnx, self.build = self.build(), None
        return self._onnx

    @property
    def trainable_size(self) -> int:
        """Trainable values: the weights' elements but the frozen ones'."""
        return sum(math.prod(p.shape) for p in self.params if not p.state and p.name not in self.frozen)


@dataclass
class Forward:
    """A model's forward graph, in inference or training mode, before it becomes a ModelProto."""

    model: m.Model
    train: m.Train | None
    comp: Compilation
    inputs: list[Value]
    output: Value
    spec_hash: str
    unfitted: list[str] = field(default_factory=list)  # features whose standardize had no statistics


Stats = Mapping[str, Moments]


def compile_model(prog: Program, name: str | None = None, seed: int | None = None,
                  stats: Stats | None = None) -> Compiled:
    """The inference graph of a model: raw inputs -> features -> backbone -> neck -> head.

    `stats`: the training-split moments of each standardized feature (runtime.standardize fits
    them); without them standardize is the identity and `notes` says so."""
    f = build_forward(prog, name, seed, stats=stats)
    g = f.comp.g
    weights = [p.name for p in f.comp.params if not p.state]
    frozen: list[str] = []
    if f.train is not None:  # the train block's targets are checked wherever the spec is
        check_targets(f.train, weights)
        frozen = [p for p in weights if is_frozen(f.train, p) or lr_mult(f.train, p) == 0]

    def build() -> onnx.ModelProto:
        weights = materialize(g.initializers, INFERENCE_COPIES, f"model '{f.model.name}'", f.model.name_span)
        return model_proto(f.model.name, g.nodes, [value_info(t) for t in f.inputs], [value_info(f.output)],
                           weights, f.spec_hash, _stats_props(stats, f.model))

    return Compiled(f.model, f.comp.records, f.comp.params, f.output, f.spec_hash, unfitted_notes(f.unfitted),
                    frozen, g.nodes, build)



def unfitted_notes(features: Sequence[str]) -> list[str]:
    if not features:
        return []
    return [f"standardize in feature{'s' if len(features) > 1 else ''} {', '.join(features)} is compiled "
            "as the identity: no training data here to fit its mean and std (`dlspec train` fits them "
            "on the training split and bakes them into the run's model.onnx)"]


def _stats_props(stats: Stats | None, model: m.Model) -> dict[str, str]:
    """Model metadata `standardize`: {"feature": {"mean": ..., "std": ...}} of the constants used."""
    used = {k: v for k, v in (stats or {}).items()
            if model.features is not None and any(d.name == k for d in model.features.defs)}
    if not used:
        return {}
    return {"standardize": json.dumps({k: {"mean": v.mean.tolist(), "std": v.std.tolist()}
                                       for k, v in used.items()})}


def build_forward(prog: Program, name: str | None = None, seed: int | None = None,
                  training: bool = False, frozen: Sequence[str] = (), stats: Stats | None = None,
                  target: Target | None = None) -> Forward:
    """Walk features, backbone, neck and head; `training` gives batch-statistics batch norm and
    active dropout everywhere but under the `frozen` path prefixes. `target` picks the lowerings."""
    model = prog.model(name)
    train = prog.train(model.name)
    policy = InitPolicy(rules=train.init if train else (),
                        seed=seed if seed is not None else (train.seed if train else 0))
    comp = Compilation(Graph(target=target), policy, training=training, frozen=frozen)
    inputs = [declared_tensor(comp.g, t) for t in model.inputs]
    if not inputs:
        raise SpecError(f"model '{model.name}' declares no input (input x: float32[N, ...])",
                        model.name_span)
    values = {t.name: t for t in inputs}
    unfitted: list[str] = []
    if model.features is not None:
        low = lower_features(comp.g, model.features, values, stats)
        values, unfitted = low.values, list(low.unfitted)
    w = Walker(prog.blocks, comp)
    xs = [_network_input(comp.g, model, values)]
    if training and train is not None and train.augment:
        xs = [augment(xs[0], train.augment, policy.seed, comp.step)]
    if model.backbone is None and model.head is None:
        raise SpecError(f"model '{model.name}' has no backbone and no head: nothing to compile",
                        model.name_span)
    for sec in (model.backbone, model.neck, model.head):
        if sec is None:
            continue
        if sec.form == "call" and sec.call is not None and sec.call.name in NECKS:
            if sec.role != "neck":
                raise SpecError(f"{sec.call.name} is a neck; use it as `neck {sec.call.name}(...)`",
                                sec.call.span)
            xs = fpn(w, sec.call)
        else:
            xs = w.section(sec, xs)
    last = model.head or model.neck or model.backbone
    assert last is not None
    if len(xs) != 1:
        raise CompileError(f"the {last.role} gives {len(xs)} tensors "
                           f"({', '.join(show(x.dims) for x in xs)}); the model needs one output: "
                           "end it with concat, add or a head", last.span)
    out = _finish(comp, model, xs[0], last)
    policy.check_all_used([p.name for p in comp.params], [r.kind for r in comp.records])
    spec_hash = hashlib.sha256((model.model_dump_json() + (train.model_dump_json() if train else "")
                                + str(policy.seed)).encode()).hexdigest()[:16]
    return Forward(model, train, comp, inputs, out, spec_hash, unfitted)


def loss_targets(g: Graph, model: m.Model) -> list[tuple[m.LossTerm, Value]]:
    """Each loss term with the target tensor it compares against (validated by `_finish`)."""
    assert model.loss is not None
    targets = {t.name: t for t in model.targets}
    return [(term, declared_tensor(g, targets[term.target or model.targets[0].name]))
            for term in model.loss.terms]


def declared_tensor(g: Graph, t: m.TensorDecl) -> Value:
    """A declared input or target as a graph tensor; its first dimension must be the batch."""
    dims = t.shape

    def at(i: int) -> Span | None:
        return t.dim_spans[i] if i < len(t.dim_spans) else t.span

    if not dims or not isinstance(dims[0], str):
        raise SpecError(f"the first dimension of '{t.name}' is {dims[0] if dims else 'missing'}; it must be "
                        f"the symbolic batch size, e.g. {t.dtype}[N, ...]", at(0))
    for i, d in enumerate(dims[1:], start=1):
        if isinstance(d, str):
            raise SpecError(f"dimension {i + 1} of '{t.name}' is the name '{d}'; only the first (batch) "
                            "dimension may be symbolic, the others are whole numbers >= 1", at(i))
        if d < 1:
            raise SpecError(f"dimension {i + 1} of '{t.name}' is {d}; it must be a whole number >= 1",
                            at(i))
    return g.value(t.name, t.dtype, (None,) + tuple(int(d) for d in dims[1:]))


def _network_input(g: Graph, model: m.Model, values: dict[str, Value]) -> Value:
    """One value goes in as it is; several tabular values ([N] or [N, k]) are stacked as columns."""
    used = list(values.values())
    with g.at("input"):
        if len(used) == 1:
            return used[0].cast("float32")
        g.where = f"{model.name_span} inputs"
        cols = []
        for t in used:
            if t.rank > 2:
                raise SpecError(f"cannot combine input '{t.name}' {show(t.dims)} with other inputs: "
                                "several inputs are stacked as table columns and must be [N] or [N, k]",
                                model.name_span)
            col = t.cast("float32")
            cols.append(op.Unsqueeze(col, [1]) if t.rank == 1 else col)
        x = op.Concat(cols, axis=1)
        return x.with_shape((None, sum(1 if t.rank == 1 else int(t.dims[1] or 0) for t in used)))


def output_name(model: m.Model) -> str:
    if model.loss is None:
        return "output"
    kinds = {t.loss.kind for t in model.loss.terms}
    return "logits" if kinds & set(CLASSIFICATION_LOSSES) else "prediction"


def _finish(comp: Compilation, model: m.Model, y: Value, last: m.Section) -> Value:
    """Match the head's output to the targets and the loss; name it."""
    g = comp.g
    targets = {t.name: t for t in model.targets}
    if model.loss is not None:
        for term in model.loss.terms:
            tname = term.target or (model.targets[0].name if len(model.targets) == 1 else None)
            if tname is None:
                raise SpecError(f"loss {term.loss.kind} needs target=NAME: the model has "
                                f"{len(model.targets)} targets ({', '.join(targets) or 'none'})",
                                term.span)
            if tname not in targets:
                raise SpecError(f"loss target '{tname}' is not a declared target"
                                f"{did_you_mean(tname, targets)}; targets: {', '.join(targets) or 'none'}",
                                term.span)
            y = _check_loss(term, y, declared_tensor(g, targets[tname]), last)
    name = output_name(model)
    g.node("Identity", [y], outputs=[name], name="output/Identity")
    return g.value(name, y.dtype, y.shape)


def _check_loss(term: m.LossTerm, y: Value, t: Value, last: m.Section) -> Value:
    kind = term.loss.kind
    if kind == "cross_entropy":
        if y.rank != 2 or t.rank != 1 or not (t.dtype or "").startswith("int"):
            raise CompileError(f"cross_entropy needs [N, classes] scores and an integer [N] target; "
                               f"the {last.role} gives {show(y.dims)} and target '{t.name}' is "
                               f"{t.dtype}{show(t.dims)}", term.span)
        weights = getattr(term.loss, "weight", None)
        if weights is not None and len(weights) != y.dims[1]:
            raise SpecError(f"cross_entropy has {len(weights)} class weights for {y.dims[1]} "
                            "classes", term.span)
        return y
    if y.shape == t.shape:
        return y
    if y.rank == t.rank + 1 and y.dims[-1] == 1 and y.dims[:-1] == t.shape:
        with y.graph.at("output"):
            return op.Squeeze(y, [-1]).with_shape(t.shape)
    raise CompileError(f"{kind} compares the {last.role}'s output {show(y.dims)} with target "
                       f"'{t.name}' {show(t.dims)}: the shapes must match", term.span)
