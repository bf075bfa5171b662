"""Gradient rules of sampling ops: GridSample."""

from __future__ import annotations
