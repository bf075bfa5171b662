"""onnx's reference evaluator, an implementation of ONNX that dlspec did not write, with its ops
fixed where they disagree with the ONNX spec and onnxruntime, round float64 through float32, or
are missing.

gradcheck and the gradient tests run on it: central differences divide a loss difference by 2 eps,
so an op that rounds through float32 (onnx's Erf, and Gelu, whose function body calls Erf) turns a
rounding error of 1e-8 into a relative gradient error of 1e-4, and an op that computes something
else fails a correct rule. Each fix below was written from the ONNX spec and is checked against
onnxruntime (tests/compiler/test_reference_select.py, test_parity_recurrent.py) or by the
gradient-rule tests (tests/compiler).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from typing import Any
from unittest import mock

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops import op_resize
from onnx.reference.ops.op_affine_grid import construct_original_grid
from onnx.reference.ops.op_batch_normalization import BatchNormalization_14, _batchnorm_test_mode
from onnx.reference.ops.op_conv_transpose import ConvTranspose as RefConvTranspose
from onnx.reference.ops.op_gather_elements import GatherElements as RefGatherElements
from onnx.reference.ops.op_grid_sample import GridSample as RefGridSample
from onnx.reference.ops.op_max_pool import MaxPool as RefMaxPool
from onnx.reference.ops.op_negative_log_likelihood_loss import _compute_negative_log_likelihood_loss
from onnx.reference.ops.op_pad import Pad_18 as RefPad
from onnx.reference.ops.op_scatter_elements import ScatterElements

from dlspec.fastconv import Conv


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


# ---- ops that round float64 through float32 ----
_erf = np.vectorize(math.erf, otypes=[np.float64])  # onnx's own uses otypes=["f"]: float32


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


class AffineGrid(OpRun):
    """theta (pixel coordinates, 1) per pixel in theta's type (onnx's own returns float32)."""

    def _run(self, theta, size, align_corners=None):  # type: ignore[no-untyped-def]
        spatial = [int(d) for d in size[2:]]
        corners = self.align_corners if align_corners is None else align_corners
        base = construct_original_grid(spatial, corners)  # [*spatial, r + 1]: (coordinates, 1)
        grid = base.reshape(-1, base.shape[-1]) @ np.swapaxes(theta, 1, 2)  # [N, pixels, r]
        return (grid.reshape(theta.shape[0], *spatial, theta.shape[1]).astype(theta.dtype),)


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """x reflected by the borders lo and hi until it lies between them."""
    span = hi - lo
    if span <= 0:
        return np.zeros_like(x)
    u = np.mod(np.abs(x - lo), 2 * span)
    return lo + span - np.abs(u - span)


class GridSample(RefGridSample):
    """GridSample (linear and nearest, any rank) with coordinates in the input's precision (onnx's
    own rounds them through float32); cubic as onnx's own."""

    def _run(self, X, grid, mode=None, padding_mode=None, align_corners=None):  # type: ignore[no-untyped-def]
        mode, pad = _text(mode or self.mode), _text(padding_mode or self.padding_mode)
        align_corners = self.align_corners if align_corners is None else align_corners
        if mode not in ("linear", "bilinear", "nearest"):
            return super()._run(X, grid, mode=mode, padding_mode=pad, align_corners=align_corners)
        dims = X.shape[2:]
        r = len(dims)
        xs = []
        for i, d in enumerate(dims):  # grid[..., r - 1 - i] addresses axis 2 + i
            g = grid[..., r - 1 - i]
            x = (g + 1) / 2 * (d - 1) if align_corners else ((g + 1) * d - 1) / 2
            if mode == "nearest":
                x = np.rint(x)
            lo, hi = (0.0, d - 1.0) if align_corners else (-0.5, d - 0.5)
            if pad == "border":
                x = np.where((x < lo) | (x > hi), np.clip(x, 0, d - 1), x)
            elif pad == "reflection":
                x = _reflect(x, lo, hi)
            xs.append(x)
        n_idx = np.arange(X.shape[0]).reshape((-1,) + (1,) * (grid.ndim - 2))

        def pixel(idx: list[np.ndarray]) -> np.ndarray:  # [N, out..., C] with padding applied
            ok = np.ones(idx[0].shape, bool)
            safe = []
            for k, d in zip(idx, dims):
                if pad == "zeros":
                    ok &= (k >= 0) & (k < d)
                    k = np.clip(k, 0, d - 1)
                elif pad == "border":
                    k = np.clip(k, 0, d - 1)
                else:
                    lo, hi = (0.0, d - 1.0) if align_corners else (-0.5, d - 0.5)
                    k = _reflect(k.astype(np.float64), lo, hi).astype(np.int64)
                safe.append(k)
            v = np.moveaxis(X, 1, -1)[tuple([n_idx, *safe])]
            return np.where(ok[..., None], v, 0.0)

        if mode == "nearest":
            out = pixel([x.astype(np.int64) for x in xs])
        else:
            floors = [np.floor(x) for x in xs]
            out = 0.0
            for corner in range(2 ** r):
                bits = [(corner >> (r - 1 - i)) & 1 for i in range(r)]
                w = np.ones(xs[0].shape, X.dtype)
                for x, f, bit in zip(xs, floors, bits):
                    w = w * ((x - f) if bit else (1 - (x - f)))
                out = out + w[..., None] * pixel([f.astype(np.int64) + bit for f, bit in zip(floors, bits)])
        return (np.moveaxis(np.asarray(out), -1, 1).astype(X.dtype),)


_compute_x_ori = op_resize._compute_x_ori


def _x_ori(mode: str, y: np.ndarray, scale: float, length: int, width: float, width_int: int,
           roi: Any) -> tuple[np.ndarray, np.ndarray | None]:
    if mode == "pytorch_half_pixel" and width_int == 1:
        return np.zeros(1), None
    if mode in ("align_corners", "tf_crop_and_resize", "pytorch_half_pixel"):
        width = width_int
    return _compute_x_ori(mode, y, scale, length, width, width_int, roi)


class Resize(op_resize.Resize):
    """onnx's reference Resize takes length_resized as scale * length_original, fractional where
    a scale gives it, in align_corners, tf_crop_and_resize and pytorch_half_pixel, where the spec
    and onnxruntime take the output's length; and it maps pytorch_half_pixel's one-pixel output to
    -0.5 instead of the spec's 0 (which changes cubic results). Its cubic weights come out in
    float32 (cubic_coeff_a is a numpy float32): take it as a Python float."""

    def _run(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if kwargs.get("cubic_coeff_a") is not None:
            kwargs["cubic_coeff_a"] = float(kwargs["cubic_coeff_a"])
        with mock.patch.object(op_resize, "_compute_x_ori", _x_ori):
            return super()._run(*args, **kwargs)


# ---- ops that compute something else than the spec and onnxruntime ----
class BatchNormalization(BatchNormalization_14):
    """onnx's reference BatchNormalization of opset 9 uses batch statistics whenever momentum is
    set, and it always is (by its default); one output means inference mode at every opset."""

    def _run(self, x, scale, bias, mean, var, epsilon=None, momentum=None,  # type: ignore[no-untyped-def]
             training_mode=None, **unused):
        if len(self.onnx_node.output) == 1 and not training_mode:
            return (_batchnorm_test_mode(x, scale, bias, mean, var, epsilon=epsilon or 1e-5),)
        return super()._run(x, scale, bias, mean, var, epsilon=epsilon, momentum=momentum,
                            training_mode=training_mode)


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


def pool_pads(x: np.ndarray, auto_pad: Any, kernel_shape: list[int], strides: list[int],
              dilations: list[int], pads: list[int] | None) -> list[int]:
    """A pool's pads spelled out: the begins, then the ends, over the spatial axes."""
    nd = len(kernel_shape)
    auto = _text(auto_pad) if auto_pad is not None else "NOTSET"
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        total = [max((-(-x.shape[2 + i] // strides[i]) - 1) * strides[i]
                     + (kernel_shape[i] - 1) * dilations[i] + 1 - x.shape[2 + i], 0) for i in range(nd)]
        small = [t // 2 for t in total]
        big = [t - h for t, h in zip(total, small)]
        return small + big if auto == "SAME_UPPER" else big + small
    return [0] * (2 * nd) if auto == "VALID" or not pads else list(pads)


class MaxPool(RefMaxPool):
    """onnx's reference MaxPool gets Indices wrong on its stride-1 path (the row offsets of 2-D
    input) and pads SAME_LOWER wrong: send every call down its general path, pads spelled out,
    which agrees with the spec and onnxruntime."""

    def _run(self, x, auto_pad=None, ceil_mode=None, dilations=None, kernel_shape=None,  # type: ignore[no-untyped-def]
             pads=None, storage_order=None, strides=None):
        nd = len(kernel_shape)
        strides, dilations = strides or [1] * nd, dilations or [1] * nd
        pads = pool_pads(x, auto_pad, kernel_shape, strides, dilations, pads)
        return self._max_pool(x, auto_pad="NOTSET", ceil_mode=ceil_mode, dilations=dilations,
                              kernel_shape=kernel_shape, pads=pads, storage_order=storage_order,
                              strides=strides)


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
    """The mean of each window over its taps inside x, or inside x and the pads (count_include_pad).
    onnx's own misplaces windows with ceil_mode=1 where the strides reach 3 (and some dilated ones)."""

    def _run(self, x, auto_pad=None, ceil_mode=None, count_include_pad=None,  # type: ignore[no-untyped-def]
             dilations=None, kernel_shape=None, pads=None, strides=None):
        total, inside, padded = window_sums(x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides)
        return ((total / (padded if count_include_pad else inside)).astype(x.dtype),)


class LpPool(OpRun):
    """(sum of |x|^p over each window)^(1/p); the pads add nothing. onnx's own, with ceil_mode=1,
    scales a window that runs past the end up to a full one."""

    def _run(self, x, auto_pad=None, ceil_mode=None, dilations=None,  # type: ignore[no-untyped-def]
             kernel_shape=None, p=None, pads=None, strides=None):
        total, _, _ = window_sums(np.abs(x) ** p, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides)
        return ((total ** (1.0 / p)).astype(x.dtype),)


class GlobalMaxPool(OpRun):
    """The maximum over the spatial axes (2 on), kept as size-1 axes; onnx's own reduces axes 1 and
    2 of 3-D input (and 3 and 4 of 5-D)."""

    def _run(self, x):  # type: ignore[no-untyped-def]
        return (x.max(axis=tuple(range(2, x.ndim)), keepdims=True),)


class LpNormalization(OpRun):
    """x / (sum of |x|^p along axis)^(1/p), and 0 where that norm is 0; onnx's own sums x rather
    than |x| for p = 1."""

    def _run(self, x, axis=None, p=None):  # type: ignore[no-untyped-def]
        norm = (np.abs(x) ** p).sum(axis=axis, keepdims=True) ** (1.0 / p)
        return (np.where(norm == 0, 0, x / np.where(norm == 0, 1, norm)).astype(x.dtype),)


class NegativeLogLikelihoodLoss(OpRun):
    """onnx's own, with weights of 1 where it has none but an ignore_index (which it then honours:
    without weights it tests `ignore_index != -1` where it means "is set")."""

    def _run(self, x, target, weight=None, ignore_index=None, reduction=None):  # type: ignore[no-untyped-def]
        if weight is None and ignore_index is not None:
            weight = np.ones(x.shape[1], x.dtype)
        return _compute_negative_log_likelihood_loss(x, target, weight=weight, reduction=reduction,
                                                     ignore_index=ignore_index)


class GatherElements(RefGatherElements):
    """onnx's own, with the axis made non-negative (with axis -1 it compares the wrong dims of data
    and indices and refuses)."""

    def _run(self, data, indices, axis=None):  # type: ignore[no-untyped-def]
        return super()._run(data, indices, axis=(axis or 0) % data.ndim)


class MeanVarianceNormalization(OpRun):
    """(x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9), expectations over axes, as the function body
    (which onnx runs, adding float32 constants to x: it refuses float64)."""

    def _run(self, x, axes=None):  # type: ignore[no-untyped-def]
        axes = tuple(axes or (0, 2, 3))
        mean = x.mean(axis=axes, keepdims=True)
        std = np.sqrt((x * x).mean(axis=axes, keepdims=True) - mean * mean)
        return (((x - mean) / (std + 1e-9)).astype(x.dtype),)


# ---- ops it lacks, or reads in part ----
class Scatter(ScatterElements):
    """Scatter (opsets 9 to 10), which ScatterElements replaced unchanged; onnx has no Scatter."""

    def _run(self, data, indices, updates, axis=None):  # type: ignore[no-untyped-def]
        return super()._run(data, indices, updates, axis=axis or 0)


Act = Callable[[np.ndarray], np.ndarray]

# name: f(x, alpha, beta), whether it reads alpha and beta, and onnxruntime's defaults
_ACTS: dict[str, tuple[Callable[[np.ndarray, float, float], np.ndarray], bool, bool, float, float]] = {
    "relu": (lambda x, a, b: np.maximum(x, 0.0), False, False, 0.0, 0.0),
    "tanh": (lambda x, a, b: np.tanh(x), False, False, 0.0, 0.0),
    "sigmoid": (lambda x, a, b: 1.0 / (1.0 + np.exp(-x)), False, False, 0.0, 0.0),
    "affine": (lambda x, a, b: a * x + b, True, True, 0.0, 0.0),
    "leakyrelu": (lambda x, a, b: np.where(x >= 0, x, a * x), True, False, 0.01, 0.0),
    "thresholdedrelu": (lambda x, a, b: np.where(x > a, x, 0.0), True, False, 0.0, 0.0),
    "scaledtanh": (lambda x, a, b: a * np.tanh(b * x), True, True, 0.0, 0.0),
    "hardsigmoid": (lambda x, a, b: np.clip(a * x + b, 0.0, 1.0), True, True, 0.2, 0.5),
    "elu": (lambda x, a, b: np.where(x >= 0, x, a * (np.exp(x) - 1.0)), True, False, 1.0, 0.0),
    "softsign": (lambda x, a, b: x / (1.0 + np.abs(x)), False, False, 0.0, 0.0),
    "softplus": (lambda x, a, b: np.log1p(np.exp(x)), False, False, 0.0, 0.0),
}


def _applied(fn: Callable[[np.ndarray, float, float], np.ndarray], a: float, b: float,
             x: np.ndarray) -> np.ndarray:
    return fn(x, a, b)


def activations(names: list[Any], alphas: list[float] | None, betas: list[float] | None) -> list[Act]:
    """The activation functions; alpha and beta are consumed in order by those that read them."""
    alpha_it, beta_it = iter(alphas or []), iter(betas or [])
    out: list[Act] = []
    for name in names:
        fn, reads_a, reads_b, a, b = _ACTS[_text(name).lower()]
        a = next(alpha_it, a) if reads_a else a
        b = next(beta_it, b) if reads_b else b
        out.append(functools.partial(_applied, fn, a, b))
    return out


class _Recurrent(OpRun):
    """The time loop shared by RNN, GRU and LSTM (layout 0 inside), which onnx's own runs without
    sequence_lens, clip, input_forget and every activation but the defaults: steps past a
    sequence's length keep the state and write zeros to Y; the reverse direction runs from the end
    of each sequence; Y_h and Y_c are zero for a sequence of length 0 (as onnxruntime)."""

    gates = 1
    default_acts: list[str] = []

    def _run(self, X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None,  # type: ignore[no-untyped-def]
             **attrs):
        layout, direction = attrs.get("layout") or 0, _text(attrs.get("direction") or "forward")
        if layout:
            X = np.swapaxes(X, 0, 1)
            initial_h = None if initial_h is None else np.swapaxes(initial_h, 0, 1)
            initial_c = None if initial_c is None else np.swapaxes(initial_c, 0, 1)
        dirs, hidden = W.shape[0], R.shape[-1]
        T, batch = X.shape[:2]
        names = attrs.get("activations") or self.default_acts * dirs
        per = len(self.default_acts)
        if len(names) == per:
            names = list(names) * dirs
        acts = activations(list(names), attrs.get("activation_alpha"), attrs.get("activation_beta"))
        lens = np.full(batch, T) if sequence_lens is None else np.asarray(sequence_lens)
        clip = attrs.get("clip")
        ys, hs, cs = [], [], []
        for d in range(dirs):
            def pre(a: np.ndarray) -> np.ndarray:
                return np.clip(a, -clip, clip) if clip is not None else a

            b = np.zeros(2 * self.gates * hidden, X.dtype) if B is None else B[d]
            p = None if P is None else P[d]
            h = np.zeros((batch, hidden), X.dtype) if initial_h is None else initial_h[d]
            c = np.zeros((batch, hidden), X.dtype) if initial_c is None else initial_c[d]
            y = np.zeros((T, batch, hidden), X.dtype)
            reverse = direction == "reverse" or (direction == "bidirectional" and d == 1)
            for t in (range(T - 1, -1, -1) if reverse else range(T)):
                hn, cn = self.cell(X[t], h, c, W[d], R[d], b, p, acts[per * d:per * (d + 1)], pre, attrs)
                m = (t < lens)[:, None]
                h, c = np.where(m, hn, h), np.where(m, cn, c)
                y[t] = np.where(m, hn, 0.0)
            ys.append(y)
            hs.append(np.where((lens > 0)[:, None], h, 0.0))
            cs.append(np.where((lens > 0)[:, None], c, 0.0))
        Y, Y_h, Y_c = np.stack(ys, axis=1), np.stack(hs), np.stack(cs)
        if layout:
            Y, Y_h, Y_c = np.transpose(Y, [2, 0, 1, 3]), np.swapaxes(Y_h, 0, 1), np.swapaxes(Y_c, 0, 1)
        outs = [Y.astype(X.dtype), Y_h.astype(X.dtype), Y_c.astype(X.dtype)]
        return tuple(outs[:len(self.onnx_node.output)])

    def cell(self, x: np.ndarray, h: np.ndarray, c: np.ndarray, w: np.ndarray, r: np.ndarray, b: np.ndarray,
             p: np.ndarray | None, acts: list[Act], pre: Act, attrs: dict[str, Any]
             ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class RNN(_Recurrent):
    """H = f(x W^T + h R^T + Wb + Rb)."""

    gates, default_acts = 1, ["Tanh"]

    def cell(self, x, h, c, w, r, b, p, acts, pre, attrs):  # type: ignore[no-untyped-def]
        wb, rb = np.split(b, 2)
        return acts[0](pre(x @ w.T + h @ r.T + wb + rb)), c


class GRU(_Recurrent):
    """z, r = f(.); h~ = g(x Wh^T + (r h) Rh^T + Rbh + Wbh), or with linear_before_reset
    g(x Wh^T + r (h Rh^T + Rbh) + Wbh); H = (1 - z) h~ + z h."""

    gates, default_acts = 3, ["Sigmoid", "Tanh"]

    def cell(self, x, h, c, w, r, b, p, acts, pre, attrs):  # type: ignore[no-untyped-def]
        f, g = acts
        (wz, wr, wh), (rz, rr, rh) = np.split(w, 3), np.split(r, 3)
        wbz, wbr, wbh, rbz, rbr, rbh = np.split(b, 6)
        z = f(pre(x @ wz.T + h @ rz.T + wbz + rbz))
        reset = f(pre(x @ wr.T + h @ rr.T + wbr + rbr))
        if attrs.get("linear_before_reset"):
            cand = g(pre(x @ wh.T + reset * (h @ rh.T + rbh) + wbh))
        else:
            cand = g(pre(x @ wh.T + (reset * h) @ rh.T + rbh + wbh))
        return (1 - z) * cand + z * h, c


class LSTM(_Recurrent):
    """Gates i, o, f, c with peepholes P = [Pi, Po, Pf]: C = f C_prev + i c~, H = o h(C); with
    input_forget, f = 1 - i."""

    gates, default_acts = 4, ["Sigmoid", "Tanh", "Tanh"]

    def cell(self, x, h, c, w, r, b, p, acts, pre, attrs):  # type: ignore[no-untyped-def]
        f, g, hf = acts
        wb, rb = np.split(b, 2)
        ai, ao, af, ac = np.split(x @ w.T + h @ r.T + wb + rb, 4, axis=-1)
        pi, po, pf = np.split(p, 3) if p is not None else (0.0, 0.0, 0.0)
        i = f(pre(ai + pi * c))
        forget = 1 - i if attrs.get("input_forget") else f(pre(af + pf * c))
        cn = forget * c + i * g(pre(ac))
        o = f(pre(ao + po * cn))
        return o * hf(cn), cn


FIXES: list[type[OpRun]] = [
    AffineGrid, AveragePool, BatchNormalization, ConvTranspose, Erf, GRU, GatherElements, Gelu,
    GlobalMaxPool, GridSample, LRN, LSTM, LpNormalization, LpPool, MaxPool, MeanVarianceNormalization,
    NegativeLogLikelihoodLoss, Pad, RNN, Resize, Scatter,
]


def evaluator(model: onnx.ModelProto) -> ReferenceEvaluator:
    """The reference evaluator with the fixes above and a vectorised Conv (its own loops are slow)."""
    return ReferenceEvaluator(model, new_ops=[*FIXES, Conv])
