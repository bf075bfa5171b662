"""The rows `dlspec check` shows for an imported ONNX graph: one per group of nodes (a module of
the exporting framework where node names say it, else a weighted node and what follows it), each
with its parameters and FLOPs per sample."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import onnx

from dlspec.compiler.graph import Shape
from dlspec.compiler.graph.infer import Type
from dlspec.compiler.lower.context import LayerRecord

if TYPE_CHECKING:
    from dlspec.compiler.lower.context import LayerCtx


def group_records(ctx: LayerCtx, nodes: list[onnx.NodeProto], param_of: dict[str, str],
                  types: dict[str, Type]) -> None:
    """Append a record per node group to the compilation's records; the layer's own record then
    carries no parameters or FLOPs (they are counted once, in the groups)."""
    sizes = {p.name: math.prod(p.shape) for p in ctx.comp.params if not p.state}
    counted: set[str] = set()
    for key, group in _groups(nodes, param_of):
        params = 0
        for node in group:
            for name in node.input:
                param = param_of.get(name)
                if param in sizes and param not in counted:
                    counted.add(param)
                    params += sizes[param]
        last = group[-1].output[0]
        shape = types[last].shape if last in types else None
        kinds = "+".join(dict.fromkeys(n.op_type for n in group))
        ctx.comp.records.append(LayerRecord(f"{ctx.path}:{key}", kinds, [_batch(shape)] if shape else [],
                                            params, sum(_flops(n, types) for n in group), ctx.span))
    ctx.n_params = ctx.flops = 0


def _groups(nodes: list[onnx.NodeProto], param_of: dict[str, str]) -> list[tuple[str, list[onnx.NodeProto]]]:
    """Consecutive nodes of one module (names like /layer1/layer1.0/conv1/Conv), or, where names
    say nothing, a node with weights and the nodes after it."""
    hierarchical = sum("/" in n.name.strip("/") for n in nodes) * 2 > len(nodes)
    out: list[tuple[str, list[onnx.NodeProto]]] = []
    for i, node in enumerate(nodes):
        if hierarchical:
            key = node.name.strip("/").rsplit("/", 1)[0] if "/" in node.name.strip("/") else node.op_type
            start = not out or out[-1][0] != key
        else:
            key = node.name or f"{node.op_type}_{i}"
            start = not out or any(name in param_of for name in node.input)
        if start:
            out.append((key, [node]))
        else:
            out[-1][1].append(node)
    return out


def _batch(shape: Shape) -> Shape:
    return tuple(None if d is None or isinstance(d, str) else d for d in shape)


def _flops(node: onnx.NodeProto, types: dict[str, Type]) -> int:
    """Multiply-adds times 2, per sample, of the ops that dominate: Conv, Gemm, MatMul."""
    def dims(name: str) -> list[int] | None:
        t = types.get(name)
        if t is None or t.shape is None or not all(isinstance(d, int) for d in t.shape[1:]):
            return None
        return [d if isinstance(d, int) else 1 for d in t.shape]

    y = dims(node.output[0])
    if y is None or len(node.input) < 2:
        return 0
    w = dims(node.input[1])
    if node.op_type == "Conv" and w is not None:
        return 2 * math.prod(y[1:]) * math.prod(w[1:])
    if node.op_type in ("Gemm", "MatMul") and w is not None:
        k = w[-2] if node.op_type == "MatMul" or not _trans_b(node) else w[-1]
        return 2 * math.prod(y[1:]) * k
    return 0


def _trans_b(node: onnx.NodeProto) -> bool:
    return any(a.name == "transB" and a.i for a in node.attribute)
