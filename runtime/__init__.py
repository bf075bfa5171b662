"""dlspec: a declarative model-spec compiler. A .dlspec file says what a network is and how to
train it; dlspec compiles it to ONNX inference and training graphs that plain onnxruntime runs.

The functions below are the command line's, for notebooks and scripts (dlspec.api documents
them); dlspec.spec is the language, dlspec.compiler the compiler, and the other modules the
runtime: data, sessions, the training loop, checkpoints and the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dlspec.spec.errors import CompileError, DlspecError, RunError, SpecError
from dlspec.spec.version import __version__

if TYPE_CHECKING:
    from dlspec.api import (
        Program,
        Target,
        compile,
        compile_training,
        evaluate,
        export,
        fit,
        grad,
        gradcheck_spec,
        load,
        predict,
    )

__all__ = ["CompileError", "DlspecError", "Program", "RunError", "SpecError", "Target", "__version__",
           "compile", "compile_training", "evaluate", "export", "fit", "grad", "gradcheck_spec", "load",
           "predict"]
_API = set(__all__) - {"CompileError", "DlspecError", "RunError", "SpecError", "__version__"}


def __getattr__(name: str) -> Any:
    """The API loads on first use: `import dlspec.spec` alone needs neither onnx nor onnxruntime."""
    if name in _API:
        from dlspec import api

        return getattr(api, name)
    raise AttributeError(f"module 'dlspec' has no attribute '{name}'")
