"""The packages' dependencies point one way: the language knows no ONNX, the graph layer no
layer or rule, forward lowering no gradient, the core no tuned lowering (those register
themselves with the plain ones), and the compiler no onnxruntime."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# folder -> import prefixes its modules must not use
FORBIDDEN = {
    "spec": ["onnx", "onnxruntime", "dlspec.compiler"],
    "compiler/graph": ["dlspec.compiler.lower", "dlspec.compiler.grad", "dlspec.compiler.train",
                       "dlspec.compiler.tune", "onnxruntime"],
    "compiler/lower": ["dlspec.compiler.grad", "dlspec.compiler.train", "dlspec.compiler.tune",
                       "onnxruntime"],
    "compiler/grad": ["dlspec.compiler.train", "dlspec.compiler.tune", "onnxruntime"],
    "compiler/train": ["dlspec.compiler.tune", "onnxruntime"],
    "compiler/tune": ["onnxruntime"],
}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("folder", FORBIDDEN)
def test_imports_point_one_way(folder: str) -> None:
    bad = [f"{p.relative_to(REPO)}: {name}" for p in sorted((REPO / folder).rglob("*.py"))
           for name in _imports(p) for prefix in FORBIDDEN[folder]
           if name == prefix or name.startswith(prefix + ".")]
    assert bad == []


def test_every_module_says_what_it_owns() -> None:
    undocumented = [str(p.relative_to(REPO)) for folder in ("spec", "compiler", "runtime")
                    for p in sorted((REPO / folder).rglob("*.py"))
                    if p.stat().st_size and not ast.get_docstring(ast.parse(p.read_text()))]
    assert undocumented == []
