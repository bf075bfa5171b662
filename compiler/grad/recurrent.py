"""Gradient rules of the recurrent ops RNN, GRU and LSTM, in every direction and with sequence
lengths: backpropagation through time, unrolled over the static sequence length in standard ONNX
ops (not Loop or Scan, which plain onnxruntime would have to run and which have no rule here).

The ops expose neither their gates nor their states between steps, so the forward is recomputed
step by step from the node's inputs (recurrent_cells holds one step's math). A step past a
sequence's length keeps the state and writes zeros to Y; the reverse direction visits the steps
from the last to the first, so that its padded steps come first and leave the initial state as it
is. The weight gradients are summed over time in one product each:
dW = sum_t dA_t^T x_t, dR = sum_t dA_t^T h_(t-1), dX_t = dA_t W.
"""

from __future__ import annotations

from dataclasses import dataclass

from dlspec.compiler.grad.recurrent_cells import CELLS, Act, Cell, Step, StepGrads, Weights, activations
from dlspec.compiler.grad.table import Grads, Node, rule_multi
from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op
from dlspec.spec.errors import CompileError

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}


@dataclass
class _Setup:
    """What every direction shares, in layout 0 ([seq, batch, ...])."""

    n: Node
    x: Value  # [T, B, I]
    steps: int
    hidden: int
    lens: Value | None  # [1, B, 1]
    h0: Value | None  # [D, B, H]
    c0: Value | None
    g_y: Value | None  # [T, D, B, H]
    g_h: Value | None  # [D, B, H]
    g_c: Value | None


@dataclass
class _Grads:
    """One direction's gradients."""

    x: Value
    w: Value
    r: Value
    b: Value
    h0: Value
    c0: Value | None
    p: Value | None


@rule_multi("RNN", "GRU", "LSTM")
def _recurrent(n: Node, gy: list[Value | None]) -> Grads:
    layout, lstm = n.i("layout"), n.op_type == "LSTM"
    x, h0, c0 = n.inputs[0], n.input(5), n.input(6) if lstm else None

    def time_major(v: Value | None, perm: list[int]) -> Value | None:
        return op.Transpose(v, perm) if v is not None and layout else v

    def time_major_x(v: Value) -> Value:
        return op.Transpose(v, [1, 0, 2]) if layout else v

    g_y, g_h, g_c = (list(gy) + [None, None])[:3]
    lens = n.input(4)
    s = _Setup(n, time_major_x(x), _steps(n, x, layout), _hidden(n),
               op.Reshape(lens, [1, -1, 1]) if lens is not None else None,
               time_major(h0, [1, 0, 2]), time_major(c0, [1, 0, 2]), time_major(g_y, [1, 2, 0, 3]),
               time_major(g_h, [1, 0, 2]), time_major(g_c, [1, 0, 2]) if lstm else None)
    dirs = 2 if n.s("direction") == "bidirectional" else 1
    acts = activations(n, DEFAULT_ACTIVATIONS[n.op_type], dirs)
    per = [_direction(s, d, acts[d]) for d in range(dirs)]

    def stacked(parts: list[Value]) -> Value:
        return parts[0] if len(parts) == 1 else op.Concat(parts, axis=0)

    dx = per[0].x if dirs == 1 else per[0].x + per[1].x
    out: list[Value | None] = [
        time_major_x(dx), stacked([op.Unsqueeze(g.w, [0]) for g in per]),
        stacked([op.Unsqueeze(g.r, [0]) for g in per]),
        stacked([op.Unsqueeze(g.b, [0]) for g in per]) if n.input(3) is not None else None, None,
        time_major(stacked([g.h0 for g in per]), [1, 0, 2]) if h0 is not None else None]
    if lstm:
        out.append(time_major(stacked([g.c0 for g in per if g.c0 is not None]), [1, 0, 2])
                   if c0 is not None else None)
        out.append(stacked([op.Unsqueeze(g.p, [0]) for g in per if g.p is not None])
                   if n.input(7) is not None else None)
    return out[:len(n.inputs)]


def _name(n: Node) -> str:
    return n.proto.name or n.proto.output[0]


def _steps(n: Node, x: Value, layout: int) -> int:
    """The static sequence length that the time loop is unrolled over."""
    axis = 1 if layout else 0
    t = x.shape[axis] if x.shape is not None and len(x.shape) == 3 else None
    if not isinstance(t, int):
        raise CompileError(f"the {n.op_type} gradient unrolls the time loop over the sequence length, "
                           f"which must be static: node {_name(n)} has a sequence length of "
                           f"'{t or 'unknown'}' (input {x.name}, axis {axis})")
    return t


def _hidden(n: Node) -> int:
    if n.has("hidden_size"):
        return n.i("hidden_size")
    r = n.inputs[2].shape
    if r is None or not isinstance(r[-1], int):
        raise CompileError(f"the {n.op_type} gradient needs the hidden size of node {_name(n)}")
    return r[-1]


def _direction(s: _Setup, d: int, acts: list[Act]) -> _Grads:
    n, hid, steps = s.n, s.hidden, s.steps
    size = GATES[n.op_type] * hid
    graph = s.x.graph
    at = graph.const(d, "int64")
    w, r = op.Gather(n.inputs[1], at), op.Gather(n.inputs[2], at)  # [G H, I], [G H, H]
    xw = s.x @ op.Transpose(w, [1, 0])  # [T, B, G H]: x W^T for all steps at once
    rb_h = None
    if n.input(3) is not None:  # Wb + Rb, but for GRU's Rbh with linear_before_reset (inside r (.))
        wb, rb = op.Split(op.Gather(n.inputs[3], at), [size, size])
        if n.op_type == "GRU" and n.i("linear_before_reset"):
            rb_zr, rb_h = op.Split(rb, [2 * hid, hid])
            rb = op.Concat([rb_zr, op.zeros_like(rb_h)], axis=0)
        xw = xw + (wb + rb)
    xs = op.Split(xw, [1] * steps, axis=0) if steps > 1 else [xw]
    peep = op.Split(op.Gather(n.inputs[7], at), [hid] * 3) if n.op_type == "LSTM" and n.input(7) is not None \
        else None
    cell = CELLS[n.op_type](acts, n.f("clip") if n.has("clip") else None,
                            Weights(r, op.Transpose(r, [1, 0]), hid, rb_h, peep), n)

    def initial(v: Value | None) -> Value:
        if v is not None:
            return op.Slice(v, [d], [d + 1], [0])  # [1, B, H]
        return op.zeros_like(op.Slice(xs[0], [0], [hid], [2]))

    h = initial(s.h0)
    c = initial(s.c0) if n.op_type == "LSTM" else None
    reverse = n.s("direction") == "reverse" or d == 1
    order = list(range(steps))[::-1] if reverse else list(range(steps))
    saved: dict[int, Step] = {}
    masks: dict[int, Value] = {}
    for t in order:  # the forward again, keeping each step
        hn, cn, saved[t] = cell.forward(xs[t], h, c)
        if s.lens is not None:  # past its length a sequence keeps its state
            m = masks[t] = s.lens > t
            h, c = op.Where(m, hn, h), (op.Where(m, cn, c) if cn is not None and c is not None else cn)
        else:
            h, c = hn, cn
    back = _backward(s, d, cell, order, saved, masks)
    return _weights(s, w, saved, back)


@dataclass
class _Back:
    steps: dict[int, StepGrads]
    h0: Value
    c0: Value | None


def _backward(s: _Setup, d: int, cell: Cell, order: list[int], saved: dict[int, Step],
              masks: dict[int, Value]) -> _Back:
    """The steps in reverse: the state gradients dH (dC) carried back, each step's gate gradients."""
    n = s.n
    at = n.inputs[0].graph.const(d, "int64")
    g_ys: list[Value | None] = [None] * s.steps
    if s.g_y is not None:
        per_dir = op.Gather(s.g_y, at, axis=1)  # [T, B, H]
        g_ys = list(op.Split(per_dir, [1] * s.steps, axis=0)) if s.steps > 1 else [per_dir]

    def final(g: Value | None) -> Value | None:  # Y_h, Y_c: zero for a sequence of length 0
        if g is None:
            return None
        g = op.Slice(g, [d], [d + 1], [0])
        return op.Where(s.lens > 0, g, 0.0) if s.lens is not None else g

    dh, dc = final(s.g_h), final(s.g_c)
    grads: dict[int, StepGrads] = {}
    for t in reversed(order):
        # d loss / d this step's new state: from the state that follows and from Y_t
        parts = [v for v in (dh, g_ys[t]) if v is not None]
        d_new = (parts[0] if len(parts) == 1 else parts[0] + parts[1]) if parts else op.zeros_like(saved[t].h)
        m = masks.get(t)
        if m is not None:  # the step writes the state (and Y) only where m: elsewhere dH passes by it
            d_new = op.Where(m, d_new, 0.0)
        dc_new = op.Where(m, dc, 0.0) if m is not None and dc is not None else dc
        sg = grads[t] = cell.backward(saved[t], d_new, dc_new)
        if m is not None:
            dh = op.Where(m, sg.dh, dh if dh is not None else 0.0)
            dc = op.Where(m, sg.dc, dc if dc is not None else 0.0) if sg.dc is not None else dc
        else:
            dh, dc = sg.dh, sg.dc
    assert dh is not None
    return _Back(grads, dh, dc)


def _weights(s: _Setup, w: Value, saved: dict[int, Step], back: _Back) -> _Grads:
    """The gradients of the inputs from every step's gate gradients, summed over time in one
    product each."""
    hid = s.hidden

    def over_time(vs: list[Value]) -> Value:  # [1, B, k] per step, in time order -> [T, B, k]
        return vs[0] if len(vs) == 1 else op.Concat(vs, axis=0)

    times = range(s.steps)
    dx, dr = over_time([back.steps[t].dx for t in times]), over_time([back.steps[t].dr for t in times])
    prev = over_time([saved[t].h for t in times])

    def outer(g: Value, v: Value) -> Value:  # sum over time and batch of g^T v: [k, m]
        return op.Gemm(op.Flatten(g, axis=2), op.Flatten(v, axis=2), transA=1)

    operands = [v for t in times if (v := back.steps[t].r_operand) is not None]
    if operands:  # GRU: R's h block multiplies r h, not h
        dr_zr, dr_h = op.Split(dr, [2 * hid, hid], axis=2)
        d_r = op.Concat([outer(dr_zr, prev), outer(dr_h, over_time(operands))], axis=0)
    else:
        d_r = outer(dr, prev)
    d_b = op.Concat([op.ReduceSum(dx, [0, 1], keepdims=0), op.ReduceSum(dr, [0, 1], keepdims=0)], axis=0)
    peeps = [v for t in times if (v := back.steps[t].peep) is not None]
    d_p = op.ReduceSum(over_time(peeps), [0, 1], keepdims=0) if peeps else None
    return _Grads(dx @ w, outer(dx, s.x), d_r, d_b, back.h0, back.c0, d_p)
