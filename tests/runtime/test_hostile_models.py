"""Malformed model files: every command that reads one (predict, eval, export, grad, and a train
block's `from`) goes through files.load_model, which turns whatever is wrong into one RunError
naming the file: empty, truncated, random bytes, a protobuf that is not a model, names that are
not UTF-8, tensors whose data does not fill their shape, bit flips of a real model."""

from __future__ import annotations

import contextlib
import io
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper

from dlspec.cli import main
from dlspec.compiler import compile_model
from dlspec.files import load_model
from dlspec.spec import load
from dlspec.spec.errors import RunError

SPEC = """
model m {
  input  x: float32[N, 4]
  target y: int64[N]
  backbone { s: linear(8) -> bn -> gelu }
  head mlp(3)
  loss cross_entropy
}
train { data iris(test=0.5) }
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the spec, its model (model.onnx), the model with a scalar `loss` output for
    `dlspec grad` (loss.onnx) and inputs for predict (in.npz)."""
    d = tmp_path_factory.mktemp("models")
    (d / "m.dlspec").write_text(SPEC)
    model = compile_model(load(d / "m.dlspec")).onnx
    for node in model.graph.node:  # the same bytes in every run, wherever its folder: flips hit alike
        node.doc_string = node.doc_string.replace(str(d), "spec")
    (d / "model.onnx").write_bytes(model.SerializeToString())
    model.graph.node.append(helper.make_node("ReduceMean", ["logits"], ["loss"], keepdims=0))
    model.graph.output.append(helper.make_tensor_value_info("loss", TP.FLOAT, []))
    (d / "loss.onnx").write_bytes(model.SerializeToString())
    np.savez(d / "in.npz", x=np.ones((2, 4), np.float32))
    return d


def _commands(base: Path, model: Path) -> list[list[str]]:
    return [["predict", str(model), str(base / "in.npz")],
            ["eval", str(model), "iris", "--spec", str(base / "m.dlspec")],
            ["export", str(model), "-o", str(model.parent / "exported.onnx")],
            ["grad", str(model), "--loss", "loss", "-o", str(model.parent / "grad.onnx")]]


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def _not_a_model(base: Path) -> bytes:
    """A valid protobuf of another kind: a graph, which parses as a ModelProto with no graph."""
    return onnx.load(str(base / "model.onnx")).graph.SerializeToString()


def _empty_graph() -> bytes:
    """A model the checker passes, with nothing in it."""
    graph = helper.make_graph([], "empty", [], [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]).SerializeToString()


def _undecodable_name(base: Path) -> bytes:
    """A node name whose bytes are not UTF-8: protobuf hands such a string back as bytes, which
    crashed `dlspec grad` (sorting bytes with str) and `dlspec export` (UnicodeDecodeError)."""
    data = (base / "model.onnx").read_bytes()
    name = onnx.load_from_string(data).graph.node[0].name.encode()
    assert len(name) >= 2 and data.count(name) == 1
    return data.replace(name, b"\xff" + name[1:])


def _long_tensor(base: Path) -> bytes:
    """A weight with more data than its shape holds (the onnx checker does not look)."""
    model = onnx.load(str(base / "model.onnx"))
    model.graph.initializer[0].raw_data += b"\0" * 4
    return model.SerializeToString()


def _bad_type(base: Path) -> bytes:
    """An output of an element type ONNX does not have (shape inference catches it)."""
    model = onnx.load(str(base / "model.onnx"))
    model.graph.output[0].type.tensor_type.elem_type = 65
    return model.SerializeToString()


CASES = {
    "empty": (lambda base: b"", "the file is empty"),
    "truncated": (lambda base: (base / "model.onnx").read_bytes()[:300], "is not a valid ONNX model"),
    "random bytes": (lambda base: bytes(random.Random(0).randrange(256) for _ in range(4096)),
                     "is not a valid ONNX model"),
    "text": (lambda base: b"hello, not a model\n", "is not a valid ONNX model"),
    "a graph, not a model": (_not_a_model, "it has no graph or no opset"),
    "an empty graph": (lambda base: _empty_graph(), "its graph has no outputs"),
    "a name that is not UTF-8": (_undecodable_name, "onnx.NodeProto.name is not UTF-8"),
    "data beyond its shape": (_long_tensor, "tensor 'backbone.s.linear1.weight' of shape"),
    "unknown element type": (_bad_type, "is not a valid ONNX model"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_command_names_a_malformed_model(base: Path, tmp_path: Path, case: str) -> None:
    make, message = CASES[case]
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(make(base))
    with pytest.raises(RunError, match=message):
        load_model(bad)
    for argv in _commands(base, bad):
        code, err = _run(argv)
        assert code == 2 and str(bad) in err and message in err, (argv[0], err)
        assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]  # nothing written


def test_folders_devices_and_missing_files_are_not_read(base: Path, tmp_path: Path) -> None:
    cases = [(tmp_path, "not a regular file"), (tmp_path / "none.onnx", "no such file")]
    if Path("/dev/zero").exists():
        cases.append((Path("/dev/zero"), "not a regular file"))  # read, it would never end
    for path, message in cases:
        with pytest.raises(RunError, match=message):
            load_model(path)


def test_bit_flips_of_a_real_model_give_a_result_or_a_clean_error(base: Path, tmp_path: Path) -> None:
    """Each command on flipped copies: it runs (the flip hit a weight) or fails with one clean
    line; never a traceback or an internal error."""
    rng = random.Random(1)
    codes: dict[int, int] = {}
    for _ in range(20):
        for source in ("model.onnx", "loss.onnx"):
            data = bytearray((base / source).read_bytes())
            for _ in range(rng.choice([1, 1, 3])):
                i = rng.randrange(len(data))
                data[i] ^= 1 << rng.randrange(8)
            flipped = tmp_path / "flipped.onnx"
            flipped.write_bytes(bytes(data))
            commands = _commands(base, flipped)
            for argv in commands[3:] if source == "loss.onnx" else commands[:3]:
                code, err = _run(argv)
                codes[code] = codes.get(code, 0) + 1
                assert code in (0, 2) and "Traceback" not in err and "internal error" not in err, (argv, err)
    assert codes.get(2, 0) > 10, codes  # the flips did hit the structure


def test_a_model_that_fails_as_it_runs_prints_one_line(tmp_path: Path) -> None:
    """A valid model whose run fails on these inputs (8 numbers cannot be rows of 3): the one
    error line, and no log line of onnxruntime's own on the process's stderr."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TP.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TP.FLOAT, [3, None])],
        [helper.make_tensor("shape", TP.INT64, [2], [3, -1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "in.npz", x=np.ones((2, 4), np.float32))
    run = subprocess.run([sys.executable, "-m", "dlspec", "predict", str(tmp_path / "m.onnx"),
                          str(tmp_path / "in.npz")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Reshape" in run.stderr, run.stderr


def test_a_train_blocks_from_reads_through_the_same_checks(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"")
    spec = tmp_path / "t.dlspec"
    spec.write_text(SPEC.replace("train { data iris(test=0.5) }",
                                 'train {\n  data iris(test=0.5)\n  from "bad.onnx"\n}'))
    code, err = _run(["train", str(spec), "--out", str(tmp_path / "run")])
    assert code == 2 and "bad.onnx is not a valid ONNX model: the file is empty" in err, err
    assert not (tmp_path / "run").exists()
