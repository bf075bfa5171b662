"""`early_stop(patience=5, min_delta=0.0)` in a train block: its forms, and errors at file:line:col."""

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


def _text(setting: str, data: str = "iris(test=0.2, val=0.2)") -> str:
    return MODEL + f"train {{\n  data {data}\n  {setting}\n}}\n"


def _train(write_spec, setting: str, data: str = "iris(test=0.2, val=0.2)") -> m.Train:
    t = spec.load(write_spec(_text(setting, data))).train("m")
    assert t is not None
    return t


@pytest.mark.parametrize(("setting", "patience", "min_delta"), [
    ("early_stop", 5, 0.0),
    ("early_stop()", 5, 0.0),
    ("early_stop(3)", 3, 0.0),
    ("early_stop(patience=7, min_delta=0.01)", 7, 0.01),
    ("early_stop(min_delta=1e-3)", 5, 1e-3),
])
def test_forms(write_spec, setting: str, patience: int, min_delta: float) -> None:
    es = _train(write_spec, setting).early_stop
    assert es is not None and (es.patience, es.min_delta) == (patience, min_delta)


def test_absent_by_default(write_spec) -> None:
    assert _train(write_spec, "epochs 3").early_stop is None


def test_inherited_through_extends(write_spec) -> None:
    path = write_spec(MODEL + "train base {\n  data iris(val=0.2)\n  early_stop(2)\n}\n"
                              "train extends base {\n  epochs 4\n}\n")
    t = spec.load(path).train("m")
    assert t is not None and t.early_stop is not None and t.early_stop.patience == 2


ERRORS = {
    "zero patience": ("early_stop(patience=0)", "main.dlspec:9:14",
                      "invalid value for 'patience' in early_stop: input should be greater than 0"),
    "negative positional": ("early_stop(-2)", "main.dlspec:9:14",
                            "invalid value for 'patience' in early_stop: input should be greater than 0"),
    "fractional patience": ("early_stop(patience=2.5)", "main.dlspec:9:14",
                            "invalid value for 'patience' in early_stop: input should be a valid integer"),
    "boolean patience": ("early_stop(patience=true)", "main.dlspec:9:14",
                         "invalid value for 'patience' in early_stop: input should be a valid integer"),
    "negative min_delta": ("early_stop(min_delta=-0.1)", "main.dlspec:9:14",
                           "invalid value for 'min_delta' in early_stop"),
    "typo": ("early_stop(patiance=3)", "main.dlspec:9:14",
             "unknown argument 'patiance' in early_stop (did you mean 'patience'?); "
             "expected one of: patience, min_delta"),
    "two positionals": ("early_stop(3, 0.1)", "main.dlspec:9:17",
                        "takes 1 positional argument(s) (patience); name the others"),
    "set twice": ("early_stop(3)\n  early_stop(4)", "main.dlspec:10:3",
                  "'early_stop' is set twice in this train block (first on line 9)"),
}


@pytest.mark.parametrize("case", ERRORS, ids=list(ERRORS))
def test_bad_settings_are_located(write_spec, tmp_path, case: str) -> None:
    setting, where, message = ERRORS[case]
    path = write_spec(_text(setting))
    with pytest.raises(SpecError) as err:
        spec.load(path)
    text = str(err.value)
    assert text.startswith(f"{tmp_path / where}: error: "), text
    assert message in text, text
    assert "^" in text  # the caret excerpt under the source line


def test_without_a_validation_split_it_is_an_error_at_the_setting(write_spec, tmp_path) -> None:
    path = write_spec(_text("early_stop(patience=3)", data="iris(test=0.2)"))
    with pytest.raises(SpecError, match=r"early_stop watches the validation split, but data iris\(\.\.\.\) "
                                        r"has none: give it a share of the samples, e.g. val=0.1") as err:
        spec.load(path)
    assert str(err.value).startswith(f"{tmp_path / 'main.dlspec'}:9:3: error:")
