"""The .dlspec language: grammar, parser, validated spec models and loader."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dlspec.spec.errors import CompileError, RunError, Span, SpecError

if TYPE_CHECKING:
    from dlspec.spec.loader import Program, load

__all__ = ["CompileError", "Program", "RunError", "Span", "SpecError", "load"]


def __getattr__(name: str) -> Any:
    """The loader (lark, pydantic) loads on first use: `dlspec --version` and the errors need neither."""
    if name in ("Program", "load"):
        from dlspec.spec import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'dlspec.spec' has no attribute '{name}'")
