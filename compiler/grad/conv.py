"""Gradient rules of Conv and ConvTranspose, and their three lowering steps in plain form: dX as a
transposed convolution, dW as a convolution with the batch as channels, the bias's gradient as a
sum per channel (dlspec.compiler.tune.conv has the faster forms); and of Col2Im, whose adjoint is
im2col."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dlspec.compiler.grad.common import INT64_MAX, sizes
from dlspec.compiler.grad.table import Grads, Node, rule
from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op
from dlspec.compiler.graph.composite import channel_sum
from dlspec.compiler.target import lowering


@dataclass(frozen=True)
class Window:
    """A convolution's geometry over nd spatial axes: kernel k, strides s, dilations d, pads p
    (nd begins, then nd ends), groups, channels in and out, and x's spatial size."""

    k: list[int]
    s: list[int]
    d: list[int]
    p: list[int]
    groups: int
    cin: int
    cout: int
    size: list[int]

    @property
    def nd(self) -> int:
        return len(self.k)

    @property
    def out(self) -> list[int]:
        """The output's spatial size."""
        return out_size(self.size, self.k, self.s, self.d, self.p)


def out_size(size: list[int], k: list[int], s: list[int], d: list[int], p: list[int]) -> list[int]:
    nd = len(k)
    return [(size[a] + p[a] + p[nd + a] - d[a] * (k[a] - 1) - 1) // s[a] + 1 for a in range(nd)]


def explicit_pads(n: Node, k: list[int], s: list[int], d: list[int]) -> list[int]:
    """The pads of a Conv or pool, also where auto_pad chose them (from the static input size)."""
    nd = len(k)
    auto = n.s("auto_pad")
    if auto == "NOTSET":
        return n.ints("pads") or [0] * (2 * nd)
    if auto == "VALID":
        return [0] * (2 * nd)
    size = sizes(n.inputs[0], n.op_type, list(range(2, 2 + nd)))[2:]
    # SAME: output ceil(size / s); the odd pixel of padding goes at the end (UPPER) or start (LOWER)
    total = [max((-(-size[i] // s[i]) - 1) * s[i] + (k[i] - 1) * d[i] + 1 - size[i], 0) for i in range(nd)]
    half = [t // 2 for t in total]
    rest = [t - h for t, h in zip(total, half)]
    return half + rest if auto == "SAME_UPPER" else rest + half


def swap_first(t: Value, nd: int) -> Value:
    """[A, B, *S] -> [B, A, *S] with nd axes in S."""
    return op.Transpose(t, [1, 0] + list(range(2, 2 + nd)))


@lowering
def conv_transpose(g: Value, w: Value, s: list[int], p: list[int], d: list[int], groups: int,
                   out_pad: list[int]) -> Value:
    """ConvTranspose(g, w) with pads p."""
    return op.ConvTranspose(g, w, strides=s, pads=p, dilations=d, group=groups,
                            output_padding=out_pad if any(out_pad) else None)


@lowering
def conv_input_grad(g: Value, w: Value, win: Window) -> Value:
    """dX: the transposed convolution of G with the same weights; output_padding restores the
    rows that the forward stride skipped."""
    nd = win.nd
    out_pad = [win.size[i] - ((win.out[i] - 1) * win.s[i] - win.p[i] - win.p[nd + i]
                              + win.d[i] * (win.k[i] - 1) + 1) for i in range(nd)]
    return conv_transpose(g, w, win.s, win.p, win.d, win.groups, out_pad)


@lowering
def conv_weight_grad(x: Value, g: Value, win: Window) -> Value:
    """dW[o, i, t] = sum_{n, j} G[n, o, j] X[n, q Ci + i, j s + t d - p] for o in group q, as one
    Conv with the batch as channels: x as [Ci, groups N, *S], G as the kernel [O, N, *out]; the
    forward dilation becomes this Conv's stride and the forward stride its dilation."""
    nd, ci = win.nd, win.cin // win.groups
    if win.groups == 1:
        xc = swap_first(x, nd)  # [C, N, *S]
    else:  # [N, g, Ci, *S] -> [Ci, g, N, *S] -> [Ci, g N, *S]
        split = op.Reshape(x, [0, win.groups, ci, *win.size])
        xc = op.Reshape(op.Transpose(split, [2, 1, 0] + list(range(3, 3 + nd))), [ci, -1, *win.size])
    y = op.Conv(xc, swap_first(g, nd), strides=win.d, dilations=win.s, pads=win.p, group=win.groups)
    return swap_first(first_k(y, win), nd)  # [Ci, O, *k'] -> [O, Ci, *k]


def first_k(y: Value, win: Window) -> Value:
    """A weight-gradient Conv's output [., ., *k'] cut to the kernel's k positions per axis: it has
    more (k' > k) where the forward stride skipped the end of x."""
    if out_size(win.size, win.out, win.d, win.s, win.p) == win.k:
        return y
    return op.Slice(y, [0] * win.nd, win.k, list(range(2, 2 + win.nd)))


def _window(n: Node) -> Window:
    x, w = n.inputs[:2]
    ws = sizes(w, n.op_type)
    nd = len(ws) - 2
    xs = sizes(x, n.op_type, [1] + list(range(2, 2 + nd)))
    k = list(ws[2:])
    s, d = n.ints("strides") or [1] * nd, n.ints("dilations") or [1] * nd
    return Window(k, s, d, explicit_pads(n, k, s, d), n.i("group"), xs[1], ws[0], list(xs[2:]))


@rule("Conv")
def _conv(n: Node, g: Value) -> Grads:
    x, w = n.inputs[:2]
    win = _window(n)
    sizes(n.outputs[0], "Conv", list(range(2, 2 + win.nd)))
    out: list[Value | None] = [conv_input_grad(g, w, win), conv_weight_grad(x, g, win)]
    return out + ([channel_sum(g, win.cout)] if n.input(2) is not None else [])


@rule("ConvTranspose")
def _conv_transpose(n: Node, g: Value) -> Grads:
    # y[o, j s - pb + t d] += x[i, j] w[i, o, t] is the adjoint of a Conv: dX = Conv(G, W) with the
    # same geometry, dW the Conv weight gradient with the roles of X and G swapped
    x, w, y = n.inputs[0], n.inputs[1], n.outputs[0]
    ws = sizes(w, "ConvTranspose")
    nd = len(ws) - 2
    spatial = list(range(2, 2 + nd))
    xs = sizes(x, "ConvTranspose", [1] + spatial)
    ys = sizes(y, "ConvTranspose", [1] + spatial)
    k, s = list(ws[2:]), n.ints("strides") or [1] * nd
    d, groups = n.ints("dilations") or [1] * nd, n.i("group")
    span = [s[i] * (xs[2 + i] - 1) + d[i] * (k[i] - 1) + 1 for i in range(nd)]  # rows x reaches, unpadded
    auto = n.s("auto_pad")
    if auto in ("SAME_UPPER", "SAME_LOWER") or (auto == "NOTSET" and n.ints("output_shape")
                                                  and not n.ints("pads")):
        extra = n.ints("output_padding") or [0] * nd
        total = [span[i] + extra[i] - ys[2 + i] for i in range(nd)]  # pads derived from the output shape
        begin = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total]
    elif auto == "VALID":
        begin = [0] * nd
    else:
        begin = (n.ints("pads") or [0] * 2 * nd)[:nd]
    end = [span[i] - begin[i] - ys[2 + i] for i in range(nd)]  # < 0 where output_padding added rows
    # rows of y that no x reaches (negative pads) are cut off g, leaving non-negative pads
    cut_lo = [max(-b, 0) for b in begin]
    cut_hi = [ys[2 + i] - max(-end[i], 0) for i in range(nd)]
    gc = g
    if any(cut_lo) or any(c != ys[2 + i] for i, c in enumerate(cut_hi)):
        gc = op.Slice(g, cut_lo, cut_hi, spatial)
    p = [max(b, 0) for b in begin] + [max(e, 0) for e in end]
    dx = op.Conv(gc, w, strides=s, pads=p, dilations=d, group=groups)
    g_size = [hi - lo for lo, hi in zip(cut_lo, cut_hi)]  # g after the cut plays the input's role
    dw = conv_weight_grad(gc, x, Window(k, s, d, p, groups, ys[1], xs[1], g_size))
    out: list[Value | None] = [dx, dw]
    return out + ([channel_sum(g, ys[1])] if n.input(2) is not None else [])


def flip_kernel(w: Value, win: Window) -> Value:
    """The kernels of dX = Conv(G, W') at stride 1: W transposed per group ([C, O/g, *k]) and
    flipped in space."""
    nd, groups = win.nd, win.groups
    if groups == 1:
        wt = swap_first(w, nd)  # [C, O, *k]
    else:  # [O, C/g, *k] -> [g, O/g, C/g, *k] -> [g, C/g, O/g, *k] -> [C, O/g, *k]
        split = op.Reshape(w, [groups, win.cout // groups, win.cin // groups, *win.k])
        wt = op.Reshape(op.Transpose(split, [0, 2, 1] + list(range(3, 3 + nd))),
                        [win.cin, win.cout // groups, *win.k])
    axes = [2 + i for i in range(nd) if win.k[i] > 1]
    if not axes:
        return wt
    return op.Slice(wt, [-1] * len(axes), [-INT64_MAX] * len(axes), axes, [-1] * len(axes))


def positions(win: Window) -> int:
    return math.prod(win.out)


@rule("Col2Im")
def _col2im(n: Node, g: Value) -> Grads:
    # y = each column of x (one block position, C x prod(block) values) added back into the image at
    # its block's pixels: dx = im2col of g, g (padded) read at the pixel of every block position and
    # block offset: pixel = position * stride + offset * dilation, per axis
    x, image, block = n.inputs[0], n.const_ints(1), n.const_ints(2)
    assert image is not None and block is not None, "Col2Im has image_shape and block_shape"
    nd = len(image)
    s, d = n.ints("strides") or [1] * nd, n.ints("dilations") or [1] * nd
    p = n.ints("pads") or [0] * (2 * nd)
    padded = [image[a] + p[a] + p[nd + a] for a in range(nd)]
    counts = out_size(image, block, s, d, p)
    offsets = np.indices(block).reshape(nd, -1, 1)  # [nd, K, 1]
    positions = np.indices(counts).reshape(nd, 1, -1)  # [nd, 1, L]
    pixels = positions * np.reshape(s, (nd, 1, 1)) + offsets * np.reshape(d, (nd, 1, 1))
    where = np.ravel_multi_index(tuple(pixels), padded)  # [K, L], into the padded image flattened
    if any(p):
        g = op.Pad(g, p, axes=list(range(2, 2 + nd)))
    cols = op.Gather(op.Reshape(g, [0, 0, -1]), g.graph.const(where, "int64"), axis=2)  # [N, C, K, L]
    return [op.Reshape(cols, op.Shape(x)).with_shape(x.shape), None, None]
