"""Hostile specs: every class of bad input is a located SpecError, reached in bounded
time and memory, never a Python exception from deeper down."""

from __future__ import annotations

import os
import time
from pathlib import Path

import onnx
import pytest

from dlspec import spec
from dlspec.cli import main
from dlspec.compiler import compile_model
from dlspec.spec.errors import DlspecError, SpecError
from dlspec.spec.limits import (
    MAX_IMPORTED_FILES,
    MAX_INT,
    MAX_LIST_ITEMS,
    MAX_NESTING,
    MAX_SOURCE_BYTES,
)

# Generous for a shared 2-core machine: before the limits, these specs ran for minutes.
TIME_LIMIT = 4.0

HEAD = "model m {\n  input  image: float32[N, 3, 8, 8]\n  target label: int64[N]\n"
TABLE = "model m {\n  input  x: float32[N, 4]\n  target y: float32[N]\n"
CLASSIFY = "  head classify(classes=10)\n  loss cross_entropy\n}\n"


def model(body: str, head: str = HEAD, tail: str = CLASSIFY) -> str:
    """A model whose body starts on line 4."""
    return head + body + "\n" + tail


def backbone(chain: str) -> str:
    return model(f"  backbone {{ s: {chain} }}")


def feature(expr: str) -> str:
    return model(f"  features {{ x = {expr} }}", TABLE, "  head regress\n  loss mse\n}\n")


def write(tmp_path: Path, text: str | bytes, name: str = "main.dlspec") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def rejected(path: Path | str) -> SpecError:
    """The error (a SpecError or CompileError) loading and compiling `path` gives, within TIME_LIMIT."""
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        compile_model(spec.load(path))
    assert time.perf_counter() - start < TIME_LIMIT, "rejected, but too slowly"
    str(info.value)  # renders, excerpt included
    return info.value


def assert_located(err: SpecError, path: Path, line: int | None, message: str) -> None:
    """At `line` of `path` (any line where None), saying `message`."""
    assert err.span is not None, str(err)
    assert err.span.file == str(path) and line in (None, err.span.line), str(err)
    assert message in err.message, str(err)


# ---- 1. big numbers: limits on literals, sizes and computed values ----
BIG_NUMBERS = {
    "whole-number-past-int64": (backbone("flatten -> linear(99999999999999999999)"), "is too large"),
    "300-digit-channels": (backbone(f"conv({'9' * 300})"), "(300 characters) is too large"),
    "more-digits-than-python-parses": (backbone(f"conv({'9' * 5000})"), "is too large"),
    "float-literal-overflow": (backbone("conv(4, k=1e999)"), "too large to be a float"),
    "size-past-the-limit": (backbone("flatten -> linear(2000000)"), "less than or equal to 1048576"),
    "kernel-item-past-the-limit": (backbone("conv(4, k=[3, 2000000])"),
                                   "invalid value 2000000 for 'k' of conv: input should be less"),
    "whole-float-past-int64": (backbone("conv(1e300)"), "expected a whole number"),
    "computed-past-int64": (backbone("conv(int(1e300))"), "beyond 9,223,372,036,854,775,807"),
    "power-tower": (model("  backbone { s: flatten }\n  head mlp(10, hidden=[2 ** 2 ** 2 ** 2 ** 2 ** 2])",
                          tail="  loss cross_entropy\n}\n"), "2 ** 65536 is too large"),
    "input-dimension-literal": ("model m {\n  input x: float32[N, 99999999999999999999999]\n  head regress\n"
                                "}\n", "is too large"),
    "input-dimension-past-the-limit": ("model m {\n  input x: float32[N, 3, 2000000, 8]\n  head regress\n}\n",
                                       "item 3 of 'shape': input should be less than or equal to 1048576"),
    "input-values-per-sample": ("model m {\n  input x: float32[N, 30000, 30000]\n  head regress\n}\n",
                                "holds more than 268,435,456 values per sample"),
    "upsampled-past-the-limit": (backbone("upsample(64) * 20"), "values per sample; the limit is"),
}


@pytest.mark.parametrize("text, message", BIG_NUMBERS.values(), ids=BIG_NUMBERS.keys())
def test_big_numbers_are_refused_where_they_are_written(text: str, message: str, tmp_path: Path) -> None:
    path = write(tmp_path, text)
    err = rejected(path)
    assert err.span is not None and err.span.file == str(path), str(err)
    assert err.span.line in (2, 4, 5), str(err)
    assert message in err.message, str(err)


def test_the_largest_whole_number_is_a_valid_seed_and_one_more_is_not(tmp_path: Path) -> None:
    ok = write(tmp_path, backbone("conv(4)") + f"train {{\n  seed {MAX_INT}\n}}\n", "ok.dlspec")
    assert spec.load(ok).trains
    assert spec.load(write(tmp_path, backbone("conv(4)") + "train {\n  seed 2 ** 62\n}\n", "pow.dlspec"))
    for name, seed in (("big.dlspec", str(MAX_INT + 1)), ("pow2.dlspec", "2 ** 63")):
        path = write(tmp_path, backbone("conv(4)") + f"train {{\n  seed {seed}\n}}\n", name)
        with pytest.raises(SpecError) as info:
            spec.load(path)
        assert_located(info.value, path, 9, "too large")


# ---- 2. nesting: checked on the parse tree, and through block calls in the walk ----
def _nested(kind: str, levels: int) -> str:
    """A spec nesting exactly `levels` levels deep (brackets, operators, calls, loops...)."""
    n = levels - 1  # the innermost call is a level too
    if kind == "group":
        return backbone("(" * n + "conv(4)" + ")" * n)
    if kind == "residual":
        return backbone("residual { " * n + "relu" + " }" * n)
    if kind == "for":
        return backbone("for h in [1] { " * n + "relu" + " }" * n)
    if kind == "repeat":  # each `( ... ) * 1` is two levels: the repeat and its group
        k, odd = divmod(levels - 2, 2)
        inner = "(relu * 1)" if odd else "relu * 1"
        return backbone("(" * k + inner + ") * 1" * k)
    if kind == "minus":
        return backbone("conv(" + "- " * n + "4)")
    if kind == "sum":
        return backbone("conv(" + "1 + " * n + "1)")
    if kind == "list":
        return backbone("conv(4, k=" + "[" * n + "3" + "]" * n + ")")
    if kind == "function":
        return backbone("conv(" + "max(4, " * n + "4" + ")" * n + ")")
    assert kind == "feature"
    return feature("x + " * levels + "x")


NESTED = ["group", "residual", "for", "repeat", "minus", "sum", "list", "function", "feature"]


@pytest.mark.parametrize("kind", NESTED)
def test_nesting_is_limited_right_after_parsing(kind: str, tmp_path: Path) -> None:
    at_limit = write(tmp_path, _nested(kind, MAX_NESTING), "limit.dlspec")
    try:  # at the limit: compiles, or fails for what it says (k=[[3]]), never from the nesting
        compile_model(spec.load(at_limit))
    except DlspecError as err:
        assert "nests" not in str(err), str(err)
    for levels in (MAX_NESTING + 1, 5000):
        path = write(tmp_path, _nested(kind, levels), f"deep{levels}.dlspec")
        err = rejected(path)
        assert_located(err, path, 4, f"nests more than {MAX_NESTING} levels deep")


def test_nesting_through_block_calls_is_limited_in_the_walk(tmp_path: Path) -> None:
    blocks = "block b0(c) { conv(c) }\n" + "".join(
        f"block b{i}(c) {{ b{i - 1}(c) }}\n" for i in range(1, 2 * MAX_NESTING))
    path = write(tmp_path, blocks + backbone(f"b{2 * MAX_NESTING - 1}(4)"))
    err = rejected(path)
    assert err.span is not None and err.span.file == str(path)
    assert "counting through the blocks that call it" in err.message


@pytest.mark.parametrize("kind", ["model", "train"])
def test_extends_chains_are_limited(kind: str, tmp_path: Path) -> None:
    """Thousands of models (or train blocks) each extending the one before."""
    base = "model a0 {\n  input x: float32[N, 4]\n  head regress\n}\n"
    if kind == "train":
        base = backbone("relu") + "train a0 {\n}\n"
    path = write(tmp_path, base + "".join(f"{kind} a{i} extends a{i - 1} {{\n}}\n" for i in range(1, 3000)))
    assert_located(rejected(path), path, None, f"extends chains are at most {MAX_NESTING} deep")


RECURSIVE = {
    "itself": ("block rec(x) { rec(x) }\n", "rec(1)", 1, "block rec calls itself: rec -> rec"),
    "mutually": ("block a(x) { b(x) }\nblock b(x) { conv(4) -> a(x) }\n", "a(1)", 2,
                 "block a calls itself: a -> b -> a"),
    "through-a-parameter": ("block a(f=a) { f }\n", "a", 1, "block a calls itself: a -> a"),
}


@pytest.mark.parametrize("blocks, call, line, message", RECURSIVE.values(), ids=RECURSIVE.keys())
def test_a_recursive_block_is_an_error_naming_the_cycle(blocks: str, call: str, line: int, message: str,
                                                      tmp_path: Path) -> None:
    path = write(tmp_path, blocks + backbone(call))
    assert_located(rejected(path), path, line, message)


# ---- 3. unbounded work: repeat counts, list lengths and the size of the expanded model ----
def _doubling(base: str, levels: int = 40) -> str:
    """`levels` blocks, each calling the one before twice: 2^levels copies of `base`."""
    return "block d0(c) { " + base + " }\n" + "".join(
        f"block d{i}(c) {{ d{i - 1}(c) -> d{i - 1}(c) }}\n" for i in range(1, levels + 1))


WORK = {
    "repeat-count": (backbone("conv(4) * 100000"), 4, "a repeat count must be a whole number from 1 to"),
    "repeat-count-from-a-parameter": ("block r(n) { conv(4) * n }\n" + backbone("r(5000)"), 1, "got 5000"),
    "nested-repeats": (backbone("(conv(4) * 1000) * 1000"), 4, "this alone expands to 1,002,000 or more"),
    "blocks-doubling": (_doubling("conv(4)") + backbone("d40(4)"), None, "expands to more than 10,000"),
    "empty-loops-doubling": (_doubling("for h in [] { conv(4) }") + backbone("relu -> d40(4)"), None,
                             "expands to more than 10,000"),
    "nested-loops": (backbone("for a in [" + ", ".join(["1"] * 200) + "] { for b in ["
                              + ", ".join(["1"] * 200) + "] { relu } }"), 4, "this alone expands to 40,200"),
    # each of a recurrent layer's stacked layers counts: 9,000 LSTM layers passed as 9 elements
    "stacked-recurrent-layers": ("model m {\n  input x: float32[N, 12, 16]\n"
                                 "  backbone { a: lstm(8, layers=1000) * 11 }\n}\n", 3,
                                 "expands to more than 10,000"),
    "long-list": (backbone("for h in [" + ", ".join(["4"] * (MAX_LIST_ITEMS + 1)) + "] { conv(h) }"), 4,
                  f"this list has {MAX_LIST_ITEMS + 1:,} items"),
}


@pytest.mark.parametrize("text, line, message", WORK.values(), ids=WORK.keys())
def test_unbounded_work_is_refused_before_or_as_the_walk_reaches_a_limit(text: str, line: int | None,
                                                                        message: str, tmp_path: Path) -> None:
    path = write(tmp_path, text)
    assert_located(rejected(path), path, line, message)


# ---- 4. what a spec may read: regular UTF-8 files, within a size limit, imports by .dlspec name ----
def test_only_regular_files_are_read_and_nothing_blocks(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.dlspec"
    os.mkfifo(fifo)
    (tmp_path / "dir.dlspec").mkdir()
    (tmp_path / "zero.dlspec").symlink_to("/dev/zero")
    r, w = os.pipe()  # read from /proc/self/fd/N, a pipe without a writer would block forever
    try:
        roots = ["/dev/zero", "/dev/urandom", str(fifo), f"/proc/self/fd/{r}"]
        for root in roots:
            if not os.path.exists(root):
                continue
            err = rejected(root)
            assert err.span is None and "not a regular file" in err.message, str(err)
        for target, reason in (("fifo", "not a regular file"), ("dir", "a directory"),
                               ("zero", "not a regular file")):
            path = write(tmp_path, f'import "{target}.dlspec"\n')
            assert_located(rejected(path), path, 1, reason)
    finally:
        os.close(r)
        os.close(w)


def test_spec_text_is_limited_in_size(tmp_path: Path) -> None:
    big = write(tmp_path, "#" * MAX_SOURCE_BYTES + "\n", "big.dlspec")
    assert "larger than 256 KiB" in rejected(big).message
    half = "#" * (MAX_SOURCE_BYTES // 2) + "\n"
    write(tmp_path, half, "a.dlspec")
    write(tmp_path, half, "b.dlspec")
    path = write(tmp_path, 'import "a.dlspec"\nimport "b.dlspec"\n')
    assert_located(rejected(path), path, 2, "a spec and its imports hold at most 256 KiB")


def test_imports_are_limited_in_number(tmp_path: Path) -> None:
    for i in range(MAX_IMPORTED_FILES + 1):
        write(tmp_path, f'import "f{i + 1}.dlspec"\n' if i < MAX_IMPORTED_FILES else "", f"f{i}.dlspec")
    path = write(tmp_path, 'import "f0.dlspec"\n')
    err = rejected(path)
    assert err.span is not None and f"imports at most {MAX_IMPORTED_FILES} files" in err.message


IMPORTS = {
    "not-a-dlspec-file": ('import "/etc/passwd"\n', "imports name .dlspec files"),
    "a-text-file": ('import "notes.txt"\n', "imports name .dlspec files"),
    "escaped-nul": ('import "x\\u0000y.dlspec"\n', "cannot contain a NUL character"),
    "raw-nul": ('import "x\0y.dlspec"\n', "cannot contain a NUL character"),
    "unknown-escape": ('import "a\\qb.dlspec"\n', "unknown escape '\\q'"),
    "lone-surrogate": ('import "a\\ud800.dlspec"\n', "'\\ud800' is not a character"),
}


@pytest.mark.parametrize("text, message", IMPORTS.values(), ids=IMPORTS.keys())
def test_import_paths_are_judged_before_anything_is_opened(text: str, message: str, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("block secret(c) { conv(c) }\n")
    path = write(tmp_path, text)
    assert_located(rejected(path), path, 1, message)


# ---- 5. text that is not UTF-8 ----
def test_text_that_is_not_utf8_is_an_error_at_its_first_bad_byte(tmp_path: Path) -> None:
    latin1 = model("  backbone { s: conv(4) }  # café").encode("latin-1")
    path = write(tmp_path, latin1)
    err = rejected(path)
    assert_located(err, path, 4, "main.dlspec is not UTF-8 text: byte 0xe9")
    assert err.span is not None and err.span.col == len("  backbone { s: conv(4) }  # caf") + 1
    assert "\ufffd" in str(err)  # the line is shown, the bad byte replaced
    write(tmp_path, "# caf\xe9\n".encode("latin-1"), "lib.dlspec")
    importer = write(tmp_path, 'import "lib.dlspec"\n', "importer.dlspec")
    assert_located(rejected(importer), tmp_path / "lib.dlspec", 1, "lib.dlspec is not UTF-8 text")


def test_a_byte_order_mark_is_not_text(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbf" + backbone("conv(4)").encode())
    assert compile_model(spec.load(path)).records


# ---- 6. check judges what compile would build: constant features, data-set arguments ----
CONSTANTS = {
    "sqrt-of-a-negative": ("x + sqrt(-1)", "sqrt(-1) is not a real number"),
    "exp-overflow": ("x * exp(1e9)", "exp(1e+09) is too large for a float"),
    "log-of-a-negative": ("x + log(0 - 1)", "log(-1) is not a real number"),
    "division-by-zero": ("x / (1 - 1)", "division by zero"),
    "past-float32": ("x * 1e39", "must be finite float32 numbers"),
    "complex-power": ("x + (-8) ** 0.5", "pow(-8, 0.5) is not a real number"),
}


@pytest.mark.parametrize("expr, message", CONSTANTS.values(), ids=CONSTANTS.keys())
def test_constant_feature_expressions_are_folded_and_judged(expr: str, message: str, tmp_path: Path) -> None:
    path = write(tmp_path, feature(expr))
    assert_located(rejected(path), path, 4, message)


def test_folded_constants_compile_and_pass_the_onnx_checker(tmp_path: Path) -> None:
    c = compile_model(spec.load(write(tmp_path, feature("x * sqrt(4) + exp(1) - log(2) ** 2 + max(1, 2)"))))
    onnx.checker.check_model(c.onnx, full_check=True)


# ---- 7. train-block settings: each judged at the text that sets it ----
TRAIN = {
    "negative-class": ("data digits(classes=[-5, 1])", "greater than or equal to 0"),
    "class-out-of-range": ("data digits(classes=[12])", "digits has classes 0 to 9, not 12"),
    "class-twice": ("data iris(classes=[1, 1])", "a class is listed twice"),
    "classes-of-a-regression": ("data diabetes(classes=[0])", "diabetes is a regression data set"),
    "no-samples-left": ("data digits(test=0.6, val=0.5)", "leave no samples for training"),
    "nul-in-a-data-path": ('data npz("a\\u0000b.npz")', "a path cannot contain a NUL character"),
    "nul-in-a-run-path": ('from "run\\x00"', "a path cannot contain a NUL character"),
    "negative-seed": ("seed -1", "invalid value for 'seed': input should be greater than or equal to 0"),
    "zero-epochs": ("epochs 0", "invalid value for 'epochs'"),
    "huge-batch": ("batch 2 ** 21", "invalid value for 'batch'"),
}


@pytest.mark.parametrize("setting, message", TRAIN.values(), ids=TRAIN.keys())
def test_train_settings_are_judged_at_their_place(setting: str, message: str, tmp_path: Path) -> None:
    path = write(tmp_path, backbone("conv(4)") + f"train {{\n  {setting}\n}}\n")
    assert_located(rejected(path), path, 9, message)
    assert main(["check", str(path)]) == 2


# ---- 8. a file that is not a spec: its token, not its content ----
def test_a_file_not_named_dlspec_is_never_quoted(tmp_path: Path) -> None:
    path = write(tmp_path, "root:x:0:0:root:/root:/bin/bash\n", "passwd")
    err = rejected(path)
    assert "unexpected name 'root'" in str(err)
    assert "x:0:0" not in str(err) and "/bin/bash" not in str(err)
    secret = write(tmp_path, '"AKIAIOSFODNN7EXAMPLEwJalrXUtnFEMIbPxRfiCYEXAMPLEKEY"\n', "key.txt")
    err = rejected(secret)
    assert "EXAMPLEKEY" not in str(err) and "'\"AKIAIOSFODNN7EXAMPL...'" in str(err)


def test_a_long_line_is_quoted_around_the_error_only(tmp_path: Path) -> None:
    path = write(tmp_path, backbone("relu -> " * 5000 + "rleu"))
    err = rejected(path)
    source, caret = str(err).splitlines()[1:3]
    assert len(source) < 200 and source.endswith("-> rleu }")
    assert caret.index("^") == source.index("rleu")


def test_the_cli_reports_hostile_specs_without_a_traceback(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    rec = write(tmp_path, RECURSIVE["mutually"][0] + backbone("a(1)"))
    for target in (str(rec), "/dev/zero", str(write(tmp_path, backbone("conv(4) * 100000"), "r.dlspec"))):
        assert main(["check", target]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "error:" in err
