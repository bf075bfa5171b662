"""`dlspec grad`: the gradients graph of an ONNX file, written atomically, with a one-line summary."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper
from rich.console import Console

from dlspec import grad_cli
from dlspec.spec.errors import CompileError, RunError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dlspec")
    grad_cli.add_parser(p.add_subparsers(dest="command", required=True))
    return p


def _run(*argv: str | Path) -> tuple[int, str]:
    args = _parser().parse_args(["grad", *map(str, argv)])
    buf = io.StringIO()
    code = grad_cli.run(args, Console(file=buf, width=200, highlight=False))
    return code, buf.getvalue()


def _write_model(path: Path, opset: int = 20) -> dict[str, np.ndarray]:
    """loss = mean((relu(x @ W + b) - t)^2), W and b initializers; also a non-scalar output `h` and
    an intermediate scalar `zsum`."""
    rng = np.random.default_rng(0)
    params = {"W": rng.standard_normal((3, 4)).astype(np.float32),
              "b": rng.standard_normal(4).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["z"]),
             helper.make_node("Relu", ["z"], ["h"]), helper.make_node("Sub", ["h", "t"], ["d"]),
             helper.make_node("Mul", ["d", "d"], ["d2"]),
             helper.make_node("ReduceMean", ["d2"], ["loss"], keepdims=0),
             helper.make_node("ReduceSum", ["z"], ["zsum"], keepdims=0)]  # a scalar that is no output
    graph = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info("x", TP.FLOAT, ["N", 3]),
                     helper.make_tensor_value_info("t", TP.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("h", TP.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("loss", TP.FLOAT, [])],
        initializer=[numpy_helper.from_array(v, k) for k, v in params.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return params


def test_grad_writes_a_runnable_gradients_model(tmp_path: Path) -> None:
    params = _write_model(tmp_path / "m.onnx")
    code, out = _run(tmp_path / "m.onnx", "--loss", "loss", "-o", tmp_path / "g.onnx")
    assert code == 0
    nodes = len(onnx.load(str(tmp_path / "g.onnx")).graph.node)
    assert out.strip() == (f"wrote {tmp_path / 'g.onnx'}: gradients of 'loss' for 2 parameter tensors "
                           f"(16 values), {nodes - 7} nodes added to the model's 7")
    sess = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["loss", "grad.W", "grad.b"]
    rng = np.random.default_rng(1)
    x, t = rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal((5, 4)).astype(np.float32)
    loss, dw, db = sess.run(None, {"x": x, "t": t, **params})
    z = x @ params["W"] + params["b"]
    dz = 2 * (np.maximum(z, 0) - t) * (z > 0) / z.size
    np.testing.assert_allclose(loss, np.mean((np.maximum(z, 0) - t) ** 2), rtol=1e-5)
    np.testing.assert_allclose(dw, x.T @ dz, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(db, dz.sum(axis=0), rtol=1e-4, atol=1e-6)


def test_grad_wrt_inputs_and_old_opsets(tmp_path: Path) -> None:
    _write_model(tmp_path / "m.onnx", opset=13)
    code, out = _run(tmp_path / "m.onnx", "--loss", "loss", "--wrt", "x", "--wrt", "b",
                     "-o", tmp_path / "g.onnx")
    assert code == 0 and "for 2 parameter tensors (4 values)" in out  # x has no stored values
    g = onnx.load(str(tmp_path / "g.onnx"))
    assert [o.name for o in g.graph.output] == ["loss", "grad.x", "grad.b"]
    assert g.opset_import[0].version == 20 and g.ir_version == 9


def test_grad_default_output_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_model(tmp_path / "m.onnx")
    monkeypatch.chdir(tmp_path)
    assert _run("m.onnx", "--loss", "loss")[0] == 0
    assert (tmp_path / "m.grad.onnx").exists()


@pytest.mark.parametrize("loss, message", [
    ("los", r"no value named 'los' to use as the loss \(did you mean 'loss'\?\)"),
    ("h", r"the loss 'h' must be a scalar, it has shape \['N', 4\]"),
])
def test_grad_loss_must_name_a_scalar(tmp_path: Path, loss: str, message: str) -> None:
    _write_model(tmp_path / "m.onnx")
    with pytest.raises(CompileError, match=message):
        _run(tmp_path / "m.onnx", "--loss", loss, "-o", tmp_path / "g.onnx")
    assert not (tmp_path / "g.onnx").exists()


def test_grad_loss_can_be_any_scalar_value(tmp_path: Path) -> None:
    params = _write_model(tmp_path / "m.onnx")
    code, out = _run(tmp_path / "m.onnx", "--loss", "zsum", "--wrt", "b", "-o", tmp_path / "g.onnx")
    assert code == 0 and "gradients of 'zsum' for 1 parameter tensors (4 values)" in out
    sess = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    x = np.ones((2, 3), np.float32)
    zsum, db = sess.run(None, {"x": x, "t": np.zeros((2, 4), np.float32), "b": params["b"]})
    np.testing.assert_allclose(db, [2, 2, 2, 2])  # d sum(x W + b) / db = batch size
    np.testing.assert_allclose(zsum, (x @ params["W"] + params["b"]).sum(), rtol=1e-5)


@pytest.mark.parametrize("content, message", [
    (None, "cannot read .*: no such file"),
    (b"\xff\xfe not a protobuf at all \x00\x01", "bad.onnx is not a valid ONNX model: it does not parse"),
    (b"", "bad.onnx is not a valid ONNX model: the file is empty"),
])
def test_grad_unreadable_model(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(RunError, match=message):
        _run(path, "--loss", "loss", "-o", tmp_path / "g.onnx")
    assert not (tmp_path / "g.onnx").exists()


def test_grad_failure_keeps_the_previous_output(tmp_path: Path) -> None:
    _write_model(tmp_path / "m.onnx")
    (tmp_path / "g.onnx").write_bytes(b"previous")
    with pytest.raises(CompileError):
        _run(tmp_path / "m.onnx", "--loss", "h", "-o", tmp_path / "g.onnx")
    assert (tmp_path / "g.onnx").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx", "m.onnx"]


def test_grad_command_on_a_model_dlspec_compiled(tmp_path: Path) -> None:
    """The added nodes must not reuse the model's own value names (dlspec names its constants)."""
    from dlspec.cli import main

    spec = Path(__file__).resolve().parents[2] / "examples" / "land_price.dlspec"
    assert main(["compile", str(spec), "-o", str(tmp_path / "m.onnx")]) == 0
    model = onnx.load(tmp_path / "m.onnx")
    model.graph.node.append(helper.make_node("ReduceMean", ["prediction"], ["loss"], keepdims=0))
    model.graph.output.append(helper.make_tensor_value_info("loss", TP.FLOAT, []))
    onnx.save(model, tmp_path / "l.onnx")
    assert main(["grad", str(tmp_path / "l.onnx"), "--loss", "loss", "-o", str(tmp_path / "g.onnx")]) == 0
    grad = onnx.load(tmp_path / "g.onnx")
    onnx.checker.check_model(grad, full_check=True)
    sess = ort.InferenceSession(grad.SerializeToString())
    feeds: dict[str, np.ndarray] = {i.name: np.random.default_rng(0).random(5).astype(np.float32) + 1
                                    for i in sess.get_inputs() if i.name in ("length", "width", "distance")}
    feeds["district"] = np.array(["north", "south", "", "east", "x"], dtype=object)
    params = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    feeds.update({i.name: params[i.name] for i in sess.get_inputs() if i.name in params})
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    # loss = mean over the batch of (... + b): d loss / d b of the last linear layer is exactly 1
    np.testing.assert_allclose(out["grad.head.linear3.bias"], [1.0], rtol=1e-6)
