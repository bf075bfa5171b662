"""Counter-based random numbers in plain ONNX ops: the same (seed, step, position) always
gives the same number, so a resumed run draws what an uninterrupted one would have, on any
execution provider. (ONNX's RandomUniformLike keeps hidden state in the session.)"""

from __future__ import annotations

import zlib

from dlspec.compiler.graph import Graph

_P = 2_147_483_647  # 2^31 - 1, a prime: every product below stays inside int64


def stream_seed(seed: int, name: str) -> int:
    """One independent stream per (spec seed, layer path)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % _P


def uniform_like(g: Graph, x: str, step: str, seed: int, hint: str) -> str:
    """U[0, 1) noise shaped like `x`, a function of (seed, step, element index).

    h0 = (i * 48271 + (step mod P) * 69621 + seed) mod P, then two rounds of the quadratic
    map h -> (h^2 + c) mod P, which breaks the lattice structure of the linear first step.
    """
    i64 = 7  # TensorProto.INT64
    n = g.numel(x, hint)
    idx = g.op1("Range", [g.const(0, "int64"), n, g.const(1, "int64")], hint)
    p = g.const(_P, "int64")
    s = g.op1("Mod", [g.op1("Cast", [step], hint, to=i64), p], hint)
    offset = g.op1("Add", [g.op1("Mul", [s, g.const(69621, "int64")], hint), g.const(seed, "int64")], hint)
    h = g.op1("Mod", [g.op1("Add", [g.op1("Mul", [idx, g.const(48271, "int64")], hint), offset], hint), p],
              hint)
    for c in (1_234_567, 7_654_321):
        h = g.op1("Mod", [g.op1("Add", [g.op1("Mul", [h, h], hint), g.const(c, "int64")], hint), p], hint)
    u = g.op1("Div", [g.op1("Cast", [h], hint, to=1), g.const(float(_P))], hint)
    return g.op1("Reshape", [u, g.op1("Shape", [x], hint)], hint)
