"""Source spans and the three user-facing error types."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dlspec.spec.limits import MAX_SOURCE_BYTES
from dlspec.spec.source import NotReadable, read_regular


@dataclass(frozen=True)
class Span:
    """Where something stands in a spec file (1-based line and column)."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class DlspecError(Exception):
    """Base of the errors the CLI prints without a traceback."""

    exit_code = 2


SPEC_SUFFIX = ".dlspec"
_WIDE = 160  # characters of a line an excerpt shows


def _excerpt(span: Span, source: str | None) -> str:
    """The line of a span with a caret under it. Only from files named *.dlspec: a file of another
    name (a root spec named on the command line) may be no spec at all, and its text not ours to show."""
    if not span.file.endswith(SPEC_SUFFIX):
        return ""
    if source is None:
        try:
            source = read_regular(span.file, MAX_SOURCE_BYTES).decode(errors="replace").removeprefix("\ufeff")
        except NotReadable:
            return ""
    lines = source.split("\n")  # as the parser counts lines
    if not 1 <= span.line <= len(lines):
        return ""
    text = lines[span.line - 1].rstrip("\r").expandtabs(1)
    col = span.col
    width = span.end_col - col if span.end_line == span.line else len(text) - col + 1
    if len(text) > _WIDE:  # a long line (generated, or no spec at all): the part around the span
        start = max(0, col - 1 - _WIDE // 2)
        more = "..." if start + _WIDE < len(text) else ""
        text = ("..." if start else "") + text[start:start + _WIDE] + more
        col -= start - (3 if start else 0)
    width = max(1, min(width, len(text) - col + 1))
    gutter = f"{span.line:>4} | "
    return f"{gutter}{text}\n{' ' * (len(gutter) + col - 1)}{'^' * width}"


class SpecError(DlspecError):
    """A problem in a spec, reported as file:line:col, the line, a caret and a message."""

    def __init__(self, message: str, span: Span | None = None, source: str | None = None):
        self.message = message
        self.span = span
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        if self.span is None:
            return f"error: {self.message}"
        excerpt = _excerpt(self.span, self.source)
        head = f"{self.span}: error: {self.message}"
        return f"{head}\n{excerpt}" if excerpt else head


class CompileError(SpecError):
    """A spec that is valid but cannot be compiled; points at the layer that caused it."""


class RunError(DlspecError):
    """A problem with data, devices, checkpoints or files, named plainly."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest known name, or ''."""
    close = difflib.get_close_matches(name, sorted(set(known)), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def listed(names: Sequence[str], most: int = 20) -> str:
    """'a, b, c' for a message; past `most` names, the first `most` and how many more."""
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most:,} more" if len(names) > most else "")
