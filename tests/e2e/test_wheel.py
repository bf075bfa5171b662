"""The distribution as a user installs it: a regular wheel puts one import package, dlspec, into
site-packages (and its dist-info), with every module of the source tree; `python -m dlspec`
runs; the repository's folder names (spec, compiler, runtime) are not importable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (seeing this environment's dependencies) with dlspec installed from its wheel."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy: building writes a build/ folder beside pyproject.toml
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("spec", "compiler", "runtime"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp / "dist"), str(source)], check=True, cwd=tmp, capture_output=True)
    (wheel,) = (tmp / "dist").glob("dlspec-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages",
                    str(tmp / "venv")], check=True)
    python = tmp / "venv" / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True)
    return tmp


def _run(tmp: Path, code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(tmp / "venv" / "bin" / "python"), "-c", code], cwd=tmp, env=env,
                          capture_output=True, text=True)


def _site_packages(tmp: Path) -> Path:
    rel = Path(sysconfig.get_path("purelib")).relative_to(sysconfig.get_path("data"))
    return tmp / "venv" / rel


def test_site_packages_gains_only_dlspec(installed: Path) -> None:
    names = sorted(p.name for p in _site_packages(installed).iterdir() if p.name != "__pycache__")
    assert names == ["dlspec", "dlspec-0.1.0.dist-info"]


def test_the_wheel_holds_every_module_and_data_file_of_the_tree(installed: Path) -> None:
    mapping = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    want = set()
    for package, folder in mapping.items():
        for path in (REPO / folder).rglob("*"):
            if path.suffix in (".py", ".lark", ".dlspec") and "__pycache__" not in path.parts:
                want.add("/".join([*package.split("."), *path.relative_to(REPO / folder).parts]))
    (wheel,) = (installed / "dist").glob("dlspec-*.whl")
    have = set(zipfile.ZipFile(wheel).namelist())
    assert want - have == set(), sorted(want - have)


def test_the_installed_package_compiles_and_trains_a_spec_from_elsewhere(installed: Path) -> None:
    spec = REPO / "examples" / "land_price.dlspec"
    code = ("import dlspec, numpy as np\n"
            f"tg = dlspec.compile_training({str(spec)!r})\n"
            "print(dlspec.__file__, len(tg.train_step.graph.node), tg.metrics)\n")
    done = _run(installed, code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(str(_site_packages(installed) / "dlspec")), done.stdout
    assert "mae" in done.stdout


def test_python_m_dlspec_runs_and_the_folder_names_are_not_packages(installed: Path) -> None:
    done = subprocess.run([str(installed / "venv" / "bin" / "python"), "-m", "dlspec", "--version"],
                          cwd=installed, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("dlspec "), done.stderr
    for name in ("spec", "compiler", "runtime"):
        assert "ModuleNotFoundError" in _run(installed, f"import {name}").stderr, name
