"""The fuzz test: specs drawn from the grammar compile to ONNX models that pass
onnx's full check; mutants of them either do too, or fail with dlspec's own located error, in
bounded time. `--hypothesis-profile=long` runs 10,000 examples of each (tests/conftest.py)."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import onnx
from hypothesis import given

from dlspec import spec
from dlspec.compiler import compile_model
from dlspec.spec.errors import DlspecError

sys.path.insert(0, str(Path(__file__).parent))
from fuzz_specs import mutants, valid_specs  # noqa: E402

TIME_LIMIT = 5.0  # seconds per spec, generous for a shared 2-core machine
# Errors about the file as a whole, which have no one place in it to point at.
WHOLE_FILE = ("defines 0 models", "defines 2 models", "defines 3 models")


def compile_file(data: bytes) -> onnx.ModelProto:
    """Write the spec as main.dlspec in a fresh folder, load and compile it within TIME_LIMIT."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "main.dlspec"
        path.write_bytes(data)
        start = time.perf_counter()
        try:
            return compile_model(spec.load(path)).onnx
        finally:
            assert time.perf_counter() - start < TIME_LIMIT, "too slow"


@given(valid_specs())
def test_specs_from_the_grammar_compile_and_pass_the_onnx_checker(text: str) -> None:
    onnx.checker.check_model(compile_file(text.encode()), full_check=True)


@given(mutants())
def test_mutated_specs_compile_or_fail_with_a_located_dlspec_error(data: bytes) -> None:
    try:
        model = compile_file(data)
    except DlspecError as err:
        span = getattr(err, "span", None)
        assert span is not None or any(w in str(err) for w in WHOLE_FILE), f"unlocated: {err}"
        str(err)  # renders, with its excerpt
    else:
        onnx.checker.check_model(model, full_check=True)
