"""onnx's reference evaluator, an implementation of ONNX that dlspec did not write, with its few
ops fixed where they disagree with the ONNX spec and onnxruntime, or round float64 through float32.

gradcheck runs on it: central differences divide a loss difference by 2 eps, so an op that rounds
through float32 (onnx's Erf, and Gelu, whose function body calls Erf) turns a rounding error of
1e-8 into a relative gradient error of 1e-4, and an op that computes something else fails a
correct rule. Each fix below is checked by the gradient-rule tests (tests/compiler).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_batch_normalization import BatchNormalization_14, _batchnorm_test_mode
from onnx.reference.ops.op_conv_transpose import ConvTranspose as RefConvTranspose
from onnx.reference.ops.op_max_pool import MaxPool as RefMaxPool
from onnx.reference.ops.op_pad import Pad_18 as RefPad

from dlspec.fastconv import Conv

_erf = np.vectorize(math.erf, otypes=[np.float64])  # onnx's own uses otypes=["f"]: float32


class ConvTranspose(RefConvTranspose):
    """onnx's reference ConvTranspose mixes up groups (group > 1): run each group on its own."""

    def _run(self, x, w, b=None, group=None, **attrs):  # type: ignore[no-untyped-def]
        if not group or group == 1:
            return super()._run(x, w, b, group=1, **attrs)
        bs = np.split(b, group) if b is not None else [None] * group
        parts = [super(ConvTranspose, self)._run(xg, wg, bg, group=1, **attrs)[0]
                 for xg, wg, bg in zip(np.split(x, group, axis=1), np.split(w, group), bs)]
        return (np.concatenate(parts, axis=1),)


class LRN(OpRun):
    """onnx's reference LRN loops over the batch instead of the channels (and wants 4-D input)."""

    def _run(self, x, alpha=None, beta=None, bias=None, size=None):  # type: ignore[no-untyped-def]
        lo, hi = (size - 1) // 2, (size - 1) - (size - 1) // 2
        sq = x * x
        s = np.stack([sq[:, max(0, c - lo):c + hi + 1].sum(axis=1) for c in range(x.shape[1])], axis=1)
        return (x / (bias + alpha / size * s) ** beta,)


class Pad(RefPad):
    """onnx's reference Pad refuses the negative pads (crops) that ONNX allows."""

    def _run(self, data, pads, constant_value=None, axes=None, mode=None):  # type: ignore[no-untyped-def]
        axes = list(range(data.ndim)) if axes is None else [int(a) % data.ndim for a in axes]
        cut = [slice(None)] * data.ndim
        for i, a in enumerate(axes):
            cut[a] = slice(max(-pads[i], 0), data.shape[a] - max(-pads[len(axes) + i], 0))
        return super()._run(data[tuple(cut)], np.maximum(pads, 0), constant_value, axes, mode)


class MaxPool(RefMaxPool):
    """onnx's reference MaxPool gets Indices wrong on its stride-1 path (the row offsets of 2-D
    input): send every call down its general path, which agrees with the spec and onnxruntime."""

    def _run(self, x, auto_pad=None, ceil_mode=None, dilations=None, kernel_shape=None,  # type: ignore[no-untyped-def]
             pads=None, storage_order=None, strides=None):
        nd = len(kernel_shape)
        strides, dilations = strides or [1] * nd, dilations or [1] * nd
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):  # that path pads SAME_LOWER wrong: spell pads out
            total = [max((-(-x.shape[2 + i] // strides[i]) - 1) * strides[i]
                         + (kernel_shape[i] - 1) * dilations[i] + 1 - x.shape[2 + i], 0) for i in range(nd)]
            small = [t // 2 for t in total]
            big = [t - h for t, h in zip(total, small)]
            pads = small + big if auto_pad == "SAME_UPPER" else big + small
        return self._max_pool(x, auto_pad="NOTSET", ceil_mode=ceil_mode, dilations=dilations,
                              kernel_shape=kernel_shape, pads=pads, storage_order=storage_order,
                              strides=strides)


class Erf(OpRun):
    """erf in the input's precision."""

    def _run(self, x: np.ndarray) -> tuple[np.ndarray]:
        return (_erf(x).astype(x.dtype, copy=False),)


class Gelu(OpRun):
    """x Phi(x) in the input's precision, erf form or (approximate="tanh") tanh form."""

    def _run(self, x: np.ndarray, approximate: Any = "none") -> tuple[np.ndarray]:
        if approximate in ("tanh", b"tanh"):
            y = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
        else:
            y = 0.5 * x * (1 + _erf(x / math.sqrt(2)))
        return (y.astype(x.dtype, copy=False),)


class BatchNormalization(BatchNormalization_14):
    """onnx's reference BatchNormalization of opset 9 uses batch statistics whenever momentum is
    set, and it always is (by its default); one output means inference mode at every opset."""

    def _run(self, x, scale, bias, mean, var, epsilon=None, momentum=None,  # type: ignore[no-untyped-def]
             training_mode=None, **unused):
        if len(self.onnx_node.output) == 1 and not training_mode:
            return (_batchnorm_test_mode(x, scale, bias, mean, var, epsilon=epsilon or 1e-5),)
        return super()._run(x, scale, bias, mean, var, epsilon=epsilon, momentum=momentum,
                            training_mode=training_mode)


FIXES: list[type[OpRun]] = [BatchNormalization, ConvTranspose, Erf, Gelu, LRN, MaxPool, Pad]


def evaluator(model: onnx.ModelProto) -> ReferenceEvaluator:
    """The reference evaluator with the fixes above and a vectorised Conv (its own loops are slow)."""
    return ReferenceEvaluator(model, new_ops=[*FIXES, Conv])
