"""`standardize(x)` fitted by `dlspec train`: the moments are numpy's on the training split only,
they are baked into every graph of the run (the exported model takes raw inputs), they survive
--resume, and a constant column gives no NaN."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from rich.console import Console

from dlspec import standardize
from dlspec.checkpoint import load as load_checkpoint
from dlspec.cli import main
from dlspec.compiler import compile_training
from dlspec.data import load_dataset
from dlspec.spec import load
from dlspec.spec.errors import RunError
from dlspec.training import FitOptions, FitResult, fit

IRIS = """
model flowers {
  input  sepal_length: float32[N]
  input  sepal_width:  float32[N]
  input  petal_length: float32[N]
  input  petal_width:  float32[N]
  target species:      int64[N]

  features {
    petal_area   = standardize(petal_length * petal_width)
    sepal_length = standardize(sepal_length)
    petal_width  = standardize(petal_width)
  }
  head mlp(3, hidden=[16])
  loss cross_entropy
}

train {
  data      iris(test=0.2, val=0.2)
  batch     16
  epochs    EPOCHS
  optimizer adam(lr=0.01)
  seed      0
}
"""


def _spec(tmp_path: Path, text: str, epochs: int = 3, name: str = "m.dlspec") -> Path:
    path = tmp_path / name
    path.write_text(text.replace("EPOCHS", str(epochs)))
    return path


def _fit(spec: Path, out: Path, resume: bool = False, epochs: int | None = None) -> tuple[FitResult, str]:
    buf = io.StringIO()
    result = fit(load(spec), spec, None, FitOptions(out=out, resume=resume, epochs=epochs),
                 Console(file=buf, width=400, color_system=None))
    return result, buf.getvalue()


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float64)


def test_moments_are_numpys_on_the_training_split_only(tmp_path: Path) -> None:
    spec = _spec(tmp_path, IRIS)
    prog = load(spec)
    model = prog.model()
    train = prog.train(model.name)
    assert train is not None
    data = load_dataset(train, model, tmp_path)
    stats = standardize.fit(prog, None, data.train)
    assert list(stats) == ["petal_area", "sepal_length", "petal_width"]
    # the graph multiplies in float32: so does the reference, then it averages in float64
    area = _f64(data.train["petal_length"] * data.train["petal_width"])
    want = {"petal_area": area, "sepal_length": _f64(data.train["sepal_length"]),
            "petal_width": _f64(data.train["petal_width"])}
    for key, values in want.items():
        assert stats[key].mean.shape == () and stats[key].std.shape == ()
        np.testing.assert_allclose(stats[key].mean, values.mean(), rtol=1e-12)
        np.testing.assert_allclose(stats[key].std, values.std(), rtol=1e-12)  # population std (ddof 0)
    everything = np.concatenate([_f64(data.train["sepal_length"]), _f64(data.val["sepal_length"]),
                                 _f64(data.test["sepal_length"])])
    assert abs(float(stats["sepal_length"].mean) - everything.mean()) > 1e-3  # not fitted on val or test

    _, printed = _fit(spec, tmp_path / "run")
    saved = standardize.load(tmp_path / "run" / standardize.FILE)
    assert sorted(saved) == sorted(stats)
    for key in stats:
        assert saved[key].mean == stats[key].mean and saved[key].std == stats[key].std  # bit for bit
    assert "standardize: fitted on the 90 training samples: petal_area (mean " in printed


def _run(model: Path | onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    data = str(model) if isinstance(model, Path) else model.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})[0]  # type: ignore[no-any-return]


def test_the_exported_model_takes_raw_inputs(tmp_path: Path) -> None:
    """model.onnx and `dlspec export` on raw columns give what the training graph's eval mode gives."""
    spec = _spec(tmp_path, IRIS)
    run = tmp_path / "run"
    result, _ = _fit(spec, run)
    prog = load(spec)
    model = prog.model()
    train = prog.train(model.name)
    assert train is not None
    raw = load_dataset(train, model, tmp_path).test
    stats = standardize.load(run / standardize.FILE)
    tg = compile_training(prog, moments=stats)
    weights, _, _, _ = load_checkpoint(run / "best.npz")
    want = _run(tg.evaluate, {**raw, **weights})

    assert main(["export", str(run), "-o", str(tmp_path / "exported.onnx")]) == 0
    for path in (run / "model.onnx", tmp_path / "exported.onnx"):
        got = _run(path, raw)
        np.testing.assert_array_equal(got, want)
        proto = onnx.load(str(path))
        props = {p.key: p.value for p in proto.metadata_props}
        assert json.loads(props["standardize"]) == json.loads((run / standardize.FILE).read_text())
        consts = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t)
                  for n in proto.graph.node if n.op_type == "Constant"}
        mean = next(v for k, v in consts.items() if k.startswith("features.sepal_length.standardize.mean"))
        assert mean == np.float32(stats["sepal_length"].mean)
    accuracy = float((_run(run / "model.onnx", raw).argmax(1) == raw["species"]).mean())
    assert accuracy == result.metrics["accuracy"]

    identity = compile_training(prog)  # the same weights without the statistics: another model
    assert not np.allclose(_run(identity.evaluate, {**raw, **weights}), want)


CONSTANT = """
model m {
  input  a: float32[N]
  input  c: float32[N]
  target y: float32[N]
  features {
    a = standardize(a)
    c = standardize(c)
  }
  head regress(hidden=[8])
  loss mse
}

train {
  data      csv("data.csv", target=y, test=0.2)
  batch     8
  epochs    EPOCHS
  optimizer adam(lr=0.01)
}
"""


def _csv(path: Path, a: np.ndarray, c: np.ndarray, y: np.ndarray) -> None:
    rows = ["a,c,y"] + [f"{x},{z},{t}" for x, z, t in zip(a, c, y)]
    path.write_text("\n".join(rows) + "\n")


def test_a_constant_column_gives_no_nan(tmp_path: Path) -> None:
    a = np.linspace(-1, 1, 50)
    _csv(tmp_path / "data.csv", a, np.full(50, 7.5), 3 * a + 1)
    result, printed = _fit(_spec(tmp_path, CONSTANT, epochs=2), tmp_path / "run")
    stats = standardize.load(tmp_path / "run" / standardize.FILE)
    assert float(stats["c"].mean) == 7.5 and float(stats["c"].std) == 1.0
    assert "standardize in feature 'c': constant on the training split (value 7.5); its std is taken as 1" \
        in printed
    assert all(np.isfinite(v) for v in result.metrics.values()) and result.metrics
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        assert np.isfinite(json.loads(line)["train_loss"])
    raw = {"a": a.astype(np.float32), "c": np.full(50, 7.5, np.float32)}
    out = _run(tmp_path / "run" / "model.onnx", raw)
    assert np.isfinite(out).all()


def test_a_value_that_is_not_finite_is_a_run_error(tmp_path: Path) -> None:
    a = np.linspace(-1, 1, 20)
    _csv(tmp_path / "data.csv", a, np.ones(20), a)
    spec = _spec(tmp_path, CONSTANT.replace("a = standardize(a)", "a = standardize(log(a))"))
    with pytest.raises(RunError, match=r"standardize in feature 'a': its value is not finite on the "
                                       r"training split \(log or sqrt of a value <= 0"):
        _fit(spec, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_a_standardize_of_standardized_values_is_fitted_after_them(tmp_path: Path) -> None:
    """b's argument uses the standardized a: a is fitted first, then b on a's standardized values."""
    text = CONSTANT.replace("c = standardize(c)", "b = standardize(a * 2 + c)")
    a = np.linspace(-1, 3, 40) ** 2
    c = np.cos(np.arange(40.0))
    _csv(tmp_path / "data.csv", a, c, a)
    prog = load(_spec(tmp_path, text))
    train = prog.train("m")
    assert train is not None
    data = load_dataset(train, prog.model(), tmp_path)
    stats = standardize.fit(prog, None, data.train)
    x = data.train["a"]
    z = (x - np.float32(stats["a"].mean)) / np.float32(stats["a"].std)  # as the graph: float32
    b = _f64(z * np.float32(2) + data.train["c"])
    np.testing.assert_allclose(stats["b"].mean, b.mean(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stats["b"].std, b.std(), rtol=1e-6)
    np.testing.assert_allclose(stats["a"].std, _f64(x).std(), rtol=1e-12)


IMAGES = """
model pics {
  input  image: float32[N, 3, 4, 4]
  target label: int64[N]
  features { image = standardize(image) }
  head classify(classes=2)
  loss cross_entropy
}

train {
  data      npz("pics.npz", test=0.25)
  epochs    1
}
"""


def test_image_inputs_get_one_mean_and_std_per_channel(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    scale = np.array([1.0, 10.0, 100.0]).reshape(1, 3, 1, 1)
    image = (rng.standard_normal((40, 3, 4, 4)) * scale + scale).astype(np.float32)
    np.savez(tmp_path / "pics.npz", image=image, label=rng.integers(0, 2, 40))
    spec = _spec(tmp_path, IMAGES)
    prog = load(spec)
    train = prog.train("pics")
    assert train is not None
    data = load_dataset(train, prog.model(), tmp_path)
    stats = standardize.fit(prog, None, data.train, batch=7)  # several batches, merged
    x = _f64(data.train["image"])
    np.testing.assert_allclose(stats["image"].mean, x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(stats["image"].std, x.std(axis=(0, 2, 3)), rtol=1e-10)
    result, printed = _fit(spec, tmp_path / "run")
    assert "image (3 means and stds, one per column or channel)" in printed
    assert np.isfinite(result.metrics["accuracy"])


def test_resume_uses_the_saved_statistics(tmp_path: Path) -> None:
    """A resumed run compiles the graph it started with: the moments come from standardize.json."""
    spec = _spec(tmp_path, IRIS, epochs=2)
    run = tmp_path / "run"
    _fit(spec, run, epochs=1)
    saved = json.loads((run / standardize.FILE).read_text())
    saved["sepal_length"]["mean"] += 0.25  # marks the file: a refit would not give this
    (run / standardize.FILE).write_text(json.dumps(saved))
    _, printed = _fit(spec, run, resume=True)
    assert "standardize: fitted" not in printed
    props = {p.key: p.value for p in onnx.load(str(run / "model.onnx")).metadata_props}
    assert json.loads(props["standardize"]) == saved
