"""Reference implementations of a few ops for the gradient tests, written from the ONNX spec and
checked against onnxruntime
(tests/compiler/test_reference_select.py), where onnx's own reference evaluator computes something
else:

- AveragePool with ceil_mode=1 misplaces windows where the strides reach 3 (and some dilated ones);
- LpPool with ceil_mode=1 scales a window that runs past the end up to a full one (it averages
  over the taps inside x, then multiplies by the kernel's size);
- LpNormalization with p = 1 sums x rather than |x|;
- NegativeLogLikelihoodLoss without weights and with ignore_index -1 averages over the ignored
  positions too (it tests `ignore_index != -1` where it means "is set");
- GlobalMaxPool reduces axes 1 and 2 of 3-D input (and 3 and 4 of 5-D), not the spatial ones;
- GatherElements with axis -1 compares the wrong dims of data and indices and refuses;
- MeanVarianceNormalization runs ONNX's function body, which adds float32 constants to x: it
  refuses float64.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import numpy as np
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_gather_elements import GatherElements as RefGatherElements
from onnx.reference.ops.op_negative_log_likelihood_loss import _compute_negative_log_likelihood_loss


def pool_pads(x: np.ndarray, auto_pad: Any, kernel_shape: list[int], strides: list[int],
              dilations: list[int], pads: list[int] | None) -> list[int]:
    """A pool's pads spelled out: the begins, then the ends, over the spatial axes."""
    nd = len(kernel_shape)
    auto = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        total = [max((-(-x.shape[2 + i] // strides[i]) - 1) * strides[i]
                     + (kernel_shape[i] - 1) * dilations[i] + 1 - x.shape[2 + i], 0) for i in range(nd)]
        small = [t // 2 for t in total]
        big = [t - h for t, h in zip(total, small)]
        return small + big if auto == "SAME_UPPER" else big + small
    return [0] * (2 * nd) if auto == "VALID" or not pads else list(pads)


def window_sums(x: np.ndarray, auto_pad: Any, ceil_mode: int, dilations: list[int] | None,
                kernel_shape: list[int], pads: list[int] | None, strides: list[int] | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each window of a pool over x: the sum of x over its taps inside x, the count of those
    taps, and the count of its taps inside x or the pads. With ceil_mode a window may run past the
    end pad, but it does not start in it (as onnxruntime and PyTorch count windows)."""
    nd = len(kernel_shape)
    s, d = strides or [1] * nd, dilations or [1] * nd
    p = pool_pads(x, auto_pad, kernel_shape, s, d, pads)
    size = x.shape[2:]
    out = []
    for i in range(nd):
        span = size[i] + p[i] + p[nd + i] - (kernel_shape[i] - 1) * d[i] - 1
        o = (-(-span // s[i]) if ceil_mode else span // s[i]) + 1
        out.append(o - 1 if ceil_mode and (o - 1) * s[i] >= size[i] + p[i] else o)
    total = np.zeros(x.shape[:2] + tuple(out), x.dtype)
    inside, padded = np.zeros(out), np.zeros(out)
    for tap in itertools.product(*(range(k) for k in kernel_shape)):
        at = [np.arange(out[i]) * s[i] - p[i] + tap[i] * d[i] for i in range(nd)]  # positions read
        hit = _outer([(a >= 0) & (a < n) for a, n in zip(at, size)])
        near = _outer([(a >= -p[i]) & (a < size[i] + p[nd + i]) for i, a in enumerate(at)])
        read = x[(slice(None), slice(None)) + np.ix_(*[np.clip(a, 0, n - 1) for a, n in zip(at, size)])]
        total += np.where(hit, read, 0)
        inside += hit
        padded += near
    return total, inside, padded


def _outer(masks: list[np.ndarray]) -> np.ndarray:
    """The masks along each axis combined: [out_0, out_1, ...]."""
    nd = len(masks)
    return functools.reduce(np.logical_and, [m.reshape([-1 if j == i else 1 for j in range(nd)])
                                             for i, m in enumerate(masks)])


class AveragePool(OpRun):
    """The mean of each window over its taps inside x, or inside x and the pads (count_include_pad)."""

    def _run(self, x, auto_pad=None, ceil_mode=None, count_include_pad=None,  # type: ignore[no-untyped-def]
             dilations=None, kernel_shape=None, pads=None, strides=None):
        total, inside, padded = window_sums(x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides)
        return ((total / (padded if count_include_pad else inside)).astype(x.dtype),)


class LpPool(OpRun):
    """(sum of |x|^p over each window)^(1/p); the pads add nothing."""

    def _run(self, x, auto_pad=None, ceil_mode=None, dilations=None,  # type: ignore[no-untyped-def]
             kernel_shape=None, p=None, pads=None, strides=None):
        total, _, _ = window_sums(np.abs(x) ** p, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides)
        return ((total ** (1.0 / p)).astype(x.dtype),)


class LpNormalization(OpRun):
    """x / (sum of |x|^p along axis)^(1/p), and 0 where that norm is 0."""

    def _run(self, x, axis=None, p=None):  # type: ignore[no-untyped-def]
        norm = (np.abs(x) ** p).sum(axis=axis, keepdims=True) ** (1.0 / p)
        return (np.where(norm == 0, 0, x / np.where(norm == 0, 1, norm)).astype(x.dtype),)


class NegativeLogLikelihoodLoss(OpRun):
    """onnx's own, with weights of 1 where it has none but an ignore_index (which it then honours)."""

    def _run(self, x, target, weight=None, ignore_index=None, reduction=None):  # type: ignore[no-untyped-def]
        if weight is None and ignore_index is not None:
            weight = np.ones(x.shape[1], x.dtype)
        return _compute_negative_log_likelihood_loss(x, target, weight=weight, reduction=reduction,
                                                     ignore_index=ignore_index)


class GlobalMaxPool(OpRun):
    """The maximum over the spatial axes (2 on), kept as size-1 axes."""

    def _run(self, x):  # type: ignore[no-untyped-def]
        return (x.max(axis=tuple(range(2, x.ndim)), keepdims=True),)


class GatherElements(RefGatherElements):
    """onnx's own, with the axis made non-negative."""

    def _run(self, data, indices, axis=None):  # type: ignore[no-untyped-def]
        return super()._run(data, indices, axis=(axis or 0) % data.ndim)


class MeanVarianceNormalization(OpRun):
    """(x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9), expectations over axes, as the function body."""

    def _run(self, x, axes=None):  # type: ignore[no-untyped-def]
        axes = tuple(axes or (0, 2, 3))
        mean = x.mean(axis=axes, keepdims=True)
        std = np.sqrt((x * x).mean(axis=axes, keepdims=True) - mean * mean)
        return (((x - mean) / (std + 1e-9)).astype(x.dtype),)


FIXES: list[type[OpRun]] = [AveragePool, GatherElements, GlobalMaxPool, LpNormalization, LpPool,
                            MeanVarianceNormalization, NegativeLogLikelihoodLoss]
