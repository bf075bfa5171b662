"""The gradient rule of Det: the cofactor matrix, from determinants of minors (ONNX has no Inverse)."""

from __future__ import annotations

import numpy as np

from dlspec.compiler.grad.common import rank, sizes
from dlspec.compiler.grad.table import Grads, Node, rule
from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op


@rule("Det")
def _det(n: Node, g: Value) -> Grads:
    # d det(x) / d x_ij = C_ij = (-1)^(i+j) det(x without row i and column j), the cofactor (det x
    # times x^-T where x is invertible, and exact where it is not). The n^2 minors of each matrix are
    # gathered as one [..., n, n, n-1, n-1] value and take one Det: O(n^2) determinants of size n-1.
    x = n.inputs[0]
    r, size = rank(x, "Det"), sizes(x, "Det", [-1])[-1]
    if size == 1:
        return [op.Unsqueeze(g, [-1, -2])]
    others = g.graph.const([[j for j in range(size) if j != i] for i in range(size)], "int64")
    rows = op.Gather(x, others, axis=r - 2)  # [..., i, n-1, n]
    minors = op.Gather(rows, others, axis=r)  # [..., i, n-1, j, n-1]
    b = r - 2
    minors = op.Transpose(minors, list(range(b)) + [b, b + 2, b + 1, b + 3])  # [..., i, j, n-1, n-1]
    signs = g.graph.const((-1.0) ** np.add.outer(np.arange(size), np.arange(size))).cast_like(x)
    cofactors = n.again([minors])[0] * signs
    return [cofactors * op.Unsqueeze(g, [-1, -2])]
