"""`dlspec eval RUN|model.onnx [DATA] [--spec FILE]`: metrics of a trained model on its spec's
test split, or on every sample of DATA (an .npz or .csv file, a bundled set, or a folder of class
subfolders of images); for a classifier also precision, recall and F1 per class and the confusion
matrix, from the same run of the model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlspec.spec.errors import RunError

if TYPE_CHECKING:  # the API and rich load when the command runs: `dlspec eval --help` needs neither
    from rich.console import Console


def add_parser(sub: Any) -> None:
    p = sub.add_parser("eval", help="metrics of a trained model on its spec's test split or on DATA")
    p.add_argument("run", help="a run folder (runs/MODEL) or an .onnx model")
    p.add_argument("data", nargs="?", help="evaluate on every sample of this .npz or .csv file, bundled "
                   "set (digits, iris, ...) or folder of class subfolders of images, instead of the "
                   "spec's test split")
    p.add_argument("--spec", help="the spec whose data to use (default: the spec RUN was trained "
                   "from, else RUN/spec.dlspec)")
    p.add_argument("--model", help="which model, when the spec defines several")


def run_spec(run: Path) -> Path:
    """The spec a run was trained from (its imports and relative data paths resolve there), else
    the copy in the run folder."""
    from dlspec.resume import COPY, SOURCE

    try:
        source = Path(json.loads((run / SOURCE).read_text())["spec"])
    except (OSError, ValueError, KeyError, TypeError):
        return run / COPY
    return source if source.is_file() else run / COPY


def run(args: argparse.Namespace, out: Console) -> int:
    from dlspec.api import evaluation
    from dlspec.per_class import confusion_table, scores_table

    src = Path(args.run)
    if not src.exists():
        raise RunError(f"no run folder or model file {src}")
    model_file = src / "model.onnx" if src.is_dir() else src
    spec_file = Path(args.spec) if args.spec else (run_spec(src) if src.is_dir() else None)
    if spec_file is None:
        raise RunError("give --spec FILE: the spec whose data set to evaluate on")
    result = evaluation(model_file, spec_file, args.data, model_name=args.model)
    metrics = dict(result.metrics)
    n = int(metrics.pop("samples"))
    where = args.data or f"the test split of {spec_file}"
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    out.print(f"{model_file} on {where} ({n} samples): {shown}", markup=False)
    for pc in result.per_class:
        _print_whole(out, scores_table(pc))
        if len(pc.names) <= MAX_CONFUSION_COLUMNS:
            _print_whole(out, confusion_table(pc))
        else:
            out.print(f"confusion matrix: {len(pc.names)} classes, too wide to print; `dlspec plot RUN "
                      "--confusion` draws it", markup=False)
    return 0


MAX_CONFUSION_COLUMNS = 20


def _print_whole(out: Console, table: Any) -> None:
    """Piped or captured output gets whole rows rather than rows wrapped at 80 columns."""
    from rich.measure import Measurement

    if not out.is_terminal:
        out.width = max(out.width, Measurement.get(out, out.options.update_width(10_000), table).maximum)
    out.print(table)
