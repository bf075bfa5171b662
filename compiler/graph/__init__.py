"""The graph layer: typed values, one function per ONNX op, the graph under construction, and the
types and constants of finished graphs.

    from dlspec.compiler.graph import ops as op
    y = op.Conv(x, w, strides=[2, 2]) * scale + 1.0
"""

from dlspec.compiler.graph.builder import CustomGradient, Graph
from dlspec.compiler.graph.opset import DOMAIN, IR_VERSION, OPSET
from dlspec.compiler.graph.value import DTYPES, Dim, Shape, Value, broadcast, show

__all__ = ["DOMAIN", "DTYPES", "IR_VERSION", "OPSET", "CustomGradient", "Dim", "Graph", "Shape", "Value",
           "broadcast", "show"]
