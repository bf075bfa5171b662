"""onnx's reference evaluator, an implementation of ONNX that dlspec did not write, with the ops
fixed where it disagrees with the ONNX spec and onnxruntime, rounds to float32, or has none
(dlspec.reference holds the fixes; gradcheck runs on them too)."""

from __future__ import annotations

import onnx
from onnx.reference import ReferenceEvaluator

from dlspec.reference import FIXES


def reference(model: onnx.ModelProto) -> ReferenceEvaluator:
    """onnx's reference evaluator with the fixes of dlspec.reference, and its own loop Conv (not
    dlspec's vectorised one, so that the tests do not check dlspec against itself)."""
    return ReferenceEvaluator(model, new_ops=FIXES)
