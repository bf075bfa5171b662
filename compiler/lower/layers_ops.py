"""Typed builders of the ONNX ops that the sequence and normalisation layers emit and
graph.ops does not type (yet): the same form, one function per op, attributes under ONNX's names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dlspec.compiler.graph import Shape, Value


def _node(op_type: str, inputs: Sequence[Value | None], dtype: str | None, shape: Shape | None,
          **attrs: Any) -> Value:
    g = next(i for i in inputs if i is not None).graph
    return Value(g, g.node(op_type, inputs, **attrs)[0], dtype, shape)


def LayerNormalization(x: Value, scale: Value, bias: Value | None, axis: int = -1,
                       epsilon: float = 1e-5) -> Value:
    return _node("LayerNormalization", [x, scale, bias], x.dtype, x.shape, axis=axis, epsilon=epsilon)


def InstanceNormalization(x: Value, scale: Value, bias: Value, epsilon: float = 1e-5) -> Value:
    return _node("InstanceNormalization", [x, scale, bias], x.dtype, x.shape, epsilon=epsilon)


def ReduceMax(x: Value, axes: Sequence[int], keepdims: int = 1) -> Value:
    shape = None
    if x.shape is not None:
        gone = {a % len(x.shape) for a in axes}
        shape = tuple(1 if i in gone else d for i, d in enumerate(x.shape) if keepdims or i not in gone)
    return _node("ReduceMax", [x, x.graph.ints(axes)], x.dtype, shape, keepdims=keepdims)


def Recurrent(op_type: str, x: Value, w: Value, r: Value, b: Value | None, sequence_lens: Value | None,
              hidden_size: int, direction: str, **attrs: Any) -> Value:
    """An RNN, GRU or LSTM node in layout 0, X [T, N, F]; its output Y alone: [T, directions, N, H]
    (onnxruntime's CPU kernels refuse layout 1)."""
    dirs = 2 if direction == "bidirectional" else 1
    shape = None if x.shape is None else (x.shape[0], dirs, x.shape[1], hidden_size)
    return _node(op_type, [x, w, r, b, sequence_lens], x.dtype, shape, hidden_size=hidden_size,
                 direction=direction, **attrs)
