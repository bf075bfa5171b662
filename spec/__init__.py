"""The .dlspec language: grammar, parser, validated spec models and loader."""

from dlspec.spec.errors import CompileError, RunError, Span, SpecError
from dlspec.spec.loader import Program, load

__all__ = ["CompileError", "Program", "RunError", "Span", "SpecError", "load"]
