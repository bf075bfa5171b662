"""Compile validated specs to ONNX: the inference graph, the training graphs, and the gradients
graph of any ONNX model. Subpackages: graph (typed values and ONNX ops), lower (layers, losses,
features, augmentation, init), grad (autodiff and its rule table), train (the step and its
optimizers), tune (lowerings for speed, chosen by the Target: they register themselves on a
lowering's first tuned call)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dlspec.compiler.grad.model import gradient_model
    from dlspec.compiler.graph import IR_VERSION, OPSET
    from dlspec.compiler.graph.proto import with_weights
    from dlspec.compiler.lower.compile import Compiled, compile_model
    from dlspec.compiler.target import Target
    from dlspec.compiler.train.step import TrainingGraphs, compile_training

__all__ = ["IR_VERSION", "OPSET", "Compiled", "Target", "TrainingGraphs", "compile_model", "compile_training",
           "gradient_model", "with_weights"]


def __getattr__(name: str) -> Any:
    """Each name loads its module on first use: `dlspec predict` reads a constant of the graph
    layer without importing the layers, the rules and the training step."""
    module: Any
    if name in ("IR_VERSION", "OPSET"):
        from dlspec.compiler import graph as module
    elif name in ("Compiled", "compile_model"):
        from dlspec.compiler.lower import compile as module
    elif name in ("TrainingGraphs", "compile_training"):
        from dlspec.compiler.train import step as module
    elif name == "Target":
        from dlspec.compiler import target as module
    elif name == "gradient_model":
        from dlspec.compiler.grad import model as module
    elif name == "with_weights":
        from dlspec.compiler.graph import proto as module
    else:
        raise AttributeError(f"module 'dlspec.compiler' has no attribute '{name}'")
    return getattr(module, name)
