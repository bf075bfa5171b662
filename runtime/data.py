"""Training data: a spec's `data` setting as checked arrays, seeded splits and batches.

Arrays are keyed by the model's input and target names and cast to their declared dtypes.
Nothing is scaled here: raw values go in, and scaling lives in the spec's `features` block.
Every problem with a file is a RunError naming the file and the field, raised before training.
"""

from __future__ import annotations

import collections
import csv
import io
import math
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlspec import bundled, shards
from dlspec.compiler.lower.columns import filled
from dlspec.digits_targets import DERIVED, mask_like
from dlspec.digits_targets import derived as digits_target
from dlspec.files import Npz
from dlspec.images import open_set
from dlspec.labels import Classes, Labels, check_all_labels, check_labels, label_rules
from dlspec.spec import model as m
from dlspec.spec.errors import RunError, did_you_mean, listed
from dlspec.strings import as_strings

BUNDLED: tuple[str, ...] = typing.get_args(m.Bundled.model_fields["kind"].annotation)  # sklearn.datasets

Split = dict[str, np.ndarray]  # a mapped array's samples are shards.Rows, read a batch at a time

_SPLIT_STREAM = 0  # rng stream tags: one for the split, one for the batch order
_BATCH_STREAM = 1


@dataclass(frozen=True)
class Dataset:
    """The train, val (possibly empty) and test splits, each a dict name -> array."""

    train: Split
    val: Split
    test: Split
    stratified: bool = False
    class_names: dict[str, list[str]] = field(default_factory=dict)  # class target -> its classes' names


def size(split: Split) -> int:
    """Number of samples in a split (0 for an empty one)."""
    return len(next(iter(split.values()))) if split else 0


# ---- the entry point ----
def load_dataset(train: m.Train, model: m.Model, spec_dir: Path, classes: Classes = None,
                 note: Callable[[str], None] = lambda _: None) -> Dataset:
    """The arrays of `train.data` for `model`, split by `train.seed`; file paths are relative to spec_dir.
    `classes`: the width of the model's output, which cross_entropy's labels must stay below.
    `note`: told what took time (decoding images) or was left out."""
    data = train.data
    if data is None:
        raise RunError(f"the train block for model {model.name} has no `data` setting")
    if data.test + data.val >= 1:
        raise RunError(f"test={data.test} and val={data.val} leave no samples for training")
    rules = label_rules(model, classes)
    class_names: dict[str, list[str]] = {}
    if isinstance(data, m.ImagesData):
        arrays, class_names = _images(data, model, spec_dir, rules, note)
    elif isinstance(data, m.Bundled):
        arrays = _bundled(data.kind, model)
        if data.classes is not None:
            arrays = _only_classes(arrays, model, data.classes, data.kind)
        check_all_labels(arrays, rules, f"bundled data set {data.kind}")
        class_names = bundled_class_names(data.kind, model)
    elif isinstance(data, m.NpzData):
        arrays = _npz(_resolve(spec_dir, data.path, folder_ok=True), data.fields, model, rules)
    else:
        arrays, class_names = _csv(_resolve(spec_dir, data.path), data.target, model, rules)
    labels = _class_labels(arrays, model)
    parts, stratified = split_indices(size(arrays), data.test, data.val, train.seed, labels)
    train_idx, val_idx, test_idx = parts
    if len(train_idx) == 0:
        raise RunError(f"{size(arrays)} samples leave none for training "
                       f"after test={data.test}, val={data.val}")
    return Dataset(train=_take(arrays, train_idx), val=_take(arrays, val_idx), test=_take(arrays, test_idx),
                   stratified=stratified, class_names=class_names)


def load_all(source: str, model: m.Model, classes: Classes = None,
             class_names: Mapping[str, list[str]] | None = None) -> Split:
    """Every sample of a data source named on the command line: an .npz file (arrays named like
    the model's inputs and target), a .csv file (columns by name, the target column named like
    the model's target) or a bundled set (digits, iris, wine, breast_cancer, diabetes).
    `class_names`: the trained model's, by target: a csv's label names are read as their indices."""
    path = Path(source)
    rules = label_rules(model, classes)
    if path.suffix.lower() == ".npz":
        if not path.is_file():
            raise RunError(f"no data file {source}")
        return _npz(path, {}, model, rules)
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise RunError(f"no data file {source}")
        if len(model.targets) != 1:
            raise RunError(f"{source}: a csv holds one target column; model {model.name} declares "
                           f"{len(model.targets)} targets")
        return _csv(path, model.targets[0].name, model, rules, class_names)[0]
    if source in BUNDLED:
        arrays = _bundled(source, model)
        check_all_labels(arrays, rules, f"bundled data set {source}")
        return arrays
    raise RunError(f"data '{source}' is neither an .npz or .csv file nor a bundled set"
                   f"{did_you_mean(source, list(BUNDLED))} ({', '.join(BUNDLED)})")


def _only_classes(arrays: Split, model: m.Model, classes: list[int], kind: str) -> Split:
    """The samples whose label is one of `classes` (labels kept as they are)."""
    labels = arrays[next(d for d in model.targets if d.name not in DERIVED).name]
    missing = sorted(set(classes) - set(np.unique(labels).tolist()))
    if missing:
        raise RunError(f"bundled data set {kind} has no class {missing[0]}; its classes are "
                       f"{sorted(np.unique(labels).tolist())}")
    return _take(arrays, np.flatnonzero(np.isin(labels, classes)))


def _resolve(spec_dir: Path, path: str, folder_ok: bool = False) -> Path:
    full = (Path(spec_dir) / path).resolve() if not Path(path).is_absolute() else Path(path)
    if not full.is_file() and not (folder_ok and full.is_dir()):
        script = full.parent / f"make_{full.stem}.py"
        hint = f" (run {script.name} to write it)" if script.is_file() else ""
        raise RunError(f"no such file {full}{hint}")
    return full


def _take(arrays: Split, idx: np.ndarray) -> Split:
    return {k: v.take(idx, axis=0) for k, v in arrays.items()}  # a mapped array's Rows stay unread


# ---- checking one array against its declaration ----
def _decls(model: m.Model) -> list[m.TensorDecl]:
    return [*model.inputs, *model.targets]


def _shape_text(decl: m.TensorDecl) -> str:
    return "[" + ", ".join(str(d) for d in decl.shape) + "]"


def _fits(shape: Sequence[int], decl: m.TensorDecl) -> bool:
    want = decl.shape[1:]
    same = all(isinstance(w, str) or w == s for w, s in zip(want, shape[1:]))
    return len(shape) == len(decl.shape) and same


Row = Callable[[int], str]  # how a message names the sample of an index: 'sample 3', 'line 5'


def _sample(i: int) -> str:
    return f"sample {i}"


def _conform(values: np.ndarray, decl: m.TensorDecl, where: str, missing_ok: bool = False,
             row: Row = _sample) -> np.ndarray:
    """`values` checked against decl's shape and cast to its dtype, or a RunError naming `where`."""
    if values.ndim == 0 or not _fits(values.shape, decl):
        raise RunError(f"{where}: shape {tuple(values.shape)} does not match the declared "
                       f"{decl.dtype}{_shape_text(decl)}")
    return _cast(values, decl.dtype, where, missing_ok, row)


def _first(values: np.ndarray, bad: np.ndarray, row: Row = _sample) -> str:
    """'value V at sample I' (or the `row` naming I) for the first element where `bad` holds."""
    at = tuple(int(i) for i in np.argwhere(bad)[0])
    return f"value {values[at]} at {row(at[0])}"


def _cast(values: np.ndarray, dtype: str, where: str, missing_ok: bool = False,
          row: Row = _sample) -> np.ndarray:
    """values as `dtype` when each survives the cast exactly (floats: finite, or NaN where
    `missing_ok`: a missing value that the spec fills; ints: whole, in range)."""
    kind = values.dtype.kind
    if dtype == "string":  # a category, as a csv cell is
        return as_strings(values, where)
    if kind not in "biuf":
        raise RunError(f"{where}: values are not numeric (dtype {values.dtype}); {dtype} expected")
    if kind == "f":
        bad = np.isnan(values)
        if bad.any() and not missing_ok:
            raise RunError(f"{where}: has NaN (a missing value) at {row(int(np.argwhere(bad)[0, 0]))}")
        bad = np.isinf(values)
        if bad.any():
            raise RunError(f"{where}: has an infinite {_first(values, bad, row)}")
    target = np.dtype(dtype)
    if target.kind == "f":
        with np.errstate(over="ignore"):
            out = values.astype(target)
        bad = np.isinf(out)
        if bad.any():
            raise RunError(f"{where}: cannot cast {values.dtype} to {dtype} safely: "
                           f"{_first(values, bad, row)} is out of its range")
        return out
    if kind == "f":
        bad = values != np.round(values)
        if bad.any():
            raise RunError(f"{where}: cannot cast {values.dtype} to {dtype} safely: non-integer "
                           f"{_first(values, bad, row)}")
    lo, hi = (0, 1) if target.kind == "b" else (np.iinfo(target).min, np.iinfo(target).max)
    bad = (values < lo) | (values > hi)
    if bad.any():
        what = "not 0 or 1" if target.kind == "b" else f"outside [{lo}, {hi}]"
        raise RunError(f"{where}: cannot cast {values.dtype} to {dtype} safely: "
                       f"{_first(values, bad, row)} is {what}")
    return values.astype(target)


def _same_count(arrays: dict[str, tuple[str, np.ndarray]], source: str) -> None:
    counts = {where: len(a) for where, a in arrays.values()}
    if len(set(counts.values())) > 1:
        shown = ", ".join(f"{w} has {n}" for w, n in counts.items())
        raise RunError(f"{source}: the arrays have different sample counts: {shown}")
    if counts and not next(iter(counts.values())):
        raise RunError(f"{source}: no samples")


# ---- bundled scikit-learn sets ----
def _bundled(kind: str, model: m.Model) -> Split:
    """digits, iris, wine, breast_cancer or diabetes from sklearn.datasets, raw (unscaled) values."""
    bunch = bundled.load(kind)
    x = bunch.data
    names = [str(n) for n in bunch.feature_names]
    source = f"bundled data set {kind}"
    out = _bundled_inputs(x, names, model, source)
    derived = [d for d in model.targets if kind == "digits" and d.name in DERIVED]
    plain = [d for d in model.targets if d not in derived]
    if len(plain) > 1 or not model.targets:
        extra = f", or also {' and '.join(DERIVED)} (derived from the digits)" if kind == "digits" else ""
        raise RunError(f"{source} has one target{extra}; model {model.name} declares "
                       f"{', '.join(d.name for d in model.targets) or 'none'}")
    for decl in plain:
        out[decl.name] = _conform(np.asarray(bunch.target), decl, f"{source}: target '{decl.name}'")
    for decl in derived:
        values = mask_like(digits_target(decl.name, x, np.asarray(bunch.target)), len(decl.shape))
        out[decl.name] = _conform(values, decl, f"{source}: target '{decl.name}'")
    return out


def bundled_class_names(kind: str, model: m.Model) -> dict[str, list[str]]:
    """The class names of a bundled classification set's target (scikit-learn's target_names;
    digits: "0" to "9"), for an integer target; {} for diabetes, a regression."""
    if kind == "diabetes":
        return {}
    names = bundled.class_names(kind)
    return {d.name: names for d in model.targets
            if d.name not in DERIVED and np.dtype(d.dtype).kind in "iu" and len(d.shape) == 1}


def _feature_key(name: str) -> str:
    """'sepal length (cm)' -> 'sepal_length': units dropped, non-alphanumerics as underscores."""
    name = name.split("(")[0].strip().lower()
    return "_".join("".join(c if c.isalnum() else " " for c in name).split())


def _bundled_inputs(x: np.ndarray, names: list[str], model: m.Model, source: str) -> Split:
    inputs = model.inputs
    per_sample = x.shape[1]
    dims = [d for d in inputs[0].shape[1:] if isinstance(d, int)] if len(inputs) == 1 else []
    if dims and len(dims) == len(inputs[0].shape) - 1 and math.prod(dims) == per_sample:
        decl = inputs[0]  # one array per sample, e.g. digits' 64 pixels as [N, 1, 8, 8]
        return {decl.name: _conform(x.reshape(len(x), *dims), decl, f"{source}: input '{decl.name}'")}
    if inputs and all(len(d.shape) == 1 for d in inputs):
        keys = [_feature_key(n) for n in names]
        if all(d.name in keys for d in inputs):
            cols = [keys.index(d.name) for d in inputs]
        elif len(inputs) == per_sample:
            cols = list(range(per_sample))
        else:
            cols = []
        if cols:
            return {d.name: _conform(x[:, c], d, f"{source}: input '{d.name}' (feature '{names[c]}')")
                    for d, c in zip(inputs, cols)}
    declared = ", ".join(f"{d.name}: {d.dtype}{_shape_text(d)}" for d in inputs) or "none"
    features = ", ".join(_feature_key(n) for n in names)
    raise RunError(f"{source} has {per_sample} features per sample ({features});"
                   f" the model's inputs ({declared}) take neither one [N, ...] array of that size nor one"
                   " [N] input per feature (matched by name, else by order)")


# ---- npz files ----
def _npz(path: Path, fields: dict[str, str], model: m.Model, rules: dict[str, Labels]) -> Split:
    """Each model input and target from the array named in `fields`, by default the one of the same name."""
    known = [d.name for d in _decls(model)]
    for name in fields:
        if name not in known:
            raise RunError(f"{path}: npz field '{name}' is not an input or target of model {model.name}"
                           f"{did_you_mean(name, known)} (it has: {listed(known)})")
    found: dict[str, tuple[str, np.ndarray]] = {}
    folder = path.is_dir()  # a folder of .npy files, one per array
    with (shards.NpyFolder(path) if folder else Npz(path, "data file")) as data:
        # arrays over MAP_BYTES (in an .npz: those stored uncompressed) are read through memory maps
        read = {fields.get(d.name, d.name) for d in _decls(model)}
        mapped = data.mapped(shards.MAP_BYTES, read) if isinstance(data, shards.NpyFolder) else \
            shards.mappable_members(path, shards.MAP_BYTES)
        if isinstance(data, Npz):  # the sample counts the headers declare agree, before any inflates
            keys = {f"'{d.name}'": fields.get(d.name, d.name) for d in _decls(model)}
            heads = {k: data.declared(v) for k, v in keys.items() if v in data.files}
            counts = {k: h[0][0] for k, h in heads.items() if h is not None and h[0]}
            if len(set(counts.values())) > 1:
                shown = ", ".join(f"{k} has {n:,}" for k, n in counts.items())
                raise RunError(f"{path}: the arrays have different sample counts: {shown}")
        for decl in _decls(model):
            key = fields.get(decl.name, decl.name)
            where = f"{path}: {decl.role} '{decl.name}'" + (f" (array '{key}')" if key != decl.name else "")
            if key not in data.files:
                raise RunError(f"{where}: the file has no array '{key}'{did_you_mean(key, data.files)} "
                               f"(it has: {listed(data.files) or 'nothing'})")
            if key in mapped:
                rows = typing.cast(np.ndarray, _conform_rows(mapped[key], decl, where))  # read as indexed
                found[decl.name] = (where, rows)
            else:
                header = data.declared(key) if isinstance(data, Npz) else None
                if header is not None and (not header[0] or not _fits(header[0], decl)):  # before inflating
                    raise RunError(f"{where}: shape {header[0]} does not match the declared "
                                   f"{decl.dtype}{_shape_text(decl)}")
                found[decl.name] = (where, _conform(data[key], decl, where))
            if decl.name in rules:
                check_labels(np.asarray(found[decl.name][1]), rules[decl.name], where)
    _same_count({k: (f"'{k}'", a) for k, (_, a) in found.items()}, str(path))
    return {k: a for k, (_, a) in found.items()}


def _conform_rows(source: shards.Mapped, decl: m.TensorDecl, where: str) -> shards.Rows:
    """_conform for a mapped array, checked a chunk of samples at a time and cast batch by batch."""
    values = source.array
    if values.ndim == 0 or not _fits(values.shape, decl):
        raise RunError(f"{where}: shape {tuple(values.shape)} does not match the declared "
                       f"{decl.dtype}{_shape_text(decl)}")
    step = max(1, shards.CHUNK_BYTES // max(source.row_bytes, 1))
    for lo in range(0, len(values), step):
        try:
            _cast(source.gather(slice(lo, lo + step), values.dtype), decl.dtype, where)
        except RunError as err:  # _cast counts samples from the chunk's first
            raise RunError(f"{err} (counting from sample {lo}, where the chunk starts)" if lo
                           else str(err)) from None
    return shards.whole(source, decl.dtype)


# ---- image folders ----
def _images(data: m.ImagesData, model: m.Model, spec_dir: Path, rules: dict[str, Labels],
            note: Callable[[str], None]) -> tuple[Split, dict[str, list[str]]]:
    """The model's one image input as mapped cache rows, its one target the class labels."""
    call = f'images("{data.path}")'
    if len(model.inputs) != 1 or len(model.targets) != 1:
        raise RunError(f"{call} gives one image input and one class label; model {model.name} declares "
                       f"{len(model.inputs)} input(s) and {len(model.targets)} target(s)")
    image, target = model.inputs[0], model.targets[0]
    decoded, _ = open_set(data, image, spec_dir, note)
    where = f"{call}: target '{target.name}'"
    labels = _conform(decoded.labels, target, where)
    rule = rules.get(target.name)
    names = decoded.class_names
    if rule is not None and names is not None and rule.classes is not None and len(names) > rule.classes:
        raise RunError(f"{call} has {len(names)} classes ({listed(names)}); the model's head has "
                       f"{rule.classes}")
    if rule is not None:
        check_labels(labels, rule, where)
    pixels = typing.cast(np.ndarray, shards.whole(decoded.pixels, image.dtype))  # read as it is indexed
    return {image.name: pixels, target.name: labels}, ({target.name: names} if names is not None else {})


# ---- csv files ----
def _csv(path: Path, target: str, model: m.Model, rules: dict[str, Labels],
         known: Mapping[str, list[str]] | None = None) -> tuple[Split, dict[str, list[str]]]:
    """Inputs by column name, the model's target from column `target`; the first row is the header.
    Also the class names of each integer target whose column holds names (`known`: a trained
    model's, which the names must be among; else the names found, sorted): its labels are their
    indices. A string input's cells stay strings (categories, looked up by runtime.vocab)."""
    rows, row_lines = csv_rows(path)
    if not rows:
        raise RunError(f"{path}: empty file (a header row of column names is expected)")
    header = [h.strip() for h in rows[0]]
    dupes = sorted(h for h, n in collections.Counter(header).items() if n > 1)  # linear: 10^5 columns
    if dupes:
        raise RunError(f"{path}: the header names column '{dupes[0]}' more than once")
    numbered = [(line, r) for line, r in zip(row_lines[1:], rows[1:]) if any(c.strip() for c in r)]
    for line, r in numbered:
        if len(r) != len(header):
            raise RunError(f"{path}: line {line} has {len(r)} fields; the header has {len(header)}")
    if not numbered:
        raise RunError(f"{path}: no samples (only a header)")
    lines = [line for line, _ in numbered]
    body = [r for _, r in numbered]
    columns = {d.name: d.name for d in model.inputs}
    if len(model.targets) == 1:
        columns[model.targets[0].name] = target
    else:
        names = [d.name for d in model.targets]
        if target not in names:
            raise RunError(f"{path}: target={target} must name one of model {model.name}'s targets "
                           f"({', '.join(names)}) when it has several")
        columns.update({n: n for n in names})
    out: Split = {}
    class_names: dict[str, list[str]] = {}
    may_miss = filled(model.features)  # inputs that fill(x, ...) reads
    for decl in _decls(model):
        col = columns[decl.name]
        where = f"{path}: {decl.role} '{decl.name}'" + (f" (column '{col}')" if col != decl.name else "")
        if col not in header:
            raise RunError(f"{where}: no column '{col}'{did_you_mean(col, header)} "
                           f"(the header has: {listed(header)})")
        if len(decl.shape) != 1:
            raise RunError(f"{where}: a csv column gives one value per sample; the model declares "
                           f"{decl.dtype}{_shape_text(decl)}")
        j = header.index(col)
        cells = [r[j].strip() for r in body]
        if decl.dtype == "string":  # a category: an empty cell is one the vocabulary never holds
            out[decl.name] = np.array(cells, dtype=object)
            continue
        if decl.role == "target" and np.dtype(decl.dtype).kind in "iu" and any(map(_is_word, cells)):
            given = (known or {}).get(decl.name)
            out[decl.name], class_names[decl.name] = _class_indices(cells, lines, given, where)
        else:
            missing_ok = decl.name in may_miss and decl.dtype.startswith("float")
            values = csv_numbers(cells, lines, where, decl.name, missing_ok)
            out[decl.name] = _conform(values, decl, where, missing_ok, lambda i: f"line {lines[i]}")
        if decl.name in rules:
            check_labels(out[decl.name], rules[decl.name], where, lambda i: f"line {lines[i]}")
    return out, class_names


def csv_numbers(cells: list[str], lines: list[int], where: str, name: str, missing_ok: bool,
                fill: str | None = None) -> np.ndarray:
    """The cells as float64; an empty or NaN cell is NaN when the spec fills `name` (missing_ok),
    else a RunError naming the line, followed by `fill`, how to fill it."""
    values = np.empty(len(cells), np.float64)
    fill = fill or (f"; a spec fills missing values in its features: `{name} = fill({name}, mean)` (or "
                    f"fill({name}, 0)), with missing({name}) as an indicator column")
    for i, (line, cell) in enumerate(zip(lines, cells)):
        if not cell:
            if not missing_ok:
                raise RunError(f"{where}: missing value at line {line}{fill}")
            values[i] = math.nan
            continue
        try:
            values[i] = float(cell)
        except ValueError:
            raise RunError(f"{where}: value {cell!r} at line {line} is not numeric") from None
        if math.isnan(values[i]) and not missing_ok:
            raise RunError(f"{where}: NaN at line {line}{fill}")
        if math.isinf(values[i]):
            raise RunError(f"{where}: infinite value {cell!r} at line {line}")
    return values


def _is_word(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return bool(cell)
    return False


def _class_indices(cells: list[str], lines: list[int], known: list[str] | None,
                   where: str) -> tuple[np.ndarray, list[str]]:
    """Labels given by class name: each name's index among `known`, else among the sorted names."""
    for line, cell in zip(lines, cells):
        if not cell:
            raise RunError(f"{where}: missing label at line {line}")
    numbers = [(line, c) for line, c in zip(lines, cells) if not _is_word(c)]
    if numbers:
        word = next((line, c) for line, c in zip(lines, cells) if _is_word(c))
        raise RunError(f"{where}: the labels mix class names ({word[1]!r} at line {word[0]}) and numbers "
                       f"({numbers[0][1]!r} at line {numbers[0][0]}): give every row a class name, or "
                       "every row a class number")
    names = known if known is not None else sorted(set(cells))
    index = {n: i for i, n in enumerate(names)}
    for line, cell in zip(lines, cells):
        if cell not in index:
            raise RunError(f"{where}: label {cell!r} at line {line} is not a class of the model "
                           f"({', '.join(names)})")
    return np.array([index[c] for c in cells], np.int64), list(names)


def csv_rows(path: Path) -> tuple[list[list[str]], list[int]]:
    """The rows of a UTF-8 csv file and the line each ends on; a file that is not UTF-8 text or not
    csv is a RunError naming the line."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise RunError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark, as spreadsheets write, is not a column
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        col = err.start - raw.rfind(b"\n", 0, err.start)
        raise RunError(f"{path}: line {line} is not UTF-8 text (byte 0x{raw[err.start]:02x} at column "
                       f"{col}); save the file as UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows, lines = [], []
    try:
        for row in reader:
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as err:
        raise RunError(f"{path}: line {reader.line_num} is not valid csv: {err}") from None
    return rows, lines


# ---- splits ----
def _class_labels(arrays: Split, model: m.Model) -> np.ndarray | None:
    """The labels to stratify by: the first target that is an integer or bool class per sample."""
    for decl in model.targets:
        if np.dtype(decl.dtype).kind in "biu" and len(decl.shape) == 1:
            return arrays[decl.name]
    return None


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([k % 2**64 for k in keys]))


def _pick(n: int, fraction: float) -> np.ndarray:
    """A mask over 0..n-1, spread evenly: any k consecutive positions hold floor or ceil of k * fraction."""
    marks = np.floor(np.arange(n + 1) * fraction + 0.5)
    return np.diff(marks) > 0


def split_indices(n: int, test: float, val: float, seed: int,
                  labels: np.ndarray | None = None) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], bool]:
    """(train, val, test) sorted index arrays and whether they are stratified.

    A seeded permutation, regrouped by class when labels are given and every class has enough samples
    to reach each non-empty split; test then val are taken evenly along it, so each class keeps its share.
    Sizes: round(n * test) test, round(rest * val / (1 - test)) val, the rest train.
    """
    order = _rng(seed, _SPLIT_STREAM).permutation(n)
    stratified = False
    if labels is not None:
        _, counts = np.unique(labels, return_counts=True)
        smallest = min([f for f in (test, val) if f > 0], default=1.0)
        if len(counts) > 1 and counts.min() * smallest >= 1:
            order = order[np.argsort(labels[order], kind="stable")]
            stratified = True
    is_test = _pick(n, test)
    test_idx, rest = order[is_test], order[~is_test]
    is_val = _pick(len(rest), val / (1 - test) if val else 0.0)
    return (np.sort(rest[~is_val]), np.sort(rest[is_val]), np.sort(test_idx)), stratified


# ---- batches ----
def _batch_bounds(n: int, batch_size: int, shuffle: bool) -> list[tuple[int, int]]:
    bounds = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    if shuffle and len(bounds) > 1 and 2 * (bounds[-1][1] - bounds[-1][0]) < batch_size:
        bounds.pop()
    return bounds


def batch_count(split: Split, batch_size: int, shuffle: bool = True) -> int:
    """How many batches `batches(split, batch_size, ..., shuffle)` yields."""
    return len(_batch_bounds(size(split), batch_size, shuffle))


def batches(split: Split, batch_size: int, epoch: int, seed: int, shuffle: bool = True) -> Iterator[Split]:
    """The split in batches of `batch_size` samples.

    shuffle=True is training: the order is a fresh permutation drawn from (seed, epoch) alone, so
    resuming at epoch k replays epoch k's order. The last incomplete batch is dropped when it holds
    fewer than half a batch (too noisy a step), otherwise kept; a split with a single batch keeps it.
    shuffle=False is evaluation: samples in order, every one kept (the last batch may be short).
    """
    if batch_size < 1:
        raise RunError(f"batch size must be positive, got {batch_size}")
    n = size(split)
    order = _rng(seed, _BATCH_STREAM, epoch).permutation(n) if shuffle else np.arange(n)
    for lo, hi in _batch_bounds(n, batch_size, shuffle):
        idx = order[lo:hi]
        yield {k: v[idx] for k, v in split.items()}
