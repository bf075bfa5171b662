"""The graph under construction: nodes, initializers and unique names, with the span and name
hint that new nodes are stamped with."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from dlspec.compiler.graph.opset import DOMAIN
from dlspec.compiler.graph.value import Shape, Value
from dlspec.compiler.target import Target

SHARED_CONST = 16  # constants of at most this many elements are shared by every node that uses them


@dataclass(frozen=True)
class Initial:
    """A parameter's initial value, made only when asked for: a graph's shapes, parameter counts
    and FLOPs need none of them, and the memory they take is checked first (graph.memory)."""

    shape: tuple[int, ...]
    dtype: str
    make: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def value(self) -> np.ndarray:
        out = self.make()
        assert out.shape == self.shape and out.dtype == np.dtype(self.dtype), (out.shape, self.shape)
        return out


@dataclass
class CustomGradient:
    """A value whose gradient the lowering knows in closed form (jax.custom_vjp in spirit):
    `rule(g)` gives one gradient per value of `inputs`, and the reverse walk skips the nodes in
    between, each of which still has its own rule."""

    inputs: tuple[Value, ...]
    rule: Callable[[Value], Sequence[Value | None]]


def output_node(value: str, name: str, where: str = "") -> onnx.NodeProto:
    """An Identity that gives `value` the graph output name `name`: a value may feed several outputs,
    or be read under a name of its own beside the one it has."""
    return helper.make_node("Identity", [value], [name], name=f"{name}/Identity", domain=DOMAIN,
                            doc_string=where or None)


class Graph:
    """Collects nodes and initializers; every name it hands out is unique."""

    def __init__(self, taken: Iterable[str] = (), target: Target | None = None) -> None:
        """`taken`: names already used by a graph these nodes will join."""
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, Initial] = {}
        self.target = target or Target()
        self.custom_gradients: dict[str, CustomGradient] = {}  # by the value's name
        # ids 0 to n - 1 that an index(x) value holds, and what it is ("index(district), which has ..."),
        # by the value's name: embedding checks its table against them (lower.columns)
        self.id_counts: dict[str, tuple[int, str]] = {}
        self.where = ""  # "file:line:col path" of what is being lowered, stamped on its nodes
        self.hint = "graph"  # the prefix of new node and value names
        self._counts: dict[str, int] = {}
        self._taken = set(taken)
        self._consts: dict[tuple[str, tuple[int, ...], bytes], Value] = {}  # small constants, shared

    @contextmanager
    def at(self, hint: str, where: str | None = None) -> Iterator[Graph]:
        """New nodes are named after `hint` (and stamped with `where`) inside the block."""
        old = self.hint, self.where
        self.hint = hint
        if where is not None:
            self.where = where
        try:
            yield self
        finally:
            self.hint, self.where = old

    def fresh(self, hint: str) -> str:
        n = self._counts.get(hint, 0)
        name = hint if n == 0 else f"{hint}_{n}"
        while name in self._taken:
            n += 1
            name = f"{hint}_{n}"
        self._counts[hint] = n + 1
        return name

    def node(self, op_type: str, inputs: Sequence[Value | str | None], n_out: int = 1,
             outputs: Sequence[str] | None = None, name: str | None = None, **attrs: Any) -> list[str]:
        """Append one node; returns its output names. The typed op functions (graph.ops) call
        this; None attributes are left out, None inputs are omitted optional ones."""
        ins = ["" if i is None else i if isinstance(i, str) else i.name for i in inputs]
        while ins and not ins[-1]:
            ins.pop()
        hint = self.hint
        outs = list(outputs) if outputs is not None else [
            self.fresh(f"{hint}:{op_type}" if n_out == 1 else f"{hint}:{op_type}.{i}") for i in range(n_out)]
        proto = helper.make_node(op_type, ins, outs, name=name or self.fresh(f"{hint}/{op_type}"),
                                 domain=DOMAIN, doc_string=self.where or None,
                                 **{k: v for k, v in attrs.items() if v is not None})
        self.nodes.append(proto)
        return outs

    def output(self, v: Value, name: str) -> Value:
        """`v` as the graph output `name` (output_node)."""
        self.nodes.append(output_node(v.name, name, self.where))
        return Value(self, name, v.dtype, v.shape)

    def value(self, name: str, dtype: str | None = None, shape: Shape | None = None) -> Value:
        """A value this graph already has (an input, or a node output) by name."""
        return Value(self, name, dtype, shape)

    def const(self, value: Any, dtype: str = "float32", shared: bool = True) -> Value:
        """A Constant node; small ones (scalars, shapes, axes) are made once and shared, unless
        the constant is to keep a name of its own (`shared=False`)."""
        arr = np.asarray(value, dtype=np.dtype(dtype))
        key = (dtype, tuple(arr.shape), arr.tobytes()) if shared and arr.size <= SHARED_CONST else None
        if key is not None and key in self._consts:
            return self._consts[key]
        out = Value(self, self.node("Constant", [], value=numpy_helper.from_array(arr))[0], dtype,
                    tuple(arr.shape))
        if key is not None:
            self._consts[key] = out
        return out

    def drop_nodes(self, keep: Sequence[onnx.NodeProto], start: int = 0) -> None:
        """Replace the nodes from `start` on by `keep` (a subset, in order)."""
        self.nodes[start:] = keep
        self._consts.clear()  # a shared constant may be among those dropped

    def ints(self, values: Sequence[int]) -> Value:
        """A 1-D int64 constant: shapes, axes, pads, starts and ends."""
        return self.const(list(values), "int64")

    def param(self, name: str, initial: Initial) -> Value:
        """An initializer of the forward graph: a parameter or a running statistic."""
        assert name not in self.initializers, f"parameter {name} defined twice"
        self.initializers[name] = initial
        return Value(self, name, initial.dtype, initial.shape)

    def custom_gradient(self, y: Value, inputs: Sequence[Value],
                        rule: Callable[[Value], Sequence[Value | None]]) -> None:
        """Differentiate `y` with `rule` instead of through the nodes that compute it."""
        self.custom_gradients[y.name] = CustomGradient(tuple(inputs), rule)
