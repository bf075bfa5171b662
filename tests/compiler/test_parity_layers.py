"""Forward parity of every layer kind, and of the features block, against PyTorch / numpy.

Each case compiles a tiny spec, gives its parameters random non-trivial values, runs the ONNX
graph in onnxruntime and compares with torch.nn.functional written by hand for the same layer.
The reference reads the parameters by spec path; every parameter of the graph must be read.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch.nn.functional as F  # noqa: E402
from parity_helpers import assert_parity, compile_text, rand, randomize, run_ort  # noqa: E402

torch.set_num_threads(2)


class Params(dict):  # type: ignore[type-arg]
    """Parameters as torch tensors; remembers which ones the reference used."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        super().__init__({k: torch.from_numpy(v.copy()) for k, v in arrays.items()})
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)


Ref = Callable[[Any, Params], Any]


def spec_for(chain: str, shape: tuple[int, ...]) -> str:
    dims = ", ".join(["N", *map(str, shape[1:])])
    return f"model m {{\n  input x: float32[{dims}]\n  backbone {{\n    s: {chain}\n  }}\n}}\n"


def check_parity(tmp_path: Path, body: str, shape: tuple[int, ...], ref: Ref, *, stages: bool = False,
          expect_params: set[str] | None = None) -> None:
    """`body` is one stage's chain (or, with stages=True, the whole backbone body)."""
    if stages:
        dims = ", ".join(["N", *map(str, shape[1:])])
        text = f"model m {{\n  input x: float32[{dims}]\n  backbone {{\n{body}\n  }}\n}}\n"
    else:
        text = spec_for(body, shape)
    c = compile_text(tmp_path, text)
    params = randomize(c, seed=3)
    if expect_params is not None:
        assert set(params) == expect_params
    x = rand(shape, seed=5)
    got = run_ort(c.onnx, {"x": x})
    p = Params(params)
    with torch.no_grad():
        want = ref(torch.from_numpy(x), p)
    assert p.read == set(params), f"reference did not use {sorted(set(params) - p.read)}"
    assert_parity(got, want, body)


S = "backbone.s"


def conv(p: Params, path: str, x: Any, bias: bool = True, **kw: Any) -> Any:
    return F.conv2d(x, p[f"{path}.weight"], p[f"{path}.bias"] if bias else None, **kw)


def bn(p: Params, path: str, x: Any, eps: float = 1e-5) -> Any:
    return F.batch_norm(x, p[f"{path}.running_mean"], p[f"{path}.running_var"], p[f"{path}.weight"],
                        p[f"{path}.bias"], training=False, eps=eps)


def lin(p: Params, path: str, x: Any, bias: bool = True) -> Any:
    return F.linear(x, p[f"{path}.weight"], p[f"{path}.bias"] if bias else None)


C1 = f"{S}.conv1"
IMG = (2, 4, 9, 10)  # odd and even sizes: 'same' and strided windows meet both

# ---------------------------------------------------------------- conv

CONV_CASES: list[tuple[str, tuple[int, ...], Ref]] = [
    ("conv(6)", IMG, lambda x, p: conv(p, C1, x, padding=1)),
    ("conv(6, k=3, stride=2)", IMG, lambda x, p: conv(p, C1, x, stride=2, padding=1)),
    ("conv(6, k=7, stride=2)", (2, 3, 16, 15), lambda x, p: conv(p, C1, x, stride=2, padding=3)),
    ("conv(6, k=5, padding=same)", IMG, lambda x, p: conv(p, C1, x, padding="same")),
    ("conv(6, k=4)", IMG, lambda x, p: conv(p, C1, x, padding="same")),  # even k: extra pad after
    ("conv(6, k=[2, 3])", IMG, lambda x, p: conv(p, C1, x, padding="same")),
    ("conv(6, k=3, dilation=2)", IMG, lambda x, p: conv(p, C1, x, padding=2, dilation=2)),
    ("conv(6, k=4, dilation=[1, 2])", IMG, lambda x, p: conv(p, C1, x, padding="same", dilation=(1, 2))),
    ("conv(6, k=5, padding=valid)", IMG, lambda x, p: conv(p, C1, x)),
    ("conv(6, k=3, stride=2, padding=valid)", IMG, lambda x, p: conv(p, C1, x, stride=2)),
    ("conv(6, k=3, padding=2)", IMG, lambda x, p: conv(p, C1, x, padding=2)),
    ("conv(6, k=3, stride=[2, 1], padding=[0, 1])", IMG,
     lambda x, p: conv(p, C1, x, stride=(2, 1), padding=(0, 1))),
    ("conv(6, k=[3, 5], padding=[1, 2])", IMG, lambda x, p: conv(p, C1, x, padding=(1, 2))),
    ("conv(6, k=3, stride=2, dilation=2, padding=1)", IMG,
     lambda x, p: conv(p, C1, x, stride=2, padding=1, dilation=2)),
    ("conv(6, k=1, stride=2, padding=0)", IMG, lambda x, p: conv(p, C1, x, stride=2)),
    ("conv(8, k=3, groups=2)", IMG, lambda x, p: conv(p, C1, x, padding=1, groups=2)),
    ("conv(4, k=3, groups=4)", IMG, lambda x, p: conv(p, C1, x, padding=1, groups=4)),  # depthwise
    ("conv(8, k=3, stride=2, groups=4)", IMG,  # depthwise with a channel multiplier
     lambda x, p: conv(p, C1, x, stride=2, padding=1, groups=4)),
    ("conv(6, k=3, bias=false)", IMG, lambda x, p: conv(p, C1, x, bias=False, padding=1)),
    ("conv(6, k=3, bias=true)", IMG, lambda x, p: conv(p, C1, x, padding=1)),
]


@pytest.mark.parametrize("body,shape,ref", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_conv(tmp_path: Path, body: str, shape: tuple[int, ...], ref: Ref) -> None:
    check_parity(tmp_path, body, shape, ref)


def test_conv_then_bn_drops_the_conv_bias(tmp_path: Path) -> None:
    check_parity(tmp_path, "conv(6, k=3, stride=2) -> bn -> relu", IMG,
          lambda x, p: F.relu(bn(p, f"{S}.bn1", conv(p, C1, x, bias=False, stride=2, padding=1))),
          expect_params={f"{C1}.weight"} | {f"{S}.bn1.{k}" for k in
                                             ("weight", "bias", "running_mean", "running_var")})


def test_conv_then_bn_keeps_an_explicit_bias(tmp_path: Path) -> None:
    check_parity(tmp_path, "conv(6, k=3, bias=true) -> bn", IMG,
          lambda x, p: bn(p, f"{S}.bn1", conv(p, C1, x, padding=1)))


def test_conv_then_relu_keeps_its_bias(tmp_path: Path) -> None:
    check_parity(tmp_path, "conv(6, k=3) -> relu -> conv(5, k=1) -> bn", IMG,
          lambda x, p: bn(p, f"{S}.bn1", conv(p, f"{S}.conv2", F.relu(conv(p, C1, x, padding=1)),
                                              bias=False)))


# ---------------------------------------------------------------- normalisation and activations

SIMPLE_CASES: list[tuple[str, tuple[int, ...], Ref]] = [
    ("bn", IMG, lambda x, p: bn(p, f"{S}.bn1", x)),
    ("bn(eps=0.001, momentum=0.3)", IMG, lambda x, p: bn(p, f"{S}.bn1", x, eps=1e-3)),
    ("bn", (2, 6), lambda x, p: bn(p, f"{S}.bn1", x)),
    ("flatten -> bn", (2, 2, 3, 2), lambda x, p: bn(p, f"{S}.bn1", torch.flatten(x, 1))),
    ("bn", (2, 3, 5), lambda x, p: bn(p, f"{S}.bn1", x)),
    ("relu", IMG, lambda x, p: F.relu(x)),
    ("leaky_relu", IMG, lambda x, p: F.leaky_relu(x, 0.01)),
    ("leaky_relu(0.2)", IMG, lambda x, p: F.leaky_relu(x, 0.2)),
    ("leaky_relu(slope=0.3)", (2, 7), lambda x, p: F.leaky_relu(x, 0.3)),
    ("gelu", IMG, lambda x, p: F.gelu(x)),
    ("silu", IMG, lambda x, p: F.silu(x)),
    ("sigmoid", IMG, lambda x, p: torch.sigmoid(x)),
    ("tanh", IMG, lambda x, p: torch.tanh(x)),
    ("softmax", (2, 7), lambda x, p: F.softmax(x, dim=1)),
    ("softmax", IMG, lambda x, p: F.softmax(x, dim=1)),
    ("softmax(axis=-1)", IMG, lambda x, p: F.softmax(x, dim=-1)),
    ("softmax(axis=2)", IMG, lambda x, p: F.softmax(x, dim=2)),
    ("identity", IMG, lambda x, p: x),
    ("dropout", IMG, lambda x, p: F.dropout(x, 0.5, training=False)),
    ("dropout(0.3) -> relu", (2, 7), lambda x, p: F.relu(x)),
    ("dropout(0)", (2, 7), lambda x, p: x),
]


@pytest.mark.parametrize("body,shape,ref", SIMPLE_CASES,
                         ids=[f"{c[0]}-{len(c[1])}d" for c in SIMPLE_CASES])
def test_norm_and_activations(tmp_path: Path, body: str, shape: tuple[int, ...], ref: Ref) -> None:
    check_parity(tmp_path, body, shape, ref)


# ---------------------------------------------------------------- pooling, reshaping, dense

POOL_CASES: list[tuple[str, tuple[int, ...], Ref]] = [
    ("maxpool", IMG, lambda x, p: F.max_pool2d(x, 2)),
    ("maxpool(2)", (2, 3, 8, 8), lambda x, p: F.max_pool2d(x, 2)),
    ("maxpool(3, stride=2, padding=1)", IMG, lambda x, p: F.max_pool2d(x, 3, 2, 1)),
    ("maxpool(3, stride=1)", IMG, lambda x, p: F.max_pool2d(x, 3, 1)),
    ("maxpool(k=[2, 3], stride=[1, 2], padding=[1, 1])", IMG,
     lambda x, p: F.max_pool2d(x, (2, 3), (1, 2), (1, 1))),
    # negative inputs: padding must never win a max
    ("relu -> maxpool(3, stride=2, padding=1)", IMG,
     lambda x, p: F.max_pool2d(F.relu(x), 3, 2, 1)),
    ("avgpool", IMG, lambda x, p: F.avg_pool2d(x, 2)),
    ("avgpool(3)", IMG, lambda x, p: F.avg_pool2d(x, 3)),
    ("avgpool(3, stride=2, padding=1)", IMG,
     lambda x, p: F.avg_pool2d(x, 3, 2, 1, count_include_pad=True)),
    ("avgpool(3, stride=1, padding=1)", IMG,
     lambda x, p: F.avg_pool2d(x, 3, 1, 1, count_include_pad=True)),
    ("avgpool(k=[2, 4], stride=[2, 1], padding=[1, 2])", IMG,
     lambda x, p: F.avg_pool2d(x, (2, 4), (2, 1), (1, 2), count_include_pad=True)),
    ("gap", IMG, lambda x, p: F.adaptive_avg_pool2d(x, 1)),
    ("gap -> flatten", IMG, lambda x, p: torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)),
    ("gap", (2, 3, 5), lambda x, p: F.adaptive_avg_pool1d(x, 1)),
    ("flatten", IMG, lambda x, p: torch.flatten(x, 1)),
    ("flatten", (2, 5), lambda x, p: x),
    ("flatten -> linear(5)", (2, 3, 4, 2), lambda x, p: lin(p, f"{S}.linear1", torch.flatten(x, 1))),
    ("linear(5)", (2, 7), lambda x, p: lin(p, f"{S}.linear1", x)),
    ("linear(5, bias=false)", (2, 7), lambda x, p: lin(p, f"{S}.linear1", x, bias=False)),
    ("linear(6) -> bn -> relu -> linear(3)", (2, 7),
     lambda x, p: lin(p, f"{S}.linear2", F.relu(bn(p, f"{S}.bn1", lin(p, f"{S}.linear1", x))))),
    ("upsample", (2, 3, 4, 5), lambda x, p: F.interpolate(x, scale_factor=2, mode="nearest")),
    ("upsample(3)", (2, 3, 4, 5), lambda x, p: F.interpolate(x, scale_factor=3, mode="nearest")),
    ("upsample(2) -> conv(4, k=3)", (2, 3, 3, 5),
     lambda x, p: conv(p, C1, F.interpolate(x, size=(6, 10), mode="nearest"), padding=1)),
]


@pytest.mark.parametrize("body,shape,ref", POOL_CASES,
                         ids=[f"{c[0]}-{len(c[1])}d" for c in POOL_CASES])
def test_pool_reshape_dense(tmp_path: Path, body: str, shape: tuple[int, ...], ref: Ref) -> None:
    check_parity(tmp_path, body, shape, ref)


# ---------------------------------------------------------------- joins and residuals

def test_add_from_stages(tmp_path: Path) -> None:
    body = """    a: conv(4, k=3) -> relu
    b: conv(4, k=1) -> tanh
    c: add(from=[a, b])"""

    def ref(x: Any, p: Params) -> Any:
        a = F.relu(conv(p, "backbone.a.conv1", x, padding=1))
        b = torch.tanh(conv(p, "backbone.b.conv1", a))
        return a + b

    check_parity(tmp_path, body, IMG, ref, stages=True)


def test_add_three_with_repeated_stage(tmp_path: Path) -> None:
    body = """    a: conv(4, k=3)
    b: relu
    c: sigmoid
    d: add(from=[a, b, c]) -> conv(3, k=1)"""

    def ref(x: Any, p: Params) -> Any:
        a = conv(p, "backbone.a.conv1", x, padding=1)
        b = F.relu(a)
        c = torch.sigmoid(b)
        return conv(p, "backbone.d.conv1", a + b + c)

    check_parity(tmp_path, body, IMG, ref, stages=True)


def test_concat_from_stages(tmp_path: Path) -> None:
    body = """    a: conv(3, k=3)
    b: conv(5, k=3, stride=1) -> bn
    c: concat(from=[a, b]) -> conv(2, k=1)"""

    def ref(x: Any, p: Params) -> Any:
        a = conv(p, "backbone.a.conv1", x, padding=1)
        b = bn(p, "backbone.b.bn1", conv(p, "backbone.b.conv1", a, bias=False, padding=1))
        return conv(p, "backbone.c.conv1", torch.cat([a, b], 1))

    check_parity(tmp_path, body, IMG, ref, stages=True)


def test_concat_other_axis(tmp_path: Path) -> None:
    body = """    a: conv(3, k=3)
    b: conv(3, k=1)
    c: concat(from=[b, a], axis=3)"""

    def ref(x: Any, p: Params) -> Any:
        a = conv(p, "backbone.a.conv1", x, padding=1)
        b = conv(p, "backbone.b.conv1", a)
        return torch.cat([b, a], 3)

    check_parity(tmp_path, body, IMG, ref, stages=True)


def test_concat_dense_from_stages(tmp_path: Path) -> None:
    body = """    a: linear(4) -> relu
    b: linear(3)
    c: concat(from=[a, b]) -> linear(2)"""

    def ref(x: Any, p: Params) -> Any:
        a = F.relu(lin(p, "backbone.a.linear1", x))
        b = lin(p, "backbone.b.linear1", a)
        return lin(p, "backbone.c.linear1", torch.cat([a, b], 1))

    check_parity(tmp_path, body, (2, 6), ref, stages=True)


def test_residual_identity(tmp_path: Path) -> None:
    def ref(x: Any, p: Params) -> Any:
        y = F.relu(bn(p, f"{S}.bn1", conv(p, C1, x, bias=False, padding=1)))
        y = bn(p, f"{S}.bn2", conv(p, f"{S}.conv2", y, bias=False, padding=1))
        return F.relu(y + x)

    check_parity(tmp_path, "residual { conv(4, k=3) -> bn -> relu -> conv(4, k=3) -> bn } -> relu", IMG, ref)


def test_residual_projection_stride_and_channels(tmp_path: Path) -> None:
    def ref(x: Any, p: Params) -> Any:
        y = F.relu(bn(p, f"{S}.bn1", conv(p, C1, x, bias=False, stride=2, padding=1)))
        y = bn(p, f"{S}.bn2", conv(p, f"{S}.conv2", y, bias=False, padding=1))
        short = bn(p, f"{S}.shortcut.bn", conv(p, f"{S}.shortcut.conv", x, bias=False, stride=2))
        return F.relu(y + short)

    check_parity(tmp_path, "residual { conv(8, k=3, stride=2) -> bn -> relu -> conv(8, k=3) -> bn } -> relu",
          (2, 4, 10, 8), ref)


def test_residual_projection_channels_only(tmp_path: Path) -> None:
    def ref(x: Any, p: Params) -> Any:
        y = conv(p, C1, x, padding=1)
        short = bn(p, f"{S}.shortcut.bn", conv(p, f"{S}.shortcut.conv", x, bias=False))
        return y + short

    check_parity(tmp_path, "residual { conv(6, k=3) }", IMG, ref)


def test_residual_forced_conv_shortcut(tmp_path: Path) -> None:
    def ref(x: Any, p: Params) -> Any:
        y = torch.tanh(conv(p, C1, x, padding=1))
        short = bn(p, f"{S}.shortcut.bn", conv(p, f"{S}.shortcut.conv", x, bias=False))
        return y + short

    check_parity(tmp_path, "residual(shortcut=conv) { conv(4, k=3) -> tanh }", IMG, ref)


def test_residual_dense_projection(tmp_path: Path) -> None:
    def ref(x: Any, p: Params) -> Any:
        y = lin(p, f"{S}.linear1", x)
        return y + lin(p, f"{S}.shortcut.linear", x, bias=False)

    check_parity(tmp_path, "residual { linear(5) }", (2, 7), ref)


def test_residual_dense_identity(tmp_path: Path) -> None:
    check_parity(tmp_path, "residual { linear(7) -> gelu } -> silu", (2, 7),
          lambda x, p: F.silu(F.gelu(lin(p, f"{S}.linear1", x)) + x))


# ---------------------------------------------------------------- features block vs numpy

def _feature_model(defs: str, extra_inputs: str = "") -> str:
    return f"""model f {{
  input a: float32[N]
  input b: float32[N]
  input c: float32[N]
{extra_inputs}
  features {{
{defs}
  }}
  head {{ h: identity }}
}}
"""


def _abc() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {"a": rng.uniform(0.5, 3.0, 6).astype(np.float32),   # positive: log, sqrt, pow
            "b": rng.uniform(0.2, 2.0, 6).astype(np.float32),
            "c": rng.normal(0.0, 2.0, 6).astype(np.float32)}    # both signs: abs, clip, min, max


FEATURES: list[tuple[str, Callable[[Any, Any, Any], Any]]] = [
    ("log(a)", lambda a, b, c: np.log(a)),
    ("exp(c)", lambda a, b, c: np.exp(c)),
    ("sqrt(a)", lambda a, b, c: np.sqrt(a)),
    ("abs(c)", lambda a, b, c: np.abs(c)),
    ("pow(a, 3)", lambda a, b, c: np.power(a, 3)),
    ("pow(a, b)", lambda a, b, c: np.power(a, b)),
    ("a ** 0.5", lambda a, b, c: a**0.5),
    ("2 ** c", lambda a, b, c: 2.0**c),
    ("a ** b ** 2", lambda a, b, c: a ** (b**2)),        # right-associative
    ("-a ** 2", lambda a, b, c: -(a**2)),                # ** binds tighter than unary minus
    ("min(a, b)", lambda a, b, c: np.minimum(a, b)),
    ("min(a, b, c)", lambda a, b, c: np.minimum(np.minimum(a, b), c)),
    ("max(c, 0)", lambda a, b, c: np.maximum(c, 0)),
    ("max(a, b, c, 1.5)", lambda a, b, c: np.maximum.reduce([a, b, c, np.full_like(a, 1.5)])),
    ("clip(c, -0.5, 0.5)", lambda a, b, c: np.clip(c, -0.5, 0.5)),
    ("clip(c, 0, 50)", lambda a, b, c: np.clip(c, 0, 50)),
    ("a + b * c - a / b", lambda a, b, c: a + b * c - a / b),
    ("(a - b) / (1 + abs(c))", lambda a, b, c: (a - b) / (1 + np.abs(c))),
    ("-c", lambda a, b, c: -c),
    ("1 / a - 2 * 3", lambda a, b, c: 1 / a - 6),
    ("a - b - c", lambda a, b, c: (a - b) - c),          # left-associative
    ("a / b / 2", lambda a, b, c: (a / b) / 2),
    ("log(1 + exp(c)) * sqrt(abs(c))", lambda a, b, c: np.log1p(np.exp(c)) * np.sqrt(np.abs(c))),
]


@pytest.mark.parametrize("expr,fn", FEATURES, ids=[f[0] for f in FEATURES])
def test_feature_functions(tmp_path: Path, expr: str, fn: Callable[[Any, Any, Any], Any]) -> None:
    c = compile_text(tmp_path, _feature_model(f"    y = {expr}"))
    feeds = _abc()
    got = run_ort(c.onnx, feeds)
    a, b, cc = (feeds[k].astype(np.float64) for k in "abc")
    want = np.stack([a, b, cc, fn(a, b, cc)], axis=1)  # raw inputs first, then the feature
    assert_parity(got, want, expr)


def test_features_chain_and_replace(tmp_path: Path) -> None:
    """A feature can use an earlier one; redefining an input replaces it in place."""
    defs = """    d = a * b
    e = d + c
    a = log(a)"""
    c = compile_text(tmp_path, _feature_model(defs))
    feeds = _abc()
    got = run_ort(c.onnx, feeds)
    a, b, cc = (feeds[k].astype(np.float64) for k in "abc")
    want = np.stack([np.log(a), b, cc, a * b, a * b + cc], axis=1)
    assert_parity(got, want, defs)


def test_features_integer_input_and_columns(tmp_path: Path) -> None:
    """int64 inputs are cast to float; an [N, k] input contributes k columns."""
    text = """model f {
  input k: int64[N]
  input v: float32[N, 2]
  features {
    half = k / 2
    v = v * 3 - 1
  }
  head { h: identity }
}
"""
    c = compile_text(tmp_path, text)
    k = np.array([1, -4, 7], dtype=np.int64)
    v = rand((3, 2), seed=2)
    got = run_ort(c.onnx, {"k": k, "v": v})
    kf = k.astype(np.float64)
    want = np.concatenate([kf[:, None], v * 3 - 1, (kf / 2)[:, None]], axis=1)
    assert_parity(got, want, "int and [N, k] columns")


def test_features_on_an_image_then_conv(tmp_path: Path) -> None:
    text = """model f {
  input image: float32[N, 2, 5, 5]
  features { image = clip(image, -1, 1) * 2 + 0.5 }
  backbone { s: conv(3, k=3) }
}
"""
    c = compile_text(tmp_path, text)
    params = randomize(c)
    x = rand((2, 2, 5, 5), seed=4, scale=2.0)
    got = run_ort(c.onnx, {"image": x})
    xt = torch.clamp(torch.from_numpy(x), -1, 1) * 2 + 0.5
    want = F.conv2d(xt, torch.from_numpy(params[f"{C1}.weight"]), torch.from_numpy(params[f"{C1}.bias"]),
                    padding=1)
    assert_parity(got, want, "image features")


# ---------------------------------------------------------------- what PyTorch rejects, dlspec rejects

@pytest.mark.parametrize("body,message", [
    ("maxpool(2, stride=1, padding=2)", "more than half the window"),  # onnxruntime: load fails
    ("maxpool(3, padding=2)", "more than half the window"),            # torch: pad > k / 2
    ("avgpool(k=[2, 4], padding=[2, 1])", "more than half the window"),
    ("conv(4, stride=0)", "stride must be a whole number >= 1"),
    ("conv(4, k=[3, 0])", "k must be whole numbers >= 1"),
    ("conv(4, k=[3, 3, 3])", "k takes one number or two"),
    ("conv(4, dilation=0)", "dilation must be a whole number >= 1"),
    ("conv(4, padding=-1)", "padding must be a whole number >= 0"),
    ("maxpool(2, stride=0)", "stride must be a whole number >= 1"),
    ("avgpool(0)", "k must be a whole number >= 1"),
])
def test_invalid_window_arguments_are_located_errors(tmp_path: Path, body: str, message: str) -> None:
    from dlspec.spec.errors import CompileError

    with pytest.raises(CompileError, match=message) as err:
        compile_text(tmp_path, spec_for(body, IMG))
    assert err.value.span is not None and err.value.span.line == 4


# ---------------------------------------------------------------- residual shapes and repeats

def test_residual_projection_on_an_odd_size(tmp_path: Path) -> None:
    def ref(x: Any, p: Params) -> Any:
        y = F.relu(bn(p, f"{S}.bn1", conv(p, C1, x, bias=False, stride=2, padding=1)))
        y = bn(p, f"{S}.bn2", conv(p, f"{S}.conv2", y, bias=False, padding=1))
        short = bn(p, f"{S}.shortcut.bn", conv(p, f"{S}.shortcut.conv", x, bias=False, stride=2))
        return F.relu(y + short)

    check_parity(tmp_path, "basic(8, stride=2)", (2, 4, 7, 7), ref)


def test_repeated_conv_before_bn_keeps_the_inner_bias(tmp_path: Path) -> None:
    c = compile_text(tmp_path, spec_for("conv(4, k=3) * 2 -> bn", IMG))
    names = {p.name for p in c.params}
    assert f"{S}.0.conv1.bias" in names and f"{S}.1.conv1.bias" not in names
