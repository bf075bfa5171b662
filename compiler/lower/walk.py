"""Walk a model's sections, blocks and chains, naming every layer by its spec path."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from dlspec.compiler.graph import Value, show
from dlspec.compiler.graph import ops as op
from dlspec.compiler.lower.context import Compilation, LayerCtx, LayerRecord
from dlspec.compiler.lower.layers import LAYERS, Layer, _same_shapes
from dlspec.spec import model as m
from dlspec.spec.constexpr import Symbol, evaluate
from dlspec.spec.errors import CompileError, Span, SpecError, did_you_mean
from dlspec.spec.limits import MAX_EXPANDED, MAX_INT, MAX_NESTING, MAX_REPEAT, MAX_SAMPLE_VALUES
from dlspec.spec.loader import STDLIB

Env = dict[str, Any]
COMMON_ARGS = ("from", "init")


@dataclass
class Scope:
    """A naming scope: `backbone.stage1.0`; counts layers per kind (conv1, conv2, bn1...)."""

    path: str
    counts: dict[str, int] = field(default_factory=dict)

    def child(self, kind: str) -> str:
        n = self.counts.get(kind, 0) + 1
        self.counts[kind] = n
        return f"{self.path}.{kind}{n}"

    def sub(self, name: str) -> Scope:
        return Scope(f"{self.path}.{name}")

    def index(self) -> Scope:
        """The next positional child (0, 1, ...): block calls and repeated copies, as in nn.Sequential."""
        n = self.counts.get("", 0)
        self.counts[""] = n + 1
        return self.sub(str(n))


BLOCK_INPUT = "in"  # inside a block, the name of the block's input


@dataclass
class Names:
    """What `from=` can name in one scope. The model's scope holds its inputs and the stages of its
    sections (the neck and head read the backbone's). Each block call has a scope of its own with
    `in`, the block's input, and the block's stages, so two calls of a block never share a name. A
    block that is a whole section (`backbone resnet18`) also reads its section's names, and its
    stages join them."""

    owner: str  # "the model", "block se"
    values: dict[str, list[Value]] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)  # a stage name -> the section that made it
    parent: Names | None = None  # a whole-section block's: the scope it reads and adds to


class Walker:
    def __init__(self, blocks: dict[str, m.BlockDef], comp: Compilation,
                 inputs: dict[str, Value] | None = None, no_input: str = ""):
        """`inputs`: the model's inputs (features applied) that `from=` can name; `no_input`: why a
        section's first layer gets no tensor (several inputs of different kinds are not stacked)."""
        for name, block in blocks.items():  # a call names the built-in first: the block would never run
            if name in LAYERS:
                raise SpecError(f"block '{name}' has the name of a built-in layer, which a call would run "
                                "instead; pick another name", block.name_span or block.span)
        self.blocks = blocks
        self.comp = comp
        self.model_names = self.names = Names("the model")
        self.inputs = dict(inputs or {})
        self.no_input = no_input
        self.expanded = 0  # elements expanded so far: layers, block calls, loop passes, repeat copies
        self.depth = 0  # elements inside one another, through block calls
        self.calling: list[str] = []  # the blocks being expanded, outermost first

    # ---- sections ----
    def section(self, sec: m.Section, xs: list[Value]) -> list[Value]:
        scope = Scope(sec.role)
        if sec.form == "call":
            assert sec.call is not None
            return self.element(sec.call, xs, scope, {}, sole=True, next_kind=None, stages=sec.role)
        assert sec.body is not None
        return self.body(sec.body, xs, scope, {}, stages=sec.role)

    def body(self, body: m.Body, xs: list[Value], scope: Scope, env: Env,
             stages: str | None) -> list[Value]:
        for st in body.stages:
            inner = scope.sub(st.name) if st.name else scope
            xs = self.chain(st.chain, xs, inner, env, stages if st.name is None else None, top=True)
            if st.name:
                self.define(st.name, xs, stages or self.names.owner, st.name_span)
        return xs

    def head(self, h: m.NamedHead, xs: list[Value]) -> list[Value]:
        """`head cls: chain`: the chain on the last section's output; its parameters are
        `head.cls.*`, and later heads can read it by name."""
        ys = self.chain(h.chain, xs, Scope("head").sub(h.name), {}, top=True)
        self.define(h.name, ys, "head", h.name_span)
        return ys

    # ---- names that from= reads ----
    def define(self, name: str, xs: list[Value], where: str, span: Span | None) -> None:
        """A stage's output under its name, in the current scope and the scopes it adds to (a
        stage named like a model input hides the input from then on)."""
        if name == BLOCK_INPUT and self.names is not self.model_names:
            raise SpecError(f"'{BLOCK_INPUT}' names the input of the {self.names.owner}; give this stage "
                            "another name", span)
        scope: Names | None = self.names
        while scope is not None:
            if name in scope.values:
                raise SpecError(f"stage name '{name}' is already used in the {scope.where.get(name, where)}",
                                span)
            scope.values[name] = xs
            scope.where[name] = where
            scope = scope.parent

    def lookup(self, name: str) -> list[Value] | None:
        """The tensors a name stands for in the current scope, or None."""
        scope: Names | None = self.names
        while scope is not None:
            if name in scope.values:
                return scope.values[name]
            if scope is self.model_names and name in self.inputs:
                return [self._model_input(name)]
            scope = scope.parent
        return None

    def _model_input(self, name: str) -> Value:
        """A model input (features applied) as a layer takes it: float32, an [N] input as a column
        [N, 1]. Made when first named, so an input no layer names adds no node."""
        x = self.inputs[name]
        if x.dtype == "float32" and x.rank != 1:
            return x
        with self.comp.g.at("input", f"input {name}"):
            y = x.cast("float32")
            if x.rank == 1:
                y = op.Unsqueeze(y, [1]).with_shape((None, 1))
        self.inputs[name] = y
        return y

    def _unknown(self, ref: str) -> str:
        """Why `ref` names nothing here, with the names that are."""
        chain: list[Names] = []
        scope: Names | None = self.names
        while scope is not None:
            chain.append(scope)
            scope = scope.parent
        stages = [n for s in chain for n in s.values if n != BLOCK_INPUT or s is self.names]
        inputs = list(self.inputs) if chain[-1] is self.model_names else []
        known = stages + inputs
        if self.names is self.model_names:
            listed = f"stages defined so far: {', '.join(stages) or 'none yet'}"
            if inputs:
                listed += f"; model inputs: {', '.join(inputs)}"
            return f"no stage named '{ref}'{did_you_mean(ref, known)}; {listed}"
        return (f"no stage named '{ref}' in {self.names.owner}{did_you_mean(ref, known)}; the names it "
                f"reads so far: {', '.join(known)} ('{BLOCK_INPUT}' is the block's input)")

    # ---- chains ----
    def chain(self, chain: m.Chain, xs: list[Value], scope: Scope, env: Env,
              stages: str | None = None, top: bool = False) -> list[Value]:
        """`top`: the chain is a stage's whole body, so a lone block call shares the stage's scope."""
        items = chain.items
        for i, el in enumerate(items):
            nxt = self._kind_of(items[i + 1], env) if i + 1 < len(items) else None
            xs = self.element(el, xs, scope, env, sole=top and len(items) == 1, next_kind=nxt,
                              stages=stages if len(items) == 1 else None)
        return xs

    def _kind_of(self, el: m.Element, env: Env) -> str | None:
        if isinstance(el, m.Call):
            bound = env.get(el.name)
            return str(bound) if isinstance(bound, Symbol) else el.name
        return None

    def element(self, el: m.Element, xs: list[Value], scope: Scope, env: Env, sole: bool,
                next_kind: str | None, stages: str | None) -> list[Value]:
        """Expand one element, within the limits on how much and how deep a model expands."""
        self._expand(1, el)
        if self.depth >= MAX_NESTING:
            raise SpecError(f"this nests more than {MAX_NESTING} levels deep, counting through the blocks "
                            "that call it", el.span)
        self.depth += 1
        try:
            return self._element(el, xs, scope, env, sole, next_kind, stages)
        finally:
            self.depth -= 1

    def _expand(self, n: int, el: m.Element) -> None:
        """Count `n` more expanded elements; past MAX_EXPANDED, stop at `el`."""
        self._check_budget(n, el, "; this is where it passes it")
        self.expanded += n

    def _element(self, el: m.Element, xs: list[Value], scope: Scope, env: Env, sole: bool,
                 next_kind: str | None, stages: str | None) -> list[Value]:
        if isinstance(el, m.Call):
            return self.call(el, xs, scope, env, sole, next_kind, stages)
        if isinstance(el, m.Group):
            return self.chain(el.body, xs, scope, env)
        if isinstance(el, m.ForEach):
            items = evaluate(el.iter, env)
            if not isinstance(items, list):
                raise SpecError(f"for expects a list, got {items!r}", el.iter.span)
            self._check_budget(len(items) * _at_least(el.body.items), el)
            for item in items:
                xs = self.chain(el.body, xs, scope, {**env, el.var: item})
            return xs
        if isinstance(el, m.Residual):
            return self.residual(el, xs, scope, env)
        times = evaluate(el.times, env)
        if not isinstance(times, int) or isinstance(times, bool) or not 1 <= times <= MAX_REPEAT:
            raise SpecError(f"a repeat count must be a whole number from 1 to {MAX_REPEAT:,}, got {times!r}",
                            el.times.span)
        self._check_budget(times * _at_least([el.body]), el)
        first = self._kind_of(el.body, env)
        for i in range(times):  # each copy but the last is followed by the next copy
            xs = self.element(el.body, xs, scope.index(), env, sole=True,
                              next_kind=next_kind if i == times - 1 else first, stages=None)
        return xs

    def _check_budget(self, least: int, el: m.Element, where: str | None = None) -> None:
        """Refuse `el` when `least` more expanded elements would pass MAX_EXPANDED: a repeat or loop
        before its work, when what it expands cannot fit. `where`: what the message says of `el`."""
        if self.expanded + least > MAX_EXPANDED:
            raise SpecError(f"the model expands to more than {MAX_EXPANDED:,} layers, block calls, loop "
                            "passes and repeat copies, the limit"
                            f"{where or f': this alone expands to {least:,} or more'}", el.span)

    # ---- calls: layers and blocks ----
    def call(self, call: m.Call, xs: list[Value], scope: Scope, env: Env, sole: bool,
             next_kind: str | None, stages: str | None) -> list[Value]:
        name = call.name
        bound = env.get(name)
        if isinstance(bound, Symbol):
            name = str(bound)
        if "from" in call.kwargs:
            xs = self._from(call, env)
        if name in LAYERS:
            return self.layer(LAYERS[name], call, xs, scope, env, next_kind, sole)
        if name in self.blocks:
            blk = self.blocks[name]
            if "init" in call.kwargs:
                raise SpecError("init= applies to single layers; set it on the layers inside "
                                f"block '{name}' or in the train block", call.arg_spans["init"])
            if name in self.calling:  # the language has no conditions: a block that calls itself never ends
                cycle = self.calling[self.calling.index(name):] + [name]
                raise SpecError(f"block {name} calls itself: {' -> '.join(cycle)}",
                                call.name_span or call.span)
            inner = scope if sole else scope.index()
            whole = sole and stages is not None  # the block is a whole section: it adds its stages there
            outer = self.names
            self.names = Names(f"block {name}", {BLOCK_INPUT: xs}, parent=outer if whole else None)
            self.calling.append(name)
            try:
                return self.body(blk.body, xs, inner, self._bind(blk, call, env),
                                 stages if sole else None)
            except SpecError as err:
                raise _at_call_site(err, name, call) from None
            finally:
                self.calling.pop()
                self.names = outer
        known = list(LAYERS) + list(self.blocks)
        raise SpecError(f"unknown layer or block '{name}'{did_you_mean(name, known)}",
                        call.name_span or call.span)

    def _from(self, call: m.Call, env: Env) -> list[Value]:
        expr = call.kwargs["from"]
        refs = evaluate(expr, env)
        refs = refs if isinstance(refs, list) else [refs]
        item_spans = ([i.span for i in expr.items] if isinstance(expr, m.ListExpr)
                      and len(expr.items) == len(refs) else [expr.span] * len(refs))
        out: list[Value] = []
        for ref, span in zip(refs, item_spans, strict=True):
            found = self.lookup(str(ref))
            if found is None:
                raise SpecError(self._unknown(str(ref)), span or call.arg_spans["from"])
            out += found
        return out

    def _bind(self, blk: m.BlockDef, call: m.Call, env: Env) -> Env:
        names = [p.name for p in blk.params]
        sig = f"{blk.name}({', '.join(p.name + ('=...' if p.default else '') for p in blk.params)})"
        if len(call.args) > len(names):
            raise SpecError(f"block '{blk.name}' takes {len(names)} argument(s), got "
                            f"{len(call.args)}: {sig}", call.args[len(names)].span)
        given: Env = {n: evaluate(a, env) for n, a in zip(names, call.args, strict=False)}
        for key, expr in call.kwargs.items():
            if key == "from":
                continue
            if key not in names:
                raise SpecError(f"block '{blk.name}' has no argument '{key}'"
                                f"{did_you_mean(key, names)}: {sig}", call.arg_spans.get(key))
            if key in given:
                raise SpecError(f"argument '{key}' of block '{blk.name}' is given twice",
                                call.arg_spans.get(key))
            given[key] = evaluate(expr, env)
        bound: Env = {}
        for p in blk.params:
            if p.name in given:
                bound[p.name] = given[p.name]
            elif p.default is not None:
                bound[p.name] = evaluate(p.default, bound)
            else:
                raise SpecError(f"block '{blk.name}' needs argument '{p.name}': {sig}", call.span)
        return bound

    def layer(self, cls: type[Layer], call: m.Call, xs: list[Value], scope: Scope, env: Env,
              next_kind: str | None, sole: bool = False) -> list[Value]:
        if not xs:
            raise SpecError(self._no_input(cls.kind), call.span)
        args = self._layer_args(cls, call, env)
        stacked = getattr(args, "layers", 1)  # a recurrent layer of n stacked layers counts n
        if isinstance(stacked, int) and stacked > 1:
            self._expand(stacked - 1, call)
        override = self._init_override(call, env) if "init" in call.kwargs else None
        path = scope.path if sole and cls.names_scope else scope.child(cls.kind)
        ctx = LayerCtx(self.comp, path, cls.kind, call.span, next_kind, override)
        out = _within_limits(ctx, args.build_many(ctx, xs))
        self.comp.records.append(LayerRecord(path, cls.kind, [t.dims for t in out], ctx.n_params,
                                             ctx.flops, call.span))
        return out

    def _layer_args(self, cls: type[Layer], call: m.Call, env: Env) -> Layer:
        pos = cls.positional
        if len(call.args) > len(pos):
            extra = call.args[len(pos)]
            raise SpecError(f"{cls.kind} takes {len(pos)} positional argument(s)"
                            f"{' (' + ', '.join(pos) + ')' if pos else ''}; name the others (key=value)",
                            extra.span)
        data: dict[str, Any] = {}
        spans: dict[str, Span | None] = {}
        for key, expr in zip(pos, call.args, strict=False):
            data[key], spans[key] = _plain(evaluate(expr, env)), expr.span
        for key, expr in call.kwargs.items():
            if key in COMMON_ARGS:
                continue
            if key in data:
                raise SpecError(f"argument '{key}' of {cls.kind} is given twice", call.arg_spans.get(key))
            data[key], spans[key] = _plain(evaluate(expr, env)), call.arg_spans.get(key)
        try:
            # strict: a string or a boolean is not a number here (conv("8"), conv(true))
            return cls.model_validate(data, strict=True)
        except ValidationError as err:
            e = _most_telling(err.errors())
            key = str(e["loc"][0]) if e["loc"] else ""
            fields = [f for f in cls.model_fields] + list(COMMON_ARGS)
            if e["type"] == "extra_forbidden":
                raise SpecError(f"{cls.kind} has no argument '{key}'{did_you_mean(key, fields)}; "
                                f"it takes: {', '.join(fields)}", spans.get(key) or call.span) from None
            if e["type"] == "missing":
                form = cls.__doc__.splitlines()[0] if cls.__doc__ else cls.kind
                raise SpecError(f"{cls.kind} needs argument '{key}' ({form})", call.span) from None
            msg = _EXPECTED.get(e["type"]) or e["msg"][0].lower() + e["msg"][1:]
            raise SpecError(f"invalid value {_dsl(e['input'])} for '{key}' of {cls.kind}: {msg}",
                            spans.get(key) or call.span) from None

    def _init_override(self, call: m.Call, env: Env) -> m.Initializer:
        expr = call.kwargs["init"]
        span = call.arg_spans.get("init")
        if isinstance(expr, m.Name):
            data: dict[str, Any] = {"kind": expr.id}
        elif isinstance(expr, m.Func) and len(expr.args) <= 1:
            key = {"constant": "value", "normal": "std", "uniform": "limit"}.get(expr.name, "gain")
            data = {"kind": expr.name, **({key: evaluate(expr.args[0], env)} if expr.args else {})}
        else:
            raise SpecError("init= takes an initializer such as xavier_uniform or normal(0.01)", span)
        try:
            return m.Initializer.model_validate(data)
        except ValidationError:
            kinds = list(m.Initializer.model_fields["kind"].annotation.__args__)  # type: ignore[union-attr]
            raise SpecError(f"unknown initializer '{data['kind']}'{did_you_mean(data['kind'], kinds)}; "
                            f"expected one of: {', '.join(kinds)}", span) from None

    # ---- residual blocks ----
    def _no_input(self, kind: str) -> str:
        return f"{kind} has no input tensor" + (f": {self.no_input}" if self.no_input else "")

    def residual(self, el: m.Residual, xs: list[Value], scope: Scope, env: Env) -> list[Value]:
        if not xs:
            raise SpecError(self._no_input("residual"), el.span)
        if len(xs) != 1:
            raise SpecError(f"residual takes one tensor but gets {len(xs)}", el.span)
        for key in el.kwargs:
            if key != "shortcut":
                raise SpecError(f"residual has no argument '{key}'; it takes: shortcut",
                                el.arg_spans.get(key))
        mode = str(evaluate(el.kwargs["shortcut"], env)) if "shortcut" in el.kwargs else "auto"
        if mode not in ("auto", "identity", "conv"):
            raise SpecError(f"shortcut must be auto, identity or conv, got '{mode}'",
                            el.arg_spans.get("shortcut"))
        x = xs[0]
        body = self.chain(el.body, xs, scope, env)
        if len(body) != 1:
            raise SpecError(f"the residual body gives {len(body)} tensors; it must give one", el.span)
        y = body[0]
        short = x
        if mode == "conv" or (mode == "auto" and y.shape != x.shape):
            short = self._projection(el, x, y, scope)
        elif y.shape != x.shape:
            what = "channel" if len(y.dims) == len(x.dims) and y.dims[2:] == x.dims[2:] else "shape"
            raise CompileError(f"residual with shortcut=identity: the body gives {show(y.dims)} but its "
                               f"input is {show(x.dims)} ({what} mismatch); an identity shortcut needs "
                               "equal shapes (leave shortcut out to project with a 1x1 conv)", el.span)
        LayerCtx(self.comp, scope.path + ".add", "add", el.span, None, None)  # names the Add
        return [(y + short).with_shape(y.shape)]

    def _projection(self, el: m.Residual, x: Value, y: Value, scope: Scope) -> Value:
        """1x1 conv (stride = the body's downsampling) + bn: the ResNet projection shortcut."""
        if x.rank != 4 or y.rank != 4:
            if x.rank == 2 and y.rank == 2:
                return self._apply(LAYERS["linear"].model_validate({"out": y.dims[1], "bias": False}),
                                   "linear", [x], scope.sub(_shortcut_name(scope)), el.span, None)[0]
            raise CompileError(f"residual: cannot project {show(x.dims)} to {show(y.dims)}", el.span)
        hs, ws, ho, wo = x.dims[2], x.dims[3], y.dims[2], y.dims[3]
        assert isinstance(hs, int) and isinstance(ws, int) and isinstance(ho, int) and isinstance(wo, int)
        stride = [_stride_between(hs, ho), _stride_between(ws, wo)]
        if 0 in stride:
            raise CompileError(f"residual: the body turns {show(x.dims)} into {show(y.dims)}; no "
                               "strided 1x1 shortcut gives that size", el.span)
        sc = scope.sub(_shortcut_name(scope))
        conv = LAYERS["conv"].model_validate({"out": y.dims[1], "k": 1, "stride": stride,
                                              "padding": 0, "bias": False})
        t = self._apply(conv, "conv", [x], sc, el.span, "bn")
        t = self._apply(LAYERS["bn"].model_validate({}), "bn", t, sc, el.span, None)
        _same_shapes(LayerCtx(self.comp, sc.path, "residual", el.span, None, None), [t[0], y],
                     "residual shortcut")
        return t[0]

    def _apply(self, args: Layer, kind: str, xs: list[Value], scope: Scope, span: Span | None,
               next_kind: str | None) -> list[Value]:
        path = f"{scope.path}.{kind}"
        ctx = LayerCtx(self.comp, path, args.kind, span, next_kind, None)
        out = _within_limits(ctx, args.build_many(ctx, xs))
        self.comp.records.append(LayerRecord(path, args.kind, [t.dims for t in out], ctx.n_params,
                                             ctx.flops, span))
        return out


def _at_least(items: list[m.Element]) -> int:
    """The fewest elements the walk expands for these, read from the text alone (a block call or a
    repeat by a parameter counts once), capped just past MAX_EXPANDED."""
    n = 0
    for el in items:
        n += 1
        if isinstance(el, m.Repeat):
            times = el.times.value if isinstance(el.times, m.Num) and isinstance(el.times.value, int) else 1
            n += max(times, 1) * _at_least([el.body])
        elif isinstance(el, m.ForEach):
            passes = len(el.iter.items) if isinstance(el.iter, m.ListExpr) else 0
            n += passes * _at_least(el.body.items)
        elif isinstance(el, (m.Group, m.Residual)):
            n += _at_least(el.body.items)
        elif isinstance(el, m.Call) and isinstance(stacked := el.kwargs.get("layers"), m.Num):
            n += max(int(stacked.value) - 1, 0) if isinstance(stacked.value, int) else 0  # lstm/gru layers
        if n > MAX_EXPANDED:
            return MAX_EXPANDED + 1
    return n


def _within_limits(ctx: LayerCtx, out: list[Value]) -> list[Value]:
    """A layer's outputs, refused past MAX_SAMPLE_VALUES per sample (upsample(2) * 40 would grow
    an image to 2^40 times its area)."""
    for t in out:
        n = math.prod(d for d in t.dims[1:] if isinstance(d, int))
        if n > MAX_SAMPLE_VALUES:
            raise ctx.error(f"its output {show(t.dims)} holds {n:,} values per sample; the limit is "
                            f"{MAX_SAMPLE_VALUES:,}")
    return out


def _at_call_site(err: SpecError, block: str, call: m.Call) -> SpecError:
    """An error inside a standard-library block is reported where the user's spec calls it."""
    stdlib = str(STDLIB)
    if err.span is None or err.span.file != stdlib or call.span is None or call.span.file == stdlib:
        return err
    return type(err)(f"{err.message} (inside block '{block}' of the standard library, at "
                     f"{STDLIB.name}:{err.span.line}:{err.span.col})", call.span)


def _shortcut_name(scope: Scope) -> str:
    """`shortcut` (torchvision-like), then shortcut2, shortcut3 for more residuals in one scope."""
    n = scope.counts.get("shortcut", 0) + 1
    scope.counts["shortcut"] = n
    return "shortcut" if n == 1 else f"shortcut{n}"


def _most_telling(errors: list[Any]) -> Any:
    """The first field's error that says most: of `k=[3, 2000000]` against `int | list[int]`, the
    item past its bound rather than "not an int"."""
    field = [e for e in errors if e["loc"][:1] == errors[0]["loc"][:1]]
    return next((e for e in field if e["type"] in _BOUNDS), field[0])


_BOUNDS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")
_EXPECTED = {"int_type": "expected a whole number", "float_type": "expected a number",
             "bool_type": "expected true or false", "string_type": "expected a name or a string"}


def _dsl(v: Any) -> str:
    """A value as it is written in a spec: true, "text", [1, 2]."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_dsl(i) for i in v) + "]"
    return repr(v)


def _stride_between(size: int, out: int) -> int:
    """The stride s of a 1x1 conv mapping `size` to `out`: (size - 1) // s + 1 == out, else 0."""
    for s in range(1, size + 1):
        if (size - 1) // s + 1 == out:
            return s
    return 0


def _plain(v: Any) -> Any:
    """Symbols become plain strings and whole floats (width * 0.5) ints, for strict validation."""
    if isinstance(v, list):
        return [_plain(i) for i in v]
    if isinstance(v, float) and v.is_integer() and abs(v) <= MAX_INT:
        return int(v)
    return str(v) if isinstance(v, Symbol) else v
