"""`dlspec export RUN -o model.onnx`: the deployable model of a training run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import onnx
from rich.console import Console

from dlspec.compiler.lower.export import export
from dlspec.files import atomic_write
from dlspec.spec.errors import RunError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("export", help="export a training run's model: batch norm folded, probabilities")
    p.add_argument("run", help="the run folder (runs/MODEL) or its model.onnx")
    p.add_argument("-o", "--output", help="where to write (default RUN/exported.onnx)")


def run(args: argparse.Namespace, out: Console) -> int:
    src = Path(args.run)
    source = src / "model.onnx" if src.is_dir() else src
    if not source.is_file():
        raise RunError(f"no trained model at {source}: train first with `dlspec train`")
    try:
        model = onnx.load(str(source))
    except Exception as err:  # onnx raises DecodeError and others for a bad file
        raise RunError(f"cannot read {source}: {err}") from None
    exported, folded = export(model, {"exported_from": str(source)})
    dest = Path(args.output) if args.output else source.parent / "exported.onnx"
    atomic_write(dest, exported.SerializeToString())
    outputs = ", ".join(o.name for o in exported.graph.output)
    out.print(f"wrote {dest}: {folded} batch norms folded into convolutions; outputs {outputs}",
              markup=False)
    return 0
