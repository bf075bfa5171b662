"""Upsampling's gradient as a pooling where each block's size is a power of two."""

from __future__ import annotations

import math

from dlspec.compiler.grad.resize import block_sum
from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op
from dlspec.compiler.tune.when import always


@block_sum.variant(always)
def _pooled(g: Value, x: Value, factors: list[int]) -> Value | None:
    """The blocks' sums as an AveragePool over the blocks times their size, exact where the size
    is a power of two (then averaging and scaling back lose nothing): onnxruntime's pooling is
    faster than the reshaped ReduceSum."""
    area = math.prod(factors)
    if len(factors) <= 2 or factors[:2] != [1, 1] or area & (area - 1):
        return None
    return op.AveragePool(g, factors[2:], factors[2:]) * float(area)
