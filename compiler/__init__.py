"""Compile validated specs to ONNX: the inference graph, the training graphs, and the gradients
graph of any ONNX model. Subpackages: graph (typed values and ONNX ops), lower (layers, losses,
features, augmentation, init), grad (autodiff and its rule table), train (the step and its
optimizers), tune (lowerings for speed, chosen by the Target)."""

from dlspec.compiler import tune  # noqa: F401  (registers the tuned lowerings)
from dlspec.compiler.grad.model import gradient_model
from dlspec.compiler.graph import IR_VERSION, OPSET
from dlspec.compiler.graph.proto import with_weights
from dlspec.compiler.lower.compile import Compiled, compile_model
from dlspec.compiler.target import Target
from dlspec.compiler.train.step import TrainingGraphs, compile_training

__all__ = ["IR_VERSION", "OPSET", "Compiled", "Target", "TrainingGraphs", "compile_model", "compile_training",
           "gradient_model", "with_weights"]
