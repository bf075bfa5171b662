"""`dlspec gradcheck`: passes on correct rules, fails loudly on a broken one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dlspec.cli import main
from dlspec.compiler.grad import RULES

REPO = Path(__file__).resolve().parents[2]

SMALL = """
model small {
  input  x: float32[N, 2, 6, 6]
  target y: int64[N]
  backbone {
    stem:  conv(4, k=3) -> bn -> relu
    stage: basic(6, stride=2)
  }
  head classify(classes=3, dropout=0.2)
  loss cross_entropy(label_smoothing=0.1)
}
"""


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().out


def test_gradcheck_passes_and_reports_every_tensor(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "small.dlspec"
    spec.write_text(SMALL)
    code, out = _run(["gradcheck", str(spec)], capsys)
    assert code == 0, out
    for name in ("backbone.stem.conv1.weight", "backbone.stage.shortcut.conv.weight", "head.linear1.bias"):
        assert name in out
    assert "slow, for debugging" in out and "ok: all" in out


def test_a_broken_rule_makes_gradcheck_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tmp_path / "small.dlspec"
    spec.write_text(SMALL)

    def relu_without_mask(node: Any, gy: list[Any]) -> list[Any]:
        return [gy[0]]  # forgets that relu blocks negative inputs

    monkeypatch.setitem(RULES, "Relu", relu_without_mask)
    code, out = _run(["gradcheck", str(spec)], capsys)
    assert code == 1
    assert "FAIL" in out and "exceed the tolerance" in out
    assert "backbone.stem.conv1.weight" in out


def test_gradcheck_digits_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(["gradcheck", str(REPO / "examples" / "digits.dlspec")], capsys)
    assert code == 0, out


@pytest.mark.parametrize("cin,cout,group,stride,dilation,pads,k", [
    (4, 6, 2, 2, 1, [1, 0, 2, 1], 3), (3, 5, 1, 1, 2, [1, 1, 1, 1], 3),
    (4, 4, 4, 1, 1, [1, 1, 1, 1], 3), (3, 2, 1, 2, 1, [0, 0, 0, 0], 1)])
def test_fast_conv_matches_torch(cin: int, cout: int, group: int, stride: int, dilation: int,
                                 pads: list[int], k: int) -> None:
    torch = pytest.importorskip("torch")
    import numpy as np
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    from dlspec.fastconv import Conv

    rng = np.random.default_rng(0)
    x, w, b = rng.random((2, cin, 9, 8)), rng.random((cout, cin // group, k, k)), rng.random(cout)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=group, strides=[stride] * 2,
                            dilations=[dilation] * 2, pads=pads)
    graph = helper.make_graph([node], "c", [helper.make_tensor_value_info(n, TensorProto.DOUBLE, None)
                                            for n in "xwb"],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    ours = ReferenceEvaluator(model, new_ops=[Conv]).run(None, {"x": x, "w": w, "b": b})[0]
    padded = torch.nn.functional.pad(torch.tensor(x), (pads[1], pads[3], pads[0], pads[2]))
    ref = torch.nn.functional.conv2d(padded, torch.tensor(w), torch.tensor(b), stride=stride,
                                     dilation=dilation, groups=group).numpy()
    assert np.abs(ours - ref).max() < 1e-12
