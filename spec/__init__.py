"""The .dlspec language: grammar, parser, validated spec models and loader."""

from spec.errors import CompileError, RunError, Span, SpecError
from spec.loader import Program, load

__all__ = ["CompileError", "Program", "RunError", "Span", "SpecError", "load"]
