"""PyTorch parity of the sequence, attention, normalisation and shape layers: the forward pass,
every parameter's gradient and one optimizer step, each to 1e-4.

Each row compiles a one-model spec (its chain, mse against a random target, sgd with momentum
and weight decay), gives every parameter a random value, loads the same values into a torch
module by an explicit name map (strict both ways: parity_torch.load_state) and compares, the
torch twin in float64:

    output           |onnx - torch| <= 1e-4 max(1, max |torch|)
    loss, gradients  ||onnx - torch|| / ||torch|| <= 1e-4
    the step         ||(p.next - p)_onnx - (p.next - p)_torch|| / ||(p.next - p)_torch|| <= 1e-4,
                     beyond the float32 rounding of p.next (as test_train_parity measures it)

Sequence lengths (`from=[seq, lengths]`) are checked where the layers are built: graphs made
through the layer API, with the lengths as a graph input, against torch's key_padding_mask and
packed sequences (forward and gradients).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import parity_torch as pt  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from parity_helpers import assert_parity  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402
from train_helpers import compile_training_text, feeds_for, rel_err, run, scalars, session  # noqa: E402

from dlspec.compiler import gradient_model  # noqa: E402
from dlspec.compiler.graph import Graph, Value  # noqa: E402
from dlspec.compiler.graph import ops as op  # noqa: E402
from dlspec.compiler.graph.proto import model_proto, value_info  # noqa: E402
from dlspec.compiler.lower.context import Compilation, LayerCtx  # noqa: E402
from dlspec.compiler.lower.init import InitPolicy  # noqa: E402
from dlspec.compiler.lower.layers import LAYERS  # noqa: E402

TOL = 1e-4
LR, MOMENTUM, DECAY = 0.1, 0.9, 0.01
WORST: dict[str, tuple[float, str]] = {}  # check -> (worst error, row): printed at the end


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    print("\nworst errors, onnx vs torch:")
    for kind, (err, what) in sorted(WORST.items()):
        print(f"  {kind:<10} {err:.2e}  {what}")


def check(kind: str, what: str, got: np.ndarray, want: np.ndarray) -> None:
    err = rel_err(got, want)
    if err > WORST.get(kind, (-1.0, ""))[0]:
        WORST[kind] = (err, what)
    assert err <= TOL, f"{kind} {what}: ||onnx - torch|| / ||torch|| = {err:.3g} > {TOL:g}"


def check_output(what: str, got: np.ndarray, want: Tensor) -> None:
    ref = want.detach().numpy()
    err = float(np.abs(got.astype(np.float64) - ref).max()) / max(1.0, float(np.abs(ref).max()))
    if err > WORST.get("output", (-1.0, ""))[0]:
        WORST["output"] = (err, what)
    assert_parity(got, ref, what)


def random_params(shapes: dict[str, tuple[int, ...]], seed: int = 3) -> dict[str, np.ndarray]:
    """Non-trivial values: matrices ~ N(0, 1 / fan-in), vectors and tokens ~ 1 + N(0, 0.3) for
    norm scales, N(0, 0.3) else; an embedding table ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        if name.endswith(("norm1.weight", "norm2.weight")):
            v = 1.0 + 0.3 * rng.standard_normal(shape)
        elif len(shape) >= 2 and "embedding" not in name:
            v = rng.standard_normal(shape) / math.sqrt(shape[-1])
        else:
            v = (1.0 if "embedding1.weight" in name else 0.3) * rng.standard_normal(shape)
        out[name] = v.astype(np.float32)
    return out


# ---------------------------------------------------------------- torch twins

class Seq(nn.Module):
    """Modules applied in order (a plain function where one has no parameters)."""

    def __init__(self, *steps: nn.Module | Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.steps = list(steps)
        self.mods = nn.ModuleList(s for s in steps if isinstance(s, nn.Module))

    def forward(self, x: Tensor) -> Tensor:
        for s in self.steps:
            x = s(x)
        return x


class SelfAttention(nn.Module):
    """nn.MultiheadAttention(batch_first=True) on one sequence; lengths give its key_padding_mask."""

    def __init__(self, d: int, heads: int, causal: bool = False, bias: bool = True) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(d, heads, bias=bias, batch_first=True)
        self.causal = causal

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        t = x.shape[1]
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool), 1) if self.causal else None  # True: hidden
        pad = torch.arange(t)[None, :] >= lengths[:, None] if lengths is not None else None
        return self.mha(x, x, x, attn_mask=mask, key_padding_mask=pad, need_weights=False)[0]


class WideAttention(nn.Module):
    """Self-attention of width `dim` != D by hand (nn.MultiheadAttention ties dim to D)."""

    def __init__(self, d: int, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.zeros(3 * dim, d))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, d)

    def forward(self, x: Tensor) -> Tensor:
        n, t, _ = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        split = [z.view(n, t, self.heads, -1).transpose(1, 2) for z in (q, k, v)]
        y = F.scaled_dot_product_attention(*split)
        return self.out_proj(y.transpose(1, 2).reshape(n, t, -1))


class Recurrent(nn.Module):
    """nn.LSTM or nn.GRU, batch first; with lengths, through packed sequences."""

    def __init__(self, kind: str, fin: int, hidden: int, layers: int = 1,
                 bidirectional: bool = False) -> None:
        super().__init__()
        self.rnn = getattr(nn, kind)(fin, hidden, layers, batch_first=True, bidirectional=bidirectional)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        if lengths is None:
            return self.rnn(x)[0]
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=x.shape[1])[0]


class PosEmbedding(nn.Module):
    def __init__(self, max_len: int, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(max_len, d))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.weight[: x.shape[1]]


class ClsToken(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, d))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.token.expand(x.shape[0], -1, -1), x], dim=1)


def sinusoidal(x: Tensor, base: float = 10000.0) -> Tensor:
    """Vaswani et al.'s table, written from the paper: PE(pos, 2i) = sin(pos / base^(2i/D)),
    PE(pos, 2i + 1) = cos(pos / base^(2i/D))."""
    t, d = x.shape[1], x.shape[2]
    pe = torch.zeros(t, d, dtype=x.dtype)
    for pos in range(t):
        for i in range(d):
            angle = pos / base ** (2 * (i // 2) / d)
            pe[pos, i] = math.sin(angle) if i % 2 == 0 else math.cos(angle)
    return x + pe


def patches(size: int) -> Callable[[Tensor], Tensor]:
    """F.unfold's columns (channels first, then the patch's rows and columns), one per patch."""
    return lambda x: F.unfold(x, size, stride=size).transpose(1, 2)


# ---------------------------------------------------------------- the rows

@dataclass
class Row:
    id: str
    body: str  # the backbone's body: a chain, or stages
    shape: tuple[int, ...]
    twin: Callable[[], nn.Module]
    names: dict[str, str]  # torch key -> dlspec parameter
    ints: int = 0  # token ids below this, in place of float inputs

    @property
    def spec(self) -> str:
        body = self.body if ":" in self.body else f"s: {self.body}"
        dims = ", ".join(["N", *map(str, self.shape[1:])])
        dtype = "int64" if self.ints else "float32"
        out = ", ".join(["N", *map(str, self.out_shape[1:])])
        return (f"model m {{\n  input x: {dtype}[{dims}]\n  target y: float32[{out}]\n"
                f"  backbone {{\n    {body}\n  }}\n  loss mse\n}}\n"
                f"train {{\n  optimizer sgd(lr={LR}, momentum={MOMENTUM}, weight_decay={DECAY})\n"
                "  seed 3\n}\n")

    @property
    def out_shape(self) -> tuple[int, ...]:
        with torch.no_grad():
            return tuple(self.twin().double()(self.torch_input(self.input())).shape)

    def input(self) -> np.ndarray:
        rng = np.random.default_rng(5)
        if self.ints:
            return rng.integers(0, self.ints, self.shape).astype(np.int64)
        return rng.standard_normal(self.shape).astype(np.float32)

    @staticmethod
    def torch_input(x: np.ndarray) -> Tensor:
        t = torch.from_numpy(x.copy())
        return t.double() if t.is_floating_point() else t


def at(layer: str, *keys: str, prefix: str = "") -> dict[str, str]:
    """{prefix + key: backbone.s.<layer>.<key>}."""
    return {prefix + k: f"backbone.s.{layer}.{k}" for k in keys}


WB = ("weight", "bias")
MHA = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")


def rnn_keys(layer: str, layers: int, bidirectional: bool, prefix: str = "rnn.") -> dict[str, str]:
    """nn.LSTM's and nn.GRU's parameter names, which dlspec's recurrent layers share."""
    keys = [f"{w}_{kind}_l{k}{s}" for k in range(layers) for s in ["", "_reverse"][: 1 + bidirectional]
            for w in ("weight", "bias") for kind in ("ih", "hh")]
    return at(layer, *keys, prefix=prefix)


SEQ = (2, 5, 8)  # [N, T, D]
ROWS = [
    # ---- normalisation
    Row("layernorm", "layernorm", SEQ, lambda: nn.LayerNorm(8), at("layernorm1", *WB)),
    Row("layernorm-4d", "layernorm(eps=0.001)", (2, 3, 4, 6), lambda: nn.LayerNorm(6, eps=1e-3),
        at("layernorm1", *WB)),
    Row("groupnorm", "groupnorm(3)", (2, 6, 4, 5), lambda: nn.GroupNorm(3, 6), at("groupnorm1", *WB)),
    Row("groupnorm-seq", "groupnorm(2, eps=0.001)", (3, 4, 7), lambda: nn.GroupNorm(2, 4, eps=1e-3),
        at("groupnorm1", *WB)),
    Row("groupnorm-instance", "groupnorm(6)", (2, 6, 3, 3), lambda: nn.GroupNorm(6, 6),
        at("groupnorm1", *WB)),
    Row("groupnorm-2d", "groupnorm(1)", (3, 6), lambda: nn.GroupNorm(1, 6), at("groupnorm1", *WB)),
    Row("rmsnorm", "rmsnorm", SEQ, lambda: nn.RMSNorm(8, eps=float(np.finfo(np.float32).eps)),
        at("rmsnorm1", "weight")),
    Row("rmsnorm-eps", "rmsnorm(eps=0.01)", (2, 3, 4, 6), lambda: nn.RMSNorm(6, eps=0.01),
        at("rmsnorm1", "weight")),
    # ---- tokens and positions
    Row("embedding", "embedding(11, 6)", (3, 5), lambda: nn.Embedding(11, 6), at("embedding1", "weight"),
        ints=11),
    Row("embedding-linear", "embedding(7, 4) -> linear(3)", (3, 6),
        lambda: nn.Sequential(nn.Embedding(7, 4), nn.Linear(4, 3)),
        {**at("embedding1", "weight", prefix="0."), **at("linear1", *WB, prefix="1.")}, ints=7),
    Row("pos_embedding", "pos_embedding(9)", SEQ, lambda: PosEmbedding(9, 8), at("pos_embedding1", "weight")),
    Row("pos_embedding-full", "pos_embedding(5) -> linear(3)", SEQ,
        lambda: nn.Sequential(PosEmbedding(5, 8), nn.Linear(8, 3)),
        {**at("pos_embedding1", "weight", prefix="0."), **at("linear1", *WB, prefix="1.")}),
    Row("sinusoidal", "sinusoidal -> linear(4)", SEQ, lambda: Seq(sinusoidal, nn.Linear(8, 4)),
        at("linear1", *WB, prefix="mods.0.")),
    Row("sinusoidal-odd", "sinusoidal(base=100) -> linear(4)", (2, 6, 7),
        lambda: Seq(lambda x: sinusoidal(x, 100.0), nn.Linear(7, 4)), at("linear1", *WB, prefix="mods.0.")),
    Row("cls_token", "cls_token -> linear(3)", SEQ, lambda: Seq(ClsToken(8), nn.Linear(8, 3)),
        {**at("cls_token1", "token", prefix="mods.0."), **at("linear1", *WB, prefix="mods.1.")}),
    Row("pool-mean", "linear(6) -> pool(mean)", SEQ, lambda: Seq(nn.Linear(8, 6), lambda x: x.mean(1)),
        at("linear1", *WB, prefix="mods.0.")),
    Row("pool-max", "linear(6) -> pool(max)", SEQ, lambda: Seq(nn.Linear(8, 6), lambda x: x.amax(1)),
        at("linear1", *WB, prefix="mods.0.")),
    Row("pool-cls", "cls_token -> attention(2) -> pool(cls)", SEQ,
        lambda: Seq(ClsToken(8), SelfAttention(8, 2), lambda x: x[:, 0]),
        {**at("cls_token1", "token", prefix="mods.0."), **at("attention1", *MHA, prefix="mods.1.mha.")}),
    # ---- attention
    Row("attention", "attention(2)", SEQ, lambda: SelfAttention(8, 2), at("attention1", *MHA, prefix="mha.")),
    Row("attention-causal", "attention(4, causal=true)", SEQ, lambda: SelfAttention(8, 4, causal=True),
        at("attention1", *MHA, prefix="mha.")),
    Row("attention-one-head", "attention(1, bias=false)", (3, 4, 6),
        lambda: SelfAttention(6, 1, bias=False), at("attention1", "in_proj_weight", "out_proj.weight",
                                                    prefix="mha.")),
    Row("attention-wide", "attention(3, dim=12)", SEQ, lambda: WideAttention(8, 12, 3),
        at("attention1", *MHA)),
    # ---- recurrent
    Row("lstm", "lstm(7)", (2, 5, 4), lambda: Recurrent("LSTM", 4, 7), rnn_keys("lstm1", 1, False)),
    Row("lstm-bidirectional-2", "lstm(6, bidirectional=true, layers=2)", (2, 4, 3),
        lambda: Recurrent("LSTM", 3, 6, 2, True), rnn_keys("lstm1", 2, True)),
    Row("gru", "gru(7)", (2, 5, 4), lambda: Recurrent("GRU", 4, 7), rnn_keys("gru1", 1, False)),
    Row("gru-bidirectional-2", "gru(5, bidirectional=true, layers=2)", (2, 4, 3),
        lambda: Recurrent("GRU", 3, 5, 2, True), rnn_keys("gru1", 2, True)),
    # ---- shapes, the last axis, broadcasting
    Row("linear-3d", "linear(5)", SEQ, lambda: nn.Linear(8, 5), at("linear1", *WB)),
    Row("linear-4d", "linear(3, bias=false)", (2, 3, 4, 6), lambda: nn.Linear(6, 3, bias=False),
        at("linear1", "weight")),
    Row("patches", "patches(2) -> linear(5)", (2, 3, 4, 6), lambda: Seq(patches(2), nn.Linear(12, 5)),
        at("linear1", *WB, prefix="mods.0.")),
    Row("patches-rect", "patches([2, 3]) -> linear(4)", (2, 2, 4, 6),
        lambda: Seq(lambda x: F.unfold(x, (2, 3), stride=(2, 3)).transpose(1, 2), nn.Linear(12, 4)),
        at("linear1", *WB, prefix="mods.0.")),
    Row("reshape-permute", "reshape(shape=[4, -1]) -> permute([0, 2, 1]) -> linear(3)", (2, 1, 8, 3),
        lambda: Seq(lambda x: x.reshape(x.shape[0], 4, -1).permute(0, 2, 1), nn.Linear(4, 3)),
        at("linear1", *WB, prefix="mods.0.")),
    Row("vit", "patches(2) -> linear(8) -> cls_token -> pos_embedding(5) -> layernorm -> attention(2) "
        "-> pool(cls) -> linear(3)", (2, 3, 4, 4),
        lambda: Seq(patches(2), nn.Linear(12, 8), ClsToken(8), PosEmbedding(5, 8), nn.LayerNorm(8),
                    SelfAttention(8, 2), lambda x: x[:, 0], nn.Linear(8, 3)),
        {**at("linear1", *WB, prefix="mods.0."), **at("cls_token1", "token", prefix="mods.1."),
         **at("pos_embedding1", "weight", prefix="mods.2."), **at("layernorm1", *WB, prefix="mods.3."),
         **at("attention1", *MHA, prefix="mods.4.mha."), **at("linear2", *WB, prefix="mods.5.")}),
    Row("digits-lstm", "reshape(shape=[8, 8]) -> lstm(6) -> pool(mean) -> linear(4)", (2, 1, 8, 8),
        lambda: Seq(lambda x: x.reshape(-1, 8, 8), Recurrent("LSTM", 8, 6), lambda x: x.mean(1),
                    nn.Linear(6, 4)),
        {**rnn_keys("lstm1", 1, False, prefix="mods.0.rnn."), **at("linear1", *WB, prefix="mods.1.")}),
]


class Joins(nn.Module):
    """a = linear(x), b = gate of a's mean over T ([N, 1, D]), then a * b + a - b."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 6)
        self.g = nn.Linear(6, 6)

    def forward(self, x: Tensor) -> Tensor:
        a = self.a(x)
        b = torch.sigmoid(self.g(a.mean(1, keepdim=True)))
        c = a * b
        return (c + a) - b


JOINS = Row("mul-add-sub-broadcast",
            "a: linear(6)\n    b: pool(mean) -> reshape(shape=[1, 6]) -> linear(6) -> sigmoid\n"
            "    c: mul(from=[a, b])\n    d: add(from=[c, a])\n    e: sub(from=[d, b])",
            SEQ, Joins, {"a.weight": "backbone.a.linear1.weight", "a.bias": "backbone.a.linear1.bias",
                         "g.weight": "backbone.b.linear1.weight", "g.bias": "backbone.b.linear1.bias"})
ROWS.append(JOINS)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_forward_gradients_and_step(tmp_path: Path, row: Row) -> None:
    tg = compile_training_text(tmp_path, row.spec)
    shapes = {k: tuple(v.shape) for k, v in tg.init.items() if k in tg.trainable}
    params = random_params(shapes)
    assert set(params) == set(row.names.values()), sorted(params)
    x = row.input()
    y = np.random.default_rng(7).standard_normal(row.out_shape).astype(np.float32)
    batch = {"x": x, "y": y}

    twin = row.twin().double()
    pt.load_state(twin, params, row.names)
    twin.train()
    out = twin(row.torch_input(x))
    loss = F.mse_loss(out, torch.from_numpy(y).double())
    loss.backward()
    torch_params = dict(twin.named_parameters())

    # forward, in the evaluation graph (parameters as inputs)
    got = run(session(tg.evaluate), feeds_for(tg.evaluate, batch, params))
    check_output(f"{row.id} output", got[tg.evaluate.graph.output[0].name], out)
    check("loss", row.id, got[tg.evaluate.graph.output[1].name], loss.detach().numpy())

    # gradients
    grads = run(session(tg.gradients), feeds_for(tg.gradients, batch, scalars(step=1), params))
    check("loss", row.id, grads["loss"], loss.detach().numpy())
    for key, name in row.names.items():
        check("gradient", f"{row.id} {name}", grads[f"grad.{name}"], torch_params[key].grad.numpy())

    # one step of sgd with momentum and weight decay
    state = {**tg.init, **params}
    step = run(session(tg.train_step), feeds_for(tg.train_step, batch, scalars(LR, 1), state))
    opt = torch.optim.SGD(twin.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=DECAY)
    opt.step()
    for key, name in row.names.items():
        check_step(f"{row.id} {name}", step[f"{name}.next"], params[name], torch_params[key].detach().numpy())


def check_step(what: str, got: np.ndarray, before: np.ndarray, want: np.ndarray) -> None:
    """The update p.next - p, beyond the float32 rounding of p.next itself (eps32 ||p.next||,
    large next to a small step), as test_train_parity measures it."""
    diff = float(np.linalg.norm((got.astype(np.float64) - before) - (want - before)))
    rounding = float(np.finfo(np.float32).eps) * float(np.linalg.norm(want))
    err = max(0.0, diff - rounding) / max(float(np.linalg.norm(want - before)), 1e-12)
    if err > WORST.get("step", (-1.0, ""))[0]:
        WORST["step"] = (err, what)
    assert err <= TOL, f"step {what}: update error beyond float32 rounding = {err:.3g} > {TOL:g}"


# ---------------------------------------------------------------- sequence lengths, at the layer API

LENGTHS = np.array([5, 2, 4], np.int64)  # of 3 sequences of T = 5


def layer_model(kind: str, args: dict[str, Any], shape: tuple[int, ...],
                lengths: bool = True) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """One layer, built as the walk builds it, on inputs x [N, ...] and (with `lengths`) int64
    lengths [N]; outputs y and loss = sum(y r) for an input r. Returns the model (its parameters
    as initializers) and their random values."""
    comp = Compilation(Graph(), InitPolicy(seed=0))
    g = comp.g
    xs = [g.value("x", "float32", (None, *shape[1:]))]
    if lengths:
        xs.append(g.value("lengths", "int64", (None,)))
    ctx = LayerCtx(comp, "a", kind, None, None, None)
    y = LAYERS[kind].model_validate(args).build_many(ctx, xs)[0]
    r = g.value("r", "float32", y.shape)
    with g.at("loss"):
        loss = op.ReduceSum(y * r, keepdims=0)
    g.output(y, "y")
    g.output(loss, "loss")
    params = random_params({name: init.shape for name, init in g.initializers.items()})
    proto = model_proto("m", g.nodes, [value_info(v) for v in [*xs, r]],
                        [value_info(Value(g, "y", "float32", y.shape)),
                         helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])], params, "test")
    return proto, params


def check_layer(what: str, kind: str, args: dict[str, Any], shape: tuple[int, ...], twin: nn.Module,
                names: dict[str, str], lengths: np.ndarray | None = LENGTHS) -> None:
    """Forward and gradients (of every parameter and of x) of one layer against its torch twin."""
    proto, params = layer_model(kind, args, shape, lengths is not None)
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape).astype(np.float32)
    feeds: dict[str, np.ndarray] = {"x": x}
    if lengths is not None:
        feeds["lengths"] = lengths
    twin = twin.double()
    pt.load_state(twin, params, names)
    xt = torch.from_numpy(x).double().requires_grad_(True)
    out = twin(xt, torch.from_numpy(lengths)) if lengths is not None else twin(xt)
    feeds["r"] = rng.standard_normal(tuple(out.shape)).astype(np.float32)
    (out * torch.from_numpy(feeds["r"]).double()).sum().backward()
    got = run(session(proto), dict(feeds), ["y"])["y"]
    check_output(f"{what} output", got, out)
    grad_model = gradient_model(proto, "loss", [*params, "x"])
    grads = run(session(grad_model), feeds_for(grad_model, feeds, params))
    torch_params = dict(twin.named_parameters())
    for key, name in names.items():
        check("gradient", f"{what} {name}", grads[f"grad.{name}"], torch_params[key].grad.numpy())
    assert xt.grad is not None
    check("gradient", f"{what} x", grads["grad.x"], xt.grad.numpy())


A_MHA = {f"mha.{k}": f"a.{k}" for k in MHA}


@pytest.mark.parametrize("causal", [False, True], ids=["keys", "keys-causal"])
def test_attention_with_lengths_masks_padded_keys(causal: bool) -> None:
    check_layer(f"attention lengths causal={causal}", "attention", {"heads": 2, "causal": causal},
                (3, 5, 8), SelfAttention(8, 2, causal=causal), A_MHA)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
def test_recurrent_with_lengths_runs_each_sample_for_its_length(kind: str, bidirectional: bool) -> None:
    layers = 2 if bidirectional else 1
    names = {k: v.replace("backbone.s.x.", "a.") for k, v in rnn_keys("x", layers, bidirectional).items()}
    args = {"hidden": 4, "bidirectional": bidirectional, "layers": layers}
    check_layer(f"{kind} lengths", kind.lower(), args,
                (3, 5, 3), Recurrent(kind, 3, 4, layers, bidirectional), names)


class MaskedPool(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        valid = (torch.arange(x.shape[1])[None, :] < lengths[:, None])[:, :, None]
        if self.mode == "max":
            return x.masked_fill(~valid, float("-inf")).amax(1)
        return (x * valid).sum(1) / lengths[:, None]


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_pool_with_lengths_skips_padding(mode: str) -> None:
    check_layer(f"pool({mode}) lengths", "pool", {"mode": mode}, (3, 5, 4), MaskedPool(mode), {})


def test_lengths_out_of_range_are_clamped_to_the_sequence() -> None:
    """A length of 0 or past T reads as 1 or T: no NaN from a sequence with nothing to attend to,
    and onnxruntime's recurrent kernels (which refuse such lengths) run."""
    proto, _ = layer_model("lstm", {"hidden": 3}, (3, 5, 2))
    feeds = {"x": np.ones((3, 5, 2), np.float32), "lengths": np.array([0, 9, 3], np.int64),
             "r": np.ones((3, 5, 3), np.float32)}
    y = run(session(proto), feeds, ["y"])["y"]
    assert np.isfinite(y).all()
    assert (y[0, 1:] == 0).all() and (y[0, 0] != 0).all()  # length 0 runs one step
    assert (y[1] != 0).all()  # length 9 runs all 5
    proto, _ = layer_model("attention", {"heads": 2}, (3, 5, 8))
    feeds = {"x": np.ones((3, 5, 8), np.float32), "lengths": np.array([0, 9, 3], np.int64),
             "r": np.ones((3, 5, 8), np.float32)}
    assert np.isfinite(run(session(proto), feeds, ["y"])["y"]).all()
