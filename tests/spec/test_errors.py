"""Bad specs: each error names the exact file, line and column, says what is wrong and what was expected."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest

from dlspec import spec
from dlspec.cli import main
from dlspec.compiler import compile_model
from dlspec.spec.errors import CompileError, RunError, SpecError

HEAD = (
    "model m {",
    "  input  image: float32[N, 3, 16, 16]",
    "  target label: int64[N]",
)
TAIL = ("  head classify(classes=10)", "  loss cross_entropy", "}")


def lines(*text: str) -> str:
    return "\n".join(text) + "\n"


def model(*body: str) -> str:
    """A model whose body starts on line 4."""
    return lines(*HEAD, *body, "}")


class Case(NamedTuple):
    files: str | dict[str, str]   # main.dlspec's text, or every file by name (main.dlspec is loaded)
    where: str                    # file:line:col relative to tmp_path
    message: str                  # a stable part of the message
    cls: type[SpecError] = SpecError


CASES = {
    # ---- syntax ----
    "missing-arrow-in-stage": Case(
        model("  backbone {", "    stem: conv(8) bn", "  }"), "main.dlspec:5:19",
        "missing '->' before 'bn': layers in a chain are joined with '->' "
        "(or, if 'bn' starts a new stage, write 'bn: ...')"),
    "missing-arrow-in-chain": Case(
        model("  backbone { conv(8) bn }"), "main.dlspec:4:22",
        "unexpected name 'bn', expected '}'; layers in a chain are joined with '->'"),
    "missing-colon-after-stage-name": Case(
        model("  backbone {", "    s: conv(8)", "    t conv(8)", "  }"), "main.dlspec:6:5",
        "missing '->' before 't'"),
    "missing-colon-in-an-input": Case(
        lines("model m {", "  input x float32[N, 4]", "}"), "main.dlspec:2:11",
        "unexpected name 'float32', expected ':'"),
    "unclosed-brace": Case(
        lines(*HEAD, "  backbone {", "    stem: conv(8) -> bn", "}"), "main.dlspec:1:9",
        "'{' is never closed: the file ends before its '}'"),
    "unclosed-inner-brace": Case(
        lines(*HEAD, "  backbone {", "    stem: conv(8) -> bn"), "main.dlspec:4:12",
        "'{' is never closed: the file ends before its '}'"),
    "file-ends-early": Case(
        lines(*HEAD, "  backbone { stem: conv(8) ->"), "main.dlspec:4:30",
        "the file ends too early: expected one of '(', 'for', 'residual', a name"),
    "bad-character": Case(
        model("  backbone { stem: conv(8) -> bn $ relu }"), "main.dlspec:4:34",
        "unexpected character '$'"),
    "positional-after-keyword": Case(
        model("  backbone { stem: conv(k=3, 8) }"), "main.dlspec:4:30",
        "a positional argument cannot follow a keyword argument"),
    "missing-close-paren": Case(
        model("  backbone { s: conv(8 -> bn }"), "main.dlspec:4:24",
        "missing ')' before '->': the '(' on line 4, column 21 is still open"),
    "unterminated-string": Case(
        model("  backbone { s: conv(8) }") + lines("train {", '  data npz("cifar.npz)', "}"),
        "main.dlspec:7:12", "unterminated string: a string must end with '\"' on the same line"),
    "argument-given-twice": Case(
        model("  backbone { s: conv(8, k=3, k=5) }"), "main.dlspec:4:30", "argument 'k' is given twice"),

    # ---- layers and blocks ----
    "unknown-layer": Case(
        model("  backbone { stem: conv(8) -> rleu }"), "main.dlspec:4:31",
        "unknown layer or block 'rleu' (did you mean 'relu'?)"),
    "unknown-layer-argument": Case(
        model("  backbone { s: conv(8, kk=3) }"), "main.dlspec:4:25",
        "conv has no argument 'kk' (did you mean 'k'?); it takes: out, k, stride, padding"),
    "too-many-layer-positionals": Case(
        model("  backbone { s: conv(8, 3) }"), "main.dlspec:4:25",
        "conv takes 1 positional argument(s) (out); name the others (key=value)"),
    "unknown-block-argument": Case(
        model("  backbone { s: basic(8, strde=2) }"), "main.dlspec:4:26",
        "block 'basic' has no argument 'strde' (did you mean 'stride'?): basic(out, stride=...)"),
    "missing-block-argument": Case(
        model("  backbone { s: basic(stride=2) }"), "main.dlspec:4:17",
        "block 'basic' needs argument 'out': basic(out, stride=...)"),
    "layer-argument-wrong-type": Case(
        model('  backbone { s: conv("8") }'), "main.dlspec:4:22",
        "invalid value \"8\" for 'out' of conv: expected a whole number"),
    "layer-argument-bool-for-number": Case(
        model("  backbone { s: conv(8, k=true) }"), "main.dlspec:4:25",
        "invalid value true for 'k' of conv: expected a whole number"),
    "layer-argument-out-of-range": Case(
        model("  backbone { s: conv(8) -> dropout(1.5) }"), "main.dlspec:4:36",
        "invalid value 1.5 for 'p' of dropout: input should be less than 1"),
    "repeat-count-zero": Case(
        model("  backbone { s: conv(8) * 0 }"), "main.dlspec:4:27",
        "a repeat count must be a whole number from 1 to 1,000, got 0"),
    "error-inside-a-stdlib-block-points-at-the-call": Case(
        model("  backbone {", "    s: bottleneck(6)", "  }"), "main.dlspec:5:8",
        "invalid value 1.5 for 'out' of conv: expected a whole number (inside block 'bottleneck' of "
        "the standard library, at stdlib.dlspec:"),

    # ---- inputs ----
    "unknown-dtype": Case(
        lines("model m {", "  input image: float33[N, 3, 16, 16]", "  backbone { s: conv(8) }", "}"),
        "main.dlspec:2:16",
        "unknown dtype 'float33' (did you mean 'float32'?); expected one of: float32, float64, float16"),
    "non-symbolic-batch-dim": Case(
        lines("model m {", "  input image: float32[4, 3, 16, 16]", "  backbone { s: conv(8) }", "}"),
        "main.dlspec:2:24",
        "the first dimension of 'image' is 4; it must be the symbolic batch size, e.g. float32[N, ...]"),
    "input-declared-twice": Case(
        lines("model m {", "  input x: float32[N, 4]", "  target x: float32[N]", "  head regress", "}"),
        "main.dlspec:3:3", "'x' is declared twice in model 'm' (first as the input at"),
    "symbolic-non-batch-dim": Case(
        lines("model m {", "  input image: float32[N, C, 16, 16]", "  backbone { s: conv(8) }", "}"),
        "main.dlspec:2:27",
        "dimension 2 of 'image' is the name 'C'; only the first (batch) dimension may be symbolic"),

    # ---- loss and train ----
    "unknown-loss": Case(
        model("  backbone { s: conv(8) }", "  head classify(classes=10)", "  loss cross_entrpy"),
        "main.dlspec:6:8",
        "unknown loss 'cross_entrpy' (did you mean 'cross_entropy'?); expected one of: cross_entropy, "
        "bce_with_logits, mse, l1, huber"),
    "label-smoothing-out-of-range": Case(
        model("  backbone { s: conv(8) }", "  head classify(classes=10)",
              "  loss cross_entropy(label_smoothing=1.5)"),
        "main.dlspec:6:22",
        "invalid value for 'label_smoothing' in cross_entropy: input should be less than 1"),
    "unknown-loss-argument": Case(
        model("  backbone { s: conv(8) }", "  head classify(classes=10)",
              "  loss cross_entropy(label_smothing=0.1)"),
        "main.dlspec:6:22",
        "unknown argument 'label_smothing' in cross_entropy (did you mean 'label_smoothing'?)"),
    "unknown-optimizer": Case(
        model("  backbone { s: conv(8) }") + lines("train {", "  optimizer adamm(lr=1e-3)", "}"),
        "main.dlspec:7:13",
        "unknown optimizer 'adamm' (did you mean 'adam'?); expected one of: sgd, adam, adamw"),
    "unknown-optimizer-keyword": Case(
        model("  backbone { s: conv(8) }") + lines("train {", "  optimizer sgd(lr=0.1, momentun=0.9)", "}"),
        "main.dlspec:7:25",
        "unknown argument 'momentun' in sgd (did you mean 'momentum'?); expected one of: lr, momentum"),
    "optimizer-value-out-of-range": Case(
        model("  backbone { s: conv(8) }") + lines("train {", "  optimizer sgd(lr=-1)", "}"),
        "main.dlspec:7:17", "invalid value for 'lr' in sgd: input should be greater than 0"),
    "optimizer-betas-too-short": Case(
        model("  backbone { s: conv(8) }") + lines("train {", "  optimizer adam(betas=[0.9])", "}"),
        "main.dlspec:7:18", "invalid value for 'betas' in adam: it has too few items (item 2 is missing)"),
    "optimizer-beta-of-one": Case(  # trained to NaN at step 2, blamed on the learning rate
        model("  backbone { s: conv(8) }") + lines("train {", "  optimizer adam(betas=[1.0, 0.999])", "}"),
        "main.dlspec:7:18", "invalid value 1.0 for item 1 of 'betas' in adam: input should be less than 1"),
    "from-an-empty-path": Case(  # read as no `from`: the run trained from scratch
        model("  backbone { s: conv(8) }") + lines("train {", '  from ""', "}"),
        "main.dlspec:7:3", "invalid value for 'from': a path cannot be empty"),
    "nesterov-without-momentum": Case(  # torch.optim.SGD refuses it; dlspec trained plain sgd
        model("  backbone { s: conv(8) }") + lines("train {", "  optimizer sgd(lr=0.1, nesterov=true)", "}"),
        "main.dlspec:7:25", "nesterov needs a momentum above 0 and no dampening"),
    "min-lr-above-the-rate": Case(  # the rate climbed to it
        model("  backbone { s: conv(8) }") + lines("train {", "  optimizer adam(lr=1e-3)",
                                                   "  schedule linear(min_lr=10)", "}"),
        "main.dlspec:8:19", "min_lr=10 is above the optimizer's lr=0.001"),
    "lr-mult-target-twice": Case(  # the later rule won, silently
        model("  backbone { s: conv(8) }") + lines("train {", "  lr_mult backbone: 0.1, backbone: 0.5", "}"),
        "main.dlspec:7:26", "lr_mult names 'backbone' twice"),
    "init-rule-twice": Case(  # the later rule won, silently
        model("  backbone { s: conv(8) }")
        + lines("train {", "  init conv: xavier_normal, conv: kaiming_normal", "}"),
        "main.dlspec:7:29", "init names 'conv' twice"),
    "class-weights-all-zero": Case(  # every batch's loss was 0 / 0
        lines("model m {", "  input image: float32[N, 3, 16, 16]", "  target y: int64[N]",
              "  head classify(classes=2)", "  loss cross_entropy(weight=[0, 0])", "}"),
        "main.dlspec:5:22", "at least one class needs a weight above 0"),
    "schedule-argument-its-kind-ignores": Case(  # cosine read no every= or gamma=, silently
        model("  backbone { s: conv(8) }") + lines("train {", "  schedule cosine(every=1, gamma=0.5)", "}"),
        "main.dlspec:7:19", "cosine takes no every= (only step does)"),
    "clip-bound-past-float32": Case(  # 1e-50 was 0 in float32: no parameter ever moved
        model("  backbone { s: conv(8) }") + lines("train {", "  clip grad_norm(1e-50)", "}"),
        "main.dlspec:7:18", "1e-50 is outside float32's normal range"),
    "unknown-schedule": Case(
        model("  backbone { s: conv(8) }") + lines("train {", "  schedule cosin(warmup=1)", "}"),
        "main.dlspec:7:12", "unknown schedule 'cosin' (did you mean 'cosine'?)"),
    "unknown-initializer": Case(
        model("  backbone { s: conv(8) }") + lines("train {", "  init conv: xavier_normall", "}"),
        "main.dlspec:7:14", "unknown initializer 'xavier_normall' (did you mean 'xavier_normal'?)"),
    "unknown-augmentation": Case(
        model("  backbone { s: conv(8) }") + lines("train {", "  augment crop(4) -> hfilp", "}"),
        "main.dlspec:7:22", "unknown augmentation 'hfilp' (did you mean 'hflip'?)"),
    "unknown-data-set": Case(
        model("  backbone { s: conv(8) }") + lines("train {", "  data digts(test=0.2)", "}"),
        "main.dlspec:7:8", "unknown data set 'digts' (did you mean 'digits'?)"),
    "csv-needs-a-target": Case(
        model("  backbone { s: conv(8) }") + lines("train {", '  data csv("land.csv")', "}"),
        "main.dlspec:7:8", "csv needs argument 'target'"),
    "batch-not-positive": Case(
        model("  backbone { s: conv(8) }") + lines("train {", "  batch 0", "}"),
        "main.dlspec:7:9", "invalid value for 'batch': input should be greater than 0"),
    "setting-given-twice": Case(
        model("  backbone { s: conv(8) }") + lines("train {", "  epochs 3", "  epochs 4", "}"),
        "main.dlspec:8:3", "'epochs' is set twice in this train block (first on line 7)"),
    "train-names-unknown-model": Case(
        model("  backbone { s: conv(8) }") + lines("train {", "  model mm", "}"),
        "main.dlspec:7:3", "train block names unknown model 'mm' (did you mean 'm'?)"),

    # ---- structure: names, extends, imports ----
    "duplicate-stage": Case(
        model("  backbone {", "    a: conv(8)", "    a: conv(8)", "  }"), "main.dlspec:6:5",
        "stage 'a' is defined twice in this section (first on line 5)"),
    "two-backbones": Case(
        model("  backbone { a: conv(8) }", "  backbone { b: conv(8) }"), "main.dlspec:5:3",
        "model 'm' has a second backbone section; a model has at most one of each"),
    "duplicate-block": Case(
        lines("block foo(c) { conv(c) }", "block foo(c) { conv(c) }"), "main.dlspec:2:7",
        "block 'foo' is already defined (in {tmp}/main.dlspec:1:7); pick another name"),
    "block-shadows-the-standard-library": Case(
        lines("block basic(out, stride=1) { conv(out, stride=stride) }"), "main.dlspec:1:7",
        "block 'basic' is already defined (in the standard library); pick another name"),
    "block-named-like-a-layer": Case(  # the built-in ran in its place, without a word
        lines("block linear(n) { conv(n, k=1) -> relu }") + model("  backbone { a: linear(4) }"),
        "main.dlspec:1:7", "block 'linear' has the name of a built-in layer, which a call would run instead"),
    "block-parameter-twice": Case(  # the last one won
        lines("block b(c, c) { conv(c) }") + model("  backbone { a: b(4, 6) }"),
        "main.dlspec:1:12", "parameter 'c' is listed twice"),
    "block-parameter-named-in": Case(  # it hid the block's input, with a self-contradicting error
        lines("block d(in) { x: conv(8)", "  y: add(from=[in, x]) }") + model("  backbone { a: d(8) }"),
        "main.dlspec:1:9", "'in' names the block's input; give the parameter another name"),
    "duplicate-model-across-an-import": Case(
        {"main.dlspec": lines('import "other.dlspec"', "model n {", "}"),
         "other.dlspec": lines("model n {", "}")},
        "main.dlspec:2:7", "model 'n' is already defined (in {tmp}/other.dlspec:1:7)"),
    "extends-unknown-model": Case(
        model("  backbone { s: conv(8) }") + lines("model child extends bse {", "}"),
        "main.dlspec:6:21", "model 'child' extends unknown model 'bse'"),
    "extends-cycle": Case(
        lines("model a extends b {", "}", "model b extends a {", "}"), "main.dlspec:3:17",
        "model 'b' cannot extend 'a': extends cycle a -> b -> a"),
    "train-extends-cycle": Case(
        lines("train x extends y {", "}", "train y extends x {", "}"), "main.dlspec:3:17",
        "train block 'y' cannot extend 'x': extends cycle x -> y -> x"),
    "train-extends-unknown": Case(
        lines("train base {", "}", "train extends bas {", "}"), "main.dlspec:3:15",
        "train block extends unknown train block 'bas' (did you mean 'base'?); named train blocks: base"),
    "import-missing-file": Case(
        lines('import "lib/blocks.dlspec"'), "main.dlspec:1:8",
        "cannot import 'lib/blocks.dlspec': No such file or directory"),
    "import-cycle": Case(
        {"main.dlspec": lines('import "lib/a.dlspec"'),
         "lib/a.dlspec": lines('import "b.dlspec"'),
         "lib/b.dlspec": lines("# b imports a back", 'import "a.dlspec"')},
        "lib/b.dlspec:2:8",
        "import cycle: a.dlspec -> b.dlspec -> a.dlspec; a file cannot import itself, directly or through "
        "other files"),
    "syntax-error-in-an-imported-file": Case(
        {"main.dlspec": lines('import "lib.dlspec"'), "lib.dlspec": lines("block b(c) { conv(c) relu }")},
        "lib.dlspec:1:22", "unexpected name 'relu', expected '}'"),

    # ---- from= references and shapes (shape errors point at the layer) ----
    "unknown-stage-in-from": Case(
        model("  backbone {", "    stage1: conv(8)", "    stage2: conv(8)",
              "    s: add(from=[stage1, stag2])", "  }"),
        "main.dlspec:7:26", "no stage named 'stag2' (did you mean 'stage2'?); stages defined so far: "
        "stage1, stage2"),
    "unknown-stage-in-fpn": Case(
        model("  backbone {", "    stage1: conv(8)", "    stage2: conv(8, stride=2)", "  }",
              "  neck fpn(from=[stage1, stage3], channels=8)"),
        "main.dlspec:8:26", "no stage named 'stage3' (did you mean 'stage2'?)"),
    "residual-identity-channel-mismatch": Case(
        model("  backbone {", "    stem: conv(8)", "    s: residual(shortcut=identity) { conv(16) -> bn }",
              "  }"),
        "main.dlspec:6:8",
        "residual with shortcut=identity: the body gives [N, 16, 16, 16] but its input is [N, 8, 16, 16] "
        "(channel mismatch)", CompileError),
    "add-channel-mismatch": Case(
        model("  backbone {", "    a: conv(8)", "    b: conv(16)", "    c: add(from=[a, b])", "  }"),
        "main.dlspec:7:8",
        "channel mismatch between [N, 8, 16, 16] and [N, 16, 16, 16]", CompileError),
    "pool-window-larger-than-input": Case(
        model("  backbone {", "    s: conv(8)", "         -> maxpool(32)", "  }"), "main.dlspec:6:13",
        "maxpool window 32 (span 32) is larger than its padded input (16 + 0 padding)", CompileError),
    "reshape-of-another-size": Case(
        model("  backbone {", "    s: conv(8) -> reshape(shape=[5, 7])", "  }"), "main.dlspec:5:19",
        "reshape cannot make [5, 7] of [N, 8, 16, 16]", CompileError),
    "fpn-without-stages": Case(  # an IndexError before
        model("  backbone {", "    stage1: conv(8)", "  }", "  neck fpn(from=[], channels=8)"),
        "main.dlspec:7:12", "fpn needs at least one stage to fuse: from=[stage, ...]"),
    "fpn-stages-not-whole-multiples": Case(
        lines("model m {", "  input image: float32[N, 3, 15, 15]", "  backbone {", "    a: conv(8)",
              "    b: conv(8, stride=2)", "  }", "  neck fpn(from=[a, b], channels=8)", "}"),
        "main.dlspec:7:12",
        "fpn: a stage of [N, 8, 15, 15] is not a whole-number upsampling of the next stage [N, 8, 8, 8]",
        CompileError),

    # ---- features ----
    "unknown-feature-name": Case(
        lines("model m {", "  input length: float32[N]", "  input width: float32[N]",
              "  features {", "    area = lenght * width", "  }", "  head regress", "}"),
        "main.dlspec:5:12",
        "unknown input or feature 'lenght' (did you mean 'length'?); known: length, width"),
    "unknown-feature-function": Case(
        lines("model m {", "  input length: float32[N]", "  features {", "    l = lg(length)", "  }",
              "  head regress", "}"),
        "main.dlspec:4:9", "unknown function 'lg' (did you mean 'log'?); features can use: abs, clip, exp"),

    # ---- the head's output against the targets and the loss ----
    "mse-shape-mismatch": Case(
        lines("model m {", "  input  x: float32[N, 4]", "  target y: float32[N]", "  head regress(out=3)",
              "  loss mse", "}"),
        "main.dlspec:5:8",
        "mse compares the head's output [N, 3] with target 'y' [N]: the shapes must match", CompileError),
    "cross-entropy-on-a-float-target": Case(
        lines("model m {", "  input  x: float32[N, 4]", "  target y: float32[N]", "  head regress(out=3)",
              "  loss cross_entropy", "}"),
        "main.dlspec:5:8",
        "cross_entropy needs [N, classes] scores and an integer [N] target; the head gives [N, 3] and "
        "target 'y' is float32[N]", CompileError),
    "loss-target-unknown": Case(
        model("  head { o: gap -> flatten -> linear(3) }", "  loss cross_entropy(target=lbl)"),
        "main.dlspec:5:22",
        "loss target 'lbl' is not a declared target (did you mean 'label'?); targets: label"),
    "loss-needs-a-target-name": Case(
        lines("model m {", "  input  x: float32[N, 4]", "  target y: float32[N]", "  target z: float32[N]",
              "  head regress", "  loss mse + 0.5 * l1(target=z)", "}"),
        "main.dlspec:6:8", "loss mse needs target=NAME: the model has 2 targets (y, z)"),
    "init-rule-matches-no-layer": Case(
        model("  backbone { s: conv(8) }") + lines("train {", "  init kaiming_normal, conv2: zeros", "}"),
        "main.dlspec:7:24", "init rule 'conv2' matches no layer (did you mean 'conv'?)", CompileError),
}


def write_case(case: Case, tmp_path: Path) -> Path:
    files = case.files if isinstance(case.files, dict) else {"main.dlspec": case.files}
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "main.dlspec"


def load_and_compile(path: Path) -> None:
    prog = spec.load(path)
    compile_model(prog)


def assert_rendered(err: SpecError) -> None:
    """`file:line:col: error: message`, then the source line and a caret under the column."""
    assert err.span is not None
    first, source, caret = str(err).splitlines()[:3]
    assert first == f"{err.span.file}:{err.span.line}:{err.span.col}: error: {err.message}"
    text = Path(err.span.file).read_text().splitlines()[err.span.line - 1]
    gutter = f"{err.span.line:>4} | "
    assert source == gutter + text
    assert caret.strip() and set(caret.strip()) == {"^"}
    assert caret.index("^") == len(gutter) + err.span.col - 1


def test_there_are_at_least_30_distinct_bad_specs() -> None:
    assert len(CASES) >= 30
    assert len({c.files if isinstance(c.files, str) else tuple(c.files.items()) for c in CASES.values()}) \
        == len(CASES)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_spec(case: Case, tmp_path: Path) -> None:
    path = write_case(case, tmp_path)
    with pytest.raises(SpecError) as info:
        load_and_compile(path)
    err = info.value
    assert type(err) is case.cls, f"{type(err).__name__}: {err}"
    assert err.span is not None, str(err)
    where = f"{Path(err.span.file).relative_to(tmp_path).as_posix()}:{err.span.line}:{err.span.col}"
    assert where == case.where, str(err)
    assert case.message.replace("{tmp}", str(tmp_path)) in err.message, str(err)
    assert_rendered(err)


# ---- the command line's error path ----
Capture = pytest.CaptureFixture[str]
BAD = model("  backbone { stem: conv(8) -> rleu }")
GOOD = model("  backbone { s: conv(8) }", "  head classify(classes=10)", "  loss cross_entropy") + lines(
    "", "train {", "  data digits", "  epochs 2", "}")


@pytest.mark.parametrize("command", ["check", "compile"])
def test_cli_prints_the_error_without_a_traceback_and_returns_2(
        command: str, tmp_path: Path, capsys: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)   # `dlspec compile` writes next to the working directory
    path = tmp_path / "bad.dlspec"
    path.write_text(BAD)
    assert main([command, str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    first, source, caret = err.splitlines()[:3]
    assert first == f"{path}:4:31: error: unknown layer or block 'rleu' (did you mean 'relu'?)"
    assert source.endswith("  backbone { stem: conv(8) -> rleu }")
    assert caret.endswith("^^^^")
    assert not (tmp_path / "bad.onnx").exists()


def test_cli_reports_a_syntax_error_and_a_missing_file(tmp_path: Path, capsys: Capture) -> None:
    path = tmp_path / "bad.dlspec"
    path.write_text(model("  backbone { stem: conv(8) -> bn $ relu }"))
    assert main(["check", str(path)]) == 2
    assert f"{path}:4:34: error: unexpected character '$'" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "nope.dlspec")]) == 2
    err = capsys.readouterr().err
    assert "cannot read spec file" in err and "nope.dlspec" in err and "Traceback" not in err


def test_cli_debug_raises(tmp_path: Path) -> None:
    path = tmp_path / "bad.dlspec"
    path.write_text(BAD)
    with pytest.raises(SpecError, match="unknown layer or block 'rleu'"):
        main(["--debug", "check", str(path)])


def test_cli_train_run_errors_have_no_traceback(tmp_path: Path, capsys: Capture) -> None:
    path = tmp_path / "good.dlspec"
    path.write_text(GOOD)
    assert main(["check", str(path)]) == 0
    capsys.readouterr()
    missing = tmp_path / "missing-run"
    assert main(["train", str(path), "--resume", "--out", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no checkpoint" in err and str(missing) in err
    with pytest.raises(RunError, match="no checkpoint"):
        main(["--debug", "train", str(path), "--resume", "--out", str(missing)])


def test_cli_train_still_reports_spec_errors_first(tmp_path: Path, capsys: Capture) -> None:
    path = tmp_path / "bad.dlspec"
    path.write_text(model("  backbone { s: conv(8) }") + lines("train {", "  optimizer adamm", "}"))
    assert main(["train", str(path)]) == 2
    assert f"{path}:7:13: error: unknown optimizer 'adamm'" in capsys.readouterr().err
