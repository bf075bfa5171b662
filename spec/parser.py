"""Parse .dlspec text into plain dicts that carry source spans (meaning is checked later)."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from lark import Lark, Token, Tree, v_args
from lark.exceptions import (
    LarkError,
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)
from lark.tree import Meta
from lark.visitors import Transformer_NonRecursive

from dlspec.spec.bounds import check_tree
from dlspec.spec.errors import Span, SpecError

Node = dict[str, Any]


@lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark.open("dlspec.lark", rel_to=__file__, parser="lalr", propagate_positions=True)


def _span(file: str, meta: Meta | Token) -> Span:
    return Span(file, meta.line or 0, meta.column or 0, meta.end_line or 0, meta.end_column or 0)


def _number(tok: Token) -> int | float:
    text = str(tok)
    return int(text) if text.isdigit() else float(text)


_LIST_SETTINGS = {"init", "augment", "freeze", "lr_mult"}


@v_args(meta=True)
class _ToDicts(Transformer_NonRecursive[Token, list[Node]]):
    """Reshapes the parse tree into dicts; one method per grammar rule alias (without recursion)."""

    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def sp(self, meta: Meta | Token) -> Span:
        return _span(self.file, meta)

    # ---- expressions ----
    def number(self, meta: Meta, c: list[Token]) -> Node:
        return {"kind": "num", "value": _number(c[0]), "span": self.sp(c[0])}

    def string(self, meta: Meta, c: list[Token]) -> Node:
        return {"kind": "str", "value": _unquote(c[0], self.file), "span": self.sp(c[0])}

    def true(self, meta: Meta, c: list[Any]) -> Node:
        return {"kind": "bool", "value": True, "span": self.sp(meta)}

    def false(self, meta: Meta, c: list[Any]) -> Node:
        return {"kind": "bool", "value": False, "span": self.sp(meta)}

    def name(self, meta: Meta, c: list[Token]) -> Node:
        return {"kind": "name", "id": str(c[0]), "span": self.sp(c[0])}

    def func(self, meta: Meta, c: list[Any]) -> Node:
        args = [a for a in c[1:] if a is not None]
        return {"kind": "func", "name": str(c[0]), "args": args, "span": self.sp(meta)}

    def list_expr(self, meta: Meta, c: list[Any]) -> Node:
        return {"kind": "list", "items": [a for a in c if a is not None], "span": self.sp(meta)}

    def _op(self, op: str, meta: Meta, c: list[Any]) -> Node:
        return {"kind": "op", "op": op, "args": c, "span": self.sp(meta)}

    def add(self, meta: Meta, c: list[Any]) -> Node:
        return self._op("add", meta, c)

    def sub(self, meta: Meta, c: list[Any]) -> Node:
        return self._op("sub", meta, c)

    def mul(self, meta: Meta, c: list[Any]) -> Node:
        return self._op("mul", meta, c)

    def div(self, meta: Meta, c: list[Any]) -> Node:
        return self._op("div", meta, c)

    def neg(self, meta: Meta, c: list[Any]) -> Node:
        return self._op("neg", meta, c)

    def pow(self, meta: Meta, c: list[Any]) -> Node:
        return self._op("pow", meta, c)

    # ---- calls and chains ----
    def pos_arg(self, meta: Meta, c: list[Any]) -> tuple[None, Node, Span]:
        return (None, c[0], self.sp(meta))

    def kw_arg(self, meta: Meta, c: list[Any]) -> tuple[str, Node, Span]:
        return (str(c[0]), c[1], self.sp(meta))

    def args(self, meta: Meta, c: list[Any]) -> list[Any]:
        return c

    def _split_args(self, items: list[Any] | None) -> tuple[list[Node], dict[str, Node], dict[str, Span]]:
        args: list[Node] = []
        kwargs: dict[str, Node] = {}
        spans: dict[str, Span] = {}
        for key, value, span in items or []:
            if key is None:
                if kwargs:
                    raise SpecError("a positional argument cannot follow a keyword argument", span)
                args.append(value)
            elif key in kwargs:
                raise SpecError(f"argument '{key}' is given twice", span)
            else:
                kwargs[key] = value
                spans[key] = span
        return args, kwargs, spans

    def call(self, meta: Meta, c: list[Any]) -> Node:
        args, kwargs, spans = self._split_args(c[1] if len(c) > 1 else None)
        return {"kind": "call", "name": str(c[0]), "args": args, "kwargs": kwargs,
                "arg_spans": spans, "name_span": self.sp(c[0]), "span": self.sp(meta)}

    def residual(self, meta: Meta, c: list[Any]) -> Node:
        args, kwargs, spans = self._split_args(c[0])
        if args:
            raise SpecError("residual takes keyword arguments only (shortcut=...)", args[0]["span"])
        return {"kind": "residual", "kwargs": kwargs, "arg_spans": spans, "body": c[1],
                "span": self.sp(meta)}

    def for_each(self, meta: Meta, c: list[Any]) -> Node:
        return {"kind": "for", "var": str(c[0]), "iter": c[1], "body": c[2], "span": self.sp(meta)}

    def group(self, meta: Meta, c: list[Any]) -> Node:
        return {"kind": "group", "body": c[0], "span": self.sp(meta)}

    def single(self, meta: Meta, c: list[Any]) -> Node:
        return c[0]  # type: ignore[no-any-return]

    def repeat(self, meta: Meta, c: list[Any]) -> Node:
        tok = c[1]
        times = ({"kind": "num", "value": _number(tok), "span": self.sp(tok)} if tok.type == "NUMBER"
                 else {"kind": "name", "id": str(tok), "span": self.sp(tok)})
        return {"kind": "repeat", "body": c[0], "times": times, "span": self.sp(meta)}

    def chain(self, meta: Meta, c: list[Any]) -> Node:
        return {"kind": "chain", "items": c, "span": self.sp(meta)}

    def stage(self, meta: Meta, c: list[Any]) -> Node:
        return {"name": str(c[0]), "chain": c[1], "span": self.sp(meta), "name_span": self.sp(c[0])}

    def chain_body(self, meta: Meta, c: list[Any]) -> Node:
        return {"stages": [{"name": None, "chain": c[0], "span": self.sp(meta)}], "span": self.sp(meta)}

    def stages_body(self, meta: Meta, c: list[Any]) -> Node:
        seen: dict[str, Span] = {}
        for st in c:
            if st["name"] in seen:
                raise SpecError(f"stage '{st['name']}' is defined twice in this section (first on line "
                                f"{seen[st['name']].line}); give each stage its own name", st["name_span"])
            seen[st["name"]] = st["name_span"]
        return {"stages": c, "span": self.sp(meta)}

    # ---- top level ----
    def import_stmt(self, meta: Meta, c: list[Token]) -> Node:
        return {"item": "import", "path": _unquote(c[0], self.file), "span": self.sp(meta),
                "path_span": self.sp(c[0])}

    def param(self, meta: Meta, c: list[Any]) -> Node:
        return {"name": str(c[0]), "default": c[1], "span": self.sp(meta)}

    def block_def(self, meta: Meta, c: list[Any]) -> Node:
        params = [p for p in c[1:-1] if p is not None]
        seen: set[str] = set()
        for p in params:
            if p["name"] == "in":
                raise SpecError("'in' names the block's input; give the parameter another name", p["span"])
            if p["name"] in seen:
                raise SpecError(f"parameter '{p['name']}' is listed twice", p["span"])
            seen.add(p["name"])
        return {"item": "block", "name": str(c[0]), "params": params, "body": c[-1],
                "span": self.sp(meta), "name_span": self.sp(c[0])}

    def dim(self, meta: Meta, c: list[Token]) -> tuple[int | float | str, Span]:
        value = _number(c[0]) if c[0].type == "NUMBER" else str(c[0])
        return value, self.sp(c[0])

    def _tensor(self, role: str, meta: Meta, c: list[Any]) -> Node:
        return {"role": role, "name": str(c[0]), "dtype": str(c[1]), "shape": [d for d, _ in c[2:]],
                "span": self.sp(meta), "dtype_span": self.sp(c[1]), "dim_spans": [sp for _, sp in c[2:]]}

    def input_decl(self, meta: Meta, c: list[Any]) -> Node:
        return self._tensor("input", meta, c)

    def target_decl(self, meta: Meta, c: list[Any]) -> Node:
        return self._tensor("target", meta, c)

    def feature_def(self, meta: Meta, c: list[Any]) -> Node:
        return {"name": str(c[0]), "expr": c[1], "span": self.sp(meta)}

    def features(self, meta: Meta, c: list[Any]) -> Node:
        return {"role": "features", "defs": c, "span": self.sp(meta)}

    def section_name(self, meta: Meta, c: list[Token]) -> str:
        return str(c[0])

    def section_body(self, meta: Meta, c: list[Any]) -> Node:
        return {"role": c[0], "form": "body", "body": c[1], "span": self.sp(meta)}

    def section_call(self, meta: Meta, c: list[Any]) -> Node:
        return {"role": c[0], "form": "call", "call": c[1], "span": self.sp(meta)}

    def named_section(self, meta: Meta, c: list[Any]) -> Node:
        """`head cls: classify(10)`: one of a model's named heads."""
        if c[0] != "head":
            raise SpecError(f"only heads have names (`head {c[1]}: ...`); a {c[0]} with named stages is "
                            f"written `{c[0]} {{ {c[1]}: ... }}`", self.sp(c[1]))
        return {"role": "named_head", "name": str(c[1]), "chain": c[2], "span": self.sp(meta),
                "name_span": self.sp(c[1])}

    def loss_term(self, meta: Meta, c: list[Any]) -> Node:
        weight = 1.0 if c[0] is None else float(_number(c[0]))
        return {"weight": weight, "call": c[1], "span": self.sp(meta)}

    def loss_decl(self, meta: Meta, c: list[Any]) -> Node:
        return {"role": "loss", "terms": c, "span": self.sp(meta)}

    def model_def(self, meta: Meta, c: list[Any]) -> Node:
        model: Node = {"item": "model", "name": str(c[0]), "extends": _opt_str(c[1]),
                       "inputs": [], "targets": [], "heads": [], "span": self.sp(meta),
                       "name_span": self.sp(c[0]), "extends_span": None if c[1] is None else self.sp(c[1]),
                       "parts": {}}
        for part in c[2:]:
            role = part["role"]
            if role in ("input", "target"):
                model[role + "s"].append(part)
            elif role == "named_head":
                _add_head(model, part)
            elif role in model["parts"]:
                raise SpecError(f"model '{model['name']}' has a second {role} section; "
                                "a model has at most one of each", part["span"])
            else:
                model["parts"][role] = part
            if model["heads"] and "head" in model["parts"]:
                raise SpecError(f"model '{model['name']}' has both a head section and named heads; give "
                                "each head a name (`head cls: classify(10)`), or keep one unnamed head",
                                part["span"])
        return model

    def early_stop(self, meta: Meta, c: list[Any]) -> Node:
        """`early_stop(patience=5)` as the call `_static_call` validates (the keyword is its name)."""
        args, kwargs, spans = self._split_args(c[0] if c else None)
        keyword = Span(self.file, meta.line, meta.column, meta.line, meta.column + len("early_stop"))
        return {"kind": "call", "name": "early_stop", "args": args, "kwargs": kwargs,
                "arg_spans": spans, "name_span": keyword, "span": self.sp(meta)}

    def init_rule(self, meta: Meta, c: list[Any]) -> Node:
        return {"target": c[0], "call": c[1], "span": self.sp(meta)}

    def lr_rule(self, meta: Meta, c: list[Any]) -> Node:
        return {"target": c[0], "value": float(_number(c[1])), "span": self.sp(meta)}

    def path(self, meta: Meta, c: list[Token]) -> str:
        return ".".join(str(t) for t in c)

    def __default__(self, data: Any, children: list[Any], meta: Meta) -> Any:
        """The `t_<key>` aliases: one train setting as (key, value, span)."""
        if not str(data).startswith("t_"):
            return super().__default__(data, children, meta)
        key = str(data)[2:]
        value = children if key in _LIST_SETTINGS else children[0]
        if key == "model":
            value = str(value)
        elif key == "from":  # `from "run" map {...} except head, neck`
            value = _unquote(children[0], self.file)
            extra = [("from_map", children[1], self.sp(meta))] if children[1] is not None else []
            skipped = [c for c in children[2:] if c is not None]
            if skipped:
                extra.append(("from_except", skipped, self.sp(meta)))
            return (*extra, (key, value, self.sp(meta))) if extra else (key, value, self.sp(meta))
        return (key, value, self.sp(meta))

    def from_map(self, meta: Meta, c: list[Any]) -> list[Node]:
        return [rule for rule in c if rule is not None]

    def map_rule(self, meta: Meta, c: list[Token]) -> Node:
        return {"source": _unquote(c[0], self.file), "target": _unquote(c[1], self.file),
                "span": self.sp(meta)}

    def train_def(self, meta: Meta, c: list[Any]) -> Node:
        settings: dict[str, Any] = {}
        spans: dict[str, Span] = {}
        flat: list[tuple[str, Any, Span]] = []
        for item in c[2:]:
            flat.extend(item if isinstance(item[0], tuple) else [item])
        for key, value, span in flat:
            if key in settings:
                raise SpecError(f"'{key}' is set twice in this train block (first on line {spans[key].line})",
                                span)
            settings[key] = value
            spans[key] = span
        return {"item": "train", "name": _opt_str(c[0]), "extends": _opt_str(c[1]),
                "settings": settings, "setting_spans": spans, "span": self.sp(meta),
                "name_span": None if c[0] is None else self.sp(c[0]),
                "extends_span": None if c[1] is None else self.sp(c[1])}

    def start(self, meta: Meta, c: list[Node]) -> list[Node]:
        return c


def _add_head(model: Node, head: Node) -> None:
    """A named head, refused when another head of the model has its name."""
    for other in model["heads"]:
        if other["name"] == head["name"]:
            raise SpecError(f"head '{head['name']}' is defined twice in model '{model['name']}' (first "
                            f"on line {other['name_span'].line}); give each head its own name",
                            head["name_span"])
    model["heads"].append(head)


def _opt_str(tok: Token | None) -> str | None:
    return None if tok is None else str(tok)


_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r"}
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2}|.)")


def _unquote(tok: Token, file: str) -> str:
    r"""A string literal's text: \\ \" \' \n \t \r \xHH and \uHHHH escapes, nothing else."""

    def one(m: re.Match[str]) -> str:
        code = m.group(1)
        if code[0] in "ux" and len(code) > 1:
            char = chr(int(code[1:], 16))
            if not 0xD800 <= ord(char) <= 0xDFFF:  # a lone surrogate is not a character
                return char
        elif code in _ESCAPES:
            return _ESCAPES[code]
        col = (tok.column or 0) + 1 + m.start()  # after the opening quote
        what = f"'\\{code}' is not a character" if len(code) > 1 else f"unknown escape '\\{code}'"
        raise SpecError(f"{what} in a string; strings know \\\\ \\\" \\' \\n \\t \\r \\xHH and \\uHHHH",
                        Span(file, tok.line or 0, col, tok.line or 0, col + len(code) + 1))

    return _ESCAPE.sub(one, str(tok)[1:-1])


def parse_text(text: str, file: str) -> list[Node]:
    """Parse one file's text into a list of top-level item dicts."""
    try:
        tree: Tree[Token] = _parser().parse(text)
    except UnexpectedInput as err:
        raise _syntax_error(err, text, file) from None
    check_tree(tree, file)
    try:
        return _ToDicts(file).transform(tree)
    except VisitError as err:  # a SpecError raised inside a rule arrives wrapped by Lark
        if isinstance(err.orig_exc, SpecError):
            raise err.orig_exc from None
        raise


_TOKEN_WORDS = {"NAME": "a name", "NUMBER": "a number", "STRING": "a string in double quotes"}


def _describe(terminal: str) -> str:
    if terminal in _TOKEN_WORDS:
        return _TOKEN_WORDS[terminal]
    for t in _parser().terminals:
        if t.name == terminal and t.pattern.type == "str":
            return f"'{t.pattern.value}'"
    return terminal.lower()


_CLOSERS = {"(": ")", "[": "]", "{": "}"}


def _tokens_before(text: str, pos: int) -> list[Token]:
    """The tokens of text[:pos] (stops quietly at anything the lexer cannot read)."""
    out: list[Token] = []
    try:
        for tok in _parser().lex(text[:pos]):
            out.append(tok)
    except LarkError:
        pass
    return out


def _unclosed(tokens: list[Token]) -> Token | None:
    """The innermost bracket that is still open after these tokens."""
    stack: list[Token] = []
    for tok in tokens:
        if tok in _CLOSERS:
            stack.append(tok)
        elif stack and tok == _CLOSERS[str(stack[-1])]:
            stack.pop()
    return stack[-1] if stack else None


def _tok_span(file: str, tok: Token) -> Span:
    line, col = tok.line or 0, tok.column or 0
    return Span(file, line, col, tok.end_line or line, tok.end_column or col + len(tok))


def _syntax_error(err: UnexpectedInput, text: str, file: str) -> SpecError:
    line, col = err.line, err.column
    if isinstance(err, UnexpectedCharacters):
        pos = err.pos_in_stream or 0
        char = text[pos] if pos < len(text) else "?"
        char = char if char.isprintable() else f"U+{ord(char):04X}"
        span = Span(file, line, col, line, col + 1)
        if char == ">" and text[pos - 1:pos] == "-":
            # `conv(8 -> bn`: the lexer read '-' as a minus sign; the real problem is before the arrow
            arrow = Span(file, line, col - 1, line, col + 1)
            opener = _unclosed(_tokens_before(text, pos - 1))
            if opener is not None and str(opener) in "([":
                return SpecError(f"missing '{_CLOSERS[str(opener)]}' before '->': the '{opener}' on line "
                                 f"{opener.line}, column {opener.column} is still open", arrow, text)
            return SpecError("unexpected '->' here", arrow, text)
        if char == '"':
            return SpecError("unterminated string: a string must end with '\"' on the same line", span, text)
        return SpecError(f"unexpected character '{char}'", span, text)
    if isinstance(err, UnexpectedEOF) or (isinstance(err, UnexpectedToken) and err.token.type == "$END"):
        expected = sorted({_describe(t) for t in err.expected})
        opener = _unclosed(_tokens_before(text, len(text)))
        if opener is not None and f"'{_CLOSERS[str(opener)]}'" in expected:
            closer = _CLOSERS[str(opener)]
            return SpecError(f"'{opener}' is never closed: the file ends before its '{closer}'",
                             _tok_span(file, opener), text)
        lines = text.rstrip().splitlines() or [""]
        line, col = len(lines), len(lines[-1]) + 1
        return SpecError(f"the file ends too early: expected {_one_of(expected)}",
                         Span(file, line, col, line, col + 1), text)
    assert isinstance(err, UnexpectedToken)
    tok = err.token
    expected = sorted({_describe(t) for t in err.expected})
    span = Span(file, line, col, tok.end_line or line, tok.end_column or col + 1)
    if expected == ["':'"]:
        # The parser took a NAME for the start of a new stage; usually it is a layer whose '->' is missing.
        before = _tokens_before(text, tok.start_pos or 0)
        chain_end = ("RPAR", "NAME", "NUMBER", "RBRACE")  # what a chain can end with, before a new stage
        if len(before) >= 2 and before[-1].type == "NAME" and before[-2].type in chain_end:
            name = _short(str(before[-1]))
            return SpecError(f"missing '->' before '{name}': layers in a chain are joined with '->' "
                             f"(or, if '{name}' starts a new stage, write '{name}: ...')",
                             _tok_span(file, before[-1]), text)
    hint = ""
    if tok.type == "NAME" and "'->'" in expected:
        hint = "; layers in a chain are joined with '->'"
    elif tok.type == "NAME" and set(expected) <= {"'}'", "')'"}:
        before = _tokens_before(text, tok.start_pos or 0)
        if before and before[-1].type in ("NAME", "RPAR"):
            hint = f"; layers in a chain are joined with '->' (missing '->' before '{_short(str(tok))}'?)"
    word = _TOKEN_WORDS.get(tok.type, "").removeprefix("a ").split(" in ")[0]
    shown = f"{word} '{_short(str(tok))}'" if word else f"'{_short(str(tok))}'"
    return SpecError(f"unexpected {shown}, expected {_one_of(expected)}{hint}", span, text)


def _short(token: str) -> str:
    """A token as quoted in a message: not all of a long string, which may be another file's text."""
    return token if len(token) <= 24 else token[:20] + "..."


def _one_of(words: list[str]) -> str:
    if len(words) == 1:
        return words[0]
    return "one of " + ", ".join(words)
