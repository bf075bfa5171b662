"""`precision fp32 | bf16 | fp16(loss_scale=65536, growth_interval=2000)` in a train block: its
forms, and errors at file:line:col."""

from __future__ import annotations

import pytest

from dlspec import spec
from dlspec.spec import model as m
from dlspec.spec.errors import SpecError

MODEL = """\
model m {
  input  x: float32[N, 4]
  target y: int64[N]
  head classify(classes=3)
  loss cross_entropy
}
"""  # the train block starts on line 7; its setting is on line 9


def _text(setting: str) -> str:
    return MODEL + f"train {{\n  data iris(test=0.2)\n  {setting}\n}}\n"


def _train(write_spec, setting: str) -> m.Train:
    t = spec.load(write_spec(_text(setting))).train("m")
    assert t is not None
    return t


@pytest.mark.parametrize(("setting", "kind", "scale", "interval"), [
    ("precision fp32", "fp32", None, None),
    ("precision bf16", "bf16", None, None),
    ("precision fp16", "fp16", 65536.0, 2000),
    ("precision fp16(growth_interval=100)", "fp16", 65536.0, 100),
    ("precision fp16(loss_scale=1024, growth_interval=50)", "fp16", 1024.0, 50),
])
def test_forms(write_spec, setting: str, kind: str, scale: float | None, interval: int | None) -> None:
    p = _train(write_spec, setting).precision
    assert p is not None and p.kind == kind
    if isinstance(p, m.Fp16):
        assert (p.loss_scale, p.growth_interval) == (scale, interval)


def test_float32_by_default(write_spec) -> None:
    assert _train(write_spec, "epochs 3").precision is None


ERRORS = {
    "unknown": ("precision fp8", "main.dlspec:9:13", "unknown precision 'fp8'"),
    "scale on bf16": ("precision bf16(loss_scale=2)", "main.dlspec:9:18",
                      "unknown argument 'loss_scale' in bf16"),
    "zero interval": ("precision fp16(growth_interval=0)", "main.dlspec:9:18",
                      "invalid value for 'growth_interval' in fp16"),
    "negative scale": ("precision fp16(loss_scale=-1)", "main.dlspec:9:18",
                       "invalid value for 'loss_scale' in fp16"),
    "set twice": ("precision fp16\n  precision bf16", "main.dlspec:10:3",
                  "'precision' is set twice in this train block (first on line 9)"),
}


@pytest.mark.parametrize("case", ERRORS, ids=list(ERRORS))
def test_bad_settings_are_located(write_spec, tmp_path, case: str) -> None:
    setting, where, message = ERRORS[case]
    with pytest.raises(SpecError) as err:
        spec.load(write_spec(_text(setting)))
    text = str(err.value)
    assert text.startswith(f"{tmp_path / where}: error: "), text
    assert message in text, text
    assert "^" in text
