"""Load a spec file with its imports and the standard library; resolve `extends`; validate."""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from dlspec.spec import model as m
from dlspec.spec.constexpr import evaluate
from dlspec.spec.errors import Span, SpecError, did_you_mean
from dlspec.spec.parser import Node, parse_text

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
    root = Path(path)
    try:
        text = root.read_text()
    except OSError as err:
        raise SpecError(f"cannot read spec file {path}: {err.strerror}") from None
    raw: _Raw = _Raw()
    _collect(STDLIB, STDLIB.read_text(), raw, stack=(), is_root=False)
    _collect(root, text, raw, stack=(), is_root=True)
    prog = Program(root=str(path), text=text, root_models=raw.root_models, root_trains=raw.root_trains)
    for name, blk in raw.blocks.items():
        prog.blocks[name] = _validate(m.BlockDef, {k: v for k, v in blk.items() if k != "item"})
    for name in raw.models:
        prog.models[name] = _validate(m.Model, _resolve_model(name, raw, ()))
    for key in raw.trains:
        prog.trains[key] = _check_train(_validate(m.Train, _train_dict(_resolve_train(key, raw, ()), prog)))
    return prog


@dataclass
class _Raw:
    blocks: dict[str, Node] = field(default_factory=dict)
    models: dict[str, Node] = field(default_factory=dict)
    trains: dict[str, Node] = field(default_factory=dict)
    root_models: list[str] = field(default_factory=list)
    root_trains: list[str] = field(default_factory=list)
    seen: set[Path] = field(default_factory=set)


def _collect(path: Path, text: str, raw: _Raw, stack: tuple[Path, ...], is_root: bool) -> None:
    real = path.resolve()
    raw.seen.add(real)
    for item in parse_text(text, str(path)):
        kind = item["item"]
        if kind == "import":
            target = (path.parent / item["path"])
            chain = stack + (real,)
            if target.resolve() in chain:
                loop = chain[chain.index(target.resolve()):] + (target.resolve(),)
                raise SpecError(f"import cycle: {' -> '.join(p.name for p in loop)}; a file cannot "
                                "import itself, directly or through other files", item["path_span"])
            if target.resolve() in raw.seen:
                continue
            try:
                sub = target.read_text()
            except OSError as err:
                raise SpecError(f"cannot import '{item['path']}': {err.strerror} ({target})",
                                item["path_span"]) from None
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
        out.update({k: v for k, v in _resolve_model(parent_name, raw, stack + (name,)).items()
                    if k not in ("name", "span", "name_span", "extends")})
        out["extends"] = parent_name
    for role in ("inputs", "targets"):
        if item[role]:
            out[role] = item[role]
    for role, part in item["parts"].items():
        out[role] = _part(part)
    return out


def _part(part: Node) -> Node:
    if part["role"] != "loss":
        return part
    terms = []
    for term in part["terms"]:
        call = dict(term["call"])
        target = call["kwargs"].pop("target", None)
        loss = _static_call(call, m.LossKind, "loss")
        terms.append({"weight": term["weight"], "loss": loss, "span": term["span"],
                      "target": None if target is None else str(evaluate(target, {}))})
    return {"role": "loss", "terms": terms, "span": part["span"]}


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
        base = _resolve_train(parent, raw, stack + (key,))
        settings.update(base["settings"])
        spans.update(base["setting_spans"])
    settings.update(item["settings"])
    spans.update(item["setting_spans"])
    return {**item, "settings": settings, "setting_spans": spans}


_POSITIONAL: dict[str, tuple[str, ...]] = {
    "npz": ("path",), "csv": ("path",), "constant": ("value",), "normal": ("std",),
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


def _train_dict(item: Node, prog: Program) -> Node:
    s = item["settings"]
    spans = item["setting_spans"]
    out: Node = {"name": item["name"], "extends": item["extends"], "span": item["span"], "arg_spans": spans}
    for key in ("model", "from", "from_except", "freeze"):
        if key in s:
            out[key] = s[key]
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
    for key, union, what in (("optimizer", m.Optimizer, "optimizer"), ("clip", m.Clip, "clipping")):
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
    if t.early_stop is not None and t.data is not None and t.data.val == 0:
        raise SpecError(f"early_stop watches the validation split, but data {t.data.kind}(...) has none: "
                        "give it a share of the samples, e.g. val=0.1", t.early_stop.span)
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
    msg = first["msg"]
    msg = msg[0].lower() + msg[1:]
    return SpecError(f"invalid value for '{key}'{where}: {msg}", span)


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
