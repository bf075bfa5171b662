"""Shared helpers: write spec files into pytest's tmp_path."""

from __future__ import annotations

import os
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

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


# Hypothesis profiles for the fuzz test (tests/spec/test_fuzz.py): a few hundred examples, the
# same ones on every run, by default; `--hypothesis-profile=long` draws 10,000 fresh ones. The
# tests bound each example's time themselves, so there is no deadline (a loaded machine would trip it).
settings.register_profile("dlspec", max_examples=300, deadline=None, database=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", parent=settings.get_profile("dlspec"), max_examples=10_000,
                          derandomize=False)
settings.load_profile("dlspec")
# where Hypothesis writes the patches of failing examples: a temporary folder, not the work tree
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / "dlspec-hypothesis"))
