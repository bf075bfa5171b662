"""`standardize(x)` in the compiler: (x - mean) / std with given moments, the identity (and a note)
without them, the probe graph that exposes its argument, and errors at the spec's line and column."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from dlspec.compiler import compile_model, compile_training
from dlspec.compiler.lower.feature_probe import probe_features
from dlspec.compiler.lower.features import Moments
from dlspec.spec import load
from dlspec.spec.errors import CompileError, SpecError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train_helpers import with_outputs  # noqa: E402

TABLE = """
model m {
  input  x: float32[N, 2]
  input  t: float32[N]
  target y: float32[N]
  features {
    FEATURES
  }
  head regress(hidden=[4])
  loss mse
}
"""  # the first feature is on line 6, from column 5


def _load(tmp_path: Path, features: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "main.dlspec"
    path.write_text(TABLE.lstrip("\n").replace("FEATURES", features))
    return load(path)


def _value(proto, name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:  # type: ignore[no-untyped-def]
    sess = ort.InferenceSession(with_outputs(proto, [name]).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    return sess.run([name], feeds)[0]  # type: ignore[no-any-return]


FEEDS = {"x": np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 80.0]], np.float32),
         "t": np.array([2.0, 4.0, 9.0], np.float32)}


def test_with_moments_it_is_x_minus_mean_over_std_per_column(tmp_path: Path) -> None:
    prog = _load(tmp_path, "x = standardize(x)\n    t = standardize(t * 2)")
    stats = {"x": Moments(np.array([2.0, 20.0]), np.array([0.5, 4.0])),
             "t": Moments(np.array(6.0), np.array(3.0))}
    c = compile_model(prog, stats=stats)
    assert c.notes == []
    got_x = _value(c.onnx, "features.x.standardize:Div", FEEDS)
    np.testing.assert_allclose(got_x, (FEEDS["x"] - [2.0, 20.0]) / [0.5, 4.0], rtol=1e-6)
    got_t = _value(c.onnx, "features.t.standardize:Div", FEEDS)
    np.testing.assert_allclose(got_t, (FEEDS["t"] * 2 - 6.0) / 3.0, rtol=1e-6)
    props = {p.key: p.value for p in c.onnx.metadata_props}
    assert props["standardize"] == ('{"x": {"mean": [2.0, 20.0], "std": [0.5, 4.0]}, '
                                    '"t": {"mean": 6.0, "std": 3.0}}')
    tg = compile_training(prog, moments=stats)  # the training graph standardizes the same way
    assert any(n.name.startswith("features.x.standardize/Div") for n in tg.train_step.graph.node)


def test_without_moments_it_is_the_identity_with_a_note(tmp_path: Path) -> None:
    prog = _load(tmp_path, "x = standardize(x)\n    t = standardize(t)")
    c = compile_model(prog)
    assert len(c.notes) == 1 and "standardize in features x, t is compiled as the identity" in c.notes[0]
    np.testing.assert_array_equal(_value(c.onnx, "features.x.standardize:Identity", FEEDS), FEEDS["x"])
    assert "standardize" not in {p.key for p in c.onnx.metadata_props}
    assert not [n for n in c.onnx.graph.node if n.name.startswith("features.x.standardize/Div")]
    assert compile_training(prog).inference.notes == c.notes


def test_moments_of_another_shape_are_a_compile_error(tmp_path: Path) -> None:
    prog = _load(tmp_path, "x = standardize(x)")
    with pytest.raises(CompileError, match=r"the statistics of standardize in feature 'x' have shape \[\], "
                                           r"but its value \[N, 2\] needs \[2\]"):
        compile_model(prog, stats={"x": Moments(np.array(1.0), np.array(1.0))})


def test_the_probe_exposes_arguments_in_rounds(tmp_path: Path) -> None:
    """b standardizes a value computed from the standardized a: it waits until a is fitted."""
    prog = _load(tmp_path, "a = standardize(t + 1)\n    b = standardize(a * 3)\n    c = standardize(t)")
    first = probe_features(prog)
    assert first.ready == ["a", "c"]
    assert [o.name for o in first.onnx.graph.output] == ["standardize.a", "standardize.c"]
    sess = ort.InferenceSession(first.onnx.SerializeToString(), providers=["CPUExecutionProvider"])
    a_arg, c_arg = sess.run(None, FEEDS)
    np.testing.assert_array_equal(a_arg, FEEDS["t"] + 1)
    np.testing.assert_array_equal(c_arg, FEEDS["t"])
    stats = {"a": Moments(np.array(1.0), np.array(2.0)), "c": Moments(np.array(0.0), np.array(1.0))}
    second = probe_features(prog, stats=stats)
    assert second.ready == ["b"]
    sess = ort.InferenceSession(second.onnx.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, FEEDS)[0], (FEEDS["t"] + 1 - 1.0) / 2.0 * 3, rtol=1e-6)


ERRORS = {
    "twice in one feature": ("u = standardize(t) + standardize(t * 2)", "main.dlspec:6:26",
                             "feature 'u' calls standardize 2 times; one call per feature"),
    "a number": ("u = t + standardize(3)", "main.dlspec:6:13",
                 "standardize needs a value computed from the inputs, not a number"),
    "two arguments": ("u = standardize(t, x)", "main.dlspec:6:9", "standardize takes 1 argument(s)"),
    "normalize": ("u = normalize(t)", "main.dlspec:6:9",
                  "unknown function 'normalize'; features can use: abs, clip, exp, fill, index, log, max, "
                  "min, missing, neg, one_hot, pow, sqrt, standardize; for (x - mean) / std with "
                  "training-set statistics, use standardize(x)"),
    "a typo": ("u = standardise(t)", "main.dlspec:6:9",
               "unknown function 'standardise' (did you mean 'standardize'?)"),
}


@pytest.mark.parametrize("case", ERRORS, ids=list(ERRORS))
def test_errors_are_located(tmp_path: Path, case: str) -> None:
    features, where, message = ERRORS[case]
    with pytest.raises(SpecError) as err:
        compile_model(_load(tmp_path, features))
    text = str(err.value)
    assert text.startswith(f"{tmp_path / where}: error: "), text
    assert message in text, text
