"""A row of the gradient table (tests/compiler/test_grad_rules.py): one op configuration whose
rule is checked against central differences, and by which every tuned lowering is compared
with the plain one. Rows of further op families live in tests/grad_rows_*.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from onnx import TensorProto as TP


@dataclass
class Row:
    op: str
    shapes: list[tuple[int, ...]]  # the differentiated inputs
    attrs: dict[str, Any] = field(default_factory=dict)
    consts: list[Any] = field(default_factory=list)  # constant inputs after the differentiated ones
    low: float = -1.0
    high: float = 1.0
    tol: float = 1e-6
    id: str = ""
    exact: Any = None  # float64 forward in numpy where the reference evaluator computes in float32
    inputs: list[str] | None = None  # the node's inputs when not x0.. then c0..: e.g. ["x0", "c0", "x1"]
    outputs: int = 1
    loss_on: list[int] | None = None  # the outputs the loss reads (default all): the others go unused
    dtype: int = TP.DOUBLE  # FLOAT for ops that ONNX defines for float32 only
    no_ort: str = ""  # why onnxruntime cannot run the row's forward op, if it cannot
    given: dict[int, Any] = field(default_factory=dict)  # inputs given values, not random ones: ties, zeros
    computed: list[int] = field(default_factory=list)  # consts the node reads through an Identity, so no
    # rule sees their values (as where a graph computes them at run time)


def const(v: Any, dtype: Any = np.int64) -> np.ndarray:
    """A constant input of a row (int64 unless said otherwise)."""
    return np.asarray(v, dtype=dtype)


BIG = 2**62
