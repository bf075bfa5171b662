"""State shared while one model is compiled, and the per-layer view of it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dlspec.compiler import init
from dlspec.compiler.autodiff import Composite
from dlspec.compiler.graph import Graph
from dlspec.compiler.tensor import Shape
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
    many_threads: bool = False  # the CPU step runs on many threads (compiler/threads.py)
    frozen: Sequence[str] = ()  # path prefixes whose layers keep their parameters and statistics
    step: str = "step"  # the training graph's step counter input (dropout draws from it)
    records: list[LayerRecord] = field(default_factory=list)
    params: list[ParamInfo] = field(default_factory=list)
    state_updates: dict[str, str] = field(default_factory=dict)  # running stat -> its next value
    composites: dict[str, Composite] = field(default_factory=dict)  # closed-form gradients, by value

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

    def error(self, message: str) -> CompileError:
        return CompileError(f"{self.path}: {message}", self.span)  # the path names the layer

    def _add(self, suffix: str, value: np.ndarray, state: bool) -> str:
        name = f"{self.path}.{suffix}"
        self.comp.params.append(ParamInfo(name, tuple(value.shape), self.path, state))
        if not state:
            self.n_params += int(value.size)
        return self.g.param(name, value)

    def weight(self, suffix: str, shape: Sequence[int], fan_in: int, fan_out: int) -> str:
        policy = self.comp.policy
        chosen = policy.choose(f"{self.path}.{suffix}", self.kind)  # also marks the rules it matched
        if self.init_override is not None:  # `conv(8, init=...)` beats every train-block rule
            chosen = self.init_override
        value = init.make(chosen, shape, fan_in, fan_out, policy.rng(f"{self.path}.{suffix}"))
        return self._add(suffix, value, state=False)

    def zeros(self, suffix: str, shape: Sequence[int], state: bool = False) -> str:
        return self._add(suffix, np.zeros(shape, np.float32), state)

    def ones(self, suffix: str, shape: Sequence[int], state: bool = False) -> str:
        return self._add(suffix, np.ones(shape, np.float32), state)
