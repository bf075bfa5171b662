"""Gradients: reverse-mode autodiff over ONNX nodes with one rule per op type, and the gradients
graph of any ONNX model.

Importing the package fills the rule table: each rule module registers its ops on import.
"""

from dlspec.compiler.grad import (  # noqa: F401
    batch_norm,
    conv,
    einsum,
    elementwise,
    linalg,
    losses,
    nn,
    norm,
    recurrent,
    resize,
    sample,
    select,
    shape,
    spectral,
)
from dlspec.compiler.grad.table import NO_GRADIENT, RULES, Node
from dlspec.compiler.grad.walk import backward

__all__ = ["NO_GRADIENT", "RULES", "Node", "backward"]
