"""Typed graph values: a value knows its graph, its element type and (where known) its shape, and
arithmetic on values adds ONNX nodes to that graph: `g * b` is a Mul, `1.0 - y` a Sub of a
constant of y's type."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from onnx import TensorProto

if TYPE_CHECKING:
    from dlspec.compiler.graph.builder import Graph

Dim = int | str | None  # a static size, a symbolic one ("N"), or unknown (None; the batch, in layers)
Shape = tuple[Dim, ...]

DTYPES = {
    "float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE, "float16": TensorProto.FLOAT16,
    "bfloat16": TensorProto.BFLOAT16, "int64": TensorProto.INT64, "int32": TensorProto.INT32,
    "int16": TensorProto.INT16, "int8": TensorProto.INT8, "uint8": TensorProto.UINT8,
    "uint16": TensorProto.UINT16, "uint32": TensorProto.UINT32, "uint64": TensorProto.UINT64,
    "bool": TensorProto.BOOL, "string": TensorProto.STRING,
}
DTYPE_OF = {code: name for name, code in DTYPES.items()}
FLOATS = ("float32", "float64", "float16", "bfloat16")


class Value:
    """One named value of a graph. `dtype` is a numpy-style name ("float32"), None where unknown."""

    __slots__ = ("graph", "name", "dtype", "shape")

    def __init__(self, graph: Graph, name: str, dtype: str | None = None, shape: Shape | None = None):
        self.graph = graph
        self.name = name
        self.dtype = dtype
        self.shape = shape

    def __repr__(self) -> str:
        return f"Value({self.name!r}, {self.dtype}, {show(self.shape) if self.shape is not None else '?'})"

    @property
    def given(self) -> bool:
        """False for an optional node input that was left out (its name is empty)."""
        return bool(self.name)

    @property
    def rank(self) -> int:
        assert self.shape is not None, f"{self.name} has no known shape"
        return len(self.shape)

    @property
    def dims(self) -> Shape:
        assert self.shape is not None, f"{self.name} has no known shape"
        return self.shape

    @property
    def channels(self) -> int:
        """Axis 1 of an [N, C, ...] value, which layers always know."""
        c = self.dims[1]
        assert isinstance(c, int), f"{self.name} has no static channel count"
        return c

    def with_shape(self, shape: Shape | None) -> Value:
        """The same value, stating a shape that the builder could not work out."""
        return Value(self.graph, self.name, self.dtype, shape)

    # arithmetic: each builds one node (ops imports this module, hence the late import)
    def __add__(self, other: Value | float) -> Value:
        return ops.Add(self, other)

    def __radd__(self, other: float) -> Value:
        return ops.Add(other, self)

    def __sub__(self, other: Value | float) -> Value:
        return ops.Sub(self, other)

    def __rsub__(self, other: float) -> Value:
        return ops.Sub(other, self)

    def __mul__(self, other: Value | float) -> Value:
        return ops.Mul(self, other)

    def __rmul__(self, other: float) -> Value:
        return ops.Mul(other, self)

    def __truediv__(self, other: Value | float) -> Value:
        return ops.Div(self, other)

    def __rtruediv__(self, other: float) -> Value:
        return ops.Div(other, self)

    def __pow__(self, other: Value | float) -> Value:
        return ops.Pow(self, other)

    def __neg__(self) -> Value:
        return ops.Neg(self)

    def __matmul__(self, other: Value) -> Value:
        return ops.MatMul(self, other)

    def __gt__(self, other: Value | float) -> Value:  # type: ignore[override]
        return ops.Greater(self, other)

    def __lt__(self, other: Value | float) -> Value:  # type: ignore[override]
        return ops.Less(self, other)

    def __ge__(self, other: Value | float) -> Value:  # type: ignore[override]
        return ops.GreaterOrEqual(self, other)

    def __le__(self, other: Value | float) -> Value:  # type: ignore[override]
        return ops.LessOrEqual(self, other)

    def cast(self, dtype: str) -> Value:
        return self if self.dtype == dtype else ops.Cast(self, to=dtype)

    def cast_like(self, like: Value) -> Value:
        """This value in `like`'s element type (a Cast where that type is known, else a CastLike)."""
        if like.dtype is not None:
            return self.cast(like.dtype)
        return ops.CastLike(self, like)

    def scalar(self, v: float) -> Value:
        """The number `v` as a constant of this value's element type, broadcasting against it."""
        if self.dtype is not None:
            return self.graph.const(v, self.dtype)
        return ops.CastLike(self.graph.const(v), self)


def broadcast(*shapes: Shape | None) -> Shape | None:
    """NumPy broadcasting of known shapes; a dim is None where the sizes cannot be told apart."""
    if any(s is None for s in shapes):
        return None
    known = [s for s in shapes if s is not None]
    rank = max((len(s) for s in known), default=0)
    out: list[Dim] = []
    for axis in range(rank):
        dims = [s[len(s) - rank + axis] for s in known if len(s) - rank + axis >= 0]
        big = [d for d in dims if d != 1]
        if not big:
            out.append(1)
        elif all(d == big[0] for d in big):
            out.append(big[0])
        else:
            out.append(None)
    return tuple(out)


def numpy_dtype(dtype: str) -> np.dtype:
    return np.dtype(dtype)


def show(shape: Shape) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


from dlspec.compiler.graph import ops  # noqa: E402  (ops builds Values; Values call ops)
