"""Counter-based random numbers in plain ONNX ops: the same (seed, step, position) always
gives the same number, so a resumed run draws what an uninterrupted one would have, on any
execution provider. (ONNX's RandomUniformLike keeps hidden state in the session.)"""

from __future__ import annotations

import zlib

from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op

_P = 2_147_483_647  # 2^31 - 1, a prime: every product below stays inside int64


def stream_seed(seed: int, name: str) -> int:
    """One independent stream per (spec seed, layer path)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % _P


def uniform_like(x: Value, step: Value, seed: int) -> Value:
    """U[0, 1) noise shaped like `x`, a function of (seed, step, element index).

    h0 = (i * 48271 + (step mod P) * 69621 + seed) mod P, then two rounds of the quadratic
    map h -> (h^2 + c) mod P, which breaks the lattice structure of the linear first step.
    """
    g = x.graph
    idx = op.Range(g.const(0, "int64"), op.numel(x), g.const(1, "int64"))
    s = op.Mod(step.cast("int64"), _P)
    h = op.Mod(idx * 48271 + (s * 69621 + seed), _P)
    for c in (1_234_567, 7_654_321):
        h = op.Mod(h * h + c, _P)
    u = h.cast("float32") / float(_P)
    return op.Reshape(u, op.Shape(x)).with_shape(x.shape)
