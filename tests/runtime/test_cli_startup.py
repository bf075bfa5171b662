"""The command line starts fast: `dlspec --version` and every `--help` build the parser from argparse
and the version alone, and each command imports only what it runs (check and compile no onnxruntime,
no plotting, image or training libraries). Asserted on the modules loaded, not on the time taken."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dlspec import cli
from dlspec.spec.version import __version__

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "examples" / "digits.dlspec"
# what a parser needs none of: the compiler's and the runtime's libraries, and rich (the output)
HEAVY = ("onnx", "onnxruntime", "torch", "sklearn", "matplotlib", "PIL", "pydantic", "lark", "numpy", "rich")
RUNTIME_ONLY = ("onnxruntime", "torch", "sklearn", "matplotlib", "PIL", "dlspec.training", "dlspec.api",
                "dlspec.data")

# runs main(argv) in a fresh interpreter; prints the exit code, the output and the modules loaded
PROBE = """
import contextlib, io, json, sys
from dlspec.cli import main
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    try:
        code = main(json.loads(sys.argv[1]))
    except SystemExit as exit:
        code = exit.code
print(json.dumps({"code": code, "out": buf.getvalue(), "modules": sorted(sys.modules)}))
"""


def _run(argv: list[str], cwd: Path) -> tuple[int, str, set[str]]:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    return result["code"], result["out"], set(result["modules"])


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """The names in `names` that were imported, or any of their submodules."""
    return sorted(n for n in names if any(m == n or m.startswith(n + ".") for m in modules))


@pytest.mark.parametrize("argv", [["--version"], ["--help"]] + [[c, "--help"] for c in sorted(cli.COMMANDS)])
def test_version_and_help_load_no_heavy_module(argv: list[str], tmp_path: Path) -> None:
    code, out, modules = _run(argv, tmp_path)
    assert code == 0
    assert (f"dlspec {__version__}" if argv == ["--version"] else "usage: dlspec") in out
    assert _loaded(modules, HEAVY) == []


def test_check_and_compile_load_no_runtime(tmp_path: Path) -> None:
    code, out, modules = _run(["check", str(DIGITS)], tmp_path)
    assert code == 0 and "is valid" in out
    assert _loaded(modules, RUNTIME_ONLY) == []
    code, out, modules = _run(["compile", str(DIGITS), "-o", str(tmp_path / "digits.onnx")], tmp_path)
    assert code == 0 and (tmp_path / "digits.onnx").stat().st_size > 0
    assert _loaded(modules, RUNTIME_ONLY) == []


def test_python_m_dlspec_runs_the_command_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "dlspec", "--version"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == f"dlspec {__version__}"


def test_predict_loads_no_compiler_beyond_the_graph_layer(tmp_path: Path) -> None:
    """Running a model needs onnxruntime, not the layers, rules or training step."""
    code, _, _ = _run(["compile", str(DIGITS), "-o", str(tmp_path / "digits.onnx")], tmp_path)
    assert code == 0
    import numpy as np

    np.savez(tmp_path / "in.npz", image=np.zeros((2, 1, 8, 8), np.float32))
    code, out, modules = _run(["predict", str(tmp_path / "digits.onnx"), str(tmp_path / "in.npz")], tmp_path)
    assert code == 0 and out
    assert _loaded(modules, ("dlspec.compiler.lower", "dlspec.compiler.grad", "dlspec.compiler.train",
                             "dlspec.compiler.tune", "dlspec.training", "torch")) == []


TUNED = """
import sys
from pathlib import Path
from dlspec.compiler.target import Target
from dlspec.compiler.train.step import compile_training
from dlspec.spec.loader import load
assert "dlspec.compiler.tune" not in sys.modules
tg = compile_training(load(Path(sys.argv[1])), target=Target("cpu", 2))
print(sum(n.op_type == "MatMul" for n in tg.train_step.graph.node), "dlspec.compiler.tune" in sys.modules)
"""


def test_tuned_lowerings_apply_whichever_module_compiles(tmp_path: Path) -> None:
    """The tuned variants register as dlspec.compiler.tune loads, which a lowering's first tuned
    call does: a caller that imports only the step still gets them (the conv weight gradients of
    the digits step as per-tap MatMuls, which the plain form writes as Convs)."""
    done = subprocess.run([sys.executable, "-c", TUNED, str(DIGITS)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    matmuls, loaded = done.stdout.split()
    assert int(matmuls) > 0 and loaded == "True"
