"""The CLI's exit codes and messages: 0 done, 1 a check failed, 2 bad input (one message, no
traceback), 3 a bug in dlspec (one line naming the version and how to report it; --debug shows
the traceback); usage errors exit 2 as argparse does."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from rich.console import Console

from dlspec import cli
from dlspec.spec.version import __version__

Capture = pytest.CaptureFixture[str]
REPO = Path(__file__).resolve().parents[2]


def _broken(args: argparse.Namespace, out: Console) -> int:
    raise ValueError("an unexpected state\nwith a second line")


def test_an_internal_error_is_one_line_with_the_version_and_its_own_code(
        monkeypatch: pytest.MonkeyPatch, capsys: Capture) -> None:
    monkeypatch.setitem(cli.COMMANDS, "check", _broken)
    code = cli.main(["check", str(REPO / "examples" / "digits.dlspec")])
    err = capsys.readouterr().err
    assert code == cli.INTERNAL_ERROR == 3
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"internal error in dlspec {__version__}: ValueError: an unexpected state;" in err
    assert "please report it with the command and the spec" in err and "--debug" in err


def test_debug_shows_the_traceback_of_an_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.COMMANDS, "check", _broken)
    with pytest.raises(ValueError, match="an unexpected state"):
        cli.main(["--debug", "check", str(REPO / "examples" / "digits.dlspec")])


def test_bad_input_exits_2_and_a_usage_error_as_argparse_does(tmp_path: Path, capsys: Capture) -> None:
    assert cli.main(["check", str(tmp_path / "none.dlspec")]) == 2
    for argv in (["gradcheck", "x.dlspec", "--batch", "0"], ["gradcheck", "x.dlspec", "--eps", "nan"],
                 ["gradcheck", "x.dlspec", "--tol", "-1"], ["gradcheck", "x.dlspec", "--directions", "0"],
                 ["train", "x.dlspec", "--threads", "100000"], ["nonsense"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2, argv
    assert "Traceback" not in capsys.readouterr().err


def test_threads_are_bounded_from_python_too(tmp_path: Path) -> None:
    """100000 onnxruntime threads took minutes to start."""
    from dlspec.session import MAX_THREADS, options
    from dlspec.spec.errors import RunError

    with pytest.raises(RunError, match=f"threads=100000: give 1 to {MAX_THREADS}"):
        options(100000)


def test_eval_of_a_folder_that_does_not_exist_says_so(tmp_path: Path, capsys: Capture) -> None:
    """It asked for --spec instead."""
    assert cli.main(["eval", str(tmp_path / "runs" / "nothing")]) == 2
    err = capsys.readouterr().err
    assert f"no run folder or model file {tmp_path / 'runs' / 'nothing'}" in err and "--spec" not in err
