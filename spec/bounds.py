"""Limits checked on the parse tree, before anything else reads it: how deep it nests, how long
its lists are and how large its numbers are. Iterative, so no spec can exhaust the stack here."""

from __future__ import annotations

import math

from lark import Token, Tree

from dlspec.spec.errors import Span, SpecError
from dlspec.spec.limits import MAX_INT, MAX_LIST_ITEMS, MAX_NESTING

# The rules that nest: every later pass (Pydantic, evaluation, the walk) recurses through them.
NESTING = {"group", "residual", "for_each", "repeat", "call", "func", "list_expr",
           "add", "sub", "mul", "div", "neg", "pow"}


def check_tree(tree: Tree[Token], file: str) -> None:
    """Raise a SpecError at the first place the tree passes a limit."""
    stack: list[tuple[Tree[Token], int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if node.data in NESTING:
            depth += 1
            if depth > MAX_NESTING:
                raise SpecError(f"this nests more than {MAX_NESTING} levels deep (brackets, operators, "
                                "calls, residuals, loops and repeats count); the limit keeps every "
                                "later step bounded", _span(file, node))
        if node.data == "list_expr" and len(node.children) > MAX_LIST_ITEMS:
            raise SpecError(f"this list has {len(node.children):,} items; a list holds at most "
                            f"{MAX_LIST_ITEMS:,}", _span(file, node))
        for child in node.children:
            if isinstance(child, Tree):
                stack.append((child, depth))
            elif isinstance(child, Token) and child.type == "NUMBER" and node.data != "path":
                check_number(child, file)


def check_number(tok: Token, file: str) -> None:
    """A whole number up to MAX_INT, or a finite float."""
    text = str(tok)
    span = Span(file, tok.line or 0, tok.column or 0, tok.end_line or 0, tok.end_column or 0)
    shown = text if len(text) <= 24 else f"{text[:10]}...{text[-4:]} ({len(text)} characters)"
    if text.isdigit():
        # compare digit counts first: int() of thousands of digits is slow, and refused by Python
        if len(text.lstrip("0")) > len(str(MAX_INT)) or int(text) > MAX_INT:
            raise SpecError(f"the number {shown} is too large: whole numbers are at most {MAX_INT:,} "
                            "(2^63 - 1)", span)
    elif not math.isfinite(float(text)):
        raise SpecError(f"the number {shown} is too large to be a float", span)


def _span(file: str, node: Tree[Token]) -> Span:
    m = node.meta
    if getattr(m, "empty", True):
        return Span(file, 0, 0, 0, 0)
    return Span(file, m.line, m.column, m.end_line, m.end_column)
