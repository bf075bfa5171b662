"""Finished graphs as ONNX ModelProtos: one opset, one IR version, dlspec's metadata."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from dlspec.compiler.graph.builder import Initial
from dlspec.compiler.graph.opset import IR_VERSION, OPSET
from dlspec.compiler.graph.value import DTYPES, Value
from dlspec.spec.version import __version__

BATCH_DIM = "N"  # the name of the batch dimension, the one symbolic dimension of every graph


def value_info(v: Value) -> onnx.ValueInfoProto:
    """A graph input or output of a value whose shape the layers know (None is the batch)."""
    dims = [BATCH_DIM if d is None else d for d in v.dims]
    return helper.make_tensor_value_info(v.name, DTYPES[v.dtype or "float32"], dims)


def array_info(name: str, value: np.ndarray) -> onnx.ValueInfoProto:
    """A graph input or output typed like `value` (a parameter, its state, a scalar)."""
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.asarray(value).dtype),
                                         list(np.shape(value)))


def model_proto(name: str, nodes: Sequence[onnx.NodeProto], inputs: Sequence[onnx.ValueInfoProto],
                outputs: Sequence[onnx.ValueInfoProto], initializers: Mapping[str, np.ndarray],
                spec_hash: str, props: Mapping[str, str] | None = None) -> onnx.ModelProto:
    """Fill one ModelProto in place: copying large initializers between protos costs seconds."""
    proto = onnx.ModelProto()
    proto.ir_version = IR_VERSION
    proto.producer_name = "dlspec"
    proto.producer_version = __version__
    proto.opset_import.append(helper.make_opsetid("", OPSET))
    g = proto.graph
    g.name = name
    g.node.extend(nodes)
    g.input.extend(inputs)
    g.output.extend(outputs)
    for key, value in initializers.items():
        t = g.initializer.add()
        t.name = key
        t.data_type = DTYPES[value.dtype.name]
        t.dims.extend(value.shape)
        t.raw_data = np.ascontiguousarray(value).tobytes()
    helper.set_model_props(proto, {"dlspec_version": __version__, "spec_hash": spec_hash,
                                   "opset": str(OPSET), "model": name, **(props or {})})
    return proto


def initial_info(name: str, initial: Initial) -> onnx.ValueInfoProto:
    """A graph input for a parameter, to run with the current weights: typed by its initial value,
    which is not drawn for it."""
    return helper.make_tensor_value_info(name, DTYPES[initial.dtype], list(initial.shape))


def with_weights(model: onnx.ModelProto, weights: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """The graph with its initializers replaced by trained values (same names)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, t in enumerate(out.graph.initializer):
        if t.name in weights:
            value = np.ascontiguousarray(weights[t.name], dtype=np.float32)
            out.graph.initializer[i].raw_data = value.tobytes()
    return out
