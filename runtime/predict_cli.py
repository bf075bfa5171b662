"""`dlspec predict MODEL INPUTS... [--top K] [--json] [-o OUT.npz]`: run a model (an .onnx file or
a run folder) on an .npz of its inputs, a .csv of rows (a column per input) or image files, and
print each classifier's top-k class names with their probabilities (the model's metadata
`class_names`; class indices without), or the outputs as they are."""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlspec.arg_types import positive
from dlspec.image_kinds import EXTENSIONS, POLICIES
from dlspec.spec.errors import RunError, listed

if TYPE_CHECKING:  # numpy, onnxruntime and the readers load in the functions that run a prediction
    import numpy as np
    from rich.console import Console

_BATCH = 256  # rows per run: a large csv never sits in the session's buffers at once


def add_parser(sub: Any) -> None:
    p = sub.add_parser("predict", help="run a model on an .npz, a .csv of rows or image files; print the "
                       "top classes")
    p.add_argument("model_file", help="the .onnx model, or a run folder (its model.onnx)")
    p.add_argument("inputs", nargs="+", help="an .npz file (one array per model input), a .csv file (a "
                   f"column per input, a row per sample), or image files ({', '.join(EXTENSIONS)})")
    p.add_argument("--top", type=positive, help="classes shown per sample (default 3; for a model without "
                   "class names, --top ranks its logits by class index)")
    p.add_argument("--json", action="store_true", help="print one JSON document, for programs")
    p.add_argument("--fit", choices=POLICIES, help="how images are fitted to the model's input size "
                   "(default: the policy its images(...) data was trained with, else resize)")
    p.add_argument("-o", "--output", help="save the outputs to this .npz instead of printing them")


@dataclass
class Rows:
    """The model's inputs for a batch of samples, and a name for each sample."""

    feeds: dict[str, np.ndarray]
    names: list[str]


def run(args: argparse.Namespace, out: Console) -> int:
    import numpy as np

    from dlspec.files import atomic_write
    from dlspec.inference import session
    from dlspec.labels import class_names_of

    src = Path(args.model_file)
    model = src / "model.onnx" if src.is_dir() else src
    sess = session(model)
    rows = read_rows(sess, [Path(p) for p in args.inputs], args.fit)
    where = args.inputs[0] if len(args.inputs) == 1 else f"{len(args.inputs)} files"
    outputs = _run(sess, rows, model, where)
    if args.output:
        buf = io.BytesIO()
        savez: Any = np.savez  # outputs are keyword arguments: the stubs reserve 'allow_pickle'
        savez(buf, **outputs)
        atomic_write(args.output, buf.getvalue())
        out.print(f"wrote {args.output}: {', '.join(f'{k} {list(v.shape)}' for k, v in outputs.items())}",
                  markup=False)
        return 0
    names = class_names_of(sess.get_modelmeta().custom_metadata_map)
    ranked = top_classes(outputs, names, args.top or 3, by_index=args.top is not None)
    if args.json:
        print(json.dumps(_document(rows.names, outputs, ranked), ensure_ascii=False))
        return 0
    rest = _unranked(outputs, ranked)
    for output, per_row in ranked.items():
        head = f" ({output})" if len(ranked) + len(rest) > 1 else ""
        for name, top in zip(rows.names, per_row):
            shown = ", ".join(f"{c} {p:.4f}" for c, _, p in top)
            out.print(f"{name}{head}: {shown}", markup=False, highlight=False)
    with np.printoptions(precision=4, suppress=True, threshold=200):
        for name in rest:  # all of a regression model's outputs, or a regression head beside a classifier
            value = outputs[name]
            out.print(f"{name} {list(value.shape)} {value.dtype}:", markup=False, highlight=False)
            out.print(str(value), markup=False, highlight=False)
    return 0


def _unranked(outputs: dict[str, np.ndarray], ranked: dict[str, list[Ranked]]) -> list[str]:
    """The outputs shown as values: those not ranked, less the probabilities of a ranked one (an
    exported classifier's), which the ranking shows."""
    theirs = {"probabilities" if o == "logits" else f"probabilities:{o}" for o in ranked}
    return [o for o in outputs if o not in ranked and o not in theirs]


def read_rows(sess: Any, paths: list[Path], fit: str | None = None) -> Rows:
    """The inputs from one .npz or .csv file, or from image files (fitted to the model's input size
    by `fit`, else as the model's training images were: its metadata image_policy, else resize)."""
    from dlspec.inference import load_inputs

    for p in paths:
        if not p.is_file():
            raise RunError(f"no input file {p}")
    suffixes = {p.suffix.lower() for p in paths}
    if suffixes & {".npz", ".csv"}:
        if len(paths) > 1:
            raise RunError(f"give one .npz or .csv file, or image files; got {len(paths)} files")
        if suffixes == {".npz"}:
            feeds = load_inputs(sess, paths[0])
            n = len(next(iter(feeds.values()))) if feeds else 0
            return Rows(feeds, [f"sample {i}" for i in range(n)])
        return _csv_inputs(sess, paths[0])
    odd = [p for p in paths if p.suffix.lower() not in EXTENSIONS]
    if odd:
        raise RunError(f"{odd[0]}: not an .npz, .csv or image file ({', '.join(EXTENSIONS)})")
    return _image_inputs(sess, paths, fit)


def _csv_inputs(sess: Any, path: Path) -> Rows:
    """A row per sample, a column per model input (other columns, a target say, are ignored);
    cells of a string input stay strings; an empty or NaN cell is a missing value, NaN, in an input
    the model fills (fill(x, ...) in its features: metadata `filled`), else an error."""
    import numpy as np

    from dlspec.data import csv_numbers, csv_rows
    from dlspec.inference import check_finite, check_inputs, filled_inputs

    rows, lines = csv_rows(path)
    if len(rows) < 2:
        raise RunError(f"{path}: no samples (a header row of column names, then a row per sample)")
    header = [h.strip() for h in rows[0]]
    body = [(line, r) for line, r in zip(lines[1:], rows[1:]) if any(c.strip() for c in r)]
    for line, r in body:
        if len(r) != len(header):
            raise RunError(f"{path}: line {line} has {len(r)} fields; the header has {len(header)}")
    nan_ok = filled_inputs(sess)
    data: dict[str, np.ndarray] = {}
    for inp in sess.get_inputs():
        if inp.name not in header:
            raise RunError(f"{path}: no column '{inp.name}' for the model's input '{inp.name}' (the header "
                           f"has: {listed(header)})")
        if header.count(inp.name) > 1:  # which one is the input? train and eval refuse it too
            raise RunError(f"{path}: the header names column '{inp.name}' more than once")
        if len(inp.shape) != 1:
            raise RunError(f"{path}: the model's input '{inp.name}' takes {list(inp.shape)} per batch; a csv "
                           "column gives one value per sample")
        j = header.index(inp.name)
        cells = [r[j].strip() for _, r in body]
        if inp.type == "tensor(string)":
            data[inp.name] = np.array(cells, dtype=object)
            continue
        hint = (f"; the model fills no missing values of '{inp.name}' (its spec has no "
                f"fill({inp.name}, ...)), so every row needs a number there")
        values = csv_numbers(cells, [line for line, _ in body], f"{path}: column '{inp.name}'", inp.name,
                             inp.name in nan_ok, hint)
        data[inp.name] = values
    names = [f"line {line}" for line, _ in body]
    with np.errstate(over="ignore"):  # a number beyond float32's range: inf, refused
        return Rows(check_finite(sess, check_inputs(sess, data, path), path, names), names)


def _image_inputs(sess: Any, paths: list[Path], fit: str | None) -> Rows:
    """Each file decoded as the image data source decodes it (runtime.images), to the shape of the
    model's one input, pixels 0 to 255: the model's features scale them as in training."""
    import numpy as np

    from dlspec.images import decoded, layout_of, policy_of
    from dlspec.spec import model as m

    fit = fit or policy_of(sess.get_modelmeta().custom_metadata_map) or "resize"
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise RunError(f"image files feed a model with one image input; this one has "
                       f"{', '.join(i.name for i in inputs)}")
    inp = inputs[0]
    dtypes: dict[str, m.DType] = {"tensor(float)": "float32", "tensor(double)": "float64",
                                  "tensor(uint8)": "uint8", "tensor(float16)": "float16"}
    dtype = dtypes.get(inp.type)
    shape = ["N", *inp.shape[1:]]
    if dtype is None or not all(isinstance(d, int) for d in shape[1:]):
        raise RunError(f"the model's input '{inp.name}' is {inp.type}{list(inp.shape)}: not an image input "
                       "of fixed size")
    decl = m.TensorDecl(role="input", name=inp.name, dtype=dtype, shape=shape)
    layout = layout_of(decl, None, "the model")
    pixels = []
    for p in paths:
        pixels.append(decoded(p, layout, fit))
    return Rows({inp.name: np.stack(pixels).astype(dtype)}, [str(p) for p in paths])


def _run(sess: Any, rows: Rows, model: Path, where: str) -> dict[str, np.ndarray]:
    import numpy as np

    from dlspec.inference import run_model

    n = len(rows.names)
    parts: list[dict[str, np.ndarray]] = []
    for lo in range(0, max(n, 1), _BATCH):
        feeds = {k: v[lo:lo + _BATCH] for k, v in rows.feeds.items()}
        parts.append(run_model(sess, feeds, model, where, first=lo))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


Ranked = list[tuple[str, int, float]]  # (class name, index, probability), most probable first


def top_classes(outputs: dict[str, np.ndarray], names: dict[str, list[str]], k: int,
                by_index: bool = False) -> dict[str, list[Ranked]]:
    """The top k classes of each sample, for each output that the metadata names classes of (else,
    `by_index`, a classifier's `logits` by class index): probabilities from the logits' softmax."""
    import numpy as np

    chosen = {o: n for o, n in names.items() if o in outputs}
    logits = outputs.get("logits")
    if not chosen and by_index and logits is not None and logits.ndim == 2 and logits.shape[1] > 1:
        chosen = {"logits": [str(i) for i in range(outputs["logits"].shape[1])]}
    ranked: dict[str, list[Ranked]] = {}
    for output, classes in chosen.items():
        logits = np.asarray(outputs[output], np.float64)
        if logits.ndim != 2 or logits.shape[1] != len(classes):
            raise RunError(f"output '{output}' has shape {list(logits.shape)}, but the model names "
                           f"{len(classes)} classes for it")
        z = np.exp(logits - logits.max(1, keepdims=True))  # softmax, shifted: exp never overflows
        prob = z / z.sum(1, keepdims=True)
        order = np.argsort(-prob, axis=1, kind="stable")[:, :k]
        ranked[output] = [[(classes[j], int(j), float(p[j])) for j in row] for p, row in zip(prob, order)]
    return ranked


def _document(names: list[str], outputs: dict[str, np.ndarray],
              ranked: dict[str, list[Ranked]]) -> list[dict]:
    """One object per sample and output: {"input", "output", "top": [{"class", "index",
    "probability"}]} for a classifier, {"input", "output", "value"} otherwise."""
    import numpy as np

    doc: list[dict] = []
    for output, per_row in ranked.items():
        doc += [{"input": n, "output": output,
                 "top": [{"class": c, "index": i, "probability": p} for c, i, p in top]}
                for n, top in zip(names, per_row)]
    for output in _unranked(outputs, ranked):  # a regression head beside a classifier too
        doc += [{"input": n, "output": output, "value": np.asarray(v).tolist()}
                for n, v in zip(names, outputs[output])]
    return doc
