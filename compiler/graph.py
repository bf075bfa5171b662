"""A small typed layer over onnx.helper: nodes, parameters and constants with unique names."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dlspec.compiler.opset import DOMAIN

ONNX_DTYPES = {
    "float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE, "float16": TensorProto.FLOAT16,
    "int64": TensorProto.INT64, "int32": TensorProto.INT32, "int8": TensorProto.INT8,
    "uint8": TensorProto.UINT8, "bool": TensorProto.BOOL,
}


class Graph:
    """Collects nodes and initializers; every name it hands out is unique."""

    def __init__(self, taken: Iterable[str] = ()) -> None:
        """`taken`: names already used by a graph these nodes will join."""
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, np.ndarray] = {}
        self._names: dict[str, int] = {}
        self._taken = set(taken)
        self.where = ""  # "file:line:col path" of the layer being lowered, stamped on its nodes

    def fresh(self, hint: str) -> str:
        n = self._names.get(hint, 0)
        name = hint if n == 0 else f"{hint}_{n}"
        while name in self._taken:
            n += 1
            name = f"{hint}_{n}"
        self._names[hint] = n + 1
        return name

    def op(self, op_type: str, inputs: Sequence[str], hint: str, n_out: int = 1,
           **attrs: Any) -> list[str]:
        """Add one node; returns its output names."""
        outs = [self.fresh(f"{hint}:{op_type}" if n_out == 1 else f"{hint}:{op_type}.{i}")
                for i in range(n_out)]
        node = helper.make_node(op_type, list(inputs), outs, name=self.fresh(f"{hint}/{op_type}"),
                                domain=DOMAIN, doc_string=self.where or None,
                                **{k: v for k, v in attrs.items() if v is not None})
        self.nodes.append(node)
        return outs

    def op1(self, op_type: str, inputs: Sequence[str], hint: str, **attrs: Any) -> str:
        return self.op(op_type, inputs, hint, **attrs)[0]

    def param(self, name: str, value: np.ndarray) -> str:
        assert name not in self.initializers, f"parameter {name} defined twice"
        self.initializers[name] = value
        return name

    def const(self, value: Any, dtype: str = "float32", hint: str = "const") -> str:
        arr = np.asarray(value, dtype=np.dtype(dtype))
        tensor = numpy_helper.from_array(arr)
        return self.op1("Constant", [], hint, value=tensor)

    def ints(self, values: Sequence[int], hint: str = "shape") -> str:
        return self.const(list(values), "int64", hint)

    def numel(self, x: str, hint: str) -> str:
        """x's element count, an int64 scalar. ReduceProd(Shape(x)) rather than Size(x): once the
        batch is static, onnxruntime folds Shape, and so this, to a constant, but never Size, whose
        host-side output would pull the arithmetic after it off a GPU provider onto the CPU."""
        return self.op1("ReduceProd", [self.op1("Shape", [x], hint)], hint, keepdims=0)
