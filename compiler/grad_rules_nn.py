"""Gradient rules for the network ops: matrix products, convolution, pooling, norms, softmax."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import onnx

from dlspec.compiler.autodiff import RuleCtx, rule
from dlspec.compiler.grad_rules import (
    G,
    _need,
    _scalar,
    attr,
    rank_of,
    static_shape,
    sum_to,
    unbroadcast,
    zeros_like,
)
from dlspec.compiler.grad_rules_norm import channel_sum
from dlspec.compiler.grad_rules_shape import INT64_MAX
from dlspec.spec.errors import CompileError


def _swap_last(ctx: RuleCtx, x: str, rank: int) -> str:
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    return ctx.g.op1("Transpose", [x], "grad", perm=perm)


@rule("MatMul")
def _matmul(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    g, (a, b), y = _need(gy[0]), n.input, n.output[0]
    sa, sb = ctx.shape(a), ctx.shape(b)
    if sa is None or sb is None or ctx.shape(y) is None:
        raise CompileError("the MatMul gradient needs the ranks of its operands and output")
    if len(sa) >= 2 and len(sb) >= 2:
        da = ctx.g.op1("MatMul", [g, _swap_last(ctx, b, len(sb))], "grad")  # dA = G B^T
        db = ctx.g.op1("MatMul", [_swap_last(ctx, a, len(sa)), g], "grad")  # dB = A^T G
        return [unbroadcast(ctx, da, a, y), unbroadcast(ctx, db, b, y)]
    # a vector operand is a matrix of one row (a) or one column (b) whose axis the output drops
    op, ys = ctx.g.op1, list(ctx.shape(y) or ())
    row, col = len(sa) == 1, len(sb) == 1
    nb = len(ys) - (not row) - (not col)  # broadcast batch axes of the output
    a2 = op("Unsqueeze", [a, ctx.g.ints([0])], "grad") if row else a
    b2 = op("Unsqueeze", [b, ctx.g.ints([-1])], "grad") if col else b
    sa2, sb2 = [1] * row + list(sa), list(sb) + [1] * col
    g2 = op("Unsqueeze", [g, ctx.g.ints([nb] * row + [nb + 1] * col)], "grad")  # [batch, M or 1, N or 1]
    da = op("MatMul", [g2, _swap_last(ctx, b2, len(sb2))], "grad")
    db = op("MatMul", [_swap_last(ctx, a2, len(sa2)), g2], "grad")
    da = sum_to(ctx, da, ys[:nb] + sa2[-2:], sa2)
    db = sum_to(ctx, db, ys[:nb] + sb2[-2:], sb2)
    return [op("Squeeze", [da, ctx.g.ints([0])], "grad") if row else da,
            op("Squeeze", [db, ctx.g.ints([-1])], "grad") if col else db]


@rule("Gemm")
def _gemm(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # Y = alpha op(A) op(B) + beta C
    g = _need(gy[0])
    alpha, beta = float(attr(n, "alpha", 1.0)), float(attr(n, "beta", 1.0))  # type: ignore[arg-type]
    ta, tb = int(attr(n, "transA", 0)), int(attr(n, "transB", 0))  # type: ignore[call-overload]
    a, b = n.input[0], n.input[1]
    # d op(A) = alpha G op(B)^T ; d op(B) = alpha op(A)^T G; transposes fold into Gemm flags
    da = (ctx.g.op1("Gemm", [b, g], "grad", alpha=alpha, transA=tb, transB=1) if ta
          else ctx.g.op1("Gemm", [g, b], "grad", alpha=alpha, transB=0 if tb else 1))
    db = (ctx.g.op1("Gemm", [g, a], "grad", alpha=alpha, transA=1, transB=ta) if tb
          else ctx.g.op1("Gemm", [a, g], "grad", alpha=alpha, transA=0 if ta else 1))
    out: list[G] = [da, db]
    if len(n.input) > 2 and n.input[2]:
        gc = g if beta == 1.0 else ctx.g.op1("Mul", [g, _scalar(ctx, beta, g)], "grad")
        out.append(unbroadcast(ctx, gc, n.input[2], n.output[0]))
    return out


def _ints(n: onnx.NodeProto, name: str, default: list[int]) -> list[int]:
    v = attr(n, name, None)
    return list(v) if v else default  # type: ignore[call-overload]


def _conv_geometry(ctx: RuleCtx, n: onnx.NodeProto) -> tuple[list[int], list[int], list[int], list[int], int]:
    ws = static_shape(ctx, n.input[1], n.op_type)
    static_shape(ctx, n.input[0], n.op_type, list(range(1, len(ws))))
    nd = len(ws) - 2
    k = list(ws[2:])
    s = _ints(n, "strides", [1] * nd)
    d = _ints(n, "dilations", [1] * nd)
    p = _pads(ctx, n, k, s, d)
    return k, s, d, p, int(attr(n, "group", 1))  # type: ignore[call-overload]


def _pads(ctx: RuleCtx, n: onnx.NodeProto, k: list[int], s: list[int], d: list[int]) -> list[int]:
    """Explicit pads of a Conv or pool, also where auto_pad chose them (from the static input size)."""
    nd = len(k)
    auto = attr(n, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto == "NOTSET":
        return _ints(n, "pads", [0] * (2 * nd))
    if auto == "VALID":
        return [0] * (2 * nd)
    size = static_shape(ctx, n.input[0], n.op_type, list(range(2, 2 + nd)))[2:]
    # SAME: output ceil(size / s); the odd pixel of padding goes at the end (UPPER) or start (LOWER)
    total = [max((-(-size[i] // s[i]) - 1) * s[i] + (k[i] - 1) * d[i] + 1 - size[i], 0) for i in range(nd)]
    half = [t // 2 for t in total]
    rest = [t - h for t, h in zip(total, half)]
    return half + rest if auto == "SAME_UPPER" else rest + half


@rule("Conv")
def _conv(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    g = _need(gy[0])
    x, w = n.input[0], n.input[1]
    k, s, d, p, groups = _conv_geometry(ctx, n)
    nd = len(k)
    xs = static_shape(ctx, x, "Conv", [1] + list(range(2, 2 + nd)))
    ys = static_shape(ctx, n.output[0], "Conv", list(range(2, 2 + nd)))
    # dX: the transposed convolution of G with the same weights; output_padding restores rows the
    # forward stride skipped.
    out_pad = [xs[2 + i] - ((ys[2 + i] - 1) * s[i] - p[i] - p[nd + i] + d[i] * (k[i] - 1) + 1)
               for i in range(nd)]
    cout = static_shape(ctx, w, "Conv")[0]
    full = [d[i] * (k[i] - 1) for i in range(nd)]
    flipped_pads = [full[i % nd] - p[i] for i in range(2 * nd)]
    if all(v == 1 for v in s) and min(flipped_pads) >= 0 and flipped_pads[:nd] == flipped_pads[nd:]:
        dx = _flipped_conv(ctx, g, w, k, d, flipped_pads, groups, xs[1], cout)
    else:
        dx = _transposed_conv(ctx, g, w, s, p, d, groups, out_pad)
    dw = _conv_weight_grad(ctx, x, g, xs[1], list(xs[2:]), k, s, d, p, groups, cout)
    out: list[G] = [dx, dw]
    if len(n.input) > 2 and n.input[2]:
        out.append(channel_sum(ctx.g, g, cout, "grad"))
    return out


def _flipped_conv(ctx: RuleCtx, g: str, w: str, k: list[int], d: list[int], pads: list[int], groups: int,
                  cin: int, cout: int) -> str:
    """dX of a stride-1 convolution as a plain Conv of G with the weights transposed (per group)
    and flipped in space, padded by d (k - 1) - p. onnxruntime runs this 1.1x to 1.3x faster than
    ConvTranspose at 3x3 and 2x to 5x faster at 1x1 (128x64x32x32: 11.5 ms vs 19.9 ms)."""
    op, ints, nd = ctx.g.op1, ctx.g.ints, len(k)
    if groups == 1:
        wt = _swap_first(ctx, w, nd)  # [C, O, *k]
    else:  # [O, C/g, *k] -> [g, O/g, C/g, *k] -> [g, C/g, O/g, *k] -> [C, O/g, *k]
        split = op("Reshape", [w, ints([groups, cout // groups, cin // groups, *k])], "grad")
        swapped = op("Transpose", [split], "grad", perm=[0, 2, 1] + list(range(3, 3 + nd)))
        wt = op("Reshape", [swapped, ints([cin, cout // groups, *k])], "grad")
    axes = [2 + i for i in range(nd) if k[i] > 1]
    if axes:
        wt = op("Slice", [wt, ints([-1] * len(axes)), ints([-INT64_MAX] * len(axes)), ints(axes),
                          ints([-1] * len(axes))], "grad")
    return op("Conv", [g, wt], "grad", pads=pads, dilations=d, group=groups)


def _transposed_conv(ctx: RuleCtx, g: str, w: str, s: list[int], p: list[int], d: list[int], groups: int,
                     out_pad: list[int]) -> str:
    """ConvTranspose(g, w) with pads `p`. onnxruntime's CUDA provider runs symmetric pads only (it
    sends others to the CPU), so uneven pads become the smaller of the two and a Slice."""
    nd = len(s)
    even = [min(p[i], p[nd + i]) for i in range(nd)]
    y = ctx.g.op1("ConvTranspose", [g, w], "grad", strides=s, pads=even + even, dilations=d, group=groups,
                  output_padding=out_pad if any(out_pad) else None)
    if even + even == p:
        return y
    starts = [p[i] - even[i] for i in range(nd)]
    ends = [even[i] - p[nd + i] if p[nd + i] > even[i] else INT64_MAX for i in range(nd)]
    return ctx.g.op1("Slice", [y, ctx.g.ints(starts), ctx.g.ints(ends), ctx.g.ints(list(range(2, 2 + nd)))],
                     "grad")


# On CUDA, weight gradients of convs whose output map has at most this many positions are one
# Conv with G as the kernel (_weight_grad_conv); larger maps use the taps. One conv's forward
# plus weight gradient on an H200, node by node, conv / taps: 0.25x to 0.41x on the digits
# example's 4x4 and 8x8 maps, 0.44x to 0.77x on resnet18's 4x4 and 8x8 (batch 128), 1.39x to
# 3.17x at 16x16 and 32x32, where cuDNN runs the 256- and 1024-position kernels slowly. GPU time
# of whole train steps: digits 3.21 -> 2.91 ms, resnet18 14.88 -> 14.42 ms.
CONV_WEIGHT_GRAD_MAX_MAP = 64


def _out_size(size: list[int], k: list[int], s: list[int], d: list[int], p: list[int]) -> list[int]:
    nd = len(k)
    return [(size[a] + p[a] + p[nd + a] - d[a] * (k[a] - 1) - 1) // s[a] + 1 for a in range(nd)]


def _conv_weight_grad(ctx: RuleCtx, x: str, g: str, cin: int, size: list[int], k: list[int], s: list[int],
                      d: list[int], p: list[int], groups: int, cout: int) -> str:
    """dW[o, i, t] = sum_{n, j} G[n, o, j] X[n, q Ci + i, j s + t d - p_begin] for o in group q
    (Ci = cin / groups). Each form takes every group at once, as a batch of matrix products or a
    grouped Conv: a depthwise layer of 128 channels is a handful of nodes, not 128 copies."""
    if all(kk == 1 for kk in k):
        grad = _weight_grad_pointwise
    elif ctx.device == "cuda" and math.prod(_out_size(size, k, s, d, p)) <= CONV_WEIGHT_GRAD_MAX_MAP:
        grad = _weight_grad_conv
    elif ctx.device != "cuda" and groups > 1 and cout // groups <= math.prod(k):
        # onnxruntime's CPU Conv threads this one over its groups while a group has no more
        # filters than output positions (here the kernel's); past that it runs one small threaded
        # product per group and image, 2x to 5x slower than the taps. A digits model with three
        # depthwise 3x3 layers: 0.87x the taps' step time at 2 threads, equal at 1.
        grad = _weight_grad_conv
    elif ctx.many_threads and groups == 1 and len(k) == 2:
        grad = _weight_grad_depth_conv
    else:
        grad = _weight_grad_taps
    return grad(ctx, x, g, cin, cout, size, k, s, d, p, groups)


def _swap_first(ctx: RuleCtx, t: str, nd: int) -> str:
    """[A, B, *S] (nd axes after the first two) -> [B, A, *S]: [N, C, *S] to channels first and
    back, which copies at memcpy speed in onnxruntime."""
    return ctx.g.op1("Transpose", [t], "grad", perm=[1, 0] + list(range(2, 2 + nd)))


def _first_k(ctx: RuleCtx, y: str, size: list[int], k: list[int], s: list[int], d: list[int],
             p: list[int]) -> str:
    """A weight-gradient Conv's output [.., .., *k'] cut to the kernel's k positions per axis: it
    has more (k' > k) where the forward stride skipped the end of x."""
    nd = len(k)
    if _out_size(size, _out_size(size, k, s, d, p), d, s, p) == k:
        return y
    return ctx.g.op1("Slice", [y, ctx.g.ints([0] * nd), ctx.g.ints(k), ctx.g.ints(list(range(2, 2 + nd)))],
                     "grad")


def _channels_first_rows(ctx: RuleCtx, t: str, channels: int, nd: int, groups: int = 1) -> str:
    """[N, C, *S] (nd spatial axes) -> [C, N * prod(S)], or [groups, C / groups, N * prod(S)]."""
    moved = _swap_first(ctx, t, nd)
    shape = [channels, -1] if groups == 1 else [groups, channels // groups, -1]
    return ctx.g.op1("Reshape", [moved, ctx.g.ints(shape)], "grad")


def _weight_grad_pointwise(ctx: RuleCtx, x: str, g: str, cin: int, cout: int, size: list[int], k: list[int],
                           s: list[int], d: list[int], p: list[int], groups: int) -> str:
    """A 1x1 kernel: dW = G X^T over (batch, space) with both in [C, N, *S] order, one Gemm with
    transB (per group, one batched MatMul). Moving the channel axis first copies at memcpy speed in
    onnxruntime; channels-last takes 2x to 6x longer (64x16x8x8: 166 us vs 44 us), which made this
    1.3x faster than im2col."""
    nd = len(k)
    op, ints = ctx.g.op1, ctx.g.ints
    xc = _swap_first(ctx, x, nd)  # [C, N, *S]
    if any(p):
        xc = op("Pad", [xc, ints([0, 0, *p[:nd], 0, 0, *p[nd:]])], "grad")
    out = _out_size(size, k, s, d, p)
    if any(v != 1 for v in s) or any(out[a] != size[a] + p[a] + p[nd + a] for a in range(nd)):
        stop = [(out[a] - 1) * s[a] + 1 for a in range(nd)]
        xc = op("Slice", [xc, ints([0] * nd), ints(stop), ints(list(range(2, 2 + nd))), ints(s)], "grad")
    g_rows = _channels_first_rows(ctx, g, cout, nd, groups)  # [O, N * prod(out)], or per group
    if groups == 1:
        dw = op("Gemm", [g_rows, op("Reshape", [xc, ints([cin, -1])], "grad")], "grad", transB=1)  # [O, C]
    else:
        x_rows = op("Reshape", [xc, ints([groups, cin // groups, -1])], "grad")  # [g, Ci, N * prod(out)]
        dw = op("MatMul", [g_rows, op("Transpose", [x_rows], "grad", perm=[0, 2, 1])], "grad")  # [g, Co, Ci]
    return op("Reshape", [dw, ints([cout, cin // groups] + [1] * nd)], "grad")


def _weight_grad_taps(ctx: RuleCtx, x: str, g: str, cin: int, cout: int, size: list[int], k: list[int],
                      s: list[int], d: list[int], p: list[int], groups: int) -> str:
    """Per kernel tap t, dW[:, :, t] = G_t X_t^T over the output positions whose input position
    lies inside x: one strided Slice of the channels-last input and one MatMul with the output
    gradient (batched over groups), the results stacked last. Against one MatMul over all taps
    concatenated (im2col), this skips copying the taps again: 1.0x to 1.5x faster in onnxruntime
    (64x64x8x8 3x3: 9.4 ms vs 14.6 ms); on the CPU, against a Conv that treats the batch as
    channels (_weight_grad_conv), 2x to 5x where the filters outnumber the kernel positions.
    With padding, the CPU reads every tap from one zero-padded copy of x. On CUDA a tap at the
    border slices G to the positions it reaches instead: onnxruntime's CUDA Pad took 0.5 ms per
    resnet18 layer-1 input on an H200, 30% of the step, where on the CPU the extra G copies made
    the weight gradient up to 1.3x slower."""
    nd = len(k)
    out = _out_size(size, k, s, d, p)
    op, ints = ctx.g.op1, ctx.g.ints
    ci, co = cin // groups, cout // groups
    if groups == 1:
        last = op("Transpose", [x], "grad", perm=[0] + list(range(2, 2 + nd)) + [1])  # [N, *S, C]
        lead, rows, g_shape = [], ints([-1, cin]), [cout, -1]
    else:  # [N, g, Ci, *S] -> [g, N, *S, Ci]
        split = op("Reshape", [x, ints([0, groups, ci, *size])], "grad")
        last = op("Transpose", [split], "grad", perm=[1, 0] + list(range(3, 3 + nd)) + [2])
        lead, rows, g_shape = [0], ints([groups, -1, ci]), [groups, co, -1]
    spatial = [len(lead) + 1 + a for a in range(nd)]
    if any(p) and ctx.device != "cuda":  # every tap then reaches every output position
        last = op("Pad", [last, ints([*lead, 0, *p[:nd], 0, *lead, 0, *p[nd:], 0])], "grad")
        size, p = [size[a] + p[a] + p[nd + a] for a in range(nd)], [0] * (2 * nd)
    gc = _swap_first(ctx, g, nd)  # [O, N, *out]
    g_rows = op("Reshape", [gc, ints(g_shape)], "grad")  # [O, N * prod(out)], or per group
    tail = ints([-1])
    per_tap = []
    for t in itertools.product(*(range(kk) for kk in k)):
        # output o reads input o s + t d - p; keep the o where that lies in [0, size)
        first = [t[a] * d[a] - p[a] for a in range(nd)]
        lo = [max(0, -(first[a] // s[a])) for a in range(nd)]  # ceil(-first / s), at least 0
        hi = [min(out[a], (size[a] - 1 - first[a]) // s[a] + 1) for a in range(nd)]
        if any(lo[a] >= hi[a] for a in range(nd)):  # this tap only ever reads padding
            zeros = np.zeros((cout, cin) if groups == 1 else (groups, co, ci), np.float32)
            dw_t = ctx.g.const(zeros, hint="grad")
        else:
            start = [first[a] + lo[a] * s[a] for a in range(nd)]
            stop = [first[a] + (hi[a] - 1) * s[a] + 1 for a in range(nd)]
            tap = op("Slice", [last, ints(start), ints(stop), ints(spatial), ints(s)], "grad")
            g_t = g_rows
            if lo != [0] * nd or hi != out:
                g_t = op("Reshape", [op("Slice", [gc, ints(lo), ints(hi), ints(list(range(2, 2 + nd)))],
                                        "grad"), ints(g_shape)], "grad")
            dw_t = op("MatMul", [g_t, op("Reshape", [tap, rows], "grad")], "grad")  # [O, C] or [g, Co, Ci]
        per_tap.append(op("Unsqueeze", [dw_t, tail], "grad"))
    return op("Reshape", [op("Concat", per_tap, "grad", axis=-1), ints([cout, ci, *k])], "grad")


def _weight_grad_conv(ctx: RuleCtx, x: str, g: str, cin: int, cout: int, size: list[int], k: list[int],
                      s: list[int], d: list[int], p: list[int], groups: int) -> str:
    """dW as one Conv with the batch as its channels: the input is x as [C, N, *S], the kernel G as
    [O, N, *out]; the forward dilation becomes this Conv's stride and the forward stride its
    dilation: Y[c, o, t] = sum_{n, j} G[n, o, j] X[n, c, t d + j s - p]. With groups, x is
    [Ci, g N, *S] and the Conv has the same groups. The output has at least k positions per axis
    (more where the forward stride skipped the end of x): keep the first k."""
    nd = len(k)
    op, ints = ctx.g.op1, ctx.g.ints
    if groups == 1:
        xc = _swap_first(ctx, x, nd)  # [C, N, *S]
    else:  # [N, g, Ci, *S] -> [Ci, g, N, *S] -> [Ci, g N, *S]
        split = op("Reshape", [x, ints([0, groups, cin // groups, *size])], "grad")
        moved = op("Transpose", [split], "grad", perm=[2, 1, 0] + list(range(3, 3 + nd)))
        xc = op("Reshape", [moved, ints([cin // groups, -1, *size])], "grad")
    y = op("Conv", [xc, _swap_first(ctx, g, nd)], "grad", strides=d, dilations=s, pads=p,
           group=groups)  # [Ci, O, *k']; the kernel G as [O, N, *out]
    return _swap_first(ctx, _first_k(ctx, y, size, k, s, d, p), nd)  # [O, Ci, *k]


def _weight_grad_depth_conv(ctx: RuleCtx, x: str, g: str, cin: int, cout: int, size: list[int],
                            k: list[int], s: list[int], d: list[int], p: list[int], groups: int) -> str:
    """dW as one 3-D Conv whose channels are the batch and whose depth is x's channels, for a CPU
    step on many threads (compiler/threads.py): Y[o, c, t] = sum_{n, j} G[n, o, j] X[n, c, t d +
    j s - p] with x as [1, N, C, *S] (a free Unsqueeze) and G as the kernel [O, N, 1, *out]; the
    forward dilation becomes this Conv's stride and the forward stride its dilation, as in
    _weight_grad_conv. onnxruntime threads this Conv over its C prod(k) output positions, where
    the taps' Slices and the channels-last Transpose and Pad of x run on one thread. It expands x
    prod(k) times on the way, and takes up to 2x as long as the taps on one thread (the digits
    example's 64x64x8x8 3x3 layer: 10.8 ms against about 5)."""
    nd = len(k)
    op, ints = ctx.g.op1, ctx.g.ints
    x5 = op("Unsqueeze", [x, ints([0])], "grad")  # [1, N, C, *S]
    kernel = op("Unsqueeze", [_swap_first(ctx, g, nd), ints([2])], "grad")  # [O, N, 1, *out]
    y = op("Conv", [x5, kernel], "grad", strides=[1, *d], dilations=[1, *s], pads=[0, *p[:nd], 0, *p[nd:]])
    return _first_k(ctx, op("Squeeze", [y, ints([0])], "grad"), size, k, s, d, p)  # [O, C, *k]


@rule("ConvTranspose")
def _conv_transpose(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # y[o, j s - pb + t d] += x[i, j] w[i, o, t] is the adjoint of a Conv: dX = Conv(G, W) with the
    # same geometry, dW the Conv weight gradient with the roles of X and G swapped.
    g, (x, w) = _need(gy[0]), n.input[:2]
    ws = static_shape(ctx, w, "ConvTranspose")
    nd = len(ws) - 2
    spatial = list(range(2, 2 + nd))
    xs = static_shape(ctx, x, "ConvTranspose", [1] + spatial)
    ys = static_shape(ctx, n.output[0], "ConvTranspose", [1] + spatial)
    k, s = list(ws[2:]), _ints(n, "strides", [1] * nd)
    d, groups = _ints(n, "dilations", [1] * nd), int(attr(n, "group", 1))  # type: ignore[call-overload]
    span = [s[i] * (xs[2 + i] - 1) + d[i] * (k[i] - 1) + 1 for i in range(nd)]  # rows x reaches, unpadded
    auto = attr(n, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("SAME_UPPER", "SAME_LOWER") or (auto == "NOTSET" and attr(n, "output_shape") and
                                                  not attr(n, "pads")):
        extra = _ints(n, "output_padding", [0] * nd)
        total = [span[i] + extra[i] - ys[2 + i] for i in range(nd)]  # pads derived from the output shape
        begin = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total]
    elif auto == "VALID":
        begin = [0] * nd
    else:
        begin = _ints(n, "pads", [0] * 2 * nd)[:nd]
    end = [span[i] - begin[i] - ys[2 + i] for i in range(nd)]  # < 0 where output_padding added rows
    # Rows of y that no x reaches (negative pads) are cut off g, leaving non-negative pads.
    cut_lo = [max(-b, 0) for b in begin]
    cut_hi = [ys[2 + i] - max(-end[i], 0) for i in range(nd)]
    if any(cut_lo) or any(c != ys[2 + i] for i, c in enumerate(cut_hi)):
        g = ctx.g.op1("Slice", [g, ctx.g.ints(cut_lo), ctx.g.ints(cut_hi), ctx.g.ints(spatial)], "grad")
    p = [max(b, 0) for b in begin] + [max(e, 0) for e in end]
    dx = ctx.g.op1("Conv", [g, w], "grad", strides=s, pads=p, dilations=d, group=groups)
    g_size = [hi - lo for lo, hi in zip(cut_lo, cut_hi)]  # g after the cut plays the input's role
    dw = _conv_weight_grad(ctx, g, x, ys[1], g_size, k, s, d, p, groups, xs[1])
    out: list[G] = [dx, dw]
    if len(n.input) > 2 and n.input[2]:
        out.append(channel_sum(ctx.g, _need(gy[0]), ys[1], "grad"))
    return out


@rule("GlobalAveragePool")
def _gap(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    x = n.input[0]
    count = 1
    rank = len(ctx.shape(x) or ())
    for dim in static_shape(ctx, x, "GlobalAveragePool", list(range(2, rank)))[2:]:  # batch may be N
        count *= dim
    g = ctx.g.op1("Expand", [_need(gy[0]), ctx.g.op1("Shape", [x], "grad")], "grad")
    return [ctx.g.op1("Div", [g, _scalar(ctx, float(count), g)], "grad")]


@rule("MaxPool")
def _maxpool(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # recompute with Indices (flat positions in the input), then scatter-add the gradient there
    x, g = n.input[0], _need(gy[0])
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
    attrs["storage_order"] = 0  # row-major positions, whatever order the forward's Indices use
    _, idx = ctx.g.op("MaxPool", [x], "grad", n_out=2, **attrs)
    flat_x = ctx.g.op1("Reshape", [x, ctx.g.ints([-1])], "grad")
    zeros = ctx.g.op1("Mul", [flat_x, _scalar(ctx, 0.0, flat_x)], "grad")
    flat_i = ctx.g.op1("Reshape", [idx, ctx.g.ints([-1])], "grad")
    flat_g = ctx.g.op1("Reshape", [g, ctx.g.ints([-1])], "grad")
    dx = ctx.g.op1("ScatterElements", [zeros, flat_i, flat_g], "grad", axis=0, reduction="add")
    return [ctx.g.op1("Reshape", [dx, ctx.g.op1("Shape", [x], "grad")], "grad")]


@rule("AveragePool")
def _avgpool(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # each output spreads g / count over its window: a depthwise transposed conv with a kernel of ones,
    # count the window's size (count_include_pad=1) or its pixels inside x (count_include_pad=0)
    x, g = n.input[0], _need(gy[0])
    k = _ints(n, "kernel_shape", [])
    nd = len(k)
    xs = static_shape(ctx, x, "AveragePool", list(range(1, 2 + nd)))
    ys = static_shape(ctx, n.output[0], "AveragePool", list(range(2, 2 + nd)))
    s, d = _ints(n, "strides", [1] * nd), _ints(n, "dilations", [1] * nd)
    if any(v != 1 for v in d) and _text(n, "auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
        raise CompileError("the AveragePool gradient needs explicit pads with dilations (onnxruntime and "
                           "the ONNX reference pad dilated SAME pooling differently)")
    p = _pads(ctx, n, k, s, d)
    reach = [(ys[2 + i] - 1) * s[i] + (k[i] - 1) * d[i] + 1 for i in range(nd)]  # rows the windows span
    if any(reach[i] > xs[2 + i] + p[i] + p[nd + i] for i in range(nd)):
        raise CompileError("the AveragePool gradient does not support ceil_mode=1 where it adds a window")
    count = np.ones(ys[2:], np.float32)
    for i in range(nd):  # count[o] = taps of window o that land inside x (or inside the padding too)
        taps = np.arange(ys[2 + i])[:, None] * s[i] - p[i] + np.arange(k[i])[None, :] * d[i]
        inside = (taps >= 0) & (taps < xs[2 + i]) if not attr(n, "count_include_pad", 0) else taps == taps
        count = count * inside.sum(axis=1).reshape([-1 if j == i else 1 for j in range(nd)])
    size = int(np.prod(k))
    if np.all(count == size):
        kernel = np.full([xs[1], 1] + k, 1.0 / size, np.float32)
    else:
        g = ctx.g.op1("Div", [g, ctx.g.op1("CastLike", [ctx.g.const(count, hint="grad"), g], "grad")], "grad")
        kernel = np.ones([xs[1], 1] + k, np.float32)
    weights = ctx.g.op1("CastLike", [ctx.g.const(kernel, hint="grad"), g], "grad")
    out_pad = [xs[2 + i] - (reach[i] - p[i] - p[nd + i]) for i in range(nd)]
    return [_transposed_conv(ctx, g, weights, s, p, d, xs[1], out_pad)]


# (coordinate_transformation_mode, nearest_mode) pairs under which whole-number upsampling copies
# each input pixel into one block of f outputs
_BLOCKS = {(c, m) for c in ("half_pixel", "pytorch_half_pixel", "half_pixel_symmetric")
           for m in ("round_prefer_floor", "round_prefer_ceil")} | {("asymmetric", "floor")}


def _text(n: onnx.NodeProto, name: str, default: str) -> str:
    v = attr(n, name, default)
    return v.decode() if isinstance(v, bytes) else str(v)


@rule("Resize")
def _resize(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # nearest: every output copies one input pixel; its gradient is added back there
    if _text(n, "mode", "nearest") != "nearest":
        raise CompileError(f"only nearest Resize has a gradient rule (this one is {_text(n, 'mode', '')})")
    coords = _text(n, "coordinate_transformation_mode", "half_pixel")
    if coords == "tf_crop_and_resize":
        raise CompileError("the Resize gradient does not support coordinate_transformation_mode="
                           "tf_crop_and_resize")
    x, g = n.input[0], _need(gy[0])
    factors = _block_factors(ctx, n, coords)
    if factors is not None and _poolable(factors):
        # sum each block: an AveragePool over the blocks times their size, exact as the size is a
        # power of two; 1.5x to 3x faster in onnxruntime than the block ReduceSum below
        pooled = ctx.g.op1("AveragePool", [g], "grad", kernel_shape=factors[2:], strides=factors[2:])
        summed = ctx.g.op1("Mul", [pooled, _scalar(ctx, float(math.prod(factors)), g)], "grad")
        return [summed] + [None] * (len(n.input) - 1)
    if factors is not None:  # sum each f x f block
        rank = len(ctx.shape(x) or ())
        sizes = static_shape(ctx, x, "Resize", list(range(1, rank)))  # a symbolic batch stays -1
        split = [v for size, f in zip(sizes, factors) for v in (size, f)]
        blocks = ctx.g.op1("Reshape", [g, ctx.g.ints(split)], "grad")
        summed = ctx.g.op1("ReduceSum", [blocks, ctx.g.ints(list(range(1, len(split), 2)))], "grad",
                           keepdims=0)
        return [summed] + [None] * (len(n.input) - 1)
    # any other nearest resize: resize the flat positions of x to learn which one each output copied
    op, shape = ctx.g.op1, ctx.g.op1("Shape", [x], "grad")
    positions = op("Range", [ctx.g.const(0, "int64"), ctx.g.numel(x, "grad"), ctx.g.const(1, "int64")],
                   "grad")
    iota = op("Reshape", [op("Cast", [positions], "grad", to=onnx.TensorProto.INT32), shape], "grad")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
    source = op("Resize", [iota] + list(n.input[1:]), "grad", **attrs)
    flat = ctx.g.ints([-1])
    index = op("Reshape", [op("Cast", [source], "grad", to=onnx.TensorProto.INT64), flat], "grad")
    zeros = zeros_like(ctx, op("Reshape", [x, flat], "grad"))
    dx = op("ScatterElements", [zeros, index, op("Reshape", [g, flat], "grad")], "grad", axis=0,
            reduction="add")
    return [op("Reshape", [dx, shape], "grad")] + [None] * (len(n.input) - 1)


def _poolable(factors: list[int]) -> bool:
    """Blocks over the spatial axes only, of a power-of-two size (so averaging then scaling back
    is exact)."""
    area = math.prod(factors)
    return len(factors) > 2 and factors[:2] == [1, 1] and area & (area - 1) == 0


def _block_factors(ctx: RuleCtx, n: onnx.NodeProto, coords: str) -> list[int] | None:
    """Whole-number upsampling factors per axis where each input pixel fills one block, else None.
    Constant scales give the factors (a symbolic batch axis has scale 1); without them every
    resized axis needs static sizes."""
    xs, ys = ctx.shape(n.input[0]), ctx.shape(n.output[0])
    if xs is None or ys is None or len(xs) != len(ys):
        return None
    if (coords, _text(n, "nearest_mode", "round_prefer_floor")) not in _BLOCKS or \
            _text(n, "keep_aspect_ratio_policy", "stretch") != "stretch":
        return None
    scales = n.input[2] if len(n.input) > 2 and n.input[2] else None
    given = [float(v) for v in ctx.consts[scales].reshape(-1)] if scales in ctx.consts else []
    if scales is not None and not given:
        return None  # scales computed at run time
    if given:
        axes = [int(a) % len(xs) for a in _ints(n, "axes", list(range(len(xs))))]
        per_axis = [1.0] * len(xs)
        for j, a in enumerate(axes):
            per_axis[a] = given[j]
        if any(f < 1 or f != int(f) for f in per_axis):
            return None
        factors = [int(f) for f in per_axis]
    else:
        sizes = [(a, b) for a, b in zip(xs, ys) if isinstance(a, int) and isinstance(b, int) and a > 0]
        if len(sizes) != len(xs):
            return None
        factors = [b // a for a, b in sizes]
    for xa, ya, f in zip(xs, ys, factors):
        if (xa * f != ya) if isinstance(xa, int) and isinstance(ya, int) else f != 1:
            return None
    return factors


@rule("Softmax")
def _softmax(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # d softmax = y * (g - sum(g * y))
    g, y = _need(gy[0]), n.output[0]
    axis = int(attr(n, "axis", -1))  # type: ignore[call-overload]
    dot = ctx.g.op1("ReduceSum", [ctx.g.op1("Mul", [g, y], "grad"), ctx.g.ints([axis])], "grad", keepdims=1)
    return [ctx.g.op1("Mul", [y, ctx.g.op1("Sub", [g, dot], "grad")], "grad")]


@rule("LogSoftmax")
def _log_softmax(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # d log_softmax = g - softmax * sum(g)
    g, y = _need(gy[0]), n.output[0]
    axis = int(attr(n, "axis", -1))  # type: ignore[call-overload]
    total = ctx.g.op1("ReduceSum", [g, ctx.g.ints([axis])], "grad", keepdims=1)
    return [ctx.g.op1("Sub", [g, ctx.g.op1("Mul", [ctx.g.op1("Exp", [y], "grad"), total], "grad")], "grad")]


@rule("BatchNormalization")
def _batchnorm(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    # inference form: y = scale (x - mean) / sqrt(var + eps) + b, statistics constant
    if attr(n, "training_mode", 0):
        raise CompileError("BatchNormalization(training_mode=1) has no rule: training graphs write "
                           "batch norm in primitive ops")
    g = _need(gy[0])
    x, scale, _, mean, var = n.input[:5]
    eps = float(attr(n, "epsilon", 1e-5))  # type: ignore[arg-type]
    rank = rank_of(ctx, x, "BatchNormalization")
    axes = ctx.g.ints([0] + list(range(2, rank)))
    per_c = ctx.g.ints([1, -1] + [1] * (rank - 2))
    inv = ctx.g.op1("Reciprocal", [ctx.g.op1("Sqrt", [ctx.g.op1("Add", [var, _scalar(ctx, eps, var)],
                                                                 "grad")], "grad")], "grad")
    dx = ctx.g.op1("Mul", [g, ctx.g.op1("Reshape", [ctx.g.op1("Mul", [scale, inv], "grad"), per_c],
                                         "grad")], "grad")
    xhat = ctx.g.op1("Mul", [ctx.g.op1("Sub", [x, ctx.g.op1("Reshape", [mean, per_c], "grad")], "grad"),
                             ctx.g.op1("Reshape", [inv, per_c], "grad")], "grad")
    dscale = ctx.g.op1("ReduceSum", [ctx.g.op1("Mul", [g, xhat], "grad"), axes], "grad", keepdims=0)
    dbias = ctx.g.op1("ReduceSum", [g, axes], "grad", keepdims=0)
    return [dx, dscale, dbias, None, None]
