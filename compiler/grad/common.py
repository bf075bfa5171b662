"""What many rules share: undoing broadcasting, masking a gradient, and the static facts a rule
needs of its values (ranks, sizes), which are CompileErrors where unknown."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dlspec.compiler.graph import Dim, Value
from dlspec.compiler.graph import ops as op
from dlspec.compiler.target import lowering
from dlspec.spec.errors import CompileError

INT64_MIN, INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


def unbroadcast(dx: Value, like: Value) -> Value:
    """`dx` summed over the axes along which broadcasting expanded `like` to dx's shape."""
    if dx.shape is not None and like.shape is not None and dx.shape == like.shape:
        return dx
    if dx.shape is None or like.shape is None:
        raise CompileError(f"cannot undo broadcasting for {like.name}: its shape is unknown")
    return sum_to(dx, like.shape)


def sum_to(dx: Value, shape: Sequence[Dim]) -> Value:
    """`dx` summed down to `shape`, which broadcasts to dx's shape (right-aligned)."""
    big = dx.dims
    lead = len(big) - len(shape)
    ones = [lead + i for i, d in enumerate(shape) if d == 1 and big[lead + i] != 1]
    if ones:
        dx = op.ReduceSum(dx, ones, keepdims=1)
    if lead:
        dx = op.ReduceSum(dx, list(range(lead)), keepdims=0)
    return dx


@lowering
def masked(g: Value, keep: Value) -> Value:
    """g where `keep` holds, else 0."""
    return op.Where(keep, g, 0.0)


def rank(v: Value, what: str) -> int:
    if v.shape is None:
        raise CompileError(f"the {what} gradient needs the rank of '{v.name}', which is unknown")
    return len(v.shape)


def sizes(v: Value, what: str, axes: Sequence[int] | None = None) -> tuple[int, ...]:
    """The shape of `v`, which must be static on `axes` (or everywhere); dims outside `axes` may
    be symbolic and come back as -1."""
    s = v.shape
    if s is None:
        raise CompileError(f"the {what} gradient needs the static shape of '{v.name}', which is unknown")
    check = range(len(s)) if axes is None else [a % len(s) for a in axes]
    bad = [i for i in check if not isinstance(s[i], int)]
    if bad:
        raise CompileError(f"the {what} gradient needs the static size of '{v.name}' along axis {bad[0]}, "
                           f"which is {s[bad[0]] or 'unknown'}")
    return tuple(d if isinstance(d, int) else -1 for d in s)
