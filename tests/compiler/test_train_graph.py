"""The training graphs as ONNX artifacts, without torch: standard ONNX that onnx's own reference
evaluator runs the same as onnxruntime, the input/output conventions of train_step.onnx and
gradients.onnx, dropout's noise, lr_mult, `dlspec compile --train`, and a short real training
run of the digits example.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from parity_helpers import example_inputs  # noqa: E402
from train_helpers import (  # noqa: E402
    EXAMPLES,
    STANDARD_DOMAINS,
    carried,
    compile_training_text,
    dropout_masks,
    feeds_for,
    input_names,
    output_names,
    param_inputs,
    run,
    scalars,
    session,
    with_outputs,
)

from dlspec.cli import main  # noqa: E402
from dlspec.compiler import Target, TrainingGraphs, compile_training  # noqa: E402
from dlspec.compiler.train.health import stage_of  # noqa: E402
from dlspec.spec import load  # noqa: E402

EXAMPLE_NAMES = sorted(p.stem for p in EXAMPLES.glob("*.dlspec"))

TINY_CNN = """
model tiny {
  input image: float32[N, 2, 6, 6]
  target label: int64[N]
  backbone {
    s1: conv(4, k=3) -> bn -> relu -> maxpool(2)
    s2: conv(6, k=3, stride=2) -> bn -> gelu
  }
  head classify(classes=3, dropout=0.4)
  loss cross_entropy(label_smoothing=0.1)
}
train {
  optimizer sgd(lr=0.1, momentum=0.9, nesterov=true, weight_decay=1e-3)
  clip grad_norm(0.5)
  seed 5
}
"""


@functools.cache
def example(name: str) -> TrainingGraphs:
    """An example's training graphs, compiled once per session (tests only read them)."""
    return compile_training(load(EXAMPLES / f"{name}.dlspec"))


def batch_for(tg: TrainingGraphs, n: int, seed: int) -> dict[str, np.ndarray]:
    """Random values for the model inputs and targets of a train_step."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for vi in tg.train_step.graph.input:
        if vi.name in tg.init or vi.name in ("lr", "step"):
            continue
        t = vi.type.tensor_type
        shape = [n if d.dim_param else d.dim_value for d in t.shape.dim]
        if t.elem_type == onnx.TensorProto.INT64 and vi.name in {d.name for d in tg.inference.model.inputs}:
            out[vi.name] = np.zeros(shape, np.int64)  # a category's index: without data all unknown
        elif t.elem_type == onnx.TensorProto.INT64:
            classes = int(tg.inference.output.shape[1] or 2)
            out[vi.name] = rng.integers(0, classes, shape).astype(np.int64)
        else:
            out[vi.name] = rng.uniform(0.5, 3.0, shape).astype(np.float32)
    return out


# ---------------------------------------------------------------- standard ONNX

@pytest.mark.parametrize("spec", ["land_price", "tiny"])
def test_train_step_runs_the_same_in_onnx_reference_evaluator(tmp_path: Path, spec: str) -> None:
    """onnx's reference evaluator (an implementation dlspec did not write) agrees with onnxruntime
    on every output of two training steps: the graph is plain standard ONNX."""
    tg = example("land_price") if spec == "land_price" else compile_training_text(tmp_path, TINY_CNN)
    names = output_names(tg.train_step)
    for want, got in _two_steps(tg, [session(tg.train_step), ReferenceEvaluator(tg.train_step)]):
        for name in names:
            scale = max(1.0, float(np.abs(want[name]).max()))
            assert got[name].shape == want[name].shape, name
            np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5 * scale, err_msg=name)


def _two_steps(tg: TrainingGraphs, runners: list[Any]) -> Iterator[list[dict[str, np.ndarray]]]:
    """Every runner's outputs by name (an onnxruntime session or onnx's reference evaluator, each
    of a train step with tg's inputs) for two steps from tg.init; the state carries the first's."""
    state = dict(tg.init)
    for step in (1, 2):
        feeds = feeds_for(tg.train_step, batch_for(tg, 5, step), scalars(0.01, step), state)
        outs = [run(r, feeds) if isinstance(r, ort.InferenceSession) else
                dict(zip(r.output_names, r.run(None, feeds))) for r in runners]
        yield outs
        state = {**state, **carried(outs[0])}


TABLE_BN = """
model table {
  input x: float32[N, 5]
  target y: float32[N]
  backbone { linear(8) -> bn -> relu -> linear(6) -> bn }
  head regress(hidden=[4])
  loss mse
}
"""


@pytest.mark.parametrize("spec", ["tiny", "table", "digits_transfer"])
def test_many_thread_lowering_steps_as_the_few_thread_one(tmp_path: Path, spec: str) -> None:
    """compile_training for 16 threads writes other ops (dlspec.compiler.tune) for the same function:
    two steps from the same values give the same outputs, in onnxruntime and in onnx's reference
    evaluator; batch norm over [N, C] as over [N, C, H, W]; a frozen backbone keeps its
    eval-mode batch norm."""
    path = EXAMPLES / f"{spec}.dlspec"
    if spec in ("tiny", "table"):
        path = tmp_path / "m.dlspec"
        path.write_text(TINY_CNN if spec == "tiny" else TABLE_BN)
    few, many = compile_training(load(path)), compile_training(load(path), target=Target(threads=16))
    assert {n.domain for n in many.train_step.graph.node} <= set(STANDARD_DOMAINS)
    training_bn = [n for n in many.train_step.graph.node if n.op_type == "BatchNormalization"
                   and not n.name.startswith("backbone")]  # digits_transfer freezes the backbone
    assert training_bn == []
    names = output_names(few.train_step)
    assert sorted(names) == sorted(output_names(many.train_step))
    runners = [session(few.train_step), session(many.train_step), ReferenceEvaluator(many.train_step)]
    for want, got, by_ref in _two_steps(few, runners):
        for name in names:
            scale = max(1.0, float(np.abs(want[name]).max()))
            np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5 * scale, err_msg=name)
            np.testing.assert_allclose(by_ref[name], got[name], rtol=0, atol=1e-5 * scale, err_msg=name)


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_training_graphs_are_standard_onnx(name: str) -> None:
    tg = example(name)
    for proto in (tg.train_step, tg.gradients):
        onnx.checker.check_model(proto, full_check=True)
        domains = {node.domain for node in proto.graph.node}
        assert domains <= set(STANDARD_DOMAINS), f"non-standard op domains {domains - set(STANDARD_DOMAINS)}"
        assert {o.domain for o in proto.opset_import} <= set(STANDARD_DOMAINS)
        # parameters are inputs, never initializers (onnxruntime would share equal constants)
        assert not {t.name for t in proto.graph.initializer} & set(tg.init)


# ---------------------------------------------------------------- the conventions

METRICS = {"classify": ["accuracy"], "binary": ["accuracy"], "segment": ["accuracy", "mean_iou"],
           "regress": ["mae"]}  # a head's metrics in the training graphs, by its kind


def _types(values: list[onnx.ValueInfoProto]) -> dict[str, tuple[int, list[int | str]]]:
    return {v.name: (v.type.tensor_type.elem_type,
                     [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values}


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_train_step_and_gradients_inputs_and_outputs(name: str) -> None:
    tg = example(name)
    model = tg.inference.model
    batch = [t.name for t in model.inputs] + list(dict.fromkeys(t.name for t in model.targets))
    weights = tg.trainable + tg.frozen
    stats = [n for n in tg.init if n.endswith(("running_mean", "running_var"))]
    state = [n for n in tg.init if n not in weights and n not in stats]
    assert input_names(tg.train_step)[: len(batch) + 2] == [*batch, "lr", "step"]
    assert set(input_names(tg.train_step)[len(batch) + 2:]) == set(tg.init)
    assert param_inputs(tg) == input_names(tg.train_step)[len(batch) + 2:]
    scores = [h.key(k) for h in tg.inference.heads for k in METRICS[h.kind]]
    metric = [*tg.terms, *scores]  # each term's loss where there are several, then each head's metrics
    first = 1 + len(metric)
    health = ["grad_norm", *sorted({f"grad_norm:{stage_of(p)}" for p in tg.trainable})]
    assert output_names(tg.train_step)[:first] == ["loss", *metric] and tg.metrics == scores
    assert sorted(tg.health) == sorted(health)
    assert output_names(tg.train_step)[first:first + len(health)] == tg.health
    live_stats = [n for n in stats if f"{n.rsplit('.', 1)[0]}.weight" not in tg.frozen]  # frozen bn: fixed
    assert set(output_names(tg.train_step)[first + len(health):]) == {
        f"{n}.next" for n in tg.trainable + state + live_stats}
    assert all(s.rsplit(".", 1)[0] in tg.trainable for s in state)
    assert input_names(tg.gradients) == [*batch, "step", *[n for n in param_inputs(tg) if n not in state]]
    assert output_names(tg.gradients) == ["loss", *metric, *(f"grad.{p}" for p in tg.trainable),
                                          *(f"{s}.next" for s in live_stats)]
    # every input that comes back as `.next` keeps its element type and shape
    ins, outs = _types(list(tg.train_step.graph.input)), _types(list(tg.train_step.graph.output))
    for out, typ in outs.items():
        if out.endswith(".next"):
            assert typ == ins[out[: -len(".next")]], out
            assert typ[1] == list(tg.init[out[: -len(".next")]].shape)
    gins, gouts = _types(list(tg.gradients.graph.input)), _types(list(tg.gradients.graph.output))
    for p in tg.trainable:
        assert gouts[f"grad.{p}"] == gins[p]
    assert ins["lr"] == (onnx.TensorProto.FLOAT, []) and ins["step"] == (onnx.TensorProto.INT64, [])


def test_next_outputs_match_their_inputs_when_run(tmp_path: Path) -> None:
    tg = compile_training_text(tmp_path, TINY_CNN)
    state = dict(tg.init)
    got = run(session(tg.train_step), feeds_for(tg.train_step, batch_for(tg, 3, 0), scalars(0.1), state))
    nexts = carried(got)
    assert set(nexts) <= set(state) and nexts
    for k, v in nexts.items():
        assert v.dtype == state[k].dtype and v.shape == state[k].shape, k
    assert got["loss"].shape == () and got["accuracy"].shape == ()


# ---------------------------------------------------------------- dropout

DROPOUT = """
model d {
  input x: float32[N, 4096]
  target y: float32[N]
  backbone { s: dropout(0.3) -> linear(1) }
  loss mse
}
train { optimizer sgd(lr=0.1)  seed 11 }
"""


def _dropped(tg: TrainingGraphs, x: np.ndarray, step: int) -> np.ndarray:
    """The dropout layer's output in the train step."""
    mul = [n for n in tg.train_step.graph.node if n.name.startswith("backbone.s.dropout1/Mul")][-1]
    proto = with_outputs(tg.train_step, [mul.output[0]])
    feeds = feeds_for(proto, {"x": x, "y": np.zeros(len(x), np.float32)}, scalars(0.1, step), tg.init)
    return run(session(proto), feeds)[mul.output[0]]


def test_dropout_is_inverted_dropout_fresh_each_step_and_repeatable(tmp_path: Path) -> None:
    p = 0.3
    tg = compile_training_text(tmp_path, DROPOUT)
    assert list(dropout_masks(tg.train_step, ["backbone.s.dropout1"]))  # the layer is in the graph
    x = np.random.default_rng(0).uniform(0.5, 2.0, (64, 4096)).astype(np.float32)
    y1 = _dropped(tg, x, step=1)
    kept = y1 != 0
    n = kept.size
    assert abs(kept.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)  # 262144 draws: 5 sigma
    # kept values are scaled by exactly 1 / (1 - p) (in float32), dropped ones are exactly 0
    np.testing.assert_array_equal(y1[kept], x[kept] * np.float32(1.0 / (1.0 - p)))
    # no lattice: rows, columns and neighbours keep at the rate of independent draws
    assert np.abs(kept.mean(axis=1) - (1 - p)).max() < 6 * np.sqrt(p * (1 - p) / x.shape[1])
    assert np.abs(kept.mean(axis=0) - (1 - p)).max() < 6 * np.sqrt(p * (1 - p) / x.shape[0])
    both = (kept[:, 1:] & kept[:, :-1]).mean()
    assert abs(both - (1 - p) ** 2) < 0.01
    # the same step draws the same mask (another session too); the next step draws afresh
    np.testing.assert_array_equal(_dropped(tg, x, step=1), y1)
    y2 = _dropped(tg, x, step=2)
    agree = ((y2 != 0) == kept).mean()
    assert abs(agree - (p * p + (1 - p) ** 2)) < 0.01, "step 2's mask is not independent of step 1's"
    # another seed, another stream
    other = compile_training_text(tmp_path, DROPOUT.replace("seed 11", "seed 12"), name="other")
    assert abs(((_dropped(other, x, step=1) != 0) == kept).mean() - (p * p + (1 - p) ** 2)) < 0.01


def test_dropout_is_identity_in_the_inference_graph(tmp_path: Path) -> None:
    tg = compile_training_text(tmp_path, DROPOUT)
    assert not [n for n in tg.inference.onnx.graph.node if "dropout" in n.name]
    assert [n for n in tg.train_step.graph.node if n.name.startswith("backbone.s.dropout1/")]


# ---------------------------------------------------------------- lr_mult

LR_MULT = """
model m {
  input x: float32[N, 5]
  target y: float32[N]
  backbone { body: linear(8) -> tanh -> linear(8) -> tanh }
  head { out: linear(1) }
  loss mse
}
train {
  optimizer sgd(lr=0.5)
  seed 2
LINE}
"""


def test_lr_mult_scales_the_sgd_step(tmp_path: Path) -> None:
    """Plain sgd: a parameter with lr_mult 0.1 moves 0.1x as far as without it, the others alike;
    the most specific rule wins; lr_mult 0 freezes."""
    plain = compile_training_text(tmp_path, LR_MULT.replace("LINE", ""), name="plain")
    mult = compile_training_text(tmp_path, LR_MULT.replace(
        "LINE", "  lr_mult backbone: 0.1, backbone.body.linear2: 0.5, head: 0\n"), name="mult")
    assert mult.frozen == ["head.out.linear1.weight", "head.out.linear1.bias"]
    assert "head.out.linear1.weight" in plain.trainable
    batch = batch_for(plain, 6, 3)
    moved = {}
    for tg in (plain, mult):
        got = carried(run(session(tg.train_step), feeds_for(tg.train_step, batch, scalars(0.5), tg.init)))
        moved[id(tg)] = {k: got[k].astype(np.float64) - tg.init[k] for k in got}
    grads = run(session(plain.gradients), feeds_for(plain.gradients, batch, scalars(), plain.init))
    factors = {"backbone.body.linear1.weight": 0.1, "backbone.body.linear1.bias": 0.1,
               "backbone.body.linear2.weight": 0.5, "backbone.body.linear2.bias": 0.5}
    for name, k in factors.items():
        step = moved[id(plain)][name]
        np.testing.assert_allclose(step, -0.5 * grads[f"grad.{name}"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(moved[id(mult)][name], k * step, rtol=1e-5, atol=1e-7, err_msg=name)
        assert np.abs(step).max() > 1e-3, f"{name} hardly moves: the check would be empty"
    assert not [k for k in moved[id(mult)] if k.startswith("head.")]


def test_a_step_with_every_parameter_frozen_and_clipping_runs_and_carries_nothing(tmp_path: Path) -> None:
    """Clipping had no gradients to sum (an internal error); the step now runs and updates
    nothing (frozen batch norm is in eval mode, so not even its running statistics)."""
    text = TINY_CNN.replace("clip grad_norm(0.5)", "clip grad_norm(0.5)\n  freeze backbone, head")
    tg = compile_training_text(tmp_path, text, name="all_frozen")
    assert tg.trainable == [] and "backbone.s1.bn1.weight" in tg.frozen
    out = run(session(tg.train_step), feeds_for(tg.train_step, batch_for(tg, 6, 3), scalars(0.5), tg.init))
    assert carried(out) == {} and np.isfinite(out["loss"]) and out["loss"] > 0


BN_MLP = """
model m {
  input  x: float32[N, 4]
  target y: int64[N]
  backbone { a: linear(3) -> bn }
  head linear(2)
  loss cross_entropy
}
train { optimizer sgd(lr=0.1) }
"""


@pytest.mark.parametrize("n", [1, 2, 5])
def test_batch_norm_running_variance_is_unbiased_and_finite_on_one_sample(tmp_path: Path, n: int) -> None:
    """n / (n - 1) made the running variance NaN (0 * inf) on a batch of one sample, which a last
    short batch can be; PyTorch's unbiased variance otherwise, blended with momentum 0.1."""
    tg = compile_training_text(tmp_path, BN_MLP, name=f"bn{n}")
    x = np.random.default_rng(n).normal(size=(n, 4)).astype(np.float32)
    batch = {"x": x, "y": np.zeros(n, np.int64)}
    got = carried(run(session(tg.train_step), feeds_for(tg.train_step, batch, scalars(0.1), tg.init)))
    h = x.astype(np.float64) @ tg.init["backbone.a.linear1.weight"].T.astype(np.float64)
    h += tg.init["backbone.a.linear1.bias"]
    var = h.var(0, ddof=1) if n > 1 else np.zeros(3)
    np.testing.assert_allclose(got["backbone.a.bn1.running_var"], 0.9 + 0.1 * var, rtol=1e-5)



@pytest.mark.parametrize("loss", ["cross_entropy(ignore_index=0)", "cross_entropy(weight=[0, 1, 1])"])
def test_a_batch_whose_rows_all_weigh_nothing_has_loss_and_gradients_zero(tmp_path: Path,
                                                                           loss: str) -> None:
    """The weighted mean divided 0 by 0: NaN, which stopped the run (an all-ignored batch is common
    in segmentation); a batch with weight keeps the weighted mean."""
    text = BN_MLP.replace("head linear(2)", "head linear(3)").replace("loss cross_entropy", f"loss {loss}")
    tg = compile_training_text(tmp_path, text, name="weights")
    x = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)
    grads = session(tg.gradients)
    out = run(grads, feeds_for(tg.gradients, {"x": x, "y": np.zeros(4, np.int64)}, scalars(), tg.init))
    assert out["loss"] == 0.0
    assert all(not v.any() for k, v in out.items() if k.startswith("grad."))
    mixed = run(grads, feeds_for(tg.gradients, {"x": x, "y": np.array([0, 1, 2, 1])}, scalars(), tg.init))
    assert np.isfinite(mixed["loss"]) and mixed["loss"] > 0


# ---------------------------------------------------------------- dlspec compile --train

def test_cli_compile_train_writes_the_artifacts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "out"
    assert main(["compile", str(EXAMPLES / "land_price.dlspec"), "--train", "-o", str(dest)]) == 0
    assert sorted(p.name for p in dest.iterdir()) == ["apply.onnx", "gradients.onnx", "init.npz",
                                                      "model.onnx", "train_step.onnx"]
    step = onnx.load(dest / "train_step.onnx")
    with np.load(dest / "init.npz") as npz:
        init = {k: npz[k] for k in npz.files}
    batch_and_scalars = {"length", "width", "distance", "district", "price", "lr", "step"}
    assert sorted(init) == sorted(n for n in input_names(step) if n not in batch_and_scalars)
    tg = example("land_price")
    for k, v in tg.init.items():
        np.testing.assert_array_equal(init[k], v, err_msg=k)
    for name in ("model.onnx", "gradients.onnx"):
        onnx.checker.check_model(onnx.load(dest / name), full_check=True)
    # the written files run: one step from init.npz
    raw = {**example_inputs("land_price", 4), "district": np.zeros(4, np.int64)}  # training graphs: indices
    got = run(session(step), feeds_for(step, {**raw, "price": np.ones(4, np.float32)}, scalars(1e-3), init))
    assert np.isfinite(got["loss"])


# ---------------------------------------------------------------- a real, short training run

def test_digits_trains_to_90_percent_on_its_training_batches() -> None:
    """Batches of 64 from scikit-learn's digits (raw 0..16 pixels: the spec scales them) with the
    example's own adamw and gradient clipping, for at most 150 steps: the loss falls and ten
    batches in a row average >= 90% accuracy (it takes 40 to 60 steps; each is ~0.15 s here)."""
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = digits.images.astype(np.float32)[:, None]  # [1797, 1, 8, 8]
    y = digits.target.astype(np.int64)
    tg = example("digits")
    train = load(EXAMPLES / "digits.dlspec").train("digits")
    assert train is not None and train.optimizer is not None and train.optimizer.kind == "adamw"
    sess = session(tg.train_step)
    names = output_names(tg.train_step)
    state = dict(tg.init)
    rng = np.random.default_rng(0)
    losses: list[float] = []
    accs: list[float] = []
    for step in range(1, 151):
        idx = rng.choice(len(x), 64, replace=False)
        lr = train.optimizer.lr * min(1.0, step / 20)  # a short warm-up, as the spec's schedule has
        feeds = feeds_for(tg.train_step, {"image": x[idx], "label": y[idx]}, scalars(lr, step), state)
        out = dict(zip(names, sess.run(None, feeds)))
        losses.append(float(out["loss"]))
        accs.append(float(out["accuracy"]))
        state.update(carried(out))
        if step >= 30 and np.mean(accs[-10:]) >= 0.9:
            break
    assert np.all(np.isfinite(losses))
    assert np.mean(accs[-10:]) >= 0.9, f"after {step} steps: {accs[-10:]}"
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10]), (losses[:10], losses[-10:])
