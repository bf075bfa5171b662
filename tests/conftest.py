"""Shared helpers: write spec files into pytest's tmp_path."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

WriteSpec = Callable[..., Path]


@pytest.fixture
def write_spec(tmp_path: Path) -> WriteSpec:
    """write_spec(text) or write_spec(text, "lib/x.dlspec"): dedented text into tmp_path; returns the path.

    The first line of `text` is dropped when it is empty, so line 1 is the line after the opening quotes.
    """

    def write(text: str, name: str = "main.dlspec") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        body = textwrap.dedent(text)
        path.write_text(body[1:] if body.startswith("\n") else body)
        return path

    return write
