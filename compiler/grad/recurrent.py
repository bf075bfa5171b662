"""Gradient rules of the recurrent ops: RNN, GRU and LSTM, in every direction and with sequence
lengths."""

from __future__ import annotations
