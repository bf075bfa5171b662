"""Gradient norms for watching training's health: the global norm and one per stage
(backbone.stem, backbone.layer1.0, head.linear1, ...), computed in the step from the gradients it
has anyway. Vanishing and exploding gradients show there first."""

from __future__ import annotations

from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op

GLOBAL = "grad_norm"


def stage_of(param: str) -> str:
    """The stage of a parameter: the first two parts of its path, and the copy or block index
    after them (`backbone.layer1.0`, one per block of a repeat)."""
    parts = param.split(".")
    keep = 2
    while keep < len(parts) - 1 and parts[keep].isdigit():
        keep += 1
    return ".".join(parts[:keep])


def gradient_norms(grads: dict[str, Value]) -> dict[str, Value]:
    """`grad_norm` and `grad_norm:<stage>`: the L2 norms of the gradients, all and per stage
    (none when every parameter is frozen)."""
    if not grads:
        return {}
    squares: dict[str, list[Value]] = {}
    for name, g in grads.items():
        squares.setdefault(stage_of(name), []).append(op.ReduceSumSquare(g, keepdims=0))
    sums = {stage: parts[0] if len(parts) == 1 else op.Sum(parts) for stage, parts in squares.items()}
    out = {f"{GLOBAL}:{stage}": op.Sqrt(total) for stage, total in sums.items()}
    everything = list(sums.values())
    return {GLOBAL: op.Sqrt(everything[0] if len(everything) == 1 else op.Sum(everything)), **out}
