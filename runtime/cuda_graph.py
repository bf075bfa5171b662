"""Which nodes of a training step a captured CUDA graph could not replay faithfully."""

from __future__ import annotations

import onnx

from dlspec.compiler.graph import Dim
from dlspec.compiler.graph.infer import constants, value_types

BY_VALUE = 32  # pieces that onnxruntime's CUDA Concat and Split pass to the kernel by value


def capture_blockers(model: onnx.ModelProto) -> list[str]:
    """The Concat and Split nodes whose onnxruntime CUDA kernels stage per-call metadata through
    host memory: more than 32 pieces, or pieces of unequal size. A captured graph would re-read
    that memory on every replay, after the kernel has released it, and a Concat of more than 32
    inputs refuses capture outright. Empty when the step can be captured. (Pieces along the
    batch axis all have the symbolic size N: equal, whatever the batch.)"""
    dims = {name: t.shape for name, t in value_types(model).items()}
    consts = constants(model)
    # with the batch fixed every shape is known, so onnxruntime folds Shape and whatever is
    # computed from shapes and constants alone before the graph ever runs
    folded = set(consts)
    found = []
    for node in model.graph.node:
        if node.op_type == "Shape" or all(x in folded for x in node.input if x):
            folded.update(node.output)
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if node.op_type == "Concat":
            sizes = [_size(dims.get(x), axis) for x in node.input]
        elif node.op_type == "Split":
            sizes = consts[node.input[1]].tolist() if len(node.input) > 1 and node.input[1] in consts else \
                [_size(dims.get(y), axis) for y in node.output]
        else:
            continue
        if len(sizes) > BY_VALUE or None in sizes or len(set(sizes)) > 1:
            pieces = sorted(set(sizes), key=str)
            found.append(f"{node.op_type} {node.name} ({len(sizes)} pieces, of sizes {pieces})")
    return found


def _size(shape: tuple[Dim, ...] | None, axis: int) -> Dim:
    return None if not shape else shape[axis]
