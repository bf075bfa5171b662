"""Gradient-table rows of selection, indexing and elementwise math: Gather, the scatters, Tile,
TopK, CumSum, the trigonometric family, pools, norms and ONNX's loss ops."""

from __future__ import annotations

from grad_row import Row

ROWS: list[Row] = []
