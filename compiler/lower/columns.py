"""Table columns in the features block: categories (string inputs) and missing values.

A `string[N]` input is a category. Its vocabulary, learnt on the training split (runtime.vocab),
is a constant of the graph: the vocabulary's word i is index i + 1, and 0 is the unknown slot (a
value the training split never held, or an empty cell). The lookup is standard ONNX: Equal of the
strings against the vocabulary (Equal takes strings from opset 19), times the indices, summed.
That is N x V comparisons, nothing for tables of tens to thousands of categories, and it keeps
every graph in the standard domain: ai.onnx.ml's LabelEncoder would be a hash lookup, but one
more domain for every reader of the model to support. The training graphs take the indices
(encoded=True): onnxruntime binds no string tensor through IOBinding, so the runtime looks the
strings up with the same vocabulary before training (runtime.vocab.encode).

A float input read by `fill(x, mean)` or `fill(x, 0)` may hold missing values (NaN, an empty csv
cell): fill puts the training split's mean of the present values (`FillMean`), or the constant,
in their place, and `missing(x)` is 1 where x was missing, else 0. Such an input, like a string
input, reaches the network only through these functions: a feature of the same name replaces it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from onnx import numpy_helper

from dlspec.compiler.graph import Graph, Value
from dlspec.compiler.graph import ops as op
from dlspec.spec import model as m
from dlspec.spec.errors import SpecError, did_you_mean

FUNCTIONS = ("one_hot", "index", "fill", "missing")
_FORMS = {"one_hot": "one_hot(x)", "index": "index(x)", "fill": "fill(x, mean) or fill(x, 0)",
          "missing": "missing(x)"}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Vocab:
    """The categories of one string input on the training split, in order: word i is index i + 1."""

    words: tuple[str, ...]

    @property
    def width(self) -> int:
        """Indices 0 (unknown) to len(words): one_hot's columns, the rows an embedding needs."""
        return len(self.words) + 1


@dataclass(frozen=True)
class FillMean:
    """The mean of a float input's present values on the training split: what fill(x, mean) puts
    in a missing cell."""

    value: float


def key(kind: str, name: str) -> str:
    """Where a column's fitted value sits among the fitted statistics (`vocab.district`,
    `fill.income`); feature names, the keys of standardize's moments, have no dots."""
    return f"{kind}.{name}"


def column_of(fitted_key: str) -> str:
    """The column a key of `key` names: `vocab.district` -> `district`."""
    return fitted_key.split(".", 1)[1]


def categorical(decls: Sequence[m.TensorDecl]) -> list[str]:
    """The string inputs: categories."""
    return [d.name for d in decls if d.dtype == "string"]


def filled(feats: m.Features | None) -> dict[str, bool]:
    """The inputs that fill(x, ...) reads (they may hold missing values), each with whether one of
    its fills is fill(x, mean)."""
    out: dict[str, bool] = {}
    for call in _calls(feats):
        if call.name == "fill" and call.args and isinstance(call.args[0], m.Name):
            mean = len(call.args) > 1 and isinstance(call.args[1], m.Name) and call.args[1].id == "mean"
            out[call.args[0].id] = out.get(call.args[0].id, False) or mean
    return out


def unlearnt_notes(model: m.Model, stats: Mapping[str, Any] | None) -> list[str]:
    """What a model compiled without training data (no vocabulary, no mean) computes instead."""
    notes = []
    words = [n for n in categorical(model.inputs) if key("vocab", n) not in (stats or {})]
    if words:
        notes.append(f"categor{'ies' if len(words) > 1 else 'y'} {', '.join(words)} compiled with no "
                     "vocabulary: every value is unknown and one_hot has one column (`dlspec train` learns "
                     "the vocabulary on the training split and compiles it into the run's model.onnx)")
    means = [n for n, mean in filled(model.features).items() if mean and key("fill", n) not in (stats or {})]
    if means:
        notes.append(f"fill({', '.join(means)}, mean) compiled as fill with 0: no training data here to "
                     "take the mean of")
    return notes


def id_count(v: Value) -> tuple[int, str] | None:
    """The ids an index(x) value holds (0 to n - 1) and what it is, where `v` is one, or a Cast of one
    (a lone feature enters the network as float32); None where the vocabulary is not known."""
    counts = v.graph.id_counts
    name = v.name
    while counts and name not in counts:
        made = next((n for n in reversed(v.graph.nodes) if name in n.output), None)
        if made is None or made.op_type != "Cast":
            return None
        name = made.input[0]
    return counts.get(name)


def _calls(feats: m.Features | None) -> Iterator[m.Func]:
    stack: list[Any] = [d.expr for d in feats.defs] if feats is not None else []
    while stack:
        e = stack.pop()
        if isinstance(e, m.Func) and e.name in FUNCTIONS:
            yield e
        stack.extend(getattr(e, "args", None) or getattr(e, "items", None) or [])


@dataclass
class Raw:
    """The raw inputs of one features block, and the functions that read them by name."""

    feats: m.Features | None
    decls: Sequence[m.TensorDecl]
    values: Mapping[str, Value]  # the graph inputs, by name
    stats: Mapping[str, Any]
    _index: dict[str, Value] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_name = {d.name: d for d in self.decls if d.name in self.values}
        self.strings = set(categorical(self.decls))
        self.nan = set(filled(self.feats)) & set(self.by_name)

    def _is_raw(self, name: str, v: Value) -> bool:
        return name in self.by_name and v is self.values[name]

    def check_plain(self, e: m.Name, v: Value) -> None:
        """A string input, or one that may be missing, is read through one_hot/index or fill/missing."""
        if not self._is_raw(e.id, v):
            return
        if e.id in self.strings:
            raise SpecError(f"'{e.id}' is a category (string[N]); read it as numbers with one_hot({e.id}) "
                            f"or index({e.id})", e.span)
        if e.id in self.nan:
            raise SpecError(f"'{e.id}' may hold missing values (fill({e.id}, ...) reads it): use the "
                            f"filled value, `{e.id} = fill({e.id}, mean)` first, or missing({e.id})", e.span)

    def check_replaced(self, values: Mapping[str, Value]) -> None:
        """No raw string, nor a value that may be NaN, reaches the network."""
        for name, decl in self.by_name.items():
            if values.get(name) is not self.values[name]:
                continue
            if name in self.strings:
                raise SpecError(f"input '{name}' is a category (string[N]) and the network takes numbers: "
                                f"replace it with a feature of the same name, `{name} = one_hot({name})` "
                                f"(or index({name}) for an embedding)", decl.span)
            if name in self.nan:
                raise SpecError(f"input '{name}' may hold missing values (fill reads it): replace it with "
                                f"a feature of the same name, `{name} = fill({name}, mean)`, so that no "
                                "NaN reaches the network", decl.span)

    def lower(self, g: Graph, e: m.Func) -> Value:
        """one_hot(x) [N, V + 1] float, index(x) [N, 1] int64, fill(x, how) and missing(x) like x."""
        arity = 2 if e.name == "fill" else 1
        if len(e.args) != arity or not isinstance(e.args[0], m.Name):
            raise SpecError(f"{e.name} takes {_FORMS[e.name]}, x the name of an input", e.span)
        x = e.args[0].id
        if x not in self.by_name:
            raise SpecError(f"{e.name} reads an input by name, and '{x}' is not an input of the model"
                            f"{did_you_mean(x, list(self.by_name))} (inputs: {', '.join(self.by_name)})",
                            e.args[0].span)
        decl = self.by_name[x]
        if e.name in ("one_hot", "index"):
            if x not in self.strings:
                raise SpecError(f"{e.name}({x}): '{x}' is {decl.dtype}; {e.name} reads a category, a "
                                "string[N] input", e.span)
            idx = self._category(g, x)
            if e.name == "index":  # [N, 1]: token ids for embedding(vocab, dim)
                ids = op.Unsqueeze(idx, [1]).with_shape((None, 1))
                fitted = self.stats.get(key("vocab", x))
                if isinstance(fitted, Vocab):  # without data (dlspec check) the count is not known yet
                    n, kinds = len(fitted.words), "category" if len(fitted.words) == 1 else "categories"
                    what = (f"index({x}), which has {fitted.width} ids ({n} {kinds} of {x} on the training "
                            "split and the unknown slot, 0)")
                    g.id_counts[ids.name] = (fitted.width, what)
                return ids
            width = self._vocab(x).width
            hot = op.Equal(op.Unsqueeze(idx, [1]), g.const(np.arange(width), "int64"))
            return op.Cast(hot, "float32").with_shape((None, width))
        if not decl.dtype.startswith("float"):
            raise SpecError(f"{e.name}({x}): '{x}' is {decl.dtype}; a missing value is NaN, which only a "
                            "float input holds", e.span)
        raw = self.values[x]
        nan = Value(g, g.node("IsNaN", [raw])[0], "bool", raw.shape)
        if e.name == "missing":
            return op.Cast(nan, "float32")
        return op.Where(nan, g.const(self._fill_value(x, e.args[1], e)), raw.cast("float32"))

    def _fill_value(self, x: str, how: m.Expr, e: m.Func) -> float:
        if isinstance(how, m.Name) and how.id == "mean":
            fitted = self.stats.get(key("fill", x))
            return fitted.value if isinstance(fitted, FillMean) else 0.0  # no data here: nothing learnt
        sign = 1.0
        if isinstance(how, m.Op) and how.op == "neg" and len(how.args) == 1:
            sign, how = -1.0, how.args[0]
        if isinstance(how, m.Num) and abs(float(how.value)) <= _FLOAT32_MAX:
            return sign * float(how.value)
        raise SpecError("fill takes `mean` (the training split's mean of the present values) or a "
                        "number: fill(x, mean), fill(x, 0)", how.span)

    def _vocab(self, x: str) -> Vocab:
        fitted = self.stats.get(key("vocab", x))
        return fitted if isinstance(fitted, Vocab) else Vocab(())  # no data here: every value unknown

    def _category(self, g: Graph, x: str) -> Value:
        """The index of each of x's strings in its vocabulary, 0 for unknown: [N] int64."""
        if x not in self._index:
            v = self.values[x]
            if v.dtype != "string":  # a training graph: the runtime looked the strings up already
                self._index[x] = v
                return v
            words = self._vocab(x).words
            ids = np.arange(1, len(words) + 1) if words else np.zeros(1, np.int64)
            with g.at(f"features.{x}.vocab"):  # named, for whoever reads the deployed graph
                table = np.array(list(words) or [""], dtype=object)
                vocab = Value(g, g.node("Constant", [], value=numpy_helper.from_array(table))[0], "string",
                              (len(table),))
            hits = op.Cast(op.Equal(op.Unsqueeze(v, [1]), vocab), "int64")  # [N, V]: one 1 at most a row
            index = op.ReduceSum(op.Mul(hits, g.const(ids, "int64")), [1], keepdims=0)
            self._index[x] = index.with_shape((None,))
        return self._index[x]
