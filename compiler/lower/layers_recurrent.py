"""Recurrent layers, `lstm` and `gru`, lowered to ONNX's LSTM and GRU ops.

Parameters carry PyTorch's names, shapes and gate order (nn.LSTM's i f g o, nn.GRU's r z n), so
a PyTorch checkpoint loads by name: weight_ih_l{k} [gates * hidden, in], weight_hh_l{k}
[gates * hidden, hidden], bias_ih_l{k} and bias_hh_l{k} [gates * hidden] for layer k, and the
same with `_reverse` for the backward direction. The graph reorders the gates into ONNX's
(LSTM i o f c, GRU z r h) and stacks the directions, a few small copies per step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, ClassVar

from pydantic import Field

from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op
from dlspec.compiler.lower.layers import Layer
from dlspec.compiler.lower.layers import layer as register
from dlspec.compiler.lower.layers_sequence import sequence_and_lengths
from dlspec.spec.limits import MAX_REPEAT
from dlspec.spec.model import Size

if TYPE_CHECKING:
    from dlspec.compiler.lower.context import LayerCtx


class _Recurrent(Layer):
    positional: ClassVar[tuple[str, ...]] = ("hidden",)
    maps: ClassVar[bool] = False
    op_type: ClassVar[str]
    order: ClassVar[list[int]]  # ONNX's gate blocks, as indices of PyTorch's
    attrs: ClassVar[dict[str, int]] = {}
    hidden: Size
    bidirectional: bool = False
    layers: Annotated[int, Field(ge=1, le=MAX_REPEAT)] = 1

    def build_many(self, ctx: LayerCtx, xs: list[Value]) -> list[Value]:
        x, lens = sequence_and_lengths(ctx, xs, self.kind)
        _, t, f = x.dims
        assert isinstance(t, int) and isinstance(f, int)
        h, dirs = self.hidden, 2 if self.bidirectional else 1
        seq_lens = lens.cast("int32") if lens is not None else None  # ONNX takes int32 lengths
        seq = op.Transpose(x, [1, 0, 2])  # [T, N, F]
        y = seq
        for k in range(self.layers):
            fin = f if k == 0 else dirs * h
            w, r, b = self._weights(ctx, k, fin, dirs)
            ctx.flops += 2 * t * dirs * len(self.order) * h * (fin + h)
            y = op.Recurrent(self.op_type, seq, w, r, b, seq_lens, h,
                             "bidirectional" if dirs == 2 else "forward", **self.attrs)
            if k + 1 < self.layers:  # [T, dirs, N, H] -> the next layer's [T, N, dirs * H]
                seq = op.Reshape(op.Transpose(y, [0, 2, 1, 3]), [t, -1, dirs * h])
        out = op.Reshape(op.Transpose(y, [2, 0, 1, 3]), [-1, t, dirs * h])  # [N, T, dirs * H]
        return [out.with_shape((None, t, dirs * h))]

    def _weights(self, ctx: LayerCtx, k: int, fin: int, dirs: int) -> tuple[Value, Value, Value]:
        """W [dirs, G H, in], R [dirs, G H, H] and B [dirs, 2 G H] of layer k in ONNX's layout."""
        gh, h = len(self.order) * self.hidden, self.hidden
        ws, rs, bs = [], [], []
        for suffix in ["", "_reverse"][:dirs]:
            name = f"l{k}{suffix}"
            ws.append(self._onnx_gates(ctx.weight(f"weight_ih_{name}", (gh, fin), fin, gh)))
            rs.append(self._onnx_gates(ctx.weight(f"weight_hh_{name}", (gh, h), h, gh)))
            bias = [self._onnx_gates(ctx.zeros(f"bias_{kind}_{name}", (gh,))) for kind in ("ih", "hh")]
            bs.append(op.Concat(bias, axis=0))
        return _stack(ws), _stack(rs), _stack(bs)

    def _onnx_gates(self, v: Value) -> Value:
        """PyTorch's gate blocks (along axis 0) in ONNX's order."""
        blocks = op.Split(v, [self.hidden] * len(self.order), axis=0)
        return op.Concat([blocks[i] for i in self.order], axis=0)


def _stack(vs: list[Value]) -> Value:
    """[dirs, ...] of one value per direction."""
    rows = [op.Unsqueeze(v, [0]) for v in vs]
    return rows[0] if len(rows) == 1 else op.Concat(rows, axis=0)


@register("lstm")
class Lstm(_Recurrent):
    """`lstm(hidden, bidirectional=false, layers=1)`: as nn.LSTM(in, hidden, layers,
    batch_first=True, bidirectional=...): [N, T, F] -> every step's hidden state, [N, T, hidden *
    directions], the directions concatenated (forward first). `from=[seq, lengths]` runs each
    sample for its length (as pack_padded_sequence): its outputs past the length are zeros."""

    op_type = "LSTM"
    order = [0, 3, 1, 2]  # ONNX i o f c from PyTorch's i f g o


@register("gru")
class Gru(_Recurrent):
    """`gru(hidden, bidirectional=false, layers=1)`: as nn.GRU(in, hidden, layers,
    batch_first=True, bidirectional=...): [N, T, F] -> [N, T, hidden * directions];
    `from=[seq, lengths]` as lstm."""

    op_type = "GRU"
    order = [1, 0, 2]  # ONNX z r h from PyTorch's r z n
    attrs = {"linear_before_reset": 1}  # PyTorch's GRU: r scales (W_hn h + b_hn)
