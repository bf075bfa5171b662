"""Rewrite a float32 graph to float64 (gradient checks, where rounding would hide errors), or to
mixed precision (training steps on CUDA)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dlspec.compiler.graph.infer import Constants, value_types


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    # Resize's roi and scales stay float32 whatever the data type; other readers of the same
    # constant (a gradient reading the scales) get a float64 copy
    keep = {name for node in g.node if node.op_type == "Resize" for name in node.input[1:3] if name}
    _copy_for_others(g, keep)
    for i, t in enumerate(g.initializer):
        if t.data_type == TensorProto.FLOAT and t.name not in keep:
            wide = numpy_helper.to_array(t).astype(np.float64)
            g.initializer[i].CopyFrom(numpy_helper.from_array(wide, t.name))
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


def _copy_for_others(g: onnx.GraphProto, keep: set[str]) -> None:
    """Nodes other than Resize that read a name of `keep` read `<name>/float64`, a Cast of it
    (Cast's `to` is then widened with the others)."""
    others = [(node, i) for node in g.node for i, name in enumerate(node.input)
              if name in keep and not (node.op_type == "Resize" and i in (1, 2))]
    for name in {node.input[i] for node, i in others}:
        g.node.insert(0, helper.make_node("Cast", [name], [f"{name}/float64"], to=TensorProto.FLOAT,
                                          name=f"{name}/float64"))
    for node, i in others:
        node.input[i] = f"{node.input[i]}/float64"
    if others:  # the Casts first read constants that Constant nodes may only make later
        _constants_first(g)


def _constants_first(g: onnx.GraphProto) -> None:
    nodes = list(g.node)
    order = [n for n in nodes if n.op_type == "Constant"] + [n for n in nodes if n.op_type != "Constant"]
    del g.node[:]
    g.node.extend(order)


# Mixed precision (as torch.autocast): matrix products and convolutions in half precision; the ops
# between them in the precision of their inputs; everything else (reductions, softmax, exp and
# log, normalization, losses) in float32. Parameters stay float32 graph inputs, cast per use.
HALF_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum"})
FOLLOW_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Sign", "Max", "Min", "Sum", "Clip", "Where",
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Gelu",
    "Erf", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Concat", "Split", "Identity",
    "Pad", "Expand", "Tile", "Gather", "GatherElements", "GatherND", "ScatterElements", "ScatterND",
    "DepthToSpace", "SpaceToDepth", "CastLike",
    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
})
ANY_INPUT_OPS = frozenset({"Shape", "Size", "Cast"})  # read any float type as it is
HALF_TYPES = {"float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}
CASTABLE_ERROR = 1e-2  # a float32 constant joins half-precision math where its rounding is below this


def to_mixed(model: onnx.ModelProto, half: str, float32_nodes: Callable[[onnx.NodeProto], bool],
             exact: Iterable[str] = ()) -> onnx.ModelProto:
    """`model` (float32) computing HALF_OPS in `half` (float16 or bfloat16), FOLLOW_OPS in half
    where an input already is and the others are half or castable (constants that `half`
    represents, graph inputs other than `exact`), every other node and those `float32_nodes` picks
    in float32. Casts go where a value crosses; graph inputs and outputs keep their types."""
    code = HALF_TYPES[half]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    types = value_types(model)
    is_float = {n for n, t in types.items() if t.dtype == "float32"}
    consts = Constants(model.graph.initializer, model.graph.node)  # read only where a cast is weighed
    exact = set(exact)
    graph_inputs = {i.name for i in g.input} - exact
    outputs = {o.name for o in g.output}
    pinned = _read_by_subgraphs(g)  # outer values a subgraph reads by name keep their type
    taken = {v for n in g.node for v in [*n.input, *n.output]} | {i.name for i in g.input}
    halves: set[str] = set()  # values now computed in half precision
    casts: dict[tuple[str, int], str] = {}  # (value, to) -> its cast
    nodes: list[onnx.NodeProto] = []

    def castable(name: str) -> bool:
        if name in graph_inputs:
            return True
        if name not in consts:
            return False
        wide = consts[name].astype(np.float64)
        narrow = rounded(consts[name].astype(np.float32), half).astype(np.float64)
        error = np.abs(narrow - wide)
        return bool(np.all(np.isfinite(narrow)) and np.all(error <= CASTABLE_ERROR * np.abs(wide)))

    def cast(name: str, to: int) -> str:
        if (name, to) not in casts:
            new = name + (".half" if to == code else ".float")
            while new in taken:
                new += "_"
            taken.add(new)
            nodes.append(helper.make_node("Cast", [name], [new], name=f"{new}/Cast", to=to))
            casts[name, to] = new
        return casts[name, to]

    for node in g.node:
        floats = [i for i in node.input if i in is_float]
        if node.op_type in ANY_INPUT_OPS:
            nodes.append(node)
            continue
        in_half = (not float32_nodes(node) and not any(o in outputs or o in pinned for o in node.output)
                   and _takes(node.op_type, opset, half)
                   and (node.op_type in HALF_OPS
                        or (node.op_type in FOLLOW_OPS and any(i in halves for i in floats)
                            and all(i in halves or castable(i) for i in floats))))
        for k, name in enumerate(node.input):
            if name in is_float and (name in halves) != in_half:
                node.input[k] = cast(name, code if in_half else TensorProto.FLOAT)
        if in_half:
            halves.update(o for o in node.output if o in is_float)
        nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    for vi in g.value_info:
        if vi.name in halves:
            vi.type.tensor_type.elem_type = code
    return out


def rounded(x: np.ndarray, half: str) -> np.ndarray:
    """float32 `x` rounded to `half` (to nearest, ties to even), as float32 again."""
    if half == "float16":
        with np.errstate(over="ignore"):
            return x.astype(np.float16).astype(np.float32)
    bits = x.view(np.uint32).astype(np.uint64)  # bfloat16: float32's top 16 bits
    kept = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return kept.astype(np.uint32).view(np.float32)


@functools.cache
def _takes(op_type: str, opset: int, half: str) -> bool:
    """Whether the op's schema at `opset` takes `half` wherever it takes float32 (bfloat16 Conv
    and pooling, say, only from opset 22)."""
    try:
        schema = onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return False
    wanted = f"tensor({half})"
    return all(wanted in c.allowed_type_strs for c in schema.type_constraints
               if "tensor(float)" in c.allowed_type_strs)


def _read_by_subgraphs(g: onnx.GraphProto) -> set[str]:
    """Names that the subgraphs of g's nodes (If, Loop, Scan bodies) read, at any depth."""
    out: set[str] = set()
    for node in g.node:
        for a in node.attribute:
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                out.update(i for n in sub.node for i in n.input)
                out |= _read_by_subgraphs(sub)
    return out
