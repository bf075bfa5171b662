"""Gradient rules of DFT and STFT.

A DFT along an axis is linear: y = T z, z = x cut or zero-padded to the transform's length L,
T = F (F_kn = e^(-2 pi i k n / L)) or F^H / L (inverse=1). Its adjoint under the real inner product
of the (real, imaginary) pairs is T^H, again a DFT: F^H g = L idft(g) and (F^H / L)^H g = dft(g) / L.
A one-sided output keeps the first L/2 + 1 frequencies, so its adjoint first pads g with zeros back
to L; a real input takes the real part of the adjoint.
"""

from __future__ import annotations

import numpy as np

from dlspec.compiler.grad.common import rank, sizes
from dlspec.compiler.grad.table import Grads, Node, rule
from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op
from dlspec.spec.errors import CompileError


def dft(x: Value, axis: int, inverse: int = 0, onesided: int = 0) -> Value:
    """ONNX's DFT of x along `axis`, of x's own length there (graph.ops has no DFT: it is built here)."""
    graph = x.graph
    out = graph.node("DFT", [x, None, graph.const(axis, "int64")], inverse=inverse or None,
                     onesided=onesided or None)
    return Value(graph, out[0], x.dtype, None)


def fit(v: Value, axis: int, have: int, want: int) -> Value:
    """`v`, of length `have` along axis, cut or zero-padded to `want`."""
    if want < have:
        return op.Slice(v, [0], [want], [axis])
    if want > have:
        return op.Pad(v, [0, want - have], axes=[axis])
    return v


def dft_back(g: Value, axis: int, length: int, inverse: int, onesided: int, real: bool) -> Value:
    """The adjoint of a DFT (not a one-sided inverse) of length L = `length` along `axis`, of
    g = d loss / d y: the gradient of the transform's input at length L."""
    if onesided:
        g = fit(g, axis, length // 2 + 1, length)
    dz = dft(g, axis) * (1.0 / length) if inverse else dft(g, axis, inverse=1) * float(length)
    return op.Slice(dz, [0], [1], [-1]) if real else dz


@rule("DFT")
def _dft(n: Node, g: Value) -> Grads:
    x = n.inputs[0]
    r = rank(x, "DFT")
    axis = (n.const_ints(2) or [-2])[0] % r
    dims = sizes(x, "DFT", [axis, -1])
    have, parts = dims[axis], dims[-1]
    inverse, onesided = n.i("inverse"), n.i("onesided")
    given = n.const_ints(1)
    length = given[0] if given else 2 * (have - 1) if inverse and onesided else have
    if inverse and onesided:
        dz = _irfft_back(g, axis, length, r)
        if parts == 1:
            dz = op.Slice(dz, [0], [1], [-1])
    else:
        dz = dft_back(g, axis, length, inverse, onesided, parts == 1)
    kept = length // 2 + 1 if inverse and onesided else length  # the input length the transform reads
    return [fit(dz, axis, kept, have).with_shape(x.shape), None, None]


def _irfft_back(g: Value, axis: int, length: int, r: int) -> Value:
    # y = irfft(z): y_n = (z_0 + 2 Re sum_{0<k<L/2} z_k e^(2 pi i k n / L) + z_{L/2} (-1)^n) / L, the
    # imaginary parts of z_0 and z_{L/2} unread: dz_k = w_k rfft(g)_k / L, w = 1 at 0 and L/2, else 2
    # (rfft(g) is real at 0 and L/2)
    half = length // 2 + 1
    w = np.full(half, 2.0)
    w[0] = 1.0
    if length % 2 == 0:
        w[-1] = 1.0
    weights = g.graph.const((w / length).reshape([half] + [1] * (r - 1 - axis))).cast_like(g)
    return dft(g, axis, onesided=1) * weights


@rule("STFT")
def _stft(n: Node, g: Value) -> Grads:
    # y[b, t] = dft(frame_t * window), frame_t = signal[b, t step : t step + L]: the frames' gradient
    # is the DFT's adjoint times the window, added back where each frame came from; the window's is
    # the adjoint times the frames, summed
    signal, window = n.inputs[0], n.input(2)
    _, length_in, parts = sizes(signal, "STFT", [1, 2])
    step = (n.const_ints(1) or [0])[0]
    if step < 1:
        raise CompileError(f"STFT node {n.proto.name} has frame_step {step}, not a positive one")
    given = n.const_ints(3)
    length = given[0] if given else sizes(window, "STFT")[0] if window is not None else length_in
    frames = 1 + (length_in - length) // step
    where = np.arange(frames)[:, None] * step + np.arange(length)[None, :]  # [T, L]
    dw = dft_back(g, 2, length, 0, n.i("onesided"), parts == 1)  # [B, T, L, parts]
    out: list[Value | None] = [None, None, None, None]
    if window is not None:
        picked = op.Gather(signal, g.graph.const(where, "int64"), axis=1)  # [B, T, L, parts]
        out[2] = op.ReduceSum(dw * picked, [0, 1, 3], keepdims=0).with_shape(window.shape)
        dw = dw * op.Reshape(window, [1, 1, length, 1])
    updates = op.Reshape(dw, [0, frames * length, parts])
    index = op.Expand(g.graph.const(where.reshape(1, -1, 1), "int64"), op.Shape(updates))
    out[0] = op.ScatterElements(op.zeros_like(signal), index, updates, axis=1, reduction="add")
    return out[:len(n.inputs)]
