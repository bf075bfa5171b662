"""The standard library's blocks for sequences, channel attention, mobile networks and dense
prediction (spec/stdlib.dlspec): the shapes they give, and errors for a misuse reported where the
user's spec calls the block. Their values are checked against PyTorch in test_parity_blocks.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train_helpers import load_text  # noqa: E402

from dlspec.compiler import compile_model  # noqa: E402
from dlspec.spec.errors import CompileError, SpecError  # noqa: E402


def model(input_dims: str, backbone: str) -> str:
    return f"model m {{\n  input x: float32[{input_dims}]\n  backbone {{\n    {backbone}\n  }}\n}}\n"


SHAPES = [
    ("N, 5, 12", "s: transformer_block(12, 3)", (None, 5, 12)),
    ("N, 3, 16, 8", "s: vit(patch=4, dim=24, depth=2, heads=4)", (None, 24)),
    ("N, 16, 6, 6", "s: se(16)", (None, 16, 6, 6)),
    ("N, 5, 6, 6", "s: se(5, ratio=8)", (None, 5, 6, 6)),  # a gate of max(1, floor(5 / 8)) = 1
    ("N, 8, 7, 7", "s: inverted_bottleneck(16, mid=48, stride=2) -> inverted_residual(16)", (None, 16, 4, 4)),
    ("N, 3, 16, 24", "s: unet(width=4)", (None, 4, 16, 24)),
    ("N, 3, 224, 224", "s: mobilenet_v2", (None, 1280, 7, 7)),
]


@pytest.mark.parametrize("dims,backbone,want", SHAPES, ids=[s[1] for s in SHAPES])
def test_shapes(tmp_path: Path, dims: str, backbone: str, want: tuple[int | None, ...]) -> None:
    c = compile_model(load_text(tmp_path, model(dims, backbone)))
    assert c.output.shape == want


def test_widths_follow_the_arguments(tmp_path: Path) -> None:
    """se's gate is c / ratio wide; inverted_residual expands to out * expand; the transformer's
    MLP to dim * mlp; unet doubles its width at each of three levels down."""
    c = compile_model(load_text(tmp_path, model(
        "N, 16, 8, 8", "a: se(16, ratio=8) -> inverted_residual(16, expand=3)\n"
        "    b: unet(width=4)\n"
        "    c: reshape(shape=[4, 64]) -> permute([0, 2, 1]) -> transformer_block(4, 2, mlp=3)")))
    shapes = {r.path: r.shapes[0] for r in c.records}
    assert shapes["backbone.a.0.gate.conv1"] == (None, 2, 1, 1)
    assert shapes["backbone.a.1.0.conv1"] == (None, 48, 8, 8)
    assert shapes["backbone.b.mid.0.conv2"] == (None, 32, 1, 1)
    assert shapes["backbone.b.dec3.concat1"] == (None, 32, 2, 2)  # 16 from enc3, 16 upsampled
    assert shapes["backbone.c.0.mix.linear1"] == (None, 64, 12)


MISUSES = [
    ("N, 16, 8, 8", "s: conv(16) -> se(8)", SpecError, "inside block 'se' of the standard library"),
    ("N, 16, 8, 8", "s: inverted_residual(8)", CompileError, "inside block 'inverted_residual'"),
    ("N, 6, 12", "s: transformer_block(16, 2)", CompileError, "cannot project [N, 6, 12] to [N, 6, 16]"),
    ("N, 1, 12, 12", "s: unet(width=2)", SpecError, "concat: shape mismatch"),  # 12 is not a multiple of 8
]


@pytest.mark.parametrize("dims,backbone,kind,says", MISUSES, ids=[m[1] for m in MISUSES])
def test_a_misuse_is_an_error_at_the_call(tmp_path: Path, dims: str, backbone: str, kind: type[Exception],
                                          says: str) -> None:
    with pytest.raises(kind) as err:
        compile_model(load_text(tmp_path, model(dims, backbone)))
    assert says in str(err.value)
    span = getattr(err.value, "span", None)
    assert span is not None and span.file.endswith("m.dlspec") and span.line == 4, span
