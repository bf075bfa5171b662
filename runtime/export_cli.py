"""`dlspec export RUN -o model.onnx`: the deployable model of a training run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the API loads when the command runs: `dlspec export --help` needs no onnx
    from rich.console import Console


def add_parser(sub: Any) -> None:
    p = sub.add_parser("export", help="export a training run's model: batch norm folded, probabilities")
    p.add_argument("run", help="the run folder (runs/MODEL) or its model.onnx")
    p.add_argument("-o", "--output", help="where to write (default RUN/exported.onnx)")


def run(args: argparse.Namespace, out: Console) -> int:
    from dlspec.api import export
    from dlspec.files import atomic_write

    src = Path(args.run)
    source = src / "model.onnx" if src.is_dir() else src
    exported = export(source)
    folded = next(p.value for p in exported.metadata_props if p.key == "batch_norm_folded")
    dest = Path(args.output) if args.output else source.parent / "exported.onnx"
    atomic_write(dest, exported.SerializeToString())
    outputs = ", ".join(o.name for o in exported.graph.output)
    out.print(f"wrote {dest}: {folded} batch norms folded into convolutions; outputs {outputs}",
              markup=False)
    return 0
