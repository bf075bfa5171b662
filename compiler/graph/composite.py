"""Small functions of several ops that layers and gradient rules share."""

from __future__ import annotations

from dlspec.compiler.graph import ops as op
from dlspec.compiler.graph.value import Value
from dlspec.compiler.target import lowering


def per_channel(v: Value, rank: int) -> Value:
    """[C] as [C, 1, ...]: broadcasts over axis 1 of a rank-`rank` [N, C, ...]."""
    return op.Reshape(v, [-1] + [1] * (rank - 2))


@lowering
def channel_sum(x: Value, channels: int) -> Value:
    """The sum of x [N, C, *S] over every axis but the channels: [C]."""
    return op.ReduceSum(x, [0] + list(range(2, x.rank)), keepdims=0)
