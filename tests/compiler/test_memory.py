"""Initial weights are made only when a graph is written, after checking they fit: `dlspec check`
of a model of billions of parameters allocates none of them, and compiling one that cannot fit
is a located error before anything is allocated."""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import dlspec
from dlspec import CompileError
from dlspec.compiler.graph import memory

HUGE = """
model big {
  input x: float32[N, 3, 32, 32]
  target y: int64[N]
  backbone { a: conv(30000, k=3) -> relu -> conv(30000, k=3) }
  head classify(classes=10)
  loss cross_entropy
}
"""


def _spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.dlspec"
    path.write_text(textwrap.dedent(text))
    return path


def _limited(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_check_of_billions_of_parameters_allocates_none(tmp_path: Path) -> None:
    """8.1e9 parameters (30 GiB) checked under a 1.5 GiB address-space limit."""
    spec = _spec(tmp_path, HUGE)
    done = subprocess.run([sys.executable, "-m", "dlspec", "check", str(spec)], capture_output=True,
                          text=True, preexec_fn=lambda: _limited(3 * 2**29), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "8,101,170,010 parameters" in done.stdout


def test_compiling_what_no_file_holds_is_a_located_error_before_allocating(tmp_path: Path) -> None:
    spec = _spec(tmp_path, HUGE)
    compiled = dlspec.compile(spec)  # shapes and counts only
    assert compiled.trainable_size == 8_101_170_010
    start = time.perf_counter()
    with pytest.raises(CompileError, match="more than an ONNX file holds") as err:
        compiled.onnx  # noqa: B018 (reading it builds it)
    assert time.perf_counter() - start < 5
    assert err.value.span is not None and err.value.span.line == 2
    with pytest.raises(CompileError, match="more than an ONNX file holds"):
        dlspec.compile_training(spec)


def test_weights_that_do_not_fit_in_memory_left_are_refused_with_the_copies_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(tmp_path, HUGE.replace("30000", "512"))  # 2.4M parameters, 9.4 MiB
    monkeypatch.setattr(memory, "available_memory", lambda: 40 * 2**20)
    dlspec.compile(spec).onnx  # noqa: B018  4 copies: 36 MiB, in 40
    with pytest.raises(CompileError, match=r"9 MiB, about 6\d MiB with the 7 copies this needs, and this "
                                           r"process has 40 MiB of memory left"):
        dlspec.compile_training(spec)  # adam: weights, gradients, m, v, and the next three


def test_available_memory_sees_an_address_space_limit() -> None:
    code = ("import resource; from dlspec.compiler.graph.memory import available_memory as a; "
            "print(a())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          preexec_fn=lambda: _limited(2**31))
    assert 0 < int(done.stdout) < 2**31
