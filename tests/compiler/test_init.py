"""Weight initialisation: every initializer's distribution, fan-in/fan-out, rules and seeding.

The statistical checks draw large tensors (tens to hundreds of thousands of values) and use
tolerances of a few standard errors, tight enough that a wrong formula fails: fan_in and fan_out
swapped (a factor 4 here), a uniform bound off by sqrt(3) (a factor 3 in the variance), a normal
drawn where a uniform belongs (kurtosis 3 against 1.8), or a gain ignored.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import numpy_helper

from dlspec.compiler import Compiled, compile_model
from dlspec.compiler.lower.init import InitPolicy, make
from dlspec.spec.errors import CompileError, SpecError
from dlspec.spec.loader import load
from dlspec.spec.model import Initializer

# ---------------------------------------------------------------- helpers


def compile_text(tmp_path: Path, text: str, seed: int | None = None, name: str = "m") -> Compiled:
    path = tmp_path / f"{name}.dlspec"
    path.write_text(textwrap.dedent(text))
    return compile_model(load(path), None, seed)


def weights(c: Compiled) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in c.onnx.graph.initializer}


def _moments(w: np.ndarray) -> tuple[int, float, float, float]:
    x = w.astype(np.float64).ravel()
    mean = float(x.mean())
    var = float(x.var())
    kurt = float(((x - mean) ** 4).mean() / var**2)
    return x.size, mean, var, kurt


def assert_normal(w: np.ndarray, std: float) -> None:
    """Zero-mean normal with this standard deviation."""
    assert w.dtype == np.float32
    n, mean, var, kurt = _moments(w)
    rel = max(0.02, 5 * np.sqrt(2 / n))  # 5 standard errors of a variance estimate
    assert var == pytest.approx(std**2, rel=rel), f"std {np.sqrt(var):.6g}, expected {std:.6g}"
    assert abs(mean) < 6 * std / np.sqrt(n)
    assert 3 - 6 * np.sqrt(24 / n) < kurt < 3 + 6 * np.sqrt(24 / n), f"kurtosis {kurt:.3f}: not normal"


def assert_uniform(w: np.ndarray, bound: float) -> None:
    """U(-bound, bound): variance bound^2 / 3, every value inside, the extremes reached."""
    assert w.dtype == np.float32
    n, mean, var, kurt = _moments(w)
    rel = max(0.02, 5 * np.sqrt(0.8 / n))
    assert var == pytest.approx(bound**2 / 3, rel=rel), \
        f"bound {np.sqrt(3 * var):.6g}, expected {bound:.6g}"
    assert np.abs(w).max() <= bound * (1 + 1e-6)
    assert np.abs(w).max() >= bound * (1 - 50 / n)
    assert abs(mean) < 6 * bound / np.sqrt(3 * n)
    tol = max(0.05, 6 * np.sqrt(5.76 / n))  # 6 standard errors of a uniform's sample kurtosis
    assert 1.8 - tol < kurt < 1.8 + tol, f"kurtosis {kurt:.3f}: not uniform"


def draw(kind: str, shape: tuple[int, ...] = (512, 512), fan_in: int = 1024, fan_out: int = 256,
         **kw: Any) -> np.ndarray:
    return make(Initializer(kind=kind, **kw), shape, fan_in, fan_out,  # type: ignore[arg-type]
                np.random.default_rng(1234))


# ---------------------------------------------------------------- the formulas


def test_xavier_normal_variance_is_2_over_fan_in_plus_fan_out() -> None:
    assert_normal(draw("xavier_normal"), np.sqrt(2 / (1024 + 256)))


def test_xavier_uniform_bound_is_sqrt_6_over_fan_in_plus_fan_out() -> None:
    assert_uniform(draw("xavier_uniform"), np.sqrt(6 / (1024 + 256)))


def test_kaiming_normal_variance_is_2_over_fan_in() -> None:
    assert_normal(draw("kaiming_normal"), np.sqrt(2 / 1024))  # fan_out would give 2 / 256


def test_kaiming_uniform_bound_is_sqrt_6_over_fan_in() -> None:
    assert_uniform(draw("kaiming_uniform"), np.sqrt(6 / 1024))


@pytest.mark.parametrize("kind,std", [("xavier_normal", np.sqrt(2 / 1280)),
                                      ("kaiming_normal", np.sqrt(2 / 1024))])
def test_gain_scales_the_standard_deviation(kind: str, std: float) -> None:
    assert_normal(draw(kind, gain=2.5), 2.5 * std)


@pytest.mark.parametrize("kind,bound", [("xavier_uniform", np.sqrt(6 / 1280)),
                                        ("kaiming_uniform", np.sqrt(6 / 1024))])
def test_gain_scales_the_uniform_bound(kind: str, bound: float) -> None:
    assert_uniform(draw(kind, gain=0.5), 0.5 * bound)


def test_normal_has_the_given_std_whatever_the_fans() -> None:
    assert_normal(draw("normal", std=0.05), 0.05)
    assert_normal(draw("normal", fan_in=3, fan_out=5000, std=0.05), 0.05)


def test_uniform_has_the_given_limit() -> None:
    assert_uniform(draw("uniform", limit=0.3), 0.3)


@pytest.mark.parametrize("kind,kw,value", [("zeros", {}, 0.0), ("ones", {}, 1.0),
                                           ("constant", {"value": -0.25}, -0.25)])
def test_constant_initializers_are_exact(kind: str, kw: dict[str, Any], value: float) -> None:
    w = draw(kind, shape=(7, 3, 2), **kw)
    assert w.dtype == np.float32 and w.shape == (7, 3, 2)
    assert np.all(w == np.float32(value))


@pytest.mark.parametrize("kind", ["xavier_normal", "xavier_uniform", "kaiming_normal",
                                  "kaiming_uniform", "normal", "uniform"])
def test_random_initializers_keep_the_shape_and_are_float32(kind: str) -> None:
    w = draw(kind, shape=(4, 3, 5, 2))
    assert w.shape == (4, 3, 5, 2) and w.dtype == np.float32
    assert len(np.unique(w)) == w.size  # no repeated draws


# ---------------------------------------------------------------- fans, through compiled specs


def test_conv_fan_in_is_in_channels_times_kernel(tmp_path: Path) -> None:
    # default conv init is kaiming_normal: Var = 2 / (64 * 3 * 3); out channels (128) do not enter
    c = compile_text(tmp_path, """
        model m {
          input x: float32[N, 64, 8, 8]
          backbone { stem: conv(128, k=3) }
        }
    """)
    w = weights(c)["backbone.stem.conv1.weight"]
    assert w.shape == (128, 64, 3, 3)
    assert_normal(w, np.sqrt(2 / (64 * 9)))


def test_conv_fan_in_and_fan_out_under_xavier(tmp_path: Path) -> None:
    # fan_in = 64 * 3 * 5, fan_out = 128 * 3 * 5 (a non-square kernel: both sides count)
    c = compile_text(tmp_path, """
        model m {
          input x: float32[N, 64, 8, 8]
          backbone { stem: conv(128, k=[3, 5]) }
        }
        train { init xavier_uniform }
    """)
    w = weights(c)["backbone.stem.conv1.weight"]
    assert w.shape == (128, 64, 3, 5)
    assert_uniform(w, np.sqrt(6 / (64 * 15 + 128 * 15)))


@pytest.mark.parametrize("groups", [1, 4, 64])
def test_grouped_conv_fan_in_is_in_over_groups_times_kernel(tmp_path: Path, groups: int) -> None:
    c = compile_text(tmp_path, f"""
        model m {{
          input x: float32[N, 64, 8, 8]
          backbone {{ stem: conv(256, k=3, groups={groups}) }}
        }}
        train {{ init kaiming_uniform }}
    """)
    w = weights(c)["backbone.stem.conv1.weight"]
    assert w.shape == (256, 64 // groups, 3, 3)
    assert_uniform(w, np.sqrt(6 / (64 // groups * 9)))


def test_linear_fan_in_is_in_features(tmp_path: Path) -> None:
    c = compile_text(tmp_path, """
        model m {
          input x: float32[N, 1024]
          head { fc: linear(256) }
        }
        train { init kaiming_normal }
    """)
    w = weights(c)["head.fc.linear1.weight"]
    assert w.shape == (256, 1024)
    assert_normal(w, np.sqrt(2 / 1024))  # with fan_out: 2 / 256


def test_defaults_are_kaiming_normal_for_conv_and_xavier_uniform_for_linear(tmp_path: Path) -> None:
    c = compile_text(tmp_path, """
        model m {
          input x: float32[N, 64, 8, 8]
          backbone { stem: conv(64, k=3) -> relu }
          head { fc: gap -> flatten -> linear(512) }
        }
    """)
    w = weights(c)
    assert_normal(w["backbone.stem.conv1.weight"], np.sqrt(2 / 576))
    assert_uniform(w["head.fc.linear1.weight"], np.sqrt(6 / (64 + 512)))


# ---------------------------------------------------------------- rules from the train block

RULES_MODEL = """
model m {
  input x: float32[N, 64, 8, 8]
  backbone {
    stem: conv(64, k=3) -> bn -> relu
    body: conv(64, k=3) -> relu -> conv(64, k=3, init=xavier_uniform) -> relu
  }
  neck { proj: gap -> flatten -> linear(512) -> relu }
  head { fc: linear(512) }
}
"""


@pytest.fixture(scope="module")
def ruled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    # The path rule for the stem conv comes before the kind rule for convs and must still win.
    c = compile_text(tmp_path_factory.mktemp("rules"), RULES_MODEL + """
        train {
          init kaiming_normal, backbone.stem.conv1: normal(0.01), linear: xavier_normal,
               head: zeros, conv: kaiming_uniform
        }
    """)
    return weights(c)


def test_a_path_rule_beats_a_kind_rule(ruled: dict[str, np.ndarray]) -> None:
    assert_normal(ruled["backbone.stem.conv1.weight"], 0.01)


def test_a_kind_rule_beats_the_global_rule(ruled: dict[str, np.ndarray]) -> None:
    assert_uniform(ruled["backbone.body.conv1.weight"], np.sqrt(6 / 576))  # kaiming_uniform
    assert_normal(ruled["neck.proj.linear1.weight"], np.sqrt(2 / (64 + 512)))  # xavier_normal


def test_a_section_rule_beats_a_kind_rule(ruled: dict[str, np.ndarray]) -> None:
    assert np.all(ruled["head.fc.linear1.weight"] == 0)


def test_a_per_layer_init_beats_every_rule(ruled: dict[str, np.ndarray]) -> None:
    assert_uniform(ruled["backbone.body.conv2.weight"], np.sqrt(6 / (576 + 576)))


def test_biases_start_at_zero_and_bn_at_its_identity(ruled: dict[str, np.ndarray]) -> None:
    assert "backbone.stem.conv1.bias" not in ruled  # a conv followed by bn has no bias
    for name in ("backbone.body.conv1.bias", "backbone.body.conv2.bias", "neck.proj.linear1.bias",
                 "head.fc.linear1.bias", "backbone.stem.bn1.bias", "backbone.stem.bn1.running_mean"):
        assert np.all(ruled[name] == 0), name
    for name in ("backbone.stem.bn1.weight", "backbone.stem.bn1.running_var"):
        assert np.all(ruled[name] == 1), name


def test_rules_do_not_touch_biases_or_bn(tmp_path: Path) -> None:
    c = compile_text(tmp_path, RULES_MODEL + "train { init constant(0.5) }")
    w = weights(c)
    assert np.all(w["backbone.body.conv1.weight"] == 0.5)
    assert np.all(w["head.fc.linear1.bias"] == 0) and np.all(w["backbone.body.conv1.bias"] == 0)
    assert np.all(w["backbone.stem.bn1.weight"] == 1) and np.all(w["backbone.stem.bn1.bias"] == 0)


def test_the_global_rule_replaces_the_per_kind_defaults(tmp_path: Path) -> None:
    w = weights(compile_text(tmp_path, RULES_MODEL + "train { init kaiming_normal }"))
    assert_normal(w["head.fc.linear1.weight"], np.sqrt(2 / 512))
    assert_normal(w["backbone.stem.conv1.weight"], np.sqrt(2 / 576))


def test_a_deeper_path_beats_a_shallower_one_and_prefixes_stop_at_dots(tmp_path: Path) -> None:
    c = compile_text(tmp_path, """
        model m {
          input x: float32[N, 8, 8, 8]
          backbone {
            stage1: conv(8) -> conv(8)
            stage10: conv(8)
          }
        }
        train { init backbone: ones, backbone.stage1.conv2: constant(3), backbone.stage1: zeros }
    """)
    w = weights(c)
    assert np.all(w["backbone.stage1.conv1.weight"] == 0)
    assert np.all(w["backbone.stage1.conv2.weight"] == 3)
    assert np.all(w["backbone.stage10.conv1.weight"] == 1)  # 'backbone.stage1' is not its prefix


def test_per_layer_init_takes_arguments(tmp_path: Path) -> None:
    c = compile_text(tmp_path, """
        model m {
          input x: float32[N, 64, 8, 8]
          backbone {
            a: conv(64, init=normal(0.05))
            b: conv(64, init=constant(0.25))
            c: conv(64, init=kaiming_normal(2))
          }
        }
    """)
    w = weights(c)
    assert_normal(w["backbone.a.conv1.weight"], 0.05)
    assert np.all(w["backbone.b.conv1.weight"] == 0.25)
    assert_normal(w["backbone.c.conv1.weight"], 2 * np.sqrt(2 / 576))


def test_an_unknown_per_layer_initializer_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="unknown initializer 'xavier_normel'.*did you mean 'xavier_normal'"):
        compile_text(tmp_path, """
            model m {
              input x: float32[N, 8, 8, 8]
              backbone { stem: conv(8, init=xavier_normel) }
            }
        """)


def test_a_rule_for_a_missing_layer_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CompileError, match="'backbone.stem.conv9' matches no layer.*backbone.stem.conv1"):
        compile_text(tmp_path, RULES_MODEL + "train { init backbone.stem.conv9: zeros }")


@pytest.mark.parametrize("target", ["bn", "relu", "backbone.stem.bn1"])
def test_a_rule_for_layers_without_initialised_weights_is_an_error(tmp_path: Path, target: str) -> None:
    # bn's scale starts at one and its shift at zero whatever the rules say: accepting the rule
    # would silently ignore it.
    with pytest.raises(CompileError, match=f"init rule '{target}' matches only layers without"):
        compile_text(tmp_path, RULES_MODEL + f"train {{ init {target}: normal(0.02) }}")


def test_a_rule_whose_matches_all_go_to_more_specific_ones_is_accepted(tmp_path: Path) -> None:
    c = compile_text(tmp_path, """
        model m {
          input x: float32[N, 8, 8, 8]
          backbone { stem: conv(8, init=ones) -> conv(8) }
        }
        train { init conv: zeros, backbone.stem.conv2: constant(2) }
    """)
    w = weights(c)
    assert np.all(w["backbone.stem.conv1.weight"] == 1)
    assert np.all(w["backbone.stem.conv2.weight"] == 2)


# ---------------------------------------------------------------- seeding

SEEDED = """
model m {
  input x: float32[N, 16, 8, 8]
  backbone {
    stem: conv(16, k=3) -> bn -> relu
    body: conv(16, k=3) -> relu
  }
  head { fc: gap -> flatten -> linear(10) }
}
"""


def _random_weights(w: dict[str, np.ndarray]) -> list[str]:
    return [k for k in w if k.endswith(".weight") and ".bn" not in k]


def test_same_seed_gives_the_same_weights(tmp_path: Path) -> None:
    a = compile_text(tmp_path, SEEDED, seed=3)
    b = compile_text(tmp_path, SEEDED, seed=3)
    assert a.onnx.SerializeToString() == b.onnx.SerializeToString()


def test_different_seeds_give_different_weights(tmp_path: Path) -> None:
    a, b = weights(compile_text(tmp_path, SEEDED, seed=1)), weights(compile_text(tmp_path, SEEDED, seed=2))
    names = _random_weights(a)
    assert len(names) == 3
    for name in names:
        assert not np.array_equal(a[name], b[name]), name
    assert np.array_equal(a["backbone.stem.bn1.weight"], b["backbone.stem.bn1.weight"])


def test_the_train_blocks_seed_is_the_default(tmp_path: Path) -> None:
    from_block = weights(compile_text(tmp_path, SEEDED + "train { seed 7 }", name="a"))
    explicit = weights(compile_text(tmp_path, SEEDED, seed=7, name="b"))
    zero = weights(compile_text(tmp_path, SEEDED, name="c"))
    overridden = weights(compile_text(tmp_path, SEEDED + "train { seed 7 }", seed=0, name="d"))
    for name in _random_weights(explicit):
        assert np.array_equal(from_block[name], explicit[name])
        assert np.array_equal(overridden[name], zero[name])
        assert not np.array_equal(from_block[name], zero[name])


def test_parameters_of_one_shape_draw_different_values(tmp_path: Path) -> None:
    w = weights(compile_text(tmp_path, SEEDED))
    assert w["backbone.stem.conv1.weight"].shape == w["backbone.body.conv1.weight"].shape
    assert not np.array_equal(w["backbone.stem.conv1.weight"], w["backbone.body.conv1.weight"])


def test_adding_a_layer_leaves_the_other_layers_weights_alone(tmp_path: Path) -> None:
    before = weights(compile_text(tmp_path, SEEDED, name="before"))
    grown = SEEDED.replace("body: conv(16, k=3) -> relu",
                           "extra: conv(16, k=1) -> relu\n    body: conv(16, k=3) -> relu -> conv(16)")
    after = weights(compile_text(tmp_path, grown, name="after"))
    assert set(before) < set(after)
    assert {"backbone.extra.conv1.weight", "backbone.body.conv2.weight"} <= set(after)
    for name, value in before.items():
        assert np.array_equal(value, after[name]), name


def test_a_negative_seed_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CompileError, match="seed must be a whole number >= 0, got -1"):
        compile_text(tmp_path, SEEDED, seed=-1)
    with pytest.raises(CompileError, match="seed must be a whole number >= 0"):
        InitPolicy(seed=-5)
