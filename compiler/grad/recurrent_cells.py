"""One time step of RNN, GRU and LSTM for their gradient rules: the step recomputed from its
input projection and the previous state (the ops do not expose their gates), and the backward of
that step. The time loop around it is in dlspec.compiler.grad.recurrent.

Values of one step are [1, batch, ...]: the time axis kept as 1 so that steps concatenate back.
Gate blocks follow ONNX's order: RNN i; GRU z, r, h; LSTM i, o, f, c.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dlspec.compiler.grad.table import Node
from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op
from dlspec.spec.errors import CompileError

# the activations ONNX allows: whether each reads alpha and beta, and onnxruntime's defaults where
# they are the ONNX ops' defaults too (None: there is no agreed default, so the node must give one)
_READS: dict[str, tuple[bool, bool]] = {
    "relu": (False, False), "tanh": (False, False), "sigmoid": (False, False), "affine": (True, True),
    "leakyrelu": (True, False), "thresholdedrelu": (True, False), "scaledtanh": (True, True),
    "hardsigmoid": (True, True), "elu": (True, False), "softsign": (False, False), "softplus": (False, False),
}
_DEFAULTS: dict[str, tuple[float | None, float | None]] = {
    "leakyrelu": (0.01, None), "hardsigmoid": (0.2, 0.5), "elu": (1.0, None)}


@dataclass(frozen=True)
class Act:
    """An activation y = f(a) with its derivative; alpha and beta as the node gives them."""

    name: str  # lower case
    alpha: float = 0.0
    beta: float = 0.0

    def __call__(self, a: Value) -> Value:
        k, al, be = self.name, self.alpha, self.beta
        if k == "relu":
            return op.Relu(a)
        if k == "tanh":
            return op.Tanh(a)
        if k == "sigmoid":
            return op.Sigmoid(a)
        if k == "affine":
            return a * al + be
        if k == "leakyrelu":
            return op.Where(a >= 0.0, a, a * al)
        if k == "thresholdedrelu":
            return op.Where(a > al, a, 0.0)
        if k == "scaledtanh":
            return op.Tanh(a * be) * al
        if k == "hardsigmoid":
            return op.Clip(a * al + be, 0.0, 1.0)
        if k == "elu":
            return op.Where(a >= 0.0, a, (op.Exp(a) - 1.0) * al)
        if k == "softsign":
            return a / (op.Abs(a) + 1.0)
        return op.Softplus(a)

    def back(self, g: Value, a: Value, y: Value) -> Value:
        """g f'(a), knowing y = f(a)."""
        k, al, be = self.name, self.alpha, self.beta
        if k == "relu":
            return op.Where(a > 0.0, g, 0.0)
        if k == "tanh":  # 1 - y^2
            return g * (1.0 - y * y)
        if k == "sigmoid":  # y (1 - y)
            return g * (y * (1.0 - y))
        if k == "affine":
            return g * al
        if k == "leakyrelu":
            return op.Where(a >= 0.0, g, g * al)
        if k == "thresholdedrelu":
            return op.Where(a > al, g, 0.0)
        if k == "scaledtanh":  # alpha beta (1 - tanh(beta a)^2)
            t = op.Tanh(a * be)
            return g * ((1.0 - t * t) * (al * be))
        if k == "hardsigmoid":  # alpha inside (0, 1), else 0
            return op.Where(op.And(y > 0.0, y < 1.0), g * al, 0.0)
        if k == "elu":  # 1, or alpha e^a = y + alpha
            return op.Where(a >= 0.0, g, g * (y + al))
        if k == "softsign":  # 1 / (1 + |a|)^2
            den = op.Abs(a) + 1.0
            return g / (den * den)
        return g * op.Sigmoid(a)  # softplus


def activations(n: Node, defaults: list[str], dirs: int) -> list[list[Act]]:
    """The activations of each direction; alpha and beta are consumed in order by those that read
    them (as onnxruntime does)."""
    names = [v.decode() if isinstance(v, bytes) else str(v) for v in n.attr("activations")] \
        if n.has("activations") else defaults * dirs
    if len(names) == len(defaults) and dirs == 2:
        names = names * 2
    if len(names) != len(defaults) * dirs:
        raise CompileError(f"{n.op_type} node {n.proto.name} has {len(names)} activations; it takes "
                           f"{len(defaults)} per direction")
    alphas = iter(n.attr("activation_alpha") if n.has("activation_alpha") else [])
    betas = iter(n.attr("activation_beta") if n.has("activation_beta") else [])
    acts = []
    for name in names:
        key = name.lower()
        if key not in _READS:
            raise CompileError(f"{n.op_type} node {n.proto.name}: unknown activation '{name}'")
        reads_a, reads_b = _READS[key]
        default_a, default_b = _DEFAULTS.get(key, (None, None))
        a = next(alphas, default_a) if reads_a else 0.0
        b = next(betas, default_b) if reads_b else 0.0
        if a is None or b is None:
            raise CompileError(f"{n.op_type} node {n.proto.name}: activation {name} needs its "
                               f"{'alpha' if a is None else 'beta'} given (activation_alpha/beta): "
                               "ONNX and onnxruntime disagree on its default")
        acts.append(Act(key, float(a), float(b)))
    return [acts[k * len(defaults):(k + 1) * len(defaults)] for k in range(dirs)]


@dataclass
class Gate:
    """y = f(clip(a)): the pre-activation as the activation saw it (clipped), the unclipped one
    where a clip applies, and the output."""

    act: Act
    pre: Value
    out: Value
    raw: Value | None = None

    @classmethod
    def of(cls, act: Act, a: Value, clip: float | None) -> Gate:
        if clip is None:
            return cls(act, a, act(a))
        pre = op.Clip(a, -clip, clip)
        return cls(act, pre, act(pre), a)

    def back(self, g: Value) -> Value:
        """d loss / d a from d loss / d y; nothing passes where the clip cut a."""
        d = self.act.back(g, self.pre, self.out)
        return d if self.raw is None else op.Where(op.Equal(self.raw, self.pre), d, 0.0)


@dataclass
class Weights:
    """One direction's recurrence weights: R [G*H, H] and R^T, the recurrence bias that is not
    folded into the input projection (GRU's Rbh with linear_before_reset), the peepholes."""

    r: Value
    r_t: Value
    hidden: int
    rb_h: Value | None = None
    peep: list[Value] | None = None  # Pi, Po, Pf


@dataclass
class StepGrads:
    """The backward of one step: d loss / d of the input-side pre-activations (x W^T + Wb) and of
    the recurrence side (h R^T + Rb), d loss / d the previous state, and what multiplies R's last
    block where that is not h (GRU: r h)."""

    dx: Value
    dr: Value
    dh: Value
    dc: Value | None = None
    r_operand: Value | None = None
    peep: Value | None = None  # [dPi, dPo, dPf] terms, [1, batch, 3 H]


@dataclass
class Step:
    """What one step's backward needs of its forward."""

    h: Value  # the previous hidden state
    c: Value | None
    gates: dict[str, Gate] = field(default_factory=dict)
    extra: dict[str, Value] = field(default_factory=dict)


class Cell:
    """One step of an op: `forward(xw, h, c)` gives the new state and what `backward` needs."""

    def __init__(self, acts: list[Act], clip: float | None, w: Weights, n: Node):
        self.acts, self.clip, self.w = acts, clip, w
        self.lbr = n.op_type == "GRU" and bool(n.i("linear_before_reset"))
        self.coupled = n.op_type == "LSTM" and bool(n.i("input_forget"))
        if n.op_type == "GRU" and not self.lbr:  # R's z, r blocks apart from its h block
            hid = w.hidden
            self.r_zr_t, self.r_h_t = op.Split(w.r_t, [2 * hid, hid], axis=1)
            self.r_zr, self.r_h = op.Split(w.r, [2 * hid, hid], axis=0)

    def forward(self, xw: Value, h: Value, c: Value | None) -> tuple[Value, Value | None, Step]:
        raise NotImplementedError

    def backward(self, s: Step, dh: Value, dc: Value | None) -> StepGrads:
        raise NotImplementedError


class RNNCell(Cell):
    """H = f(x W^T + Wb + h R^T + Rb)."""

    def forward(self, xw: Value, h: Value, c: Value | None) -> tuple[Value, Value | None, Step]:
        gate = Gate.of(self.acts[0], xw + h @ self.w.r_t, self.clip)
        return gate.out, None, Step(h, None, {"i": gate})

    def backward(self, s: Step, dh: Value, dc: Value | None) -> StepGrads:
        da = s.gates["i"].back(dh)
        return StepGrads(da, da, da @ self.w.r)


class GRUCell(Cell):
    """z = f(.), r = f(.), h~ = g(x Wh^T + (r h) Rh^T + Rbh + Wbh), or with linear_before_reset
    g(x Wh^T + r (h Rh^T + Rbh) + Wbh); H = (1 - z) h~ + z h."""

    def forward(self, xw: Value, h: Value, c: Value | None) -> tuple[Value, Value | None, Step]:
        hid = self.w.hidden
        xz, xr, xh = op.Split(xw, [hid] * 3, axis=2)
        if self.lbr:  # one product for all three blocks
            hz, hr, hh = op.Split(h @ self.w.r_t, [hid] * 3, axis=2)
            if self.w.rb_h is not None:
                hh = hh + self.w.rb_h
        else:
            hz, hr = op.Split(h @ self.r_zr_t, [hid, hid], axis=2)
        z, reset = Gate.of(self.acts[0], xz + hz, self.clip), Gate.of(self.acts[0], xr + hr, self.clip)
        s = Step(h, None, {"z": z, "r": reset})
        if self.lbr:
            s.extra["hh"] = hh
            a_h = xh + reset.out * hh
        else:
            s.extra["rh"] = reset.out * h
            a_h = xh + s.extra["rh"] @ self.r_h_t
        cand = s.gates["h"] = Gate.of(self.acts[1], a_h, self.clip)
        return cand.out + z.out * (h - cand.out), None, s

    def backward(self, s: Step, dh: Value, dc: Value | None) -> StepGrads:
        # dH -> dh~ = dH (1 - z), dz = dH (h - h~), dh_prev = dH z
        z, reset, cand = s.gates["z"], s.gates["r"], s.gates["h"]
        d_ah = cand.back(dh * (1.0 - z.out))
        d_az = z.back(dh * (s.h - cand.out))
        d_prev = dh * z.out
        if self.lbr:  # a_h = x.. + r (h Rh^T + Rbh): d(h Rh^T) = r d_ah, dr = d_ah (h Rh^T + Rbh)
            d_hh = d_ah * reset.out
            d_ar = reset.back(d_ah * s.extra["hh"])
            dr = op.Concat([d_az, d_ar, d_hh], axis=2)
            return StepGrads(op.Concat([d_az, d_ar, d_ah], axis=2), dr, d_prev + dr @ self.w.r)
        # a_h = x.. + (r h) Rh^T: d(r h) = d_ah Rh, dr = d(r h) h, dh_prev += d(r h) r
        d_rh = d_ah @ self.r_h
        d_ar = reset.back(d_rh * s.h)
        d_zr = op.Concat([d_az, d_ar], axis=2)
        da = op.Concat([d_zr, d_ah], axis=2)
        d_h = op.Sum([d_prev, d_rh * reset.out, d_zr @ self.r_zr])
        return StepGrads(da, da, d_h, r_operand=s.extra["rh"])


class LSTMCell(Cell):
    """i = f(. + Pi c), f = f(. + Pf c) (or 1 - i with input_forget), c~ = g(.),
    C = f c + i c~, o = f(. + Po C), H = o h(C)."""

    def forward(self, xw: Value, h: Value, c: Value | None) -> tuple[Value, Value | None, Step]:
        assert c is not None, "an LSTM step has a cell state"
        f, g, hf = self.acts
        a_i, a_o, a_f, a_c = op.Split(xw + h @ self.w.r_t, [self.w.hidden] * 4, axis=2)
        p = self.w.peep
        if p is not None:
            a_i, a_f = a_i + p[0] * c, a_f + p[2] * c
        s = Step(h, c)
        i = s.gates["i"] = Gate.of(f, a_i, self.clip)
        cand = s.gates["c"] = Gate.of(g, a_c, self.clip)
        if self.coupled:
            forget = 1.0 - i.out
        else:
            s.gates["f"] = Gate.of(f, a_f, self.clip)
            forget = s.gates["f"].out
        cn = s.extra["C"] = forget * c + i.out * cand.out
        s.extra["forget"] = forget
        o = s.gates["o"] = Gate.of(f, a_o + p[1] * cn if p is not None else a_o, self.clip)
        hc = s.gates["hC"] = Gate.of(hf, cn, None)
        return o.out * hc.out, cn, s

    def backward(self, s: Step, dh: Value, dc: Value | None) -> StepGrads:
        assert s.c is not None
        i, cand, o, hc = s.gates["i"], s.gates["c"], s.gates["o"], s.gates["hC"]
        p, cn = self.w.peep, s.extra["C"]
        d_ao = o.back(dh * hc.out)
        # dC = dC_next + dH o h'(C) + d_ao Po
        parts = [hc.back(dh * o.out)] + ([dc] if dc is not None else []) + ([d_ao * p[1]] if p else [])
        d_cn = parts[0] if len(parts) == 1 else op.Sum(parts)
        d_i = d_cn * cand.out
        if self.coupled:  # f = 1 - i
            d_i = d_i - d_cn * s.c
        d_ai, d_ac = i.back(d_i), cand.back(d_cn * i.out)
        d_af = s.gates["f"].back(d_cn * s.c) if "f" in s.gates else op.zeros_like(d_ai)
        d_prev_c = [d_cn * s.extra["forget"]]
        if p is not None:
            d_prev_c += [d_ai * p[0], d_af * p[2]]
        da = op.Concat([d_ai, d_ao, d_af, d_ac], axis=2)
        peep = op.Concat([d_ai * s.c, d_ao * cn, d_af * s.c], axis=2) if p is not None else None
        d_c = d_prev_c[0] if len(d_prev_c) == 1 else op.Sum(d_prev_c)
        return StepGrads(da, da, da @ self.w.r, d_c, peep=peep)


CELLS: dict[str, type[Cell]] = {"RNN": RNNCell, "GRU": GRUCell, "LSTM": LSTMCell}
