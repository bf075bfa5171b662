"""The optimizer updates small parameters together on the CPU.

Their gradients, values and state are concatenated into one flat tensor per learning-rate
multiplier, updated in one run of ops, and split back: each of the ~15 elementwise ops of an
update costs onnxruntime a fixed overhead that dominates on small tensors. Large tensors stay
apart, where concatenating would only add copies. Not on CUDA: a step replayed as a CUDA graph
has no per-op overhead to save, and the pack's uneven Concat and Split stage their metadata
through host buffers that a captured graph would re-read.
"""

from __future__ import annotations

import math

from dlspec.compiler.graph import Graph, Value
from dlspec.compiler.graph import ops as op
from dlspec.compiler.train.optim import Group, Slot, parameter_groups, single
from dlspec.compiler.tune.when import on_cpu

PACK_BELOW = 1 << 16  # elements: tensors smaller than this are updated in the flat pack


@parameter_groups.variant(on_cpu)
def _packed(g: Graph, slots: list[Slot]) -> list[Group]:
    big = [s for s in slots if math.prod(s.shape) >= PACK_BELOW]
    small = [s for s in slots if math.prod(s.shape) < PACK_BELOW]
    groups = [single(g, s) for s in big]
    for mult in dict.fromkeys(s.lr_mult for s in small):
        members = [s for s in small if s.lr_mult == mult]
        groups.append(single(g, members[0]) if len(members) == 1 else _pack(g, members))
    return groups


def _pack(g: Graph, members: list[Slot]) -> Group:
    def concat(values: list[Value]) -> Value:
        return op.Concat([op.Reshape(v, [-1]) for v in values], axis=0)

    def unpack(suffix: str, flat: Value) -> dict[str, Value]:
        parts = op.Split(flat, [math.prod(s.shape) for s in members], axis=0)
        return {s.name + suffix: op.Reshape(part, list(s.shape)) for s, part in zip(members, parts)}

    return Group(members, concat([s.grad for s in members]),
                 lambda suffix: concat([g.value(s.name + suffix, "float32", s.shape) for s in members]),
                 unpack)
