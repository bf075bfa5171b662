"""Central differences through a tiny instance of each standard-library block written in dlspec
(transformer_block with attention dropout, vit, se, inverted_bottleneck / inverted_residual with
relu6, unet): `dlspec gradcheck`'s check of every trainable tensor, in float64."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlspec import api

TOL = 1e-4  # the CLI's default


def spec(inputs: str, backbone: str, head: str = "") -> str:
    return (f"model m {{\n  {inputs}\n  target label: int64[N]\n  backbone {backbone}\n{head}"
            "  loss cross_entropy\n}\n")


IMAGE = "input image: float32[N, 2, 8, 8]"
INVERTED = "inverted_bottleneck(4, mid=6, stride=2) -> inverted_residual(4, expand=2)"
SPECS = [
    pytest.param(spec("input x: float32[N, 4, 6]",
                      "{ s: transformer_block(6, 2, mlp=2, drop=0.2) -> pool(mean) }", "  head linear(3)\n"),
                 id="transformer_block"),
    pytest.param(spec("input image: float32[N, 1, 4, 4]", "vit(patch=2, dim=4, depth=2, heads=2, mlp=1)",
                      "  head linear(3)\n"), id="vit"),
    pytest.param(spec(IMAGE, "{ s: conv(4, k=1) -> se(4, ratio=2) }", "  head classify(3)\n"), id="se"),
    pytest.param(spec(IMAGE, f"{{ s: {INVERTED} }}", "  head classify(3)\n"), id="inverted"),
    pytest.param(spec(IMAGE, "unet(width=2)", "  head { out: conv(3, k=1) -> gap -> flatten }\n"), id="unet"),
]


@pytest.mark.parametrize("text", SPECS)
def test_each_block_passes(tmp_path: Path, text: str) -> None:
    path = tmp_path / "m.dlspec"
    path.write_text(text)
    report = api.gradcheck_spec(path, batch=3)
    failed = {r.name: r.worst for r in report if not r.worst <= TOL}
    assert len(report) >= 4 and not failed, failed
