"""Reference implementations of the recurrent ops and GridSample for the gradient tests, written
from the ONNX spec and checked against onnxruntime (tests/compiler/test_parity_recurrent.py).

onnx's own reference evaluator cannot serve: its RNN, GRU and LSTM ignore sequence_lens, clip,
input_forget and every activation but the defaults, and its GridSample rounds the sampling
coordinates through float32, which central differences in float64 cannot tolerate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from unittest import mock

import numpy as np
from onnx.reference.op_run import OpRun
from onnx.reference.ops import op_resize
from onnx.reference.ops.op_grid_sample import GridSample as RefGridSample

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


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def activations(names: list[Any], alphas: list[float] | None, betas: list[float] | None) -> list[Act]:
    """The activation functions; alpha and beta are consumed in order by those that read them."""
    alpha_it, beta_it = iter(alphas or []), iter(betas or [])
    out: list[Act] = []
    for name in names:
        fn, reads_a, reads_b, a, b = _ACTS[_text(name).lower()]
        a = next(alpha_it, a) if reads_a else a
        b = next(beta_it, b) if reads_b else b
        out.append(lambda x, fn=fn, a=a, b=b: fn(x, a, b))
    return out


class _Recurrent(OpRun):
    """The time loop shared by RNN, GRU and LSTM (layout 0 inside): steps past a sequence's length
    keep the state and write zeros to Y; the reverse direction runs from the end of each sequence;
    Y_h and Y_c are zero for a sequence of length 0 (as onnxruntime)."""

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


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """x reflected by the borders lo and hi until it lies between them."""
    span = hi - lo
    if span <= 0:
        return np.zeros_like(x)
    u = np.mod(np.abs(x - lo), 2 * span)
    return lo + span - np.abs(u - span)


class GridSample(RefGridSample):
    """GridSample (linear and nearest, any rank) with coordinates in the input's precision; cubic
    as onnx's own."""

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
            v = np.moveaxis(X, 1, -1)[(n_idx, *safe)]
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


FIXES: list[type[OpRun]] = [GRU, GridSample, LSTM, RNN, Resize]
