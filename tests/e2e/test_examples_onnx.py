"""The examples' ONNX graphs on their own (no torch needed): a valid model, a symbolic batch
dimension, agreement between onnxruntime and onnx's reference evaluator, reproducible bytes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from parity_helpers import (  # noqa: E402
    EXAMPLES,
    RTOL,
    assert_parity,
    compile_file,
    example_inputs,
    randomize,
)

EXAMPLE_NAMES = sorted(p.stem for p in EXAMPLES.glob("*.dlspec"))


@pytest.fixture(scope="module")
def compiled() -> dict[str, onnx.ModelProto]:
    """Each example compiled once, with random parameters (running statistics included)."""
    out = {}
    for name in EXAMPLE_NAMES:
        c = compile_file(EXAMPLES / f"{name}.dlspec")
        randomize(c, seed=31)
        out[name] = c.onnx
    return out


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_valid_model_with_symbolic_batch(compiled: dict[str, onnx.ModelProto], name: str) -> None:
    proto = compiled[name]
    onnx.checker.check_model(proto, full_check=True)
    for vi in list(proto.graph.input) + list(proto.graph.output):
        first = vi.type.tensor_type.shape.dim[0]
        assert first.dim_param == "N" and not first.HasField("dim_value"), vi.name


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_dynamic_batch(compiled: dict[str, onnx.ModelProto], name: str) -> None:
    """Batch 7 at once and each of its samples alone give the same outputs."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(compiled[name].SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    feeds = example_inputs(name, 7, seed=32)
    whole = sess.run(None, feeds)[0]
    assert whole.shape[0] == 7
    for i in range(7):
        one = sess.run(None, {k: v[i:i + 1] for k, v in feeds.items()})[0]
        assert one.shape == (1,) + whole.shape[1:]
        assert_parity(one, whole[i:i + 1], f"{name} sample {i}")
    # and a batch of a size never seen before still runs
    assert sess.run(None, example_inputs(name, 3, seed=33))[0].shape[0] == 3


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_reference_evaluator_agrees_with_onnxruntime(compiled: dict[str, onnx.ModelProto],
                                                     name: str) -> None:
    """onnx's reference evaluator (the specification in Python) and onnxruntime agree."""
    feeds = example_inputs(name, 2, seed=34)
    outs = ReferenceEvaluator(compiled[name]).run(None, feeds, check_shape_annotations=True)
    assert isinstance(outs, list) and len(outs) == len(compiled[name].graph.output)  # one per head
    sess = ort.InferenceSession(compiled[name].SerializeToString(), providers=["CPUExecutionProvider"])
    for got, want in zip(sess.run(None, feeds), map(np.asarray, outs)):
        assert np.isfinite(want).all()
        assert got.dtype == want.dtype == np.float32
        scale = max(1.0, float(np.abs(want).max()))
        assert float(np.abs(got - want).max()) <= RTOL * scale


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_same_spec_and_seed_give_identical_bytes(name: str) -> None:
    path = EXAMPLES / f"{name}.dlspec"
    first = compile_file(path).onnx.SerializeToString()
    again = compile_file(path).onnx.SerializeToString()
    assert first == again
    seeded = compile_file(path, seed=12345)
    assert seeded.onnx.SerializeToString() != first
    assert compile_file(path, seed=12345).onnx.SerializeToString() == seeded.onnx.SerializeToString()
    # a new seed redraws the weights, never the graph
    base = onnx.load_from_string(first)
    assert [n.SerializeToString() for n in base.graph.node] == \
        [n.SerializeToString() for n in seeded.onnx.graph.node]
    assert [i.name for i in base.graph.initializer] == [i.name for i in seeded.onnx.graph.initializer]
