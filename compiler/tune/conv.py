"""Faster forms of the convolution gradients (README, Speed, has what each was measured to gain).

dX at stride 1 is a plain Conv of G with the flipped kernels, which onnxruntime runs faster than
ConvTranspose. dW takes one of four forms by shape and Target: a matrix product for 1x1 kernels;
one product per kernel tap over a channels-last x (the taps) on the CPU, where the plain
batch-as-channels Conv runs one small product per image; on the CPU with many threads, one 3-D
Conv that onnxruntime threads where the taps' Slices run on one thread; the plain Conv on CUDA
for small maps, and for grouped convs whose groups hold few filters on the CPU.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from dlspec.compiler.grad.conv import (
    Window,
    conv_input_grad,
    conv_transpose,
    conv_weight_grad,
    first_k,
    flip_kernel,
    swap_first,
)
from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op
from dlspec.compiler.tune.when import always, many_threads, on_cuda

# On CUDA, weight gradients of convs whose output map has at most this many positions keep the
# plain Conv form; cuDNN runs it slowly on larger maps, where the taps win.
CUDA_CONV_MAX_MAP = 64


@conv_input_grad.variant(always)
def _flipped(g: Value, w: Value, win: Window) -> Value | None:
    """dX of a stride-1 convolution as a Conv of G with the kernels transposed per group and
    flipped, padded by d (k - 1) - p."""
    full = [win.d[i] * (win.k[i] - 1) for i in range(win.nd)]
    pads = [full[i % win.nd] - win.p[i] for i in range(2 * win.nd)]
    if any(v != 1 for v in win.s) or min(pads) < 0 or pads[:win.nd] != pads[win.nd:]:
        return None
    return op.Conv(g, flip_kernel(w, win), pads=pads, dilations=win.d, group=win.groups)


@conv_transpose.variant(on_cuda)
def _even_pads(g: Value, w: Value, s: list[int], p: list[int], d: list[int], groups: int,
               out_pad: list[int]) -> Value | None:
    """onnxruntime's CUDA ConvTranspose takes symmetric pads only (it sends others to the CPU):
    uneven pads become the smaller of the two, and a Slice."""
    nd = len(s)
    even = [min(p[i], p[nd + i]) for i in range(nd)]
    y = op.ConvTranspose(g, w, strides=s, pads=even + even, dilations=d, group=groups,
                         output_padding=out_pad if any(out_pad) else None)
    if even + even == p:
        return y
    starts = [p[i] - even[i] for i in range(nd)]
    ends = [even[i] - p[nd + i] if p[nd + i] > even[i] else np.iinfo(np.int64).max for i in range(nd)]
    return op.Slice(y, starts, ends, list(range(2, 2 + nd)))


@conv_weight_grad.variant(always)
def _by_shape(x: Value, g: Value, win: Window) -> Value | None:
    """The form of dW for this shape and Target; None keeps the plain Conv."""
    target = x.graph.target
    if all(k == 1 for k in win.k):
        return _pointwise(x, g, win)
    if target.device == "cuda":
        return None if math.prod(win.out) <= CUDA_CONV_MAX_MAP else _taps(x, g, win, padded_copy=False)
    if win.groups > 1 and win.cout // win.groups <= math.prod(win.k):
        return None  # onnxruntime's CPU Conv threads this one over its groups
    if many_threads(target) and win.groups == 1 and win.nd == 2:
        return _depth_conv(x, g, win)
    return _taps(x, g, win, padded_copy=True)


def _channels_first_rows(t: Value, channels: int, nd: int, groups: int = 1) -> Value:
    """[N, C, *S] (nd axes in S) -> [C, N * prod(S)], or [groups, C / groups, N * prod(S)]."""
    shape = [channels, -1] if groups == 1 else [groups, channels // groups, -1]
    return op.Reshape(swap_first(t, nd), shape)


def _pointwise(x: Value, g: Value, win: Window) -> Value:
    """A 1x1 kernel: dW = G X^T over (batch, space) with both channels first, one Gemm (per group,
    one batched MatMul)."""
    nd, ci = win.nd, win.cin // win.groups
    xc = swap_first(x, nd)  # [C, N, *S]
    if any(win.p):
        xc = op.Pad(xc, [0, 0, *win.p[:nd], 0, 0, *win.p[nd:]])
    out = win.out
    if any(v != 1 for v in win.s) or any(out[a] != win.size[a] + win.p[a] + win.p[nd + a] for a in range(nd)):
        stop = [(out[a] - 1) * win.s[a] + 1 for a in range(nd)]
        xc = op.Slice(xc, [0] * nd, stop, list(range(2, 2 + nd)), win.s)
    g_rows = _channels_first_rows(g, win.cout, nd, win.groups)  # [O, N * prod(out)], or per group
    if win.groups == 1:
        dw = op.Gemm(g_rows, op.Reshape(xc, [win.cin, -1]), transB=1)  # [O, C]
    else:
        x_rows = op.Reshape(xc, [win.groups, ci, -1])  # [g, Ci, N * prod(out)]
        dw = g_rows @ op.Transpose(x_rows, [0, 2, 1])  # [g, Co, Ci]
    return op.Reshape(dw, [win.cout, ci] + [1] * nd)


def _taps(x: Value, g: Value, win: Window, padded_copy: bool) -> Value:
    """Per kernel tap t, dW[:, :, t] = G_t X_t^T over the output positions whose input position
    lies inside x: one strided Slice of the channels-last x and one MatMul with G (batched over
    groups), the taps stacked last. `padded_copy`: read every tap from one zero-padded copy of x
    (the CPU); else a tap at the border slices G to the positions it reaches (CUDA, whose Pad is
    slow)."""
    nd, out, k = win.nd, win.out, win.k
    ci, co = win.cin // win.groups, win.cout // win.groups
    size, p = win.size, win.p
    if win.groups == 1:
        last = op.Transpose(x, [0] + list(range(2, 2 + nd)) + [1])  # [N, *S, C]
        lead, rows, g_shape = [], [-1, win.cin], [win.cout, -1]
    else:  # [N, g, Ci, *S] -> [g, N, *S, Ci]
        split = op.Reshape(x, [0, win.groups, ci, *size])
        last = op.Transpose(split, [1, 0] + list(range(3, 3 + nd)) + [2])
        lead, rows, g_shape = [0], [win.groups, -1, ci], [win.groups, co, -1]
    spatial = [len(lead) + 1 + a for a in range(nd)]
    if any(p) and padded_copy:  # every tap then reaches every output position
        last = op.Pad(last, [*lead, 0, *p[:nd], 0, *lead, 0, *p[nd:], 0])
        size, p = [size[a] + p[a] + p[nd + a] for a in range(nd)], [0] * (2 * nd)
    gc = swap_first(g, nd)  # [O, N, *out]
    g_rows = op.Reshape(gc, g_shape)  # [O, N * prod(out)], or per group
    per_tap = []
    for t in itertools.product(*(range(kk) for kk in k)):
        # output o reads input o s + t d - p; keep the o where that lies in [0, size)
        first = [t[a] * win.d[a] - p[a] for a in range(nd)]
        lo = [max(0, -(first[a] // win.s[a])) for a in range(nd)]  # ceil(-first / s), at least 0
        hi = [min(out[a], (size[a] - 1 - first[a]) // win.s[a] + 1) for a in range(nd)]
        if any(lo[a] >= hi[a] for a in range(nd)):  # this tap only ever reads padding
            zeros = np.zeros((win.cout, win.cin) if win.groups == 1 else (win.groups, co, ci), np.float32)
            dw_t = x.graph.const(zeros)
        else:
            start = [first[a] + lo[a] * win.s[a] for a in range(nd)]
            stop = [first[a] + (hi[a] - 1) * win.s[a] + 1 for a in range(nd)]
            tap = op.Slice(last, start, stop, spatial, win.s)
            g_t = g_rows
            if lo != [0] * nd or hi != out:
                g_t = op.Reshape(op.Slice(gc, lo, hi, list(range(2, 2 + nd))), g_shape)
            dw_t = g_t @ op.Reshape(tap, rows)  # [O, C] or [g, Co, Ci]
        per_tap.append(op.Unsqueeze(dw_t, [-1]))
    return op.Reshape(op.Concat(per_tap, axis=-1), [win.cout, ci, *k])


def _depth_conv(x: Value, g: Value, win: Window) -> Value:
    """dW as one 3-D Conv whose channels are the batch and whose depth is x's channels:
    Y[o, c, t] = sum_{n, j} G[n, o, j] X[n, c, t d + j s - p] with x as [1, N, C, *S] (a free
    Unsqueeze) and G as the kernel [O, N, 1, *out]; the forward dilation becomes this Conv's
    stride and the forward stride its dilation. onnxruntime threads it over its C prod(k) output
    positions."""
    nd, p = win.nd, win.p
    kernel = op.Unsqueeze(swap_first(g, nd), [2])  # [O, N, 1, *out]
    y = op.Conv(op.Unsqueeze(x, [0]), kernel, strides=[1, *win.d], dilations=[1, *win.s],
                pads=[0, *p[:nd], 0, *p[nd:]])
    return first_k(op.Squeeze(y, [0]), win)  # [O, C, *k]
