"""Hypothesis strategies for the fuzz test: valid specs drawn from the grammar, and mutants of them.

Widths are one digit, so numbers that a mutation runs together (`conv(4) -> conv(8)` losing its
arrow as `conv(48)`) still make small models; the large numbers come from `HUGE`, past the limits.
"""

from __future__ import annotations

import re

from hypothesis import strategies as st

WIDTHS = (2, 4, 8)
ACTIVATIONS = ("relu", "gelu", "silu", "sigmoid", "tanh", "identity", "leaky_relu(0.1)", "dropout(0.2)")


# ---- valid specs ----
@st.composite
def image_chain(draw: st.DrawFn, size: int, depth: int = 0, keep: bool = False) -> tuple[str, int]:
    """A chain of image layers and the spatial size it leaves (never below 1; `keep`: unchanged)."""
    parts: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        part, size = draw(image_element(1 if keep else size, depth))
        parts.append(part)
    return " -> ".join(parts), size


@st.composite
def image_element(draw: st.DrawFn, size: int, depth: int) -> tuple[str, int]:
    kinds = ["conv", "bn", "act", "pool", "block", "stdlib"]
    if depth < 2:
        kinds += ["repeat", "residual", "for", "group"]
    kind = draw(st.sampled_from(kinds))
    w = draw(st.sampled_from(WIDTHS))
    if kind == "conv":
        stride = draw(st.sampled_from([1, 2])) if size >= 2 else 1
        k = draw(st.sampled_from([1, 3]))
        return f"conv({w}, k={k}, stride={stride})", (size + 1) // 2 if stride == 2 else size
    if kind == "bn":
        return "conv(4) -> bn", size
    if kind == "act":
        return draw(st.sampled_from(ACTIVATIONS)), size
    if kind == "pool":
        if size < 2:
            return "relu", size
        return draw(st.sampled_from(["maxpool(2)", "avgpool(2)"])), size // 2
    if kind == "block":
        return draw(st.sampled_from([f"unit({w})", f"unit(c={w}, k=1)", f"pair({w})", f"split({w})",
                                     "gate()", "gate() * 2", f"gated({w})"])), size
    if kind == "stdlib":
        return draw(st.sampled_from([f"basic({w})", "bottleneck(8)", f"vgg_conv({w}, norm=bn)"])), size
    if kind == "repeat":  # a repeated body keeps the size, so copies never run out of image
        inner, _ = draw(image_chain(size, depth + 1, keep=True))
        return f"({inner}) * {draw(st.integers(1, 3))}", size
    if kind == "residual":
        body, after = draw(image_chain(size, depth + 1))
        shortcut = draw(st.sampled_from(["", "(shortcut=conv)"]))
        return f"residual{shortcut} {{ {body} }}", after
    if kind == "for":
        items = ", ".join(str(draw(st.sampled_from(WIDTHS))) for _ in range(draw(st.integers(0, 3))))
        return f"for h in [{items}] {{ conv(h) -> relu }}", size
    inner, after = draw(image_chain(size, depth + 1))
    return f"({inner})", after


BLOCKS = """\
block unit(c, k=3) { conv(c, k=k) -> bn -> relu }
block pair(c, act=relu) { unit(c) -> conv(c) -> act }
block split(c) { a: conv(c); b: conv(c, k=1, from=in); both: concat(from=[a, b]) }
block gate() {
  g: gap -> sigmoid
  s: mul(from=[in, g])
}
block gated(c) { x: unit(c) -> gate(); y: add(from=[x, x]) }
"""


@st.composite
def train_block(draw: st.DrawFn, image: bool) -> str:
    data = "digits(test=0.2, val=0.1)" if image else 'csv("table.csv", target=y, val=0.1)'
    settings = [f"data {data}", f"batch {draw(st.sampled_from([8, 16, 32]))}",
                f"epochs {draw(st.integers(1, 9))}", f"seed {draw(st.integers(0, 9))}"]
    optional = [
        draw(st.sampled_from(["optimizer adamw(lr=0.001)", "optimizer sgd(lr=0.1, momentum=0.9)",
                              "optimizer adam(betas=[0.9, 0.99])"])),
        draw(st.sampled_from(["schedule cosine(warmup=1)", "schedule step(every=2, gamma=0.5)"])),
        draw(st.sampled_from(["init kaiming_normal", "init xavier_uniform, linear: zeros"])),
        draw(st.sampled_from(["clip grad_norm(1.0)", "clip grad_value(0.5)"])),
        "early_stop(patience=2, min_delta=0.001)", "lr_mult head: 0.5",
    ]
    if image:
        optional.append(draw(st.sampled_from(["augment hflip -> noise(0.02)", "augment translate(1)"])))
    settings += draw(st.lists(st.sampled_from(optional), unique=True, max_size=4))
    return "train {\n" + "".join(f"  {s}\n" for s in settings) + "}\n"


@st.composite
def image_spec(draw: st.DrawFn) -> str:
    channels = draw(st.sampled_from([1, 3]))
    stages = []
    size = 8
    for i in range(draw(st.integers(1, 3))):
        chain, size = draw(image_chain(size))
        stages.append(f"    s{i + 1}: {chain}\n")
    classes = draw(st.integers(2, 9))
    loss = draw(st.sampled_from(["cross_entropy", "cross_entropy(label_smoothing=0.1)"]))
    heads = f"  head classify(classes={classes}, dropout=0.1)\n  loss {loss}\n"
    targets = "  target label: int64[N]\n"
    if draw(st.booleans()):  # named heads, each bound to a target by the loss
        box = draw(st.sampled_from(["regress(2)", "gap -> flatten -> linear(2)"]))
        weight = draw(st.sampled_from(["", "0.5 * "]))
        ce = draw(st.sampled_from(["cross_entropy(cls, label)", "cross_entropy(head=cls, target=label)",
                                   "cross_entropy(cls, label, label_smoothing=0.1)"]))
        reg = draw(st.sampled_from(["mse", "huber", "l1"]))
        heads = (f"  head cls: classify({classes})\n  head box: {box}\n"
                 f"  loss {ce} + {weight}{reg}(box, size)\n")
        targets += "  target size: float32[N, 2]\n"
    text = (BLOCKS + "model m {\n" + f"  input  image: float32[N, {channels}, 8, 8]\n"
            + targets + "  backbone {\n" + "".join(stages) + "  }\n" + heads + "}\n")
    return text + (draw(train_block(True)) if draw(st.booleans()) else "")


@st.composite
def mixed_spec(draw: st.DrawFn) -> str:
    """An image and a table, each on its own path (from=), joined by concat."""
    w = draw(st.sampled_from(WIDTHS))
    chain, _ = draw(image_chain(8))
    k = draw(st.integers(1, 4))
    join = draw(st.sampled_from(["concat(from=[i, t])", "concat(from=[i, t, x])", "add(from=[i, t])"]))
    return (BLOCKS + "model mixed {\n  input image: float32[N, 1, 8, 8]\n"
            f"  input tab: float32[N, {k}]\n  input x: float32[N]\n  target y: float32[N]\n"
            f"  backbone {{\n    i: conv({w}, from=image) -> {chain} -> gap -> flatten -> linear({w});\n"
            f"    t: linear({w}, from=tab) -> relu\n    j: {join}\n  }}\n"
            "  head regress\n  loss mse\n}\n")


@st.composite
def feature_expr(draw: st.DrawFn, names: list[str], depth: int = 0) -> str:
    """An expression that uses an input (constants alone would be folded, and may be refused)."""
    if depth >= 3 or draw(st.integers(0, 2)) == 0:
        return draw(st.sampled_from(names))
    form = draw(st.sampled_from(["binary", "const", "func", "pow", "minmax", "clip"]))
    a = draw(feature_expr(names, depth + 1))
    c = draw(st.sampled_from(["0.5", "2", "3", "1e-3", "16"]))
    if form == "binary":
        return f"({a} {draw(st.sampled_from('+-*/'))} {draw(feature_expr(names, depth + 1))})"
    if form == "const":
        return draw(st.sampled_from([f"({a} * {c})", f"({c} + {a})", f"({a} / {c})", f"-{a}"]))
    if form == "func":
        return f"{draw(st.sampled_from(['log', 'exp', 'sqrt', 'abs']))}({a})"
    if form == "pow":
        return draw(st.sampled_from([f"{a} ** 2", f"pow({a}, {c})"]))
    if form == "minmax":
        return f"{draw(st.sampled_from(['min', 'max']))}({a}, {c})"
    return f"clip({a}, 0, {c})"


@st.composite
def table_spec(draw: st.DrawFn) -> str:
    names = [f"x{i}" for i in range(draw(st.integers(1, 3)))]
    inputs = "".join(f"  input {n}: float32[N, 1]\n" for n in names)
    feats = "".join(f"    {draw(st.sampled_from(names + ['f']))} = {draw(feature_expr(names))}\n"
                    for _ in range(draw(st.integers(0, 3))))
    features = f"  features {{\n{feats}  }}\n" if feats else ""
    w = draw(st.sampled_from(WIDTHS))
    chain = draw(st.sampled_from([
        f"linear({w}) -> relu", f"(linear({w}) -> tanh) * 2", f"residual {{ linear({w}) -> relu }}",
        f"for h in [{w}, 4] {{ linear(h) -> silu }}", f"mlp({w}, hidden=[{w}])",
        f"linear({w}) -> dropout(0.1)"]))
    head = draw(st.sampled_from(["regress", f"regress(hidden=[{w}], activation=gelu)", "{ o: linear(1) }"]))
    loss = draw(st.sampled_from(["mse", "l1", "huber(delta=1.0)", "mse + 0.5 * l1"]))
    text = ("model t {\n" + inputs + "  target y: float32[N]\n" + features + f"  backbone {{ {chain} }}\n"
            + f"  head {head}\n  loss {loss}\n}}\n")
    return text + (draw(train_block(False)) if draw(st.booleans()) else "")


def valid_specs() -> st.SearchStrategy[str]:
    return st.one_of(image_spec(), table_spec(), mixed_spec())


# ---- mutants ----
HUGE = ["99999999999999999999", "9" * 300, "1e999", "2 ** 2 ** 2 ** 2 ** 2 ** 2", "1048577", "0",
        "-1", "1e300", "int(1e300)", "3 ** 40", "(0 - 1) ** 0.5", "1 / 0", "0.5"]
TOKENS = ["->", "*", "(", ")", "{", "}", "[", "]", ",", ":", "=", "-", "+", "**", "/", "residual",
          "for", "in", "block", "model", "train", "import", "features", "backbone", "head", "loss",
          "conv", "bn", "relu", "unit", "s1", "N", "x0", '"', '"x"', "#", "\\", "true", "1000", "7",
          "sqrt(-1)", "exp(1e9)", "log(0 - 1)", "standardize", "from=[s1]", "extends m", "seed -1",
          ";", "from=in", "head h:", "mul(from=[in, g])",
          'import "/dev/zero"', 'import "/etc/passwd"', 'import "main.dlspec"', 'import "nope.dlspec"']
CHARS = ["\0", "\t", "\r", "\u00e9", "\u2028", "\ufeff", "{", "}", "(", ")", "[", "]", '"', "\\", "#", "$"]
BYTES = [b"\xff", b"\xe9", b"\xc3", b"\x80", b"\xed\xa0\x80"]


NESTS = [("(", ")"), ("- - ", ""), ("1 + ", ""), ("[", "]"), ("max(1, ", ")")]
WRAPS = [("residual { ", " }"), ("for h in [1] { ", " }"), ("(", ")")]
CALL = re.compile(rb"\b(conv|relu|linear|unit)\b(\([^()]*\))?")
NUMBER = re.compile(rb"\d+(\.\d+)?")


@st.composite
def mutation(draw: st.DrawFn, data: bytes) -> bytes:
    """One edit: of bytes, tokens, numbers, lines or nesting."""
    i = draw(st.integers(0, len(data)))
    j = draw(st.integers(i, min(len(data), i + 40)))
    kind = draw(st.sampled_from(["delete", "duplicate", "token", "char", "byte", "line", "number",
                                 "nest", "wrap", "repeat"]))
    numbers, calls = list(NUMBER.finditer(data)), list(CALL.finditer(data))
    if kind == "delete":
        return data[:i] + data[j:]
    if kind == "duplicate":
        return data[:j] + data[i:j] + data[j:]
    if kind == "token":
        return data[:i] + f" {draw(st.sampled_from(TOKENS))} ".encode() + data[i:]
    if kind == "char":
        return data[:i] + draw(st.sampled_from(CHARS)).encode() + data[i + 1:]
    if kind == "byte":
        return data[:i] + draw(st.sampled_from(BYTES)) + data[i:]
    if kind == "line":  # a whole line again: a second stage, block, model or setting of that name
        lines = data.splitlines(keepends=True)
        k = draw(st.integers(0, len(lines) - 1))
        return b"".join(lines[:k + 1] + lines[k:])
    depth = draw(st.sampled_from([30, 70, 500]))
    if kind == "number" and numbers:
        m = draw(st.sampled_from(numbers))
        return data[:m.start()] + f"({draw(st.sampled_from(HUGE))})".encode() + data[m.end():]
    if kind in ("nest", "wrap") and (numbers if kind == "nest" else calls):
        m = draw(st.sampled_from(numbers if kind == "nest" else calls))
        before, after = draw(st.sampled_from(NESTS if kind == "nest" else WRAPS))
        nested = (before * depth).encode() + m.group() + (after * depth).encode()
        return data[:m.start()] + nested + data[m.end():]
    if kind == "repeat" and calls:
        m = draw(st.sampled_from(calls))
        count = draw(st.sampled_from(["1000", "100000", "2 ** 40"]))
        return data[:m.end()] + f" * {count}".encode() + data[m.end():]
    return data


@st.composite
def mutants(draw: st.DrawFn) -> bytes:
    data = draw(valid_specs()).encode()
    for _ in range(draw(st.integers(1, 4))):
        data = draw(mutation(data))
    return data
