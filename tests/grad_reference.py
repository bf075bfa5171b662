"""onnx's reference evaluator, an implementation of ONNX that dlspec did not write, with the few
ops fixed where it disagrees with the ONNX spec and onnxruntime, or rounds to float32
(dlspec.reference holds the fixes; gradcheck runs on them too)."""

from __future__ import annotations

import onnx
from grad_reference_select import FIXES as SELECT_FIXES
from grad_reference_sequence import FIXES as SEQUENCE_FIXES
from onnx.reference import ReferenceEvaluator

from dlspec.reference import FIXES


def reference(model: onnx.ModelProto) -> ReferenceEvaluator:
    """onnx's reference evaluator with the fixes of dlspec.reference (its own loop Conv), the
    recurrent ops, GridSample and Resize of grad_reference_sequence, and the pools and Lp norm of
    grad_reference_select."""
    return ReferenceEvaluator(model, new_ops=[*FIXES, *SEQUENCE_FIXES, *SELECT_FIXES])
