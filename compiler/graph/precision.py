"""Rewrite a float32 graph to float64: for gradient checks, where rounding would hide errors."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    for i, t in enumerate(g.initializer):
        if t.data_type == TensorProto.FLOAT:
            wide = numpy_helper.to_array(t).astype(np.float64)
            g.initializer[i].CopyFrom(numpy_helper.from_array(wide, t.name))
    # Resize's roi and scales stay float32 whatever the data type
    keep = {name for node in g.node if node.op_type == "Resize" for name in node.input[1:3]}
    for node in g.node:
        if node.op_type == "Constant" and node.output[0] in keep:
            continue
        if node.op_type == "ConstantOfShape" and not node.attribute:  # its default is a float32 zero
            node.attribute.append(onnx.helper.make_attribute("value", numpy_helper.from_array(np.zeros(1))))
            continue
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.DOUBLE
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
    return out
