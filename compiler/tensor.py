"""Symbolic tensors flowing between layers while a spec is compiled."""

from __future__ import annotations

from dataclasses import dataclass

Shape = tuple[int | None, ...]  # None is the symbolic batch dimension


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: Shape
    dtype: str = "float32"

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def channels(self) -> int:
        c = self.shape[1]
        assert c is not None
        return c


def show(shape: Shape) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"
