"""Every example spec loads, checks, compiles to a standard ONNX model and runs in onnxruntime.

Parametrized over examples/*.dlspec, so a new example is tested as soon as it is added.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from dlspec.cli import main
from dlspec.compiler import Compiled, compile_model
from dlspec.compiler.graph import IR_VERSION, OPSET
from dlspec.compiler.lower.columns import filled
from dlspec.spec.loader import load
from dlspec.spec.version import __version__

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.dlspec"))
BATCH = 3


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 4


@pytest.fixture(scope="module", params=EXAMPLES, ids=[p.stem for p in EXAMPLES])
def example(request: pytest.FixtureRequest) -> tuple[Path, Compiled]:
    """Each example compiled once for all the checks below."""
    path: Path = request.param
    return path, compile_model(load(path))


def test_check_accepts_it(example: tuple[Path, Compiled], capsys: pytest.CaptureFixture[str]) -> None:
    path, c = example
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"model {c.model.name}" in out and f"{path} is valid" in out


def test_it_passes_the_full_onnx_checker(example: tuple[Path, Compiled]) -> None:
    onnx.checker.check_model(example[1].onnx, full_check=True)


def test_opset_and_ir_version(example: tuple[Path, Compiled]) -> None:
    proto = example[1].onnx
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", OPSET)]
    assert OPSET == 20 and IR_VERSION == 9
    assert proto.ir_version == IR_VERSION


def test_every_node_is_in_the_standard_domain(example: tuple[Path, Compiled]) -> None:
    nodes = example[1].onnx.graph.node
    assert nodes
    assert {n.domain for n in nodes} <= {"", "ai.onnx"}
    assert {n.op_type for n in nodes} <= {s.name for s in onnx.defs.get_all_schemas() if s.domain == ""}


def _dims(v: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in v.type.tensor_type.shape.dim]


def test_the_batch_dimension_is_symbolic(example: tuple[Path, Compiled]) -> None:
    _, c = example
    graph = c.onnx.graph
    assert [i.name for i in graph.input] == [t.name for t in c.model.inputs]
    for v in list(graph.input) + list(graph.output):
        dims = _dims(v)
        assert dims[0] == "N", (v.name, dims)
        assert all(isinstance(d, int) and d >= 1 for d in dims[1:]), (v.name, dims)
    assert [o.name for o in graph.output] == list(c.outputs)  # one per head
    assert graph.output[0].name == c.output.name
    for o in graph.output:
        assert _dims(o)[1:] == list(c.outputs[o.name].shape[1:])


def test_metadata(example: tuple[Path, Compiled]) -> None:
    _, c = example
    props = {p.key: p.value for p in c.onnx.metadata_props}
    if len(c.outputs) > 1:  # named heads: each output's kind
        assert list(json.loads(props.pop("heads"))) == list(c.outputs)
    assert json.loads(props.pop("filled", "[]")) == sorted(filled(c.model.features))  # fill(x, ...) reads x
    assert props == {"dlspec_version": __version__, "spec_hash": c.spec_hash, "opset": str(OPSET),
                     "model": c.model.name}
    assert re.fullmatch(r"[0-9a-f]{16}", c.spec_hash)
    assert c.onnx.producer_name == "dlspec" and c.onnx.graph.name == c.model.name


def _random_inputs(proto: onnx.ModelProto, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for v in proto.graph.input:
        shape = [BATCH] + [int(d) for d in _dims(v)[1:]]
        elem = v.type.tensor_type.elem_type
        if elem == TensorProto.FLOAT:
            feeds[v.name] = rng.uniform(0.5, 16.0, shape).astype(np.float32)  # positive: log, sqrt, /
        elif elem == TensorProto.INT64:
            feeds[v.name] = rng.integers(0, 10, shape).astype(np.int64)
        elif elem == TensorProto.STRING:  # a category: any names
            feeds[v.name] = rng.choice(["a", "b", ""], shape).astype(object)
        else:
            pytest.fail(f"no random data for input {v.name} of type {TensorProto.DataType.Name(elem)}")
    return feeds


def test_it_runs_in_onnxruntime(example: tuple[Path, Compiled]) -> None:
    _, c = example
    sess = ort.InferenceSession(c.onnx.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = _random_inputs(c.onnx, np.random.default_rng(0))
    outputs = sess.run(None, feeds)
    assert len(outputs) == len(c.outputs)
    for y, want in zip(outputs, c.outputs.values()):
        assert y.shape == (BATCH,) + tuple(d for d in want.shape[1:])
        assert y.dtype == np.float32
        assert np.all(np.isfinite(y))
        assert np.ptp(y) > 0  # not a constant: the random inputs and weights reach the output
