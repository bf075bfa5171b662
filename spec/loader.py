"""Load a spec file with its imports and the standard library; resolve `extends`; validate."""

from __future__ import annotations

import os
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from dlspec.spec import model as m
from dlspec.spec.constexpr import evaluate
from dlspec.spec.errors import SPEC_SUFFIX, RunError, Span, SpecError, did_you_mean
from dlspec.spec.heads import resolve_heads
from dlspec.spec.limits import MAX_IMPORTED_FILES, MAX_NESTING, MAX_SOURCE_BYTES
from dlspec.spec.parser import Node, parse_text
from dlspec.spec.source import NotReadable, read_regular

STDLIB = Path(__file__).with_name("stdlib.dlspec")


@dataclass
class Program:
    """Everything visible from one root spec file."""

    root: str
    blocks: dict[str, m.BlockDef] = field(default_factory=dict)
    models: dict[str, m.Model] = field(default_factory=dict)
    trains: dict[str, m.Train] = field(default_factory=dict)
    root_models: list[str] = field(default_factory=list)
    root_trains: list[str] = field(default_factory=list)
    text: str = ""

    def model(self, name: str | None = None) -> m.Model:
        """The named model, or the root file's only model."""
        if name is None:
            if len(self.root_models) != 1:
                found = ", ".join(self.root_models) or "none"
                raise SpecError(f"{self.root} defines {len(self.root_models)} models ({found}); "
                                "choose one with --model")
            name = self.root_models[0]
        if name not in self.models:
            raise SpecError(f"no model '{name}' in {self.root}{did_you_mean(name, self.models)}")
        return self.models[name]

    def train(self, model_name: str) -> m.Train | None:
        """The root file's train block for this model (the last one that applies)."""
        for key in reversed(self.root_trains):
            t = self.trains[key]
            if t.model in (None, model_name):
                return t
        return None


def load(path: str | Path) -> Program:
    """Parse, import, merge and validate a spec file into a Program."""
    if not isinstance(path, (str, os.PathLike)):
        raise RunError(f"a spec is a path (str or pathlib.Path), got {type(path).__name__} {path!r:.60}")
    root = Path(path)
    raw: _Raw = _Raw()
    text = _read(root, raw, None, f"read spec file {path}")
    _collect(STDLIB, STDLIB.read_text(), raw, stack=(), is_root=False)
    _collect(root, text, raw, stack=(), is_root=True)
    prog = Program(root=str(path), text=text, root_models=raw.root_models, root_trains=raw.root_trains)
    for name, blk in raw.blocks.items():
        prog.blocks[name] = _validate(m.BlockDef, {k: v for k, v in blk.items() if k != "item"})
    bases = {item["extends"] for item in raw.models.values()}
    for name in raw.models:
        model = _validate(m.Model, _bind_losses(_resolve_model(name, raw, ())))
        prog.models[name] = _with_heads(model, base=name in bases)
    for key in raw.trains:
        prog.trains[key] = _check_train(_validate(m.Train, _train_dict(_resolve_train(key, raw, ()), prog)))
    return prog


def _with_heads(model: m.Model, base: bool) -> m.Model:
    """The model with its heads resolved. A model that others extend may leave what its loss
    reads to them (a target among several, say): its heads are resolved, and such errors raised,
    where it is used itself."""
    try:
        return resolve_heads(model)
    except SpecError:
        if base:
            return model
        raise


@dataclass
class _Raw:
    blocks: dict[str, Node] = field(default_factory=dict)
    models: dict[str, Node] = field(default_factory=dict)
    trains: dict[str, Node] = field(default_factory=dict)
    root_models: list[str] = field(default_factory=list)
    root_trains: list[str] = field(default_factory=list)
    seen: set[Path] = field(default_factory=set)
    size: int = 0  # bytes of spec text read: the root and its imports
    imported: int = 0  # files imported


def _collect(path: Path, text: str, raw: _Raw, stack: tuple[Path, ...], is_root: bool) -> None:
    real = _resolved(path, None)
    raw.seen.add(real)
    for item in parse_text(text, str(path)):
        kind = item["item"]
        if kind == "import":
            target = _import_path(path, item)
            real_target = _resolved(target, item["path_span"])
            chain = stack + (real,)
            if real_target in chain:
                loop = chain[chain.index(real_target):] + (real_target,)
                raise SpecError(f"import cycle: {' -> '.join(p.name for p in loop)}; a file cannot "
                                "import itself, directly or through other files", item["path_span"])
            if real_target in raw.seen:
                continue
            raw.imported += 1
            if raw.imported > MAX_IMPORTED_FILES:
                raise SpecError(f"a spec imports at most {MAX_IMPORTED_FILES} files, directly or through "
                                "others; this is one more", item["path_span"])
            sub = _read(target, raw, item["path_span"], f"import '{_shown(item['path'])}'")
            _collect(target, sub, raw, stack + (real,), is_root=False)
        elif kind == "train":
            key = item["name"] or f"{path}#train{len(raw.trains)}"
            _add(raw.trains, key, item, "train block")
            if is_root:
                raw.root_trains.append(key)
        else:
            table = raw.blocks if kind == "block" else raw.models
            _add(table, item["name"], item, kind)
            if kind == "model" and is_root:
                raw.root_models.append(item["name"])


def _import_path(importer: Path, item: Node) -> Path:
    """The file an import names, relative to the importing file; only *.dlspec files, by name."""
    name: str = item["path"]
    if "\0" in name:
        raise SpecError("an import path cannot contain a NUL character", item["path_span"])
    if not name.endswith(SPEC_SUFFIX):
        raise SpecError(f"cannot import '{_shown(name)}': imports name {SPEC_SUFFIX} files (only the "
                        "spec named on the command line may be called otherwise)", item["path_span"])
    return importer.parent / name


def _resolved(path: Path, span: Span | None) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop is a RuntimeError before Python 3.13
        raise SpecError(f"cannot resolve {path}: {err}", span) from None


def _read(path: Path, raw: _Raw, span: Span | None, what: str) -> str:
    """A spec file's text: a regular UTF-8 file, within the size limit of all spec text read."""
    try:
        data = read_regular(str(path), MAX_SOURCE_BYTES)
    except NotReadable as err:
        raise SpecError(f"cannot {what}: {err} ({path})" if span else f"cannot {what}: {err}",
                        span) from None
    raw.size += len(data)
    if raw.size > MAX_SOURCE_BYTES:
        raise SpecError(f"cannot {what}: a spec and its imports hold at most {MAX_SOURCE_BYTES // 1024} "
                        "KiB of text, and this file passes that", span)
    try:
        return data.decode("utf-8").removeprefix("\ufeff")  # a byte-order mark is not text
    except UnicodeDecodeError as err:
        start = data.rfind(b"\n", 0, err.start) + 1
        line = data.count(b"\n", 0, err.start) + 1
        col = len(data[start:err.start].decode("utf-8", errors="replace")) + 1
        raise SpecError(f"{path.name} is not UTF-8 text: byte 0x{data[err.start]:02x} cannot be read "
                        "(save the file as UTF-8)", Span(str(path), line, col, line, col + 1),
                        data.decode("utf-8", errors="replace")) from None


def _shown(name: str) -> str:
    return name if len(name) <= 60 else name[:56] + "..."


def _add(table: dict[str, Node], name: str, item: Node, what: str) -> None:
    if name in table:
        first = table[name].get("name_span") or table[name]["span"]
        where = "the standard library" if first.file == str(STDLIB) else str(first)
        raise SpecError(f"{what} '{name}' is already defined (in {where}); pick another name",
                        item.get("name_span") or item["span"])
    table[name] = item


def _resolve_model(name: str, raw: _Raw, stack: tuple[str, ...]) -> Node:
    """The model's dict with `extends` applied: the child's sections replace the parent's whole."""
    item = raw.models[name]
    out: Node = {"name": name, "span": item["span"], "name_span": item["name_span"]}
    if item["extends"] is not None:
        parent_name = item["extends"]
        if parent_name in stack + (name,):
            loop = (stack + (name,))[(stack + (name,)).index(parent_name):] + (parent_name,)
            raise SpecError(f"model '{name}' cannot extend '{parent_name}': extends cycle "
                            f"{' -> '.join(loop)}", item["extends_span"])
        if parent_name not in raw.models:
            raise SpecError(f"model '{name}' extends unknown model '{parent_name}'"
                            f"{did_you_mean(parent_name, raw.models)}", item["extends_span"])
        _check_extends_depth(stack, item["extends_span"])
        out.update({k: v for k, v in _resolve_model(parent_name, raw, stack + (name,)).items()
                    if k not in ("name", "span", "name_span", "extends")})
        out["extends"] = parent_name
    for role in ("inputs", "targets"):
        if item[role]:
            out[role] = item[role]
    for role, part in item["parts"].items():
        out[role] = _part(part)
    if item.get("heads"):  # named heads replace the parent's head, whole, as a head section does
        out["heads"] = item["heads"]
        out.pop("head", None)
    elif "head" in item["parts"]:
        out.pop("heads", None)
    _check_names(name, out.get("inputs", []) + out.get("targets", []))
    _check_head_names(out.get("heads", []), out.get("inputs", []) + out.get("targets", []))
    return out


def _check_names(model: str, decls: list[Node]) -> None:
    """Each input and target of a model has a name of its own: each is one input of the graph."""
    first: dict[str, Node] = {}
    for d in decls:
        seen = first.setdefault(d["name"], d)
        if seen is not d:
            raise SpecError(f"'{d['name']}' is declared twice in model '{model}' (first as the "
                            f"{seen['role']} at {seen['span']})", d["span"])


# what the training graphs call their own inputs and outputs: no head output may take these names
RESERVED_OUTPUTS = ("loss", "lr", "step", "grad_norm", "probabilities")


def _check_head_names(heads: list[Node], decls: list[Node]) -> None:
    """A head's name is an output of model.onnx, beside the inputs and targets the graphs take."""
    declared = {d["name"]: d for d in decls}
    for h in heads:
        if h["name"] in declared:
            d = declared[h["name"]]
            raise SpecError(f"head '{h['name']}' has the name of the model's {d['role']} '{h['name']}' "
                            f"({d['span']}); the head names an output of the model, so give it a name "
                            "of its own", h["name_span"])
        if h["name"] in RESERVED_OUTPUTS:
            raise SpecError(f"head '{h['name']}': the training graphs use that name "
                            f"({', '.join(RESERVED_OUTPUTS)} are taken); give the head another",
                            h["name_span"])


def _part(part: Node) -> Node:
    """A section as parsed; a loss with each term's call validated, its names kept for _bind_losses."""
    if part["role"] != "loss":
        return part
    terms = []
    for term in part["terms"]:
        call = dict(term["call"])
        kwargs = dict(call["kwargs"])
        spans = {k: v for k, v in call["arg_spans"].items() if k in ("head", "target")}
        named = {k: str(evaluate(kwargs.pop(k), {})) for k in ("head", "target") if k in kwargs}
        refs = []
        for arg in call["args"]:  # `huber(box, size)`: names, not values
            if arg["kind"] != "name":
                raise SpecError(f"loss {call['name']} takes names as positional arguments, its head and "
                                f"its target (`{call['name']}(box, size)`); its settings go by keyword "
                                "(key=value)", arg["span"])
            refs.append((arg["id"], arg["span"]))
        loss = _static_call({**call, "args": [], "kwargs": kwargs}, m.LossKind, "loss")
        terms.append({"weight": term["weight"], "loss": loss, "span": term["span"], "arg_spans": spans,
                      "target": named.get("target"), "head": named.get("head"), "refs": refs})
    return {"role": "loss", "terms": terms, "span": part["span"]}


def _bind_losses(model: Node) -> Node:
    """Each loss term's positional names as its head and target: two are (head, target); one is
    the head where the model has named heads, else the target."""
    loss = model.get("loss")
    if loss is None:
        return model
    terms = []
    for term in loss["terms"]:
        term = {**term, "arg_spans": dict(term["arg_spans"])}
        refs = term.pop("refs")
        if len(refs) > 2:
            raise SpecError(f"loss {term['loss']['kind']} takes at most two names, its head and its target "
                            f"(`{term['loss']['kind']}(box, size)`)", refs[2][1])
        slots = ("head", "target") if len(refs) == 2 else ("head",) if model.get("heads") else ("target",)
        for key, (name, span) in zip(slots, refs, strict=False):
            if term[key] is not None:
                raise SpecError(f"the {key} of loss {term['loss']['kind']} is given twice (here and as "
                                f"{key}=)", span)
            term[key] = name
            term["arg_spans"][key] = span
        terms.append(term)
    return {**model, "loss": {**loss, "terms": terms}}


def _resolve_train(key: str, raw: _Raw, stack: tuple[str, ...]) -> Node:
    item = raw.trains[key]
    settings: dict[str, Any] = {}
    spans: dict[str, Span] = {}
    if item["extends"] is not None:
        parent = item["extends"]
        if parent in stack + (key,):
            loop = (stack + (key,))[(stack + (key,)).index(parent):] + (parent,)
            raise SpecError(f"train block '{key}' cannot extend '{parent}': extends cycle "
                            f"{' -> '.join(loop)}", item["extends_span"])
        if parent not in raw.trains:
            named = [k for k in raw.trains if "#" not in k]
            raise SpecError(f"train block extends unknown train block '{parent}'"
                            f"{did_you_mean(parent, named)}; named train blocks: "
                            f"{', '.join(named) or 'none'}", item["extends_span"])
        _check_extends_depth(stack, item["extends_span"])
        base = _resolve_train(parent, raw, stack + (key,))
        settings.update(base["settings"])
        spans.update(base["setting_spans"])
    if "from" in item["settings"]:  # a child's `from` comes with its own map and except, or none
        for key in ("from_map", "from_except"):
            settings.pop(key, None)
    settings.update(item["settings"])
    spans.update(item["setting_spans"])
    return {**item, "settings": settings, "setting_spans": spans}


def _check_extends_depth(stack: tuple[str, ...], span: Span) -> None:
    if len(stack) >= MAX_NESTING:  # a chain of thousands would exhaust the stack resolving it
        raise SpecError(f"'{stack[0]}' extends through more than {MAX_NESTING} others; extends "
                        f"chains are at most {MAX_NESTING} deep", span)


_POSITIONAL: dict[str, tuple[str, ...]] = {
    "npz": ("path",), "csv": ("path",), "images": ("path",), "constant": ("value",), "normal": ("std",),
    "uniform": ("limit",), "grad_norm": ("max_norm",), "grad_value": ("limit",),
    "early_stop": ("patience",),
}


def _kinds(union: Any) -> list[str]:
    """The `kind` literals of a discriminated union of spec models."""
    if isinstance(union, type):
        members: tuple[Any, ...] = (union,)
    else:
        members = typing.get_args(typing.get_args(union)[0])
    return [k for cls in members for k in typing.get_args(cls.model_fields["kind"].annotation)]


def _static_call(call: Node, union: Any, what: str, extra_to: str | None = None) -> Node:
    """`adamw(lr=3e-3)` -> {"kind": "adamw", "lr": 0.003}, with spans for error messages."""
    name = call["name"]
    kinds = _kinds(union)
    if name not in kinds:
        raise SpecError(f"unknown {what} '{name}'{did_you_mean(name, kinds)}; "
                        f"expected one of: {', '.join(kinds)}", call["name_span"])
    out: Node = {"kind": name, "span": call["span"], "arg_spans": dict(call["arg_spans"])}
    positional = _POSITIONAL.get(name, ("amount",) if what == "augmentation" else ())
    if len(call["args"]) > len(positional):
        extra = call["args"][len(positional)]
        raise SpecError(f"{what} '{name}' takes {len(positional)} positional argument(s)"
                        f"{' (' + ', '.join(positional) + ')' if positional else ''}; "
                        "name the others (key=value)", extra["span"])
    for key, arg in zip(positional, call["args"], strict=False):  # fewer args than names is fine
        out[key] = evaluate(arg, {})
        out["arg_spans"][key] = arg["span"]
    for key, arg in call["kwargs"].items():
        value = evaluate(arg, {})
        if extra_to is not None and key not in ("test", "val", "path", "target"):
            out.setdefault(extra_to, {})[key] = str(value)
        else:
            out[key] = value
    return out


def _map_rule(rule: Node) -> Node:
    """`"layer1." -> "backbone.layer1."` renames a prefix (both end in a dot, or the source is
    empty: every name); `"fc.weight" -> "head.0.weight"` one name."""
    source, target = rule["source"], rule["target"]
    if source == "" or source.endswith("."):
        if target and not target.endswith("."):
            raise SpecError(f'a prefix rule maps to a prefix: write "{target}." (ending in a dot)',
                            rule["span"])
    elif not target or target.endswith("."):
        raise SpecError(f"'{source}' names one weight, so it maps to one parameter name, not "
                        f"'{target}' (end the source in a dot to rename a prefix)", rule["span"])
    return rule


def _train_dict(item: Node, prog: Program) -> Node:
    s = item["settings"]
    spans = item["setting_spans"]
    out: Node = {"name": item["name"], "extends": item["extends"], "span": item["span"], "arg_spans": spans}
    for key in ("model", "from", "from_except", "freeze"):
        if key in s:
            out[key] = s[key]
    if "from_map" in s:
        out["from_map"] = [_map_rule(r) for r in s["from_map"]]
    for key in ("batch", "epochs", "seed"):
        if key in s:
            out[key] = evaluate(s[key], {})
            spans = {**spans, key: s[key]["span"]}  # point at the value, not the keyword
            out["arg_spans"] = spans
    if "model" in s and s["model"] not in prog.models:
        raise SpecError(f"train block names unknown model '{s['model']}'"
                        f"{did_you_mean(s['model'], prog.models)}", spans["model"])
    if "data" in s:
        out["data"] = _static_call(s["data"], m.Data, "data set",
                                   extra_to="fields" if s["data"]["name"] == "npz" else None)
    for key, union, what in (("optimizer", m.Optimizer, "optimizer"), ("clip", m.Clip, "clipping"),
                             ("precision", m.Precision, "precision")):
        if key in s:
            out[key] = _static_call(s[key], union, what)
    if "schedule" in s:
        out["schedule"] = _static_call(s["schedule"], m.Schedule, "schedule")
    if "init" in s:
        out["init"] = [{"target": r["target"], "span": r["span"],
                        "init": _static_call(r["call"], m.Initializer, "initializer")}
                       for r in s["init"]]
    if "augment" in s:
        out["augment"] = [_static_call(c, m.Augment, "augmentation") for c in s["augment"]]
    if "lr_mult" in s:
        out["lr_mult"] = s["lr_mult"]
    if "early_stop" in s:
        out["early_stop"] = _static_call(s["early_stop"], m.EarlyStop, "early stopping")
    return out


def _check_train(t: m.Train) -> m.Train:
    """Settings that are valid alone but not together."""
    if t.data is not None and t.data.test + t.data.val >= 1:
        raise SpecError(f"test={t.data.test} and val={t.data.val} leave no samples for training: their "
                        "sum must be below 1", t.data.span)
    if t.early_stop is not None and t.data is not None and t.data.val == 0:
        raise SpecError(f"early_stop watches the validation split, but data {t.data.kind}(...) has none: "
                        "give it a share of the samples, e.g. val=0.1", t.early_stop.span)
    opt = t.optimizer
    if isinstance(opt, m.Sgd) and opt.nesterov and (opt.momentum == 0 or opt.dampening != 0):
        raise SpecError("nesterov needs a momentum above 0 and no dampening (as torch.optim.SGD)",
                        opt.arg_spans.get("nesterov", opt.span))
    uses = {"constant": (), "step": ("every", "gamma", "min_lr"), "cosine": ("min_lr",),
            "linear": ("min_lr",)}
    for key in ("every", "gamma", "min_lr"):  # given to a kind that does not read it: ignored, silently
        if t.schedule is not None and key in t.schedule.arg_spans and key not in uses[t.schedule.kind]:
            users = [k for k, v in uses.items() if key in v]
            raise SpecError(f"{t.schedule.kind} takes no {key}= (only {', '.join(users)} "
                            f"{'does' if len(users) == 1 else 'do'})", t.schedule.arg_spans[key])
    lr = opt.lr if opt is not None else 1e-3
    if t.schedule is not None and t.schedule.min_lr > lr:  # the rate would climb to it
        raise SpecError(f"min_lr={t.schedule.min_lr:g} is above the optimizer's lr={lr:g}: a schedule "
                        "lowers the rate towards min_lr", t.schedule.arg_spans.get("min_lr", t.schedule.span))
    for setting, rules in (("lr_mult", t.lr_mult), ("init", t.init)):
        seen: set[str | None] = set()
        for rule in rules:
            if rule.target in seen:  # the later one won, silently
                named = "the default" if rule.target is None else f"'{rule.target}'"
                raise SpecError(f"{setting} names {named} twice", rule.span or t.arg_spans.get(setting))
            seen.add(rule.target)
    return t


def _validate(cls: type[BaseModel], data: Node) -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise _spec_error(err, data) from None


def _spec_error(err: ValidationError, data: Node) -> SpecError:
    first = err.errors()[0]
    loc: Sequence[Any] = first["loc"]
    span, owner, key, rest = _locate(data, loc)
    kind = owner.get("kind") if isinstance(owner, dict) else None
    where = f" in {kind}" if isinstance(kind, str) else ""
    if first["type"] == "extra_forbidden":
        known = _field_names(cls_for(owner)) if isinstance(owner, dict) else []
        return SpecError(f"unknown argument '{key}'{where}{did_you_mean(str(key), known)}"
                         + (f"; expected one of: {', '.join(known)}" if known else ""), span)
    if first["type"] == "literal_error" and key == "dtype":
        dtypes = list(typing.get_args(m.DType))
        return SpecError(f"unknown dtype '{first['input']}'{did_you_mean(str(first['input']), dtypes)}; "
                         f"expected one of: {', '.join(dtypes)}", span)
    if first["type"] == "missing" and not rest:
        what = f"{kind}" if isinstance(kind, str) else "this"
        return SpecError(f"{what} needs argument '{key}'", span)
    if first["type"] == "missing" and isinstance(rest[0], int):
        return SpecError(f"invalid value for '{key}'{where}: it has too few items "
                         f"(item {rest[0] + 1} is missing)", span)
    msg = str(first["msg"]).removeprefix("Value error, ")
    msg = msg[0].lower() + msg[1:]
    if rest and isinstance(rest[0], int):  # one item of a list: `shape`'s third dimension
        return SpecError(f"invalid value {first['input']!r} for item {rest[0] + 1} of '{key}'{where}: {msg}",
                         span)
    return SpecError(f"invalid value for '{key}'{where}: {msg}", span)


_ITEM_SPANS = {"shape": "dim_spans"}  # list fields whose items are plain values with spans kept apart


def _locate(data: Any, loc: Sequence[Any]) -> tuple[Span | None, Any, Any, list[Any]]:
    """The span, owning dict, field name and the rest of the location of a validation error.

    Walks down `loc`, skipping discriminator tags (`optimizer.sgd.lr`), and keeps the most
    specific span seen: a node's own span, then the span of the argument that was written.
    """
    span: Span | None = data.get("span") if isinstance(data, dict) else None
    owner, key, node = data, None, data
    parts = list(loc)
    i = key_at = 0
    while i < len(parts):
        part = parts[i]
        if isinstance(node, dict):
            if isinstance(node.get("span"), Span):
                span = node["span"]
            if isinstance(part, str) and part not in node and node.get("kind") == part:
                i += 1  # a discriminated union's tag
                continue
            owner, key, key_at = node, part, i
            arg_spans = node.get("arg_spans")
            own_span = node.get(f"{part}_span") if isinstance(part, str) else None
            if isinstance(arg_spans, dict) and isinstance(arg_spans.get(part), Span):
                span = arg_spans[part]
            elif isinstance(own_span, Span):
                span = own_span
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            item_spans = owner.get(_ITEM_SPANS.get(str(key), ""))
            if isinstance(item_spans, list) and part < len(item_spans):
                span = item_spans[part]
            node = node[part]
        else:
            break
        i += 1
    if isinstance(node, dict) and isinstance(node.get("span"), Span):
        span = node["span"]
    return span, owner, key, parts[key_at + 1:]


def cls_for(owner: dict[str, Any]) -> type[BaseModel] | None:
    """The spec model class that validates a static call's dict, by its kind."""
    kind = owner.get("kind")
    for union in (m.LossKind, m.Data, m.Optimizer, m.Clip):
        for cls in typing.get_args(typing.get_args(union)[0]):
            if kind in typing.get_args(cls.model_fields["kind"].annotation):
                return cls  # type: ignore[no-any-return]
    for cls in (m.Schedule, m.Initializer, m.Augment, m.EarlyStop):
        if kind in typing.get_args(cls.model_fields["kind"].annotation):
            return cls
    return None


def _field_names(cls: type[BaseModel] | None) -> list[str]:
    if cls is None:
        return []
    return [n for n in cls.model_fields if n not in ("kind", "span", "arg_spans")]
