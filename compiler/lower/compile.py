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
from dlspec.compiler.lower.augment import augment_with, moving_targets
from dlspec.compiler.lower.columns import FillMean, Vocab, filled, unlearnt_notes
from dlspec.compiler.lower.context import Compilation, LayerRecord, ParamInfo
from dlspec.compiler.lower.features import Fitted, Moments, lower_features
from dlspec.compiler.lower.freeze import check_targets, lr_mult
from dlspec.compiler.lower.freeze import frozen as is_frozen
from dlspec.compiler.lower.heads import Bound, HeadInfo, bind, head_infos, term_names
from dlspec.compiler.lower.init import InitPolicy
from dlspec.compiler.lower.necks import NECKS, fpn
from dlspec.compiler.lower.walk import Walker
from dlspec.compiler.target import Target
from dlspec.spec import model as m
from dlspec.spec.errors import Span, SpecError
from dlspec.spec.loader import Program

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
    heads: list[HeadInfo] = field(default_factory=list)  # one per output, in order
    outputs: dict[str, Value] = field(default_factory=dict)  # every output by name; `output` is the first
    label_classes: dict[str, int | None] = field(default_factory=dict)  # cross_entropy target -> classes

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

    def classes(self) -> int | dict[str, int | None] | None:
        """The classes the labels are checked against: the output's width for a one-head model,
        else each cross_entropy target's head's width, by target name."""
        if self.heads and self.heads[0].name is not None:
            return dict(self.label_classes)
        dims = self.output.dims  # [N, classes], or [N, classes, H, W] scored per pixel
        return dims[1] if len(dims) >= 2 and isinstance(dims[1], int) else None


@dataclass
class Forward:
    """A model's forward graph, in inference or training mode, before it becomes a ModelProto."""

    model: m.Model
    train: m.Train | None
    comp: Compilation
    inputs: list[Value]
    output: Value  # the first head's (the only one's, but for named heads)
    spec_hash: str
    bound: Bound  # every head's output, the loss terms bound to heads and targets
    unfitted: list[str] = field(default_factory=list)  # features whose standardize had no statistics


Stats = Mapping[str, Fitted]  # standardize's moments; categories' vocabularies, fill means (columns)


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
        check_targets(f.train, weights, [p.name for p in f.comp.params])
        frozen = [p for p in weights if is_frozen(f.train, p) or lr_mult(f.train, p) == 0]

    def build() -> onnx.ModelProto:
        weights = materialize(g.initializers, INFERENCE_COPIES, f"model '{f.model.name}'", f.model.name_span)
        outputs = [value_info(v) for v in f.bound.outputs.values()]
        return model_proto(f.model.name, g.nodes, [value_info(t) for t in f.inputs], outputs,
                           weights, f.spec_hash, {**_stats_props(stats, f.model),
                                                  **_columns_props(stats, f.model), **_heads_props(f.model)})

    notes = unfitted_notes(f.unfitted) + unlearnt_notes(f.model, stats)
    return Compiled(f.model, f.comp.records, f.comp.params, f.output, f.spec_hash, notes,
                    frozen, g.nodes, build, heads=f.bound.heads, outputs=dict(f.bound.outputs),
                    label_classes=dict(f.bound.classes))



def unfitted_notes(features: Sequence[str]) -> list[str]:
    if not features:
        return []
    return [f"standardize in feature{'s' if len(features) > 1 else ''} {', '.join(features)} is compiled "
            "as the identity: no training data here to fit its mean and std (`dlspec train` fits them "
            "on the training split and bakes them into the run's model.onnx)"]


def _stats_props(stats: Stats | None, model: m.Model) -> dict[str, str]:
    """Model metadata `standardize`: {"feature": {"mean": ..., "std": ...}} of the constants used."""
    used = {k: v for k, v in (stats or {}).items() if isinstance(v, Moments)
            and model.features is not None and any(d.name == k for d in model.features.defs)}
    if not used:
        return {}
    return {"standardize": json.dumps({k: {"mean": v.mean.tolist(), "std": v.std.tolist()}
                                       for k, v in used.items()})}


def _columns_props(stats: Stats | None, model: m.Model) -> dict[str, str]:
    """Model metadata `vocab` ({"district": ["east", ...]}: word i is index i + 1, 0 unknown) and
    `fill` ({"income": mean}), as compiled in, and `filled` (["income"]): the inputs that fill(x, ...)
    reads, whose missing values the model fills (predict takes empty cells in them, no others)."""
    vocab = {k.split(".", 1)[1]: list(v.words) for k, v in (stats or {}).items() if isinstance(v, Vocab)}
    fill = {k.split(".", 1)[1]: v.value for k, v in (stats or {}).items() if isinstance(v, FillMean)}
    nan = sorted(filled(model.features))
    return {**({"vocab": json.dumps(vocab)} if vocab else {}), **({"fill": json.dumps(fill)} if fill else {}),
            **({"filled": json.dumps(nan)} if nan else {})}


def _heads_props(model: m.Model) -> dict[str, str]:
    """Model metadata `heads`: {"cls": "classify", "box": "regress"}, which export reads to add each
    classifier's probabilities. For named heads; of the unnamed head, only a bce_with_logits one
    (`logits` then takes a sigmoid, not the softmax that export gives other unnamed classifiers)."""
    infos = head_infos(model)
    if not model.heads:
        infos = [h for h in infos if h.kind == "binary"]
    return {"heads": json.dumps({h.output: h.kind for h in infos})} if infos else {}


def build_forward(prog: Program, name: str | None = None, seed: int | None = None,
                  training: bool = False, frozen: Sequence[str] = (), stats: Stats | None = None,
                  target: Target | None = None, encoded: bool = False) -> Forward:
    """Walk features, backbone, neck and head; `training` gives batch-statistics batch norm and
    active dropout everywhere but under the `frozen` path prefixes. `target` picks the lowerings.
    `encoded`: string inputs arrive as their vocabulary indices (the training graphs')."""
    model = prog.model(name)
    train = prog.train(model.name)
    policy = InitPolicy(rules=train.init if train else (),
                        seed=seed if seed is not None else (train.seed if train else 0))
    comp = Compilation(Graph(term_names(model), target=target), policy, training=training, frozen=frozen)
    inputs = [declared_tensor(comp.g, t, encoded) for t in model.inputs]
    if not inputs:
        raise SpecError(f"model '{model.name}' declares no input (input x: float32[N, ...])",
                        model.name_span)
    values = {t.name: t for t in inputs}
    unfitted: list[str] = []
    if model.features is not None or any(t.dtype == "string" for t in model.inputs):
        low = lower_features(comp.g, model.features, values, stats, model.inputs)
        values, unfitted = low.values, list(low.unfitted)
    xs, named, why = _network_input(comp.g, model, values)
    comp.image_sizes = [(int(v.dims[2] or 0), int(v.dims[3] or 0)) for v in values.values() if v.rank == 4]
    moved: dict[str, Value] = {}  # targets that augmentation moves with the image: the loss reads these
    if train is not None and train.augment:
        ids = next((t for t in model.inputs if t.dtype in ("int64", "int32", "int8")), None)
        if ids is not None:  # token ids or counts: noise and shifts would change which they are
            raise SpecError(f"augmentation changes the values of its inputs, and input '{ids.name}' is "
                            f"{ids.dtype} (ids or counts); it applies to float or uint8 (pixel) inputs",
                            train.augment[0].span)
        movable = moving_targets(model.targets, list(values.values()), train.augment)  # checked everywhere
        if training:
            masks = [declared_tensor(comp.g, t) for t in model.targets if t.name in movable]
            xs, named, ms = _augmented(xs, named, masks, train.augment, policy.seed, comp.step)
            moved = {t.name: v for t, v in zip(masks, ms, strict=True)}
        else:  # check and compile judge them too, lowered into a graph of their own and dropped
            _check_augments(xs, named, train.augment, policy.seed)
    w = Walker(prog.blocks, comp, named, why)
    if model.backbone is None and model.head is None and not model.heads:
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
    outs: dict[str | None, list[Value]] = {h.name: w.head(h, xs) for h in model.heads} or {None: xs}
    bound = bind(comp.g, model, outs, last, declared_tensor, moved)
    policy.check_all_used([p.name for p in comp.params], [r.kind for r in comp.records])
    spec_hash = hashlib.sha256((model.model_dump_json() + (train.model_dump_json() if train else "")
                                + str(policy.seed)).encode()).hexdigest()[:16]
    out = next(iter(bound.outputs.values()))
    return Forward(model, train, comp, inputs, out, spec_hash, bound, unfitted)


def declared_tensor(g: Graph, t: m.TensorDecl, encoded: bool = False) -> Value:
    """A declared input or target as a graph tensor; its first dimension must be the batch.
    `encoded`: a string input is its vocabulary indices (int64)."""
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
    if t.dtype == "string" and (t.role == "target" or len(dims) != 1):
        shown = "[" + ", ".join(map(str, dims)) + "]"
        raise SpecError(f"'{t.name}' is string{shown}: strings are categories, one per sample, string[N] "
                        "inputs (a target of class names is int64[N]: its csv column may hold the names)",
                        t.dtype_span or t.span)
    dtype = "int64" if encoded and t.dtype == "string" else t.dtype
    return g.value(t.name, dtype, (None,) + tuple(int(d) for d in dims[1:]))


def _network_input(g: Graph, model: m.Model,
                   values: dict[str, Value]) -> tuple[list[Value], dict[str, Value], str]:
    """What each section's first layer takes, the values `from=` can name, and why there is no
    first tensor. One value goes in as it is; several tabular values ([N] or [N, k]) are stacked
    as columns; values of different kinds (an image and a table) are not joined: each path names
    its input with from=."""
    used = list(values.values())
    with g.at("input"):
        if len(used) == 1:
            x = used[0].cast("float32")
            return [x], {k: x for k in values}, ""
        if any(t.rank > 2 for t in used):
            kinds = ", ".join(f"{k} {show(t.dims)}" for k, t in values.items())
            return [], dict(values), (f"model '{model.name}' has inputs of different kinds ({kinds}), which "
                                      "are not stacked: name this layer's input with from=NAME")
        g.where = f"{model.name_span} inputs"
        cols = []
        for t in used:
            col = t.cast("float32")
            cols.append(op.Unsqueeze(col, [1]) if t.rank == 1 else col)
        x = op.Concat(cols, axis=1)
        width = sum(1 if t.rank == 1 else int(t.dims[1] or 0) for t in used)
        return [x.with_shape((None, width))], dict(values), ""


def _check_augments(xs: list[Value], named: dict[str, Value], augs: list[m.Augment], seed: int) -> None:
    """The train block's augmentations lowered as a training graph lowers them, on inputs of the
    same shapes in a scratch graph: a setting the images cannot take is a SpecError at check."""
    scratch = Graph()
    step = scratch.value("step", "int64", ())
    if xs:  # the network's one input, or each image input: as _augmented reads them
        _augmented([scratch.value("x", xs[0].dtype, xs[0].dims)], {}, [], augs, seed, step)
    else:
        _augmented([], {k: scratch.value(k, v.dtype, v.dims) for k, v in named.items()}, [], augs, seed, step)


def _augmented(xs: list[Value], named: dict[str, Value], masks: list[Value], augs: list[m.Augment],
               seed: int, step: Value) -> tuple[list[Value], dict[str, Value], list[Value]]:
    """The network input augmented (and the names that read it), or else each image input; and
    `masks` moved with the images."""
    if xs:
        x, moved = augment_with(xs[0], masks, augs, seed, step)
        return [x], ({k: x for k in named} if len(named) == 1 else named), moved
    named, moved = _augment_images(named, masks, augs, seed, step)
    return xs, named, moved


def _augment_images(values: dict[str, Value], masks: list[Value], augs: list[m.Augment], seed: int,
                    step: Value) -> tuple[dict[str, Value], list[Value]]:
    """The train block's augmentations applied to each image input [N, C, H, W] (one draw for all,
    so images of one sample move together), and the geometric ones to `masks`; other inputs as
    they are."""
    images = [k for k, v in values.items() if v.rank == 4]
    if not images:
        shown = ", ".join(f"{k} {show(v.dims)}" for k, v in values.items())
        raise SpecError(f"augmentation needs an image input [N, C, H, W]; the model's inputs are {shown}",
                        augs[0].span)
    out, moved = dict(values), masks
    for i, k in enumerate(images):
        out[k], ms = augment_with(values[k].cast("float32"), masks if i == 0 else [], augs, seed, step)
        moved = ms if i == 0 else moved
    return out, moved
