"""Gradient-table rows of recurrent and sampling ops: RNN, GRU, LSTM, GridSample, linear and cubic
Resize, Einsum, and batch norm in training mode."""

from __future__ import annotations

from grad_row import Row

ROWS: list[Row] = []
