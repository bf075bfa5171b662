"""Where a graph will run, and the lowerings whose form depends on it.

A `Lowering` is one step of a lowering (a conv's weight gradient, the sum of gradients that
meet at one value) with a plain form that states the math. `dlspec.compiler.tune` registers
variants that compute the same function faster on some Targets; a reader of a rule sees the
plain form, and `Target(tuned=False)` compiles with nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar

if TYPE_CHECKING:
    from dlspec.compiler.graph.builder import Graph
    from dlspec.compiler.graph.value import Value

Device = Literal["cpu", "cuda"]
Precision = Literal["fp32", "fp16", "bf16"]
HALF = {"fp16": "float16", "bf16": "bfloat16"}  # a precision's half type, as a Value's dtype


@dataclass(frozen=True)
class Target:
    """The execution a graph is compiled for: onnxruntime's CPU or CUDA provider, and on the CPU
    the intra-op threads where they are known. Every Target gives the same function."""

    device: Device = "cpu"
    threads: int | None = None
    tuned: bool = True  # False: the plain form of every lowering, as the rules state the math
    # what a training step computes in; None: the spec's `precision` on CUDA, float32 on the CPU
    # (a test names one to run half-precision graphs on the CPU)
    precision: Precision | None = None

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"unknown device '{self.device}': cpu or cuda")
        if self.precision not in (None, "fp32", *HALF):
            raise ValueError(f"unknown precision '{self.precision}': fp32, fp16 or bf16")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


def step_precision(target: Target, asked: Precision) -> Precision:
    """The precision a training step computes in where the spec asks for `asked`: half precision
    is lowered for CUDA only (onnxruntime's CPU provider has few float16 kernels and no bfloat16
    arithmetic), so the CPU trains such a spec in float32."""
    if target.precision is not None:
        return target.precision
    return asked if target.device == "cuda" else "fp32"


P = ParamSpec("P")
R = TypeVar("R")
When = Callable[[Target], bool]


class Lowering(Generic[P, R]):
    """A lowering step: `plain` everywhere, unless a variant registered for the Target applies.
    The first argument of a call is a Value, a list of them or a Graph (whose Target decides), or
    a Target.
    A variant returns None where it does not apply (say, a shape it does not handle); the next
    registered variant, and finally the plain form, is tried then."""

    def __init__(self, plain: Callable[P, R]):
        self.plain = plain
        self.variants: list[tuple[When, Callable[P, R | None]]] = []
        self.__doc__ = plain.__doc__
        self.__name__ = plain.__name__

    def variant(self, when: When) -> Callable[[Callable[P, R | None]], Callable[P, R | None]]:
        def register(fn: Callable[P, R | None]) -> Callable[P, R | None]:
            self.variants.append((when, fn))
            return fn
        return register

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        target = _target_of(args[0] if args else None)
        if target.tuned:
            _load_variants()
            for when, fn in self.variants:
                if when(target):
                    out = fn(*args, **kwargs)
                    if out is not None:
                        return out
        return self.plain(*args, **kwargs)


def lowering(plain: Callable[P, R]) -> Lowering[P, R]:
    return Lowering(plain)


def _load_variants() -> None:
    """The variants register themselves as dlspec.compiler.tune is imported: by a lowering's first
    tuned call at the latest, whichever modules its caller imported."""
    import dlspec.compiler.tune  # noqa: F401


def _target_of(first: Graph | Value | Target | Any) -> Target:
    if isinstance(first, Target):
        return first
    if isinstance(first, (list, tuple)) and first:
        first = first[0]  # a list of values
    graph = getattr(first, "graph", first)  # a Value's graph, or a Graph itself
    target = getattr(graph, "target", None)
    assert isinstance(target, Target), f"a lowering's first argument gives no Target: {first!r}"
    return target
