"""Compile validated specs to ONNX graphs."""

from compiler.compile import Compiled, compile_model
from compiler.opset import IR_VERSION, OPSET

__all__ = ["IR_VERSION", "OPSET", "Compiled", "compile_model"]
