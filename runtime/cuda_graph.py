"""Which nodes of a training step a captured CUDA graph could not replay faithfully."""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from compiler.compile import BATCH_DIM

BY_VALUE = 32  # pieces that onnxruntime's CUDA Concat and Split pass to the kernel by value


def capture_blockers(model: onnx.ModelProto, batch: int) -> list[str]:
    """The Concat and Split nodes whose onnxruntime CUDA kernels stage per-call metadata through
    host memory: more than 32 pieces, or pieces of unequal size. A captured graph would re-read
    that memory on every replay, after the kernel has released it, and a Concat of more than 32
    inputs refuses capture outright. Empty when the step can be captured."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == BATCH_DIM:
                dim.dim_value = batch
    graph = onnx.shape_inference.infer_shapes(fixed).graph
    dims = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in [*graph.input, *graph.value_info, *graph.output]}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t).tolist()
              for n in graph.node if n.op_type == "Constant" and n.attribute[0].name == "value"}
    # with the batch fixed every shape is known, so onnxruntime folds Shape and whatever is
    # computed from shapes and constants alone before the graph ever runs
    folded = {t.name for t in graph.initializer}
    found = []
    for node in graph.node:
        if node.op_type in ("Constant", "Shape") or all(x in folded for x in node.input if x):
            folded.update(node.output)
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if node.op_type == "Concat":
            sizes = [_size(dims.get(x), axis) for x in node.input]
        elif node.op_type == "Split":
            sizes = consts.get(node.input[1], [None]) if len(node.input) > 1 and node.input[1] else \
                [_size(dims.get(y), axis) for y in node.output]
        else:
            continue
        if len(sizes) > BY_VALUE or None in sizes or len(set(sizes)) > 1:
            pieces = sorted(set(sizes), key=str)
            found.append(f"{node.op_type} {node.name} ({len(sizes)} pieces, of sizes {pieces})")
    return found


def _size(shape: list[int | None] | None, axis: int) -> int | None:
    return None if not shape else shape[axis]
