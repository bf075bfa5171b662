"""State shared while one model is compiled, and the per-layer view of it."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from dlspec.compiler.graph import Graph, Shape, Value
from dlspec.compiler.graph.builder import Initial
from dlspec.compiler.lower import init
from dlspec.spec.errors import CompileError, Span
from dlspec.spec.model import Initializer


@dataclass
class LayerRecord:
    """One row of `dlspec check`: a layer, its output shapes, parameters and FLOPs."""

    path: str
    kind: str
    shapes: list[Shape]
    params: int
    flops: int
    span: Span | None


@dataclass
class ParamInfo:
    name: str
    shape: tuple[int, ...]
    layer: str
    state: bool  # running statistics: updated by the forward pass, not by gradients


@dataclass
class Compilation:
    g: Graph
    policy: init.InitPolicy
    training: bool = False
    frozen: Sequence[str] = ()  # path prefixes whose layers keep their parameters and statistics
    records: list[LayerRecord] = field(default_factory=list)
    params: list[ParamInfo] = field(default_factory=list)
    state_updates: dict[str, Value] = field(default_factory=dict)  # running stat -> its next value
    image_sizes: list[tuple[int, int]] = field(default_factory=list)  # image inputs' H, W: segment's output

    @property
    def step(self) -> Value:
        """The training graph's step counter input (dropout and augmentation draw from it)."""
        return self.g.value("step", "int64", ())

    def is_frozen(self, path: str) -> bool:
        return any(path == f or path.startswith(f + ".") for f in self.frozen)


class LayerCtx:
    """What a layer's `build` sees: the graph, its own path and span, and parameter makers."""

    def __init__(self, comp: Compilation, path: str, kind: str, span: Span | None,
                 next_kind: str | None, init_override: Initializer | None):
        self.comp = comp
        self.g = comp.g
        self.path = path
        self.kind = kind
        self.span = span
        self.next_kind = next_kind
        self.init_override = init_override
        self.training = comp.training and not comp.is_frozen(path)
        self.flops = 0
        self.n_params = 0
        comp.g.where = f"{span} {path}" if span else path
        comp.g.hint = path  # the layer's nodes are named after it

    def error(self, message: str) -> CompileError:
        return CompileError(f"{self.path}: {message}", self.span)  # the path names the layer

    def _add(self, suffix: str, shape: Sequence[int], state: bool, make: Callable[[], np.ndarray]) -> Value:
        name = f"{self.path}.{suffix}"
        dims = tuple(int(d) for d in shape)
        self.comp.params.append(ParamInfo(name, dims, self.path, state))
        if not state:
            self.n_params += math.prod(dims)
        return self.g.param(name, Initial(dims, "float32", make))

    def weight(self, suffix: str, shape: Sequence[int], fan_in: int, fan_out: int) -> Value:
        policy = self.comp.policy
        chosen = policy.choose(f"{self.path}.{suffix}", self.kind)  # also marks the rules it matched
        if self.init_override is not None:  # `conv(8, init=...)` beats every train-block rule
            chosen = self.init_override
        name = f"{self.path}.{suffix}"
        return self._add(suffix, shape, False,
                         lambda: init.make(chosen, shape, fan_in, fan_out, policy.rng(name)))

    def imported(self, suffix: str, value: np.ndarray, state: bool) -> Value:
        """A parameter whose initial value comes from a file: an init rule that names its path
        (not a layer kind, not the default) still replaces it."""
        name = f"{self.path}.{suffix}"
        chosen = None if state else self.comp.policy.explicit(name)
        if chosen is None:
            return self._add(suffix, value.shape, state, lambda: value)
        fan_in, fan_out = fans(value.shape)
        rng = self.comp.policy.rng(name)
        return self._add(suffix, value.shape, state,
                         lambda: init.make(chosen, value.shape, fan_in, fan_out, rng))

    def zeros(self, suffix: str, shape: Sequence[int], state: bool = False) -> Value:
        return self._add(suffix, shape, state, lambda: np.zeros(shape, np.float32))

    def ones(self, suffix: str, shape: Sequence[int], state: bool = False) -> Value:
        return self._add(suffix, shape, state, lambda: np.ones(shape, np.float32))


def fans(shape: Sequence[int]) -> tuple[int, int]:
    """The fan-in and fan-out of a weight of unknown kind: [out, in, *kernel] as convolutions and
    PyTorch's linear layers store them; a vector counts as [n, 1]."""
    if len(shape) < 2:
        n = int(shape[0]) if shape else 1
        return n, n
    field = math.prod(shape[2:])
    return int(shape[1]) * field, int(shape[0]) * field
