"""`dlspec plot RUN [-o FILE.png] [--confusion]`: loss and metric curves of a run folder's
metrics.jsonl; with --confusion also the confusion matrix of its model on the test split."""

from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlspec.health import PREFIX, is_health
from dlspec.spec.errors import RunError

if TYPE_CHECKING:  # numpy, onnx, pydantic and rich load when the command runs, not for `dlspec --help`
    from matplotlib.figure import Figure
    from rich.console import Console

Record = dict[str, float]

SPLITS = {"train": "C0", "val": "C1", "test": "C2"}  # the colour of each split, in both panels
STYLES = {"rmse": "--"}  # mae and rmse share the metric panel: tell them apart by line style


def add_parser(sub: Any) -> None:
    p = sub.add_parser("plot", help="draw a run's loss and metric curves per epoch to a PNG")
    p.add_argument("run", help="a run folder (runs/MODEL)")
    p.add_argument("-o", "--output", help="where to write the .png (default RUN/curves.png)")
    p.add_argument("--confusion", action="store_true",
                   help="also draw the confusion matrix of RUN/model.onnx on its spec's test split, to "
                        "RUN/confusion.png (one per classifying head: confusion_<head>.png)")


def run(args: argparse.Namespace, out: Console) -> int:
    src = Path(args.run)
    if not src.exists():
        raise RunError(f"no run folder {src}")
    if not src.is_dir():
        raise RunError(f"{src} is not a run folder (dlspec train writes runs/MODEL/)")
    dest = Path(args.output) if args.output else src / "curves.png"
    if dest.suffix.lower() != ".png":
        raise RunError(f"cannot write {dest}: plot writes PNG, give a file name ending in .png")
    records = read_metrics(src / "metrics.jsonl")
    fig = figure(records, best_epoch(src, records), src.resolve().name)
    _save(fig, dest)
    out.print(f"wrote {dest}", markup=False)
    if args.confusion:
        from dlspec.api import evaluation
        from dlspec.eval_cli import run_spec

        scored = evaluation(src / "model.onnx", run_spec(src)).per_class
        if not scored:
            raise RunError(f"{src / 'model.onnx'} has no classifying output ([N, C] logits): no confusion "
                           "matrix to draw")
        for pc in scored:
            path = src / ("confusion.png" if len(scored) == 1 else f"confusion_{pc.output}.png")
            _save(confusion_figure(pc.confusion, pc.names, f"{src.resolve().name}: {pc.output}, test split"),
                  path)
            out.print(f"wrote {path}", markup=False)
    return 0


def _save(fig: Figure, dest: Path) -> None:
    from dlspec.files import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(dest, buf.getvalue())


def confusion_figure(confusion: Any, names: list[str], title: str) -> Figure:
    """The confusion matrix as an image: a row per true class, a column per predicted class, each
    cell shaded by its share of the row (the class's recall on the diagonal) and labelled with its count."""
    n = len(names)
    side = min(4 + 0.45 * n, 24)
    fig = _figure(figsize=(side + 1.5, side), dpi=100, layout="constrained")
    ax = fig.subplots()
    totals = confusion.sum(1, keepdims=True)
    share = confusion / (totals + (totals == 0))  # a class without samples: a row of zeros
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class")
    if n <= 30:  # counts stay legible
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize="small",
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), names, rotation=90 if max(map(len, names), default=0) > 3 else 0)
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return fig


def _figure(**kwargs: Any) -> Figure:
    """A matplotlib Figure drawn with Agg: no display, no GUI toolkit."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise RunError("dlspec plot needs matplotlib: pip install 'matplotlib>=3.7'") from None
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def read_metrics(path: Path) -> list[Record]:
    """One record per epoch; a later line for an epoch replaces an earlier one (as after --resume)."""
    if not path.is_file():
        raise RunError(f"no {path.name} in {path.parent}: not a run folder, or no epoch has finished yet")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise RunError(f"cannot read {path}: {err}") from None
    by_epoch: dict[int, Record] = {}
    for n, line in enumerate(lines, 1):
        if line.strip():
            record = _record(line, f"{path}:{n}")
            by_epoch[int(record["epoch"])] = record
    if not by_epoch:
        raise RunError(f"{path} is empty: no epoch has finished yet")
    return [by_epoch[e] for e in sorted(by_epoch)]


def _record(line: str, where: str) -> Record:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise RunError(f"{where}: not a JSON record ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
        raise RunError(f"{where}: expected a JSON object with an integer 'epoch'")
    for key in [*curves([record]), *norms([record])]:  # what is drawn: numbers only
        if isinstance(record[key], bool) or not isinstance(record[key], (int, float)):
            raise RunError(f"{where}: '{key}' is {json.dumps(record[key])}, expected a number")
    return record


def curves(records: list[Record]) -> list[str]:
    """Keys such as train_loss, val_accuracy or val_rmse, in order of first appearance (the
    gradient norms are drawn apart)."""
    keys = dict.fromkeys(k for r in records for k in r)
    return [k for k in keys if k.partition("_")[0] in SPLITS and k.partition("_")[2] and not is_health(k)]


def norms(records: list[Record]) -> list[str]:
    """The gradient-norm keys: train_grad_norm, then one per stage."""
    return [k for k in dict.fromkeys(k for r in records for k in r) if is_health(k)]


def best_epoch(run: Path, records: list[Record]) -> int | None:
    """The epoch best.npz holds (it stores the 0-based epoch); without best.npz, fit.py's choice."""
    from dlspec.files import Npz
    from dlspec.selection import kept, val_score

    path = run / "best.npz"
    if path.exists():
        with Npz(path, "checkpoint") as data:
            epoch = data["__epoch__"] if "__epoch__" in data else None
        if epoch is None or epoch.shape != () or epoch.dtype.kind not in "iu":
            raise RunError(f"cannot read checkpoint {path}: it has no epoch (not a dlspec checkpoint)")
        return int(epoch) + 1
    # training's choice (selection.val_score): highest val accuracy, else lowest val mae, else
    # lowest val loss, else the last epoch; a tie goes to the later
    best, chosen = math.inf, None
    for r in records:
        val = {k.removeprefix("val_"): v for k, v in r.items() if k.startswith("val_")}
        score = val_score(val, int(r["epoch"]))
        if kept(score, best):
            best, chosen = score, int(r["epoch"])
    return chosen


def figure(records: list[Record], best: int | None, title: str) -> Figure:
    """Two panels side by side: the losses, then the metrics (accuracy, or mae and rmse)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise RunError("dlspec plot needs matplotlib: pip install 'matplotlib>=3.7'") from None
    health = norms(records)
    fig = Figure(figsize=(15 if health else 10, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # render with Agg: no display, no GUI toolkit
    fig.suptitle(title)
    keys = curves(records)
    left, right, *rest = fig.subplots(1, 3 if health else 2)
    if rest:
        _norms(rest[0], records, health, MaxNLocator)
    losses = [k for k in keys if k.partition("_")[2].partition(":")[0] == "loss"]  # val_loss:cls too
    metrics = [k for k in keys if k not in losses]
    for ax, panel, default in ((left, losses, "loss"), (right, metrics, "metric")):
        name = " / ".join(dict.fromkeys(k.partition("_")[2] for k in panel)) or default  # "mae / rmse"
        for key in panel:
            split, _, what = key.partition("_")
            epochs = [int(r["epoch"]) for r in records if key in r]
            values = [r[key] for r in records if key in r]
            ax.plot(epochs, values, marker=".", ls=STYLES.get(what, "-"), color=SPLITS[split], label=key)
            if best in epochs:
                ax.plot(best, values[epochs.index(best)], marker="*", ms=12, color=SPLITS[split])
        if best is not None:
            ax.axvline(best, color="0.5", ls=":", label=f"best (epoch {best})")
        if panel:
            ax.legend()
        else:
            ax.text(0.5, 0.5, f"no {name} recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def _norms(ax: Any, records: list[Record], keys: list[str], locator: Any) -> None:
    """Each stage's gradient norm per epoch on a log scale (the global norm in black): a stage
    far below the others, or climbing away from its start, is where training goes wrong."""
    for key in keys:
        epochs = [int(r["epoch"]) for r in records if key in r]
        values = [max(float(r[key]), 1e-30) for r in records if key in r]
        overall = key == "train_grad_norm"
        ax.plot(epochs, values, marker=".", color="black" if overall else None, lw=2 if overall else 1,
                label="all" if overall else key.removeprefix(PREFIX))
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("gradient norm")
    if len(keys) <= 12:
        ax.legend(fontsize="small")
    ax.xaxis.set_major_locator(locator(integer=True))
