"""Compile validated specs to ONNX graphs."""

from dlspec.compiler.compile import Compiled, compile_model
from dlspec.compiler.opset import IR_VERSION, OPSET

__all__ = ["IR_VERSION", "OPSET", "Compiled", "compile_model"]
