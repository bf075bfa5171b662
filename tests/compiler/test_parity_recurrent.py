"""dlspec's LSTM and GRU gradients against PyTorch's (torch.nn.LSTM and GRU, padded sequences
through pack_padded_sequence), and the reference evaluator fixes of runtime/reference.py
against onnxruntime's forward on every row of tests/grad_rows_sequence.py that it runs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from dlspec.compiler import gradient_model
from dlspec.compiler.graph import OPSET

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import grad_rows_sequence  # noqa: E402
from grad_reference import reference  # noqa: E402
from grad_row import Row  # noqa: E402

T, B, IN, H = 4, 3, 3, 5
LENS = [4, 2, 3]
# ONNX's gate blocks from torch's: LSTM i o f c from i f g o; GRU z r h from r z n
ORDER = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2]}


def _onnx_blocks(w: np.ndarray, op: str) -> np.ndarray:
    blocks = np.split(w, len(ORDER[op]))
    return np.concatenate([blocks[k] for k in ORDER[op]])


def _model(op: str, dirs: int, lens: bool) -> onnx.ModelProto:
    outs = ["Y", "Y_h", "Y_c"] if op == "LSTM" else ["Y", "Y_h"]
    ins = ["X", "W", "R", "B", "lens" if lens else "", "h0"] + (["c0"] if op == "LSTM" else [])
    attrs = {"linear_before_reset": 1} if op == "GRU" else {}
    direction = "bidirectional" if dirs == 2 else "forward"
    node = helper.make_node(op, ins, outs, hidden_size=H, direction=direction, **attrs)
    nodes = [node]
    terms = []
    for k, y in enumerate(outs):  # loss = sum_k sum(y_k R_k)
        nodes += [helper.make_node("Mul", [y, f"R{k}"], [f"yr{k}"]),
                  helper.make_node("ReduceSum", [f"yr{k}"], [f"l{k}"], keepdims=0)]
        terms.append(f"l{k}")
    nodes.append(helper.make_node("Sum", terms, ["loss"]))
    g = len(ORDER[op])
    shapes = {"X": [T, B, IN], "W": [dirs, g * H, IN], "R": [dirs, g * H, H], "B": [dirs, 2 * g * H],
              "h0": [dirs, B, H], "c0": [dirs, B, H]}
    inputs = [helper.make_tensor_value_info(n, TP.DOUBLE, shapes[n]) for n in ins if n and n != "lens"]
    rs = [np.random.default_rng(k).standard_normal([T, dirs, B, H] if k == 0 else [dirs, B, H])
          for k in range(len(outs))]
    inits = [numpy_helper.from_array(r, f"R{k}") for k, r in enumerate(rs)]
    if lens:
        inits.append(numpy_helper.from_array(np.array(LENS, np.int32), "lens"))
    graph = helper.make_graph(nodes, "m", inputs, [helper.make_tensor_value_info("loss", TP.DOUBLE, [])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("dirs", [1, 2])
@pytest.mark.parametrize("lens", [False, True], ids=["full", "padded"])
def test_gradients_match_pytorch(op: str, dirs: int, lens: bool) -> None:
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    net = getattr(torch.nn, op)(IN, H, bidirectional=dirs == 2).double()
    x = torch.randn(T, B, IN, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(dirs, B, H, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(dirs, B, H, dtype=torch.float64, requires_grad=True)
    state = (h0, c0) if op == "LSTM" else h0
    if lens:
        packed, states = net(pack_padded_sequence(x, torch.tensor(LENS), enforce_sorted=False), state)
        y = pad_packed_sequence(packed, total_length=T)[0]
    else:
        y, states = net(x, state)
    finals = list(states) if op == "LSTM" else [states]
    model = _model(op, dirs, lens)
    rs = [torch.from_numpy(np.array(numpy_helper.to_array(t))) for t in model.graph.initializer
          if t.name.startswith("R")]
    y = y.view(T, B, dirs, H).transpose(1, 2)  # ONNX's [T, dirs, B, H]
    loss = (y * rs[0]).sum() + sum((f * r).sum() for f, r in zip(finals, rs[1:]))
    loss.backward()

    def per_dir(name: str) -> np.ndarray:  # torch's weights of every direction, in ONNX's layout
        sfx = ["", "_reverse"][:dirs]
        return np.stack([_onnx_blocks(getattr(net, name + s).detach().numpy(), op) for s in sfx])

    def grad_per_dir(name: str) -> np.ndarray:
        sfx = ["", "_reverse"][:dirs]
        return np.stack([_onnx_blocks(getattr(net, name + s).grad.numpy(), op) for s in sfx])

    feeds = {"X": x.detach().numpy(), "W": per_dir("weight_ih_l0"), "R": per_dir("weight_hh_l0"),
             "B": np.concatenate([per_dir("bias_ih_l0"), per_dir("bias_hh_l0")], axis=1),
             "h0": h0.detach().numpy()}
    expected = {"X": x.grad.numpy(), "W": grad_per_dir("weight_ih_l0"), "R": grad_per_dir("weight_hh_l0"),
                "B": np.concatenate([grad_per_dir("bias_ih_l0"), grad_per_dir("bias_hh_l0")], axis=1),
                "h0": h0.grad.numpy()}
    if op == "LSTM":
        feeds["c0"], expected["c0"] = c0.detach().numpy(), c0.grad.numpy()
    names = list(feeds)
    got = reference(gradient_model(model, "loss", names)).run(None, feeds)
    np.testing.assert_allclose(got[0], loss.item(), rtol=1e-10)
    for name, g in zip(names, got[1:]):
        np.testing.assert_allclose(g, expected[name], rtol=1e-8, atol=1e-10, err_msg=name)


CHECKED = [r for r in grad_rows_sequence.ROWS if r.op in ("RNN", "GRU", "LSTM", "GridSample", "Resize")
           and not r.no_ort]


@pytest.mark.parametrize("row", CHECKED, ids=[f"{r.op}-{r.id}" for r in CHECKED])
def test_reference_forward_matches_onnxruntime(row: Row) -> None:
    """The test references follow onnxruntime (float32), so a rule checked against them gives the
    gradient of what onnxruntime computes."""
    rng = np.random.default_rng(0)
    xs = {f"x{i}": rng.uniform(row.low, row.high, s).astype(np.float32) for i, s in enumerate(row.shapes)}
    consts = [numpy_helper.from_array(c.astype(np.float32) if c.dtype == np.float64 else c, f"c{i}")
              for i, c in enumerate(row.consts)]
    outs = [f"y{k}" for k in range(row.outputs)]
    node = helper.make_node(row.op, row.inputs or list(xs) + [c.name for c in consts], outs, **row.attrs)
    graph = helper.make_graph([node], "m",
                              [helper.make_tensor_value_info(n, TP.FLOAT, v.shape) for n, v in xs.items()],
                              [helper.make_tensor_value_info(y, TP.FLOAT, None) for y in outs],
                              initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, xs)
    want = reference(model).run(None, xs)
    for y, a, b in zip(outs, got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=y)
