"""Gradient rules of ONNX's loss ops: SoftmaxCrossEntropyLoss and NegativeLogLikelihoodLoss."""

from __future__ import annotations
