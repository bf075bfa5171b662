"""The compiler and the runtime agree on what each head is: for every example spec and for heads
whose loss mixes kinds, the training graph's metric of each head (logged as train_accuracy,
train_mae, ...) is the metric the runtime reports for it (validation, test, `dlspec eval`), by
name and by value on the same outputs."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train_helpers import (  # noqa: E402
    EXAMPLES,
    example_model_text,
    feeds_for,
    load_text,
    run,
    scalars,
    session,
    with_outputs,
)

from dlspec.compiler import TrainingGraphs, compile_training  # noqa: E402
from dlspec.compiler.lower.heads import head_infos  # noqa: E402
from dlspec.metrics import head_metrics  # noqa: E402
from dlspec.spec import model as m  # noqa: E402
from dlspec.spec.loader import Program  # noqa: E402

GRAPH_METRICS = {"classify": ["accuracy"], "binary": ["accuracy"], "segment": ["accuracy", "mean_iou"],
                 "regress": ["mae"]}  # what a head of each kind logs in training

MIXED = {
    "mse then cross_entropy": """
model m {
  input  x:     float32[N, 4]
  target v:     float32[N, 3]
  target label: int64[N]
  head linear(3)
  loss mse(target=v) + cross_entropy(target=label)
}
""",
    "a named head: l1 then cross_entropy, beside a regressor": """
model m {
  input  x:     float32[N, 4]
  target v:     float32[N, 3]
  target w:     float32[N]
  target label: int64[N]
  head a: linear(3)
  head b: linear(1)
  loss 0.5 * l1(a, v) + cross_entropy(a, label) + mse(b, w)
}
""",
    "one logit [N, 1] against [N, 1] labels, and mse on it squeezed": """
model m {
  input  x:   float32[N, 4]
  target v:   float32[N]
  target hit: float32[N, 1]
  head linear(1)
  loss huber(target=v) + bce_with_logits(target=hit)
}
""",
    "several labels a sample": """
model m {
  input  x:   float32[N, 4]
  target hit: float32[N, 3]
  head linear(3)
  loss bce_with_logits(target=hit)
}
""",
    "regressions of two targets: the first's": """
model m {
  input  x: float32[N, 4]
  target v: float32[N, 2]
  target w: float32[N, 2]
  head linear(2)
  loss l1(target=w) + mse(target=v)
}
""",
    "cross_entropy and dice per position": """
model m {
  input  x:    float32[N, 2, 4, 4]
  target mask: int64[N, 4, 4]
  head conv(3, k=1)
  loss 0.5 * dice + cross_entropy
}
""",
}

SPECS = {**{f"example {p.stem}": example_model_text(p.stem) for p in sorted(EXAMPLES.glob("*.dlspec"))},
         **MIXED}


def batch(tg: TrainingGraphs, model: m.Model, rng: np.random.Generator, n: int = 6) -> dict[str, np.ndarray]:
    """Random inputs and targets, typed as the graph takes them: integer inputs 0 (a vocabulary's
    unknown word), labels 0 or 1 (a class of any head), 0/1 for bce_with_logits, float inputs in
    [0.5, 2] (features may take their log), other float targets normal."""
    binary = {h.target for h in model.resolved_heads if h.kind == "binary"}
    graph = {i.name: i.type.tensor_type.elem_type for i in tg.gradients.graph.input}
    out = {}
    for t in model.inputs + model.targets:
        shape = [n if isinstance(d, str) else d for d in t.shape]
        dtype = helper.tensor_dtype_to_np_dtype(graph[t.name])
        if dtype.kind in "iu":
            out[t.name] = (np.zeros(shape) if t.role == "input" else rng.integers(0, 2, shape)).astype(dtype)
        elif t.name in binary:
            out[t.name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            values = rng.uniform(0.5, 2.0, shape) if t.role == "input" else rng.normal(size=shape)
            out[t.name] = values.astype(dtype)
    return out


@pytest.fixture(scope="module", params=list(SPECS.values()), ids=list(SPECS.keys()))
def compiled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
             ) -> tuple[Program, TrainingGraphs]:
    """Each spec compiled without its train block (augmentation would move a mask away from the
    target fed), beside the examples' imports."""
    folder = tmp_path_factory.mktemp("spec")
    shutil.copytree(EXAMPLES / "transfer", folder / "transfer")
    prog = load_text(folder, request.param)
    return prog, compile_training(prog)


def test_the_compiled_heads_are_the_loaded_ones(compiled: tuple[Program, TrainingGraphs]) -> None:
    prog, tg = compiled
    assert tg.inference.heads == head_infos(prog.model())
    assert all(h.kind for h in tg.inference.heads)


def test_each_head_logs_the_metric_of_its_kind(compiled: tuple[Program, TrainingGraphs]) -> None:
    _, tg = compiled
    assert tg.metrics == [h.key(k) for h in tg.inference.heads for k in GRAPH_METRICS[h.kind]]


def test_the_graph_metric_is_the_runtime_metric_of_the_same_outputs(
        compiled: tuple[Program, TrainingGraphs]) -> None:
    """One run of the gradients graph gives each head's output and its metric; the runtime's
    metric of that output against the target must be the same number."""
    prog, tg = compiled
    data = batch(tg, prog.model(), np.random.default_rng(0))
    heads = tg.inference.heads
    proto = with_outputs(tg.gradients, [h.output for h in heads])
    out = run(session(proto), feeds_for(proto, data, scalars(), tg.init))
    for h in heads:
        assert h.target is not None
        runtime = head_metrics(out[h.output], data[h.target], h.kind)
        for k in GRAPH_METRICS[h.kind]:
            assert np.isclose(out[h.key(k)], runtime[k], atol=1e-6), (h, k, out[h.key(k)], runtime[k])
