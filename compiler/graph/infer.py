"""What is known of a finished graph before it runs: each value's element type and shape (from
ONNX shape inference), and the values of its constants."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from google.protobuf.message import Message
from onnx import TensorProto, helper, numpy_helper, shape_inference

from dlspec.compiler.graph.value import DTYPE_OF, Shape
from dlspec.spec.errors import CompileError


@dataclass(frozen=True)
class Type:
    dtype: str | None
    shape: Shape | None


FLOAT_CODES = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)

# Ops whose output has the type and shape of their first input, which onnx's strict shape inference
# cannot tell: opset 18's GroupNormalization has no inference function, and MeanVarianceNormalization's
# function body fails it (without `axes` it leaves the attribute's default unset; for float64 input
# it adds float32 constants). Inference sees each as an Identity of its first input.
SHAPE_OF_INPUT = frozenset({"GroupNormalization", "MeanVarianceNormalization"})

# Attributes whose schema default onnx's shape inference does not take: STFT's inference reads an
# unset `onesided` as 0, its schema (and every runtime) as 1. Inference sees them spelled out.
UNREAD_DEFAULTS = {"STFT": {"onesided": 1}}


def value_types(model: onnx.ModelProto, data_prop: bool = False) -> dict[str, Type]:
    """The type of every value that shape inference reaches (symbolic dims by name). `data_prop`
    also follows shapes computed in the graph (Reshape to Shape(x)), at several times the cost."""
    try:
        inferred = shape_inference.infer_shapes(_typed(skeleton(model)[0]), strict_mode=True,
                                                data_prop=data_prop)
    except shape_inference.InferenceError as err:
        raise CompileError(f"ONNX shape inference fails on the model: {str(err).strip()[:400]}") from None
    out: dict[str, Type] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        shape = (tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
                 if t.HasField("shape") else None)
        out[vi.name] = Type(DTYPE_OF.get(t.elem_type), shape)
    for init in g.initializer:
        out[init.name] = Type(DTYPE_OF.get(init.data_type), tuple(init.dims))
    return out


def _typed(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` as shape inference is to see it: SHAPE_OF_INPUT ops as Identities, UNREAD_DEFAULTS
    spelled out."""
    if not any(n.op_type in SHAPE_OF_INPUT or n.op_type in UNREAD_DEFAULTS for n in model.graph.node):
        return model
    typed = onnx.ModelProto()
    typed.CopyFrom(model)
    for node in typed.graph.node:
        if node.op_type in SHAPE_OF_INPUT and node.domain in ("", "ai.onnx"):
            node.CopyFrom(helper.make_node("Identity", node.input[:1], node.output[:1], name=node.name))
        for name, value in UNREAD_DEFAULTS.get(node.op_type, {}).items():
            if node.domain in ("", "ai.onnx") and all(a.name != name for a in node.attribute):
                node.attribute.append(helper.make_attribute(name, value))
    return typed


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Values known before the graph runs: initializers and Constant node outputs."""
    return dict(Constants(model.graph.initializer, model.graph.node).items())


class Constants(Mapping[str, np.ndarray]):
    """Values known before the graph runs (initializers, then Constant node outputs), each read
    from its proto when first asked for: gradient rules read a few axes and shapes, and reading
    every weight copies hundreds of megabytes."""

    def __init__(self, tensors: Iterable[onnx.TensorProto], nodes: Iterable[onnx.NodeProto]) -> None:
        self._protos = {t.name: t for t in tensors}
        for node in nodes:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self._protos[node.output[0]] = node.attribute[0].t
        self._values: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._values:
            self._values[name] = numpy_helper.to_array(self._protos[name])
        return self._values[name]

    def __contains__(self, name: object) -> bool:
        return name in self._protos

    def __iter__(self) -> Iterator[str]:
        return iter(self._protos)

    def __len__(self) -> int:
        return len(self._protos)


SKELETON_KEEPS = 1024  # initializers of at most this many values stay: shapes, axes, scales


def skeleton(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, onnx.TensorProto]]:
    """`model` with its large float initializers turned into graph inputs of the same type, and
    those initializers by name: what shape inference and opset conversion need, without copying
    (serialising) every weight on the way."""
    moved = {t.name: t for t in model.graph.initializer
             if t.data_type in FLOAT_CODES and math.prod(t.dims) > SKELETON_KEEPS}
    if not moved:
        return model, {}
    out = onnx.ModelProto()
    out.ir_version, out.producer_name = model.ir_version, model.producer_name
    out.opset_import.extend(model.opset_import)
    g = out.graph
    g.name = model.graph.name
    g.node.extend(model.graph.node)
    g.output.extend(model.graph.output)
    g.value_info.extend(model.graph.value_info)
    g.initializer.extend(t for t in model.graph.initializer if t.name not in moved)
    listed = {i.name for i in model.graph.input}
    g.input.extend(model.graph.input)
    g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                   for name, t in moved.items() if name not in listed)
    out.ir_version = max(out.ir_version, 4)  # initializers need not be inputs too
    return out, moved


def without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` but for its graph's initializers, whose data CopyFrom would copy too."""
    out = onnx.ModelProto()
    _copy_fields(model, out, skip="graph")
    _copy_fields(model.graph, out.graph, skip="initializer")
    return out


def _copy_fields(src: Message, dst: Message, skip: str) -> None:
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        if hasattr(value, "extend"):  # a repeated field
            getattr(dst, field.name).extend(value)
        elif isinstance(value, Message):
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def original_inputs(inputs: Iterable[onnx.ValueInfoProto], moved: Mapping[str, onnx.TensorProto],
                    original: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs of a graph made from a skeleton of `original` but those that stood for its moved
    initializers, unless `original` lists them as inputs too (before IR 4, initializers are)."""
    listed = {i.name for i in original.graph.input}
    return [i for i in inputs if i.name not in moved or i.name in listed]


def with_weights_back(model: onnx.ModelProto, moved: dict[str, onnx.TensorProto],
                      original: onnx.ModelProto) -> onnx.ModelProto:
    """A skeleton's initializers put back (after a conversion), and its inputs as `original` had
    them (original_inputs)."""
    inputs = original_inputs(model.graph.input, moved, original)
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    model.graph.initializer.extend(moved.values())
    return model
